//! The eBPF recorder on the real kernel: a socket connected to a watched
//! port is found by its cookie (from sock_diag) with this process's pid,
//! uid, command and cgroup.

use std::net::{TcpListener, TcpStream};

use rpcbind_proxy::host::bpf::Recorder;
use rpcbind_proxy::host::sockdiag::{Proto, SockDiag};

#[test]
fn a_connected_socket_is_found_by_its_cookie() {
    let root = rpcbind_proxy::host::cgroup::cgroup2_mountpoint()
        .unwrap()
        .expect("a cgroup2 hierarchy");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let rec = match Recorder::load(&root, &[server.port()]) {
        Ok(r) => r,
        Err(e) => {
            println!("skipped: the eBPF recorder cannot load here: {e}");
            return;
        }
    };
    let client = TcpStream::connect(server).unwrap();
    let diag = SockDiag::open().unwrap();
    let sock = diag
        .peer_socket(Proto::Tcp, client.local_addr().unwrap(), server)
        .unwrap()
        .expect("the client's socket");
    let owner = rec.owner(sock.cookie).expect("recorded");
    assert_eq!(owner.pid, std::process::id());
    println!("{owner:?} {:?}", owner.command());
}
