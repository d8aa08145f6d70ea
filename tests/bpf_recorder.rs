//! The eBPF recorder on the real kernel: a socket connected to a watched
//! port is found by its cookie (from sock_diag) with this process's pid,
//! uid, command and cgroup, and by its own address (the TCP fast path); a
//! datagram's source port names its socket's cookie.

use std::net::{TcpListener, TcpStream, UdpSocket};

mod support;

use rpcbind_proxy::host::bpf::Recorder;
use rpcbind_proxy::host::sockdiag::{Proto, SockDiag};
use support::ebpf_expected;

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
            assert!(!ebpf_expected(), "the eBPF recorder should load here: {e}");
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
    assert_eq!(owner.uid, 0);
    // The fast path: the same cookie by the client's address alone.
    if rec.notes_tcp_clients() {
        assert_eq!(
            rec.tcp_client(client.local_addr().unwrap()),
            Some(sock.cookie)
        );
        let other = TcpStream::connect(server).unwrap();
        assert_ne!(
            rec.tcp_client(other.local_addr().unwrap()),
            Some(sock.cookie)
        );
    } else {
        println!("the TCP fast path is not loaded here (Linux 5.15 needed): not checked");
    }
}

#[test]
fn a_datagram_names_its_socket_and_its_source_port() {
    let root = rpcbind_proxy::host::cgroup::cgroup2_mountpoint()
        .unwrap()
        .expect("a cgroup2 hierarchy");
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = server.local_addr().unwrap();
    let rec = match Recorder::load(&root, &[to.port()]) {
        Ok(r) => r,
        Err(e) => {
            assert!(!ebpf_expected(), "the eBPF recorder should load here: {e}");
            println!("skipped: the eBPF recorder cannot load here: {e}");
            return;
        }
    };
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = client.local_addr().unwrap();
    assert_eq!(rec.udp_sender(from), None, "nothing sent yet");
    client.send_to(b"x", to).unwrap();
    let diag = SockDiag::open().unwrap();
    let sock = diag
        .peer_socket(Proto::Udp, from, to)
        .unwrap()
        .expect("the client's socket");
    assert_eq!(rec.udp_sender(from), Some(sock.cookie));
    assert_eq!(
        rec.owner(sock.cookie).map(|o| o.pid),
        Some(std::process::id())
    );
}
