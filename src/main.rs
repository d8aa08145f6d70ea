fn main() -> std::process::ExitCode {
    rpcbind_proxy::main()
}
