//! Integration tests of `host::netfilter` (the nf_tables owner table that
//! redirects port 111). Each test runs on its own thread inside a fresh
//! network namespace (`unshare(CLONE_NEWNET)` on that thread only), so the
//! machine's own ruleset is never touched. Must run as root: every test
//! panics otherwise, like the other integration tests.
//! Test 1 and the leftover-table test also need the `nft` binary (nftables).
//!
//! That a SIGKILLed owner loses its table is tested end to end with the real
//! daemon in tests/transparent.rs (`rpcbind-proxy serve --intercept`).

#[path = "support/host_fixtures.rs"]
mod host_fixtures;
use host_fixtures::nft;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use rpcbind_proxy::host::netfilter as nf;

use nf::{InterceptRules, InterceptTable, NetfilterError};

const TABLE: &str = "rpcbind_proxy";
const MARK: u32 = 0x5250;
const PROXY_PORT: u16 = 1111;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn rules() -> InterceptRules {
    host_fixtures::redirect_rules(TABLE, MARK, PROXY_PORT, true)
}

/// Taken shared by every test, and exclusively by the one that drops the
/// process's effective uid (see [`AsNobody`]): no other test runs while the
/// process is not root.
static CREDENTIALS: RwLock<()> = RwLock::new(());

/// Runs `f` on a new thread that first moves into a fresh network namespace
/// with `lo` up. Panics when not root.
fn in_netns<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    let _shared = CREDENTIALS.read().unwrap_or_else(PoisonError::into_inner);
    run_in_netns(name, f);
}

/// [`in_netns`] with no other test of this file running alongside.
fn in_netns_alone<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    let _exclusive = CREDENTIALS.write().unwrap_or_else(PoisonError::into_inner);
    run_in_netns(name, f);
}

fn run_in_netns<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    host_fixtures::in_netns(name, f);
}

/// The effective uid and gid of the whole process switched to nobody
/// (65534), which clears its effective capabilities; dropping the guard
/// switches back to root. The real and saved ids stay 0, so the switch can
/// be undone. glibc's set*id wrappers change every thread of the process, so
/// this is only used under [`in_netns_alone`].
struct AsNobody;

impl AsNobody {
    fn enter() -> Self {
        // Group first: once the uid is no longer 0 the gid cannot change.
        nix::unistd::setresgid(
            Gid::from_raw(u32::MAX),
            Gid::from_raw(65534),
            Gid::from_raw(u32::MAX),
        )
        .expect("setresgid");
        let guard = AsNobody;
        nix::unistd::setresuid(
            Uid::from_raw(u32::MAX),
            Uid::from_raw(65534),
            Uid::from_raw(u32::MAX),
        )
        .expect("setresuid");
        guard
    }
}

impl Drop for AsNobody {
    fn drop(&mut self) {
        // Back to euid 0 (the saved uid), which restores the effective
        // capabilities from the permitted set; then the gid.
        let uid = nix::unistd::setresuid(
            Uid::from_raw(u32::MAX),
            Uid::from_raw(0),
            Uid::from_raw(u32::MAX),
        );
        let gid = nix::unistd::setresgid(
            Gid::from_raw(u32::MAX),
            Gid::from_raw(0),
            Gid::from_raw(u32::MAX),
        );
        if !std::thread::panicking() {
            uid.expect("setresuid back to root");
            gid.expect("setresgid back to root");
        }
    }
}

fn table_gone_soon() -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if !nf::table_exists(TABLE).unwrap() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ipv6_loopback() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, IO_TIMEOUT)
}

/// A TCP connect to `ip`:111 lands on the listener at `ip`:PROXY_PORT.
fn check_tcp_redirect(listener: &TcpListener, ip: std::net::IpAddr) -> (TcpStream, TcpStream) {
    let mut c = connect(SocketAddr::new(ip, 111)).expect("connect to :111 (redirected)");
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut s, peer) = listener.accept().expect("accept redirected connection");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(peer, c.local_addr().unwrap());
    assert_eq!(
        c.peer_addr().unwrap().port(),
        111,
        "client still sees port 111"
    );
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    (c, s)
}

