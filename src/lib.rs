//! rpcbind-proxy: a transparent, multiplexing proxy in front of rpcbind.
//!
//! The path of a call: `listen` (unix, TCP, UDP) → `service::Proxy::handle`
//! (the record decoded once into a `Request` with `rpc`/`rpcb`/`xdr`,
//! checked, `policy::route`) → `cache` or `upstream` (one persistent
//! connection per transport class) → back the same way. `daemon` runs it
//! (`Daemon::start` → `Running` → `drain`); `ops` are the operator's
//! commands. See ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod host;
pub mod ops;
pub mod protocol;
pub mod proxy;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use clap::Parser;

pub use daemon::{run, StartError};

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = cli::or_exit(Cli::try_parse());
    if !matches!(cli.command, Command::Serve(_)) {
        host::sys::default_sigpipe();
    }
    match cli.command {
        Command::Serve(args) => match daemon::serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rpcbind-proxy: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Status(args) => ops::status::status(args),
        Command::Flush(args) => ops::flush::flush(args),
        Command::Check(args) => ops::check::check(args),
        Command::Query(args) => ops::query::query(args),
        Command::Intercept(args) => ops::intercept::intercept(args),
        Command::Top(args) => ops::top::top(args),
        Command::Generate(args) => ops::generate::main(args),
    }
}
