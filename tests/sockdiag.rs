//! Integration tests of `host::sockdiag` (NETLINK_SOCK_DIAG lookups) and
//! `host::cgroup` (cgroup id → path → unit, socket → pid). Each test runs on
//! its own thread inside a fresh network namespace with `lo` up; the cgroup
//! tests also create a private cgroup `rbp-test-<pid>-<n>/hammer.service`
//! under the machine's cgroup2 mount (found in /proc/self/mountinfo) and
//! remove it afterwards. Must run as root. Client processes that must not be
//! root are started with `setpriv` (util-linux) and use bash's /dev/tcp and
//! /dev/udp. A machine without a writable cgroup2 hierarchy fails the
//! cgroup tests (CI machines have one).
//!
//! The cost figures (10,000 unrelated sockets open, the whole naming chain)
//! are `cargo bench --bench attribution` (benches/attribution.rs).

#[path = "support/host_fixtures.rs"]
mod host_fixtures;
use host_fixtures::*;
use std::io::Read;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use rpcbind_proxy::host::cgroup;
use rpcbind_proxy::host::netfilter::{InterceptRules, InterceptTable, Redirect};
use rpcbind_proxy::host::sockdiag::{self, PeerSocket, Proto};

const PROXY_PORT: u16 = 1111;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn ipv6_loopback() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// The socket inode behind /proc/PID/fd/FD.
fn fd_inode(pid: u32, fd: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("readlink fd");
    let s = link.to_str().unwrap();
    s.strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("/proc/{pid}/fd/{fd} is {s}, not a socket"))
        .parse()
        .unwrap()
}

fn lookup(proto: Proto, client: SocketAddr, server: SocketAddr) -> Option<PeerSocket> {
    sockdiag::peer_socket(proto, client, server).expect("peer_socket")
}

// --- TCP and UDP lookups by the test process itself ---

fn tcp_lookup_case(ip: &str) {
    let listener = TcpListener::bind(format!("{ip}:0")).unwrap();
    let server = listener.local_addr().unwrap();
    let client = TcpStream::connect(server).unwrap();
    let (accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());

    let found = lookup(Proto::Tcp, peer, server).expect("the client's socket");
    assert_eq!(found.inode, own_inode(&client), "the client's inode");
    assert_eq!(found.uid, 0);
    assert_eq!((found.local, found.remote), (peer, server));
    let cg = found.cgroup_id.expect("INET_DIAG_CGROUP_ID (Linux >= 5.7)");
    // This process's own cgroup (the tests run in it): the id names it.
    let mine = cgroup::process_cgroup(std::process::id()).unwrap().unwrap();
    assert_eq!(
        cgroup::cgroup_path_by_id(cg).unwrap().as_deref(),
        Some(&*mine)
    );

    // The tuple the other way round is the accepted (server) socket.
    let server_side = lookup(Proto::Tcp, server, peer).expect("the accepted socket");
    assert_eq!(server_side.inode, own_inode(&accepted));
    assert_ne!(server_side.inode, found.inode);
    // Anything else is not found; a listener on the port is not a match.
    let elsewhere = SocketAddr::new(server.ip(), server.port().wrapping_add(1));
    assert_eq!(lookup(Proto::Tcp, peer, elsewhere), None);
    assert_eq!(lookup(Proto::Tcp, server, elsewhere), None, "listener");

    // Client closes first: its socket is TIME_WAIT, with no owner to name.
    drop(client);
    let mut accepted = accepted;
    let mut b = [0u8; 1];
    assert_eq!(accepted.read(&mut b).unwrap(), 0);
    drop(accepted);
    assert_eq!(lookup(Proto::Tcp, peer, server), None, "after close");
}

#[test]
fn tcp_client_socket_found_by_its_4_tuple() {
    in_netns("tcp lookup", || {
        tcp_lookup_case("127.0.0.1");
        if ipv6_loopback() {
            tcp_lookup_case("[::1]");
        } else {
            eprintln!("no IPv6 loopback: IPv6 case skipped");
        }
    });
}