/// A datagram to `ip`:111 reaches the socket at `ip`:PROXY_PORT, and its
/// reply comes back from `ip`:111.
fn check_udp_redirect(server: &UdpSocket, ip: std::net::IpAddr) {
    let client = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.send_to(b"call", SocketAddr::new(ip, 111)).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("datagram redirected to the proxy port");
    assert_eq!(&buf[..n], b"call");
    assert_eq!(from, client.local_addr().unwrap());
    server.send_to(b"reply", from).unwrap();
    let (n, from) = client.recv_from(&mut buf).expect("reply");
    assert_eq!(&buf[..n], b"reply");
    assert_eq!(from, SocketAddr::new(ip, 111), "reply un-NATed to port 111");
}

/// TCP connect from a socket marked with SO_MARK before connecting.
fn connect_marked(mark: u32) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        nf::set_mark(sock.as_fd(), mark)?;
        sock.connect((Ipv4Addr::LOCALHOST, 111).into()).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[test]
fn install_creates_the_owner_table() {
    in_netns("install_creates_the_owner_table", || {
        let t = InterceptTable::install(&rules(), 0).unwrap();
        assert_eq!(t.rule_handles().len(), 4);

        // nft 1.0.6's JSON prints the owner flag wrongly ("flags": "<name>"),
        // so the flag is checked in the text listing.
        let text = nft(&["list", "table", "inet", TABLE]);
        assert!(text.contains("flags owner"), "{text}");

        let json: serde_json::Value =
            serde_json::from_str(&nft(&["-j", "list", "table", "inet", TABLE])).unwrap();
        let items = json["nftables"].as_array().unwrap();
        let chains: Vec<_> = items.iter().filter_map(|i| i.get("chain")).collect();
        assert_eq!(chains.len(), 1);
        let c = chains[0];
        assert_eq!(c["name"], "output");
        assert_eq!(c["hook"], "output");
        assert_eq!(c["prio"], -100);
        assert_eq!(c["type"], "nat");
        assert_eq!(c["policy"], "accept");

        let rules: Vec<_> = items.iter().filter_map(|i| i.get("rule")).collect();
        assert_eq!(rules.len(), 5, "{json}");
        // First: meta mark 0x5250 return.
        let e0 = rules[0]["expr"].as_array().unwrap();
        assert_eq!(e0[0]["match"]["left"]["meta"]["key"], "mark");
        assert_eq!(e0[0]["match"]["right"], u64::from(MARK));
        assert!(e0[1].get("return").is_some(), "{}", rules[0]);
        // Then one exact redirect rule per family x protocol.
        let expect = [
            ("ipv4 tcp", "ip", "127.0.0.1", "tcp"),
            ("ipv4 udp", "ip", "127.0.0.1", "udp"),
            ("ipv6 tcp", "ip6", "::1", "tcp"),
            ("ipv6 udp", "ip6", "::1", "udp"),
        ];
        for (r, (label, l3, addr, l4)) in rules[1..].iter().zip(expect) {
            assert_eq!(r["comment"], label, "{r}");
            let e = r["expr"].as_array().unwrap();
            assert_eq!(e[0]["match"]["left"]["payload"]["protocol"], l3, "{r}");
            assert_eq!(e[0]["match"]["left"]["payload"]["field"], "daddr");
            assert_eq!(e[0]["match"]["right"], addr);
            assert_eq!(e[1]["match"]["left"]["payload"]["protocol"], l4, "{r}");
            assert_eq!(e[1]["match"]["left"]["payload"]["field"], "dport");
            assert_eq!(e[1]["match"]["right"], 111);
            // TCP: only a connection's SYN (a pure SYN) is redirected.
            let e = if l4 == "tcp" {
                let flags = &e[2]["match"];
                assert_eq!(flags["op"], "==", "{r}");
                let and = flags["left"]["&"].as_array().unwrap();
                assert_eq!(and[0]["payload"]["protocol"], "tcp", "{r}");
                assert_eq!(and[0]["payload"]["field"], "flags", "{r}");
                assert_eq!(and[1], serde_json::json!(["fin", "syn", "rst", "ack"]));
                assert_eq!(flags["right"], "syn", "{r}");
                &e[1..]
            } else {
                e
            };
            assert!(e[2].get("counter").is_some(), "{r}");
            assert_eq!(e[3]["redirect"]["port"], PROXY_PORT, "{r}");
        }
        // The text form nft prints for such a rule (nfproto / l4proto
        // matches are implied, so the rule is exact).
        assert!(text.contains(
            "ip daddr 127.0.0.1 tcp dport 111 tcp flags syn / fin,syn,rst,ack counter packets 0 bytes 0 redirect to :1111 comment \"ipv4 tcp\""
        ));
        assert!(text.contains(
            "ip6 daddr ::1 udp dport 111 counter packets 0 bytes 0 redirect to :1111 comment \"ipv6 udp\""
        ));
    });
}

#[test]
fn redirects_tcp_and_udp_and_counts() {
    in_netns("redirects_tcp_and_udp_and_counts", || {
        let t = InterceptTable::install(&rules(), 0).unwrap();
        let mut ips: Vec<std::net::IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
        if ipv6_loopback() {
            ips.push(Ipv6Addr::LOCALHOST.into());
        } else {
            eprintln!("no ::1 in the namespace: IPv6 part skipped");
        }
        for ip in &ips {
            let l = TcpListener::bind((*ip, PROXY_PORT)).unwrap();
            let _conn = check_tcp_redirect(&l, *ip);
            let u = UdpSocket::bind((*ip, PROXY_PORT)).unwrap();
            u.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            check_udp_redirect(&u, *ip);
        }
        let counters = t.counters().unwrap();
        let labels: Vec<_> = counters.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["ipv4 tcp", "ipv4 udp", "ipv6 tcp", "ipv6 udp"]);
        for c in &counters {
            if c.label.starts_with("ipv4") || ips.len() == 2 {
                // NAT chains see the first packet of each flow only.
                assert!(c.packets >= 1 && c.bytes > 0, "{c:?}");
            }
        }
    });
}

#[test]
fn marked_socket_is_not_redirected() {
    in_netns("marked_socket_is_not_redirected", || {
        let _t = InterceptTable::install(&rules(), 0).unwrap();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT)).unwrap();
        let err = connect_marked(MARK).expect_err("nothing listens on 111");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        // Unmarked (or differently marked) traffic is still redirected.
        let _c = connect_marked(MARK + 1).expect("other mark: redirected to the listener");
        let _ = l.accept().unwrap();
    });
}

#[test]
fn second_install_fails_until_the_first_is_dropped() {
    in_netns("second_install_fails_until_the_first_is_dropped", || {
        let first = InterceptTable::install(&rules(), 0).unwrap();
        let err = InterceptTable::install(&rules(), 0)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, NetfilterError::TableExists { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "another rpcbind-proxy instance holds table inet rpcbind_proxy"
        );
        // The failed batch left nothing behind and the first table is intact.
        assert_eq!(first.counters().unwrap().len(), 4);
        drop(first);
        assert!(table_gone_soon(), "owner table still present after drop");
        if Command::new("nft").arg("--version").output().is_ok() {
            assert_eq!(nft(&["list", "tables"]).trim(), "");
        }
        let again = InterceptTable::install(&rules(), 0).unwrap();
        assert!(nf::table_exists(TABLE).unwrap());
        drop(again);
    });
}

#[test]
fn table_left_by_nft_is_reported() {
    in_netns("table_left_by_nft_is_reported", || {
        nft(&["add", "table", "inet", TABLE]);
        let err = InterceptTable::install(&rules(), 0)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, NetfilterError::TableLeftOver { .. }),
            "{err:?}"
        );
        nft(&["delete", "table", "inet", TABLE]);
        InterceptTable::install(&rules(), 0).unwrap();
    });
}