#[test]
fn udp_client_socket_found_connected_or_not() {
    in_netns("udp lookup", || {
        for ip in ["127.0.0.1", "[::1]"] {
            if ip.starts_with('[') && !ipv6_loopback() {
                continue;
            }
            let server = UdpSocket::bind(format!("{ip}:0")).unwrap();
            server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let saddr = server.local_addr().unwrap();
            let mut buf = [0u8; 8];

            let unconnected = UdpSocket::bind(format!("{ip}:0")).unwrap();
            unconnected.send_to(b"x", saddr).unwrap();
            let (_, from) = server.recv_from(&mut buf).unwrap();
            let found = lookup(Proto::Udp, from, saddr).expect("unconnected client");
            assert_eq!(found.inode, own_inode(&unconnected));
            assert_eq!(found.remote.port(), 0, "unconnected");
            assert!(found.cgroup_id.is_some());
            // Wrong client port: nothing.
            let wrong = SocketAddr::new(from.ip(), from.port().wrapping_add(1));
            assert_eq!(lookup(Proto::Udp, wrong, saddr), None);

            let connected = UdpSocket::bind(format!("{ip}:0")).unwrap();
            connected.connect(saddr).unwrap();
            connected.send(b"y").unwrap();
            let (_, from) = server.recv_from(&mut buf).unwrap();
            let found = lookup(Proto::Udp, from, saddr).expect("connected client");
            assert_eq!(found.inode, own_inode(&connected));
            assert_eq!(found.remote, saddr);
            // Connected elsewhere than the server we name: not a match.
            let other = SocketAddr::new(saddr.ip(), saddr.port().wrapping_add(1));
            assert_eq!(lookup(Proto::Udp, from, other), None);

            // A wildcard-bound client is found from its loopback address.
            let any = if ip.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let wild = UdpSocket::bind(any).unwrap();
            wild.send_to(b"z", saddr).unwrap();
            let (_, from) = server.recv_from(&mut buf).unwrap();
            let found = lookup(Proto::Udp, from, saddr).expect("wildcard-bound client");
            assert_eq!(found.inode, own_inode(&wild));
            drop(wild);
            assert_eq!(lookup(Proto::Udp, from, saddr), None, "after close");
        }
    });
}

// --- a client process as nobody in its own cgroup ---