#[test]
fn stop_redirecting_keeps_established_flows() {
    in_netns("stop_redirecting_keeps_established_flows", || {
        let mut t = InterceptTable::install(&rules(), 0).unwrap();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT)).unwrap();
        let (mut c, mut s) = check_tcp_redirect(&l, Ipv4Addr::LOCALHOST.into());
        let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, PROXY_PORT)).unwrap();
        u.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let uc = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        uc.connect((Ipv4Addr::LOCALHOST, 111)).unwrap();
        uc.send(b"a").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(u.recv(&mut buf).unwrap(), 1);

        t.stop_redirecting().unwrap();
        t.stop_redirecting().unwrap(); // idempotent
        assert!(t.counters().unwrap().is_empty());
        let text_rules = t.rule_handles().len();
        assert_eq!(text_rules, 0);

        // New flows go straight to port 111, where nothing listens.
        let err = connect((Ipv4Addr::LOCALHOST, 111).into()).expect_err("not redirected any more");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        // The established connection keeps its NAT binding.
        for _ in 0..3 {
            c.write_all(b"more").unwrap();
            s.read_exact(&mut buf[..4]).unwrap();
            assert_eq!(&buf[..4], b"more");
            s.write_all(b"back").unwrap();
            c.read_exact(&mut buf[..4]).unwrap();
            assert_eq!(&buf[..4], b"back");
        }
        // So does the UDP flow (same 4-tuple, conntrack entry still alive).
        uc.send(b"b").unwrap();
        assert_eq!(
            u.recv(&mut buf).unwrap(),
            1,
            "existing UDP flow still redirected"
        );

        t.remove().unwrap();
        assert!(!nf::table_exists(TABLE).unwrap(), "remove() left the table");
    });
}

/// A connection made before the table exists is left alone: conntrack was
/// not tracking in the namespace then, so the connection's next segment is
/// picked up mid-stream as a NEW flow (loose TCP pickup) and traverses the
/// nat chain; only a pure SYN may be redirected, or that segment would land
/// on the proxy port and be answered with a reset.
#[test]
fn connection_open_before_install_is_not_redirected() {
    in_netns("connection_open_before_install_is_not_redirected", || {
        let orig = TcpListener::bind((Ipv4Addr::LOCALHOST, 111)).unwrap();
        let proxy = TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT)).unwrap();
        let mut c = connect((Ipv4Addr::LOCALHOST, 111).into()).expect("connect to :111");
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (mut s, _) = orig.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();

        let _t = InterceptTable::install(&rules(), 0).unwrap();
        let mut buf = [0u8; 4];
        for _ in 0..3 {
            c.write_all(b"ping").unwrap();
            let r = s.read_exact(&mut buf);
            assert!(r.is_ok(), "the original listener got no data: {r:?}");
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").unwrap();
            let r = c.read_exact(&mut buf);
            assert!(r.is_ok(), "old connection after install: {r:?}");
            assert_eq!(&buf, b"pong");
        }
        // A connection made after the install is still redirected.
        let _new = check_tcp_redirect(&proxy, Ipv4Addr::LOCALHOST.into());
    });
}

/// What the kernel does to a redirected flow when the table goes away: with
/// no nat chain left the flow's packets are no longer NATed, so the client's
/// next segment reaches port 111 unmapped and is answered with a reset.
#[test]
fn remove_affects_established_flows() {
    in_netns("remove_affects_established_flows", || {
        let t = InterceptTable::install(&rules(), 0).unwrap();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT)).unwrap();
        let (mut c, mut s) = check_tcp_redirect(&l, Ipv4Addr::LOCALHOST.into());
        t.remove().unwrap();
        let w = c.write_all(b"after");
        let mut buf = [0u8; 5];
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let r = s.read(&mut buf);
        let mut cb = [0u8; 1];
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let cr = c.read(&mut cb);
        eprintln!("after remove(): client write {w:?}, server read {r:?}, client read {cr:?}");
        // The segment went out un-NATed to 127.0.0.1:111 (no listener): the
        // proxy side never sees it and the client gets a reset.
        assert!(
            !matches!(r, Ok(n) if n > 0),
            "data still reached the proxy: {r:?}"
        );
        assert!(
            matches!(&cr, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "client read after remove(): {cr:?}"
        );
    });
}

#[test]
fn unprivileged_install_is_denied() {
    // The switch to nobody is process-wide, so no other test may run.
    in_netns_alone("unprivileged_install_is_denied", || {
        // All effective capabilities go with euid 0.
        let _nobody = AsNobody::enter();
        let err = InterceptTable::install(&rules(), 0)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, NetfilterError::PermissionDenied), "{err:?}");
        assert_eq!(
            err.to_string(),
            "not permitted to change nf_tables: needs CAP_NET_ADMIN in this network namespace"
        );
        // SO_MARK needs CAP_NET_ADMIN too.
        let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let e = nf::set_mark(u.as_fd(), MARK).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::EPERM as i32));
    });
}