#[test]
fn nobody_client_named_by_uid_inode_cgroup_unit_pid_and_command() {
    in_netns("nobody client", || {
        let cg = TestCgroup::create();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (tcp_addr, udp_addr) = (listener.local_addr().unwrap(), udp.local_addr().unwrap());
        let mut buf = [0u8; 8];
        // Two clients in the cgroup, one after the other (their connections
        // are accepted in that order).
        let mut clients = Vec::new();
        for _ in 0..2 {
            let client = NobodyClient::start(&cg, tcp_addr, udp_addr);
            let (conn, peer) = listener.accept().unwrap();
            let (_, from) = udp.recv_from(&mut buf).unwrap();
            clients.push((client, conn, peer, from));
        }
        let procs: Vec<u32> = std::fs::read_to_string(cg.leaf.join("cgroup.procs"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(procs.len(), 2, "cgroup.procs: {procs:?}");

        for (client, _conn, peer, from) in &clients {
            let pid = client.pid();
            let at = procs.iter().position(|&p| p == pid).unwrap();
            for (proto, client_addr, server, fd) in [
                (Proto::Tcp, *peer, tcp_addr, 3),
                (Proto::Udp, *from, udp_addr, 4),
            ] {
                let s = lookup(proto, client_addr, server).expect("client socket");
                assert_eq!(s.uid, NOBODY, "{proto:?} uid");
                assert_eq!(s.inode, fd_inode(pid, fd), "{proto:?} inode");
                let id = s.cgroup_id.expect("cgroup id");
                assert_eq!(id, cg.id(), "{proto:?} cgroup id");
                let path = cgroup::cgroup_path_by_id(id).unwrap();
                assert_eq!(path.as_deref(), Some(cg.path.as_str()));
                assert_eq!(cgroup::unit_of(&cg.path).as_deref(), Some("hammer.service"));
                assert_eq!(
                    cgroup::pid_of_socket(&cg.path, s.inode, 64),
                    Some(pid),
                    "{proto:?} pid"
                );
                // Only the first `max_procs` pids of cgroup.procs are looked at.
                assert_eq!(cgroup::pid_of_socket(&cg.path, s.inode, at + 1), Some(pid));
                assert_eq!(cgroup::pid_of_socket(&cg.path, s.inode, at), None, "bound");
                // Another inode: not a guess.
                assert_eq!(
                    cgroup::pid_of_socket(&cg.path, s.inode + 1_000_000, 64),
                    None
                );
                // This process is not in that cgroup, though it holds sockets.
                assert_eq!(cgroup::pid_of_socket("/", s.inode, 1), None);
            }
            assert_eq!(cgroup::command(pid).as_deref(), Some("bash"));
            assert_eq!(
                cgroup::process_cgroup(pid).unwrap().as_deref(),
                Some(cg.path.as_str())
            );
        }
        let (client, ..) = clients.pop().unwrap();
        let (first, ..) = clients.pop().unwrap();
        first.finish();
        let pid = client.pid();
        let id = cg.id();
        client.finish();
        assert_eq!(cgroup::command(pid), None, "process gone");
        assert_eq!(cgroup::process_cgroup(pid).unwrap(), None);
        drop(cg);
        assert_eq!(
            cgroup::cgroup_path_by_id(id).unwrap(),
            None,
            "cgroup removed"
        );
        assert_eq!(cgroup::cgroup_path_by_id(u64::MAX).unwrap(), None);
    });
}

// --- transparent mode: nftables redirect of :111 to the proxy port ---

fn intercept() -> InterceptTable {
    let r = Redirect {
        tcp_port: PROXY_PORT,
        udp_port: PROXY_PORT,
    };
    InterceptTable::install(
        &InterceptRules {
            table: "rpcbind_proxy".into(),
            mark: 0x5250,
            ipv4: Some(r),
            ipv6: ipv6_loopback().then_some(r),
            remote: None,
            outbound: None,
        },
        0,
    )
    .expect("install the redirect table")
}

#[test]
fn redirected_clients_found_through_the_original_destination() {
    in_netns("redirect", || {
        // Before any NAT exists in this namespace conntrack is not even
        // active: no original destination.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (s, _) = plain.accept().unwrap();
        assert_eq!(sockdiag::original_destination(s.as_fd()).unwrap(), None);

        let _table = intercept();
        let mut ips = vec!["127.0.0.1"];
        if ipv6_loopback() {
            ips.push("[::1]");
        }
        for ip in ips {
            let listener = TcpListener::bind(format!("{ip}:{PROXY_PORT}")).unwrap();
            let proxy = listener.local_addr().unwrap();
            let rpcbind: SocketAddr = format!("{ip}:111").parse().unwrap();

            let client = TcpStream::connect_timeout(&rpcbind, IO_TIMEOUT).expect("redirected");
            let (accepted, peer) = listener.accept().unwrap();
            let orig = sockdiag::original_destination(accepted.as_fd()).unwrap();
            assert_eq!(orig, Some(rpcbind), "{ip}: original destination");
            let found = lookup(Proto::Tcp, peer, rpcbind).expect("client via original dst");
            assert_eq!(found.inode, own_inode(&client));
            assert_eq!(found.remote, rpcbind);
            // The proxy's own address is not what the client's socket holds.
            assert_eq!(
                lookup(Proto::Tcp, peer, proxy),
                None,
                "{ip}: via proxy addr"
            );

            // A direct (tracked, not redirected) connection: its own address.
            let direct = TcpStream::connect(proxy).unwrap();
            let (accepted, peer) = listener.accept().unwrap();
            assert_eq!(
                sockdiag::original_destination(accepted.as_fd()).unwrap(),
                Some(proxy)
            );
            assert_eq!(
                lookup(Proto::Tcp, peer, proxy).map(|s| s.inode),
                Some(own_inode(&direct))
            );

            // UDP: SO_ORIGINAL_DST is TCP only.
            let server = UdpSocket::bind(format!("{ip}:{PROXY_PORT}")).unwrap();
            server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            assert_eq!(
                sockdiag::original_destination(server.as_fd()).unwrap(),
                None
            );
            let mut buf = [0u8; 8];
            let unconnected = UdpSocket::bind(format!("{ip}:0")).unwrap();
            unconnected.send_to(b"x", rpcbind).unwrap();
            let (_, from) = server.recv_from(&mut buf).expect("redirected datagram");
            let found = lookup(Proto::Udp, from, rpcbind).expect("unconnected via :111");
            assert_eq!(found.inode, own_inode(&unconnected));
            // Unconnected: the server address does not matter.
            assert_eq!(
                lookup(Proto::Udp, from, proxy).map(|s| s.inode),
                Some(found.inode)
            );

            let connected = UdpSocket::bind(format!("{ip}:0")).unwrap();
            connected.connect(rpcbind).unwrap();
            connected.send(b"y").unwrap();
            let (_, from) = server.recv_from(&mut buf).expect("redirected datagram");
            let found = lookup(Proto::Udp, from, rpcbind).expect("connected via :111");
            assert_eq!(found.inode, own_inode(&connected));
            assert_eq!(found.remote, rpcbind);
            assert_eq!(
                lookup(Proto::Udp, from, proxy),
                None,
                "connected, via proxy addr"
            );
            let _ = client.peer_addr();
        }
    });
}

// --- TIME_WAIT counts ---

#[test]
fn time_wait_counted_per_port_like_proc_net_tcp() {
    in_netns("time_wait", || {
        const N: usize = 25;
        const M: usize = 7;
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        let none = sockdiag::count_time_wait(&[pa, pb]).unwrap();
        assert_eq!((none.get(pa), none.get(pb), none.total()), (0, 0, 0));

        // Clients close first: TIME_WAIT on the client side (remote port pa).
        one_shots(&a, N, true);
        // Server closes first: TIME_WAIT on the server side (local port pb).
        one_shots(&b, M, false);
        let mut want_a = N as u64;
        let mut v6 = None;
        if ipv6_loopback() {
            let l6 = TcpListener::bind("[::1]:0").unwrap();
            let p6 = l6.local_addr().unwrap().port();
            one_shots(&l6, 3, true);
            settle(p6, 3);
            v6 = Some(p6);
            // An IPv6 listener on port pa too: counted for pa as well.
            if let Ok(l6a) = TcpListener::bind(("::1", pa)) {
                one_shots(&l6a, 2, true);
                want_a += 2;
            }
        }
        settle(pa, want_a);
        settle(pb, M as u64);
        // An established connection is not TIME_WAIT.
        let _open = TcpStream::connect(a.local_addr().unwrap()).unwrap();
        let _acc = a.accept().unwrap();

        let c = sockdiag::count_time_wait(&[pa]).unwrap();
        assert_eq!(c.get(pa), want_a);
        // The kernel's filters sent nothing else: not the established
        // connection on pa (state), not the TIME_WAIT on pb (port).
        assert_eq!(c.received(), c.total());
        assert_eq!(c.get(pa), proc_time_wait(pa));
        assert_eq!(c.get(pb), 0, "not asked for");
        let c = sockdiag::count_time_wait(&[pb, pa, pb]).unwrap();
        let mut expect = [(pa, want_a), (pb, M as u64)];
        expect.sort_unstable();
        assert_eq!(c.per_port(), &expect[..], "ascending, duplicates merged");
        assert_eq!(c.total(), want_a + M as u64);
        assert_eq!(c.get(pb), proc_time_wait(pb));
        if let Some(p6) = v6 {
            assert_eq!(sockdiag::count_time_wait(&[p6]).unwrap().get(p6), 3);
        }
        // A port nobody used, and no ports at all.
        let unused = (1..u16::MAX)
            .find(|p| ![pa, pb].contains(p) && proc_time_wait(*p) == 0)
            .unwrap();
        assert_eq!(sockdiag::count_time_wait(&[unused]).unwrap().get(unused), 0);
        assert_eq!(sockdiag::count_time_wait(&[]).unwrap().total(), 0);
        let too_many: Vec<u16> = (1..=2000).collect();
        assert!(sockdiag::count_time_wait(&too_many).is_err());
    });
}
