//! Answers that depend on the client's address family and address: through
//! the proxy's IPv6 listeners a client gets rpcbind's IPv6 answers (the
//! proxy uses its tcp6/udp6 upstreams), and a client on another loopback
//! address gets the answer rpcbind gives that address (the proxy passes it
//! as the r_addr hint). Each call goes to rpcbind and to the proxy, twice,
//! and the reply bytes after the XID must be equal.

mod support;

use std::net::SocketAddr;

use support::*;

const V6_LISTEN: [&str; 4] = ["--listen", "tcp:[::1]:1111", "--listen", "udp:[::1]:1111"];

fn sockaddr_in6_loopback(port: u16) -> Vec<u8> {
    let mut sa = vec![10, 0]; // AF_INET6, host order
    sa.extend_from_slice(&port.to_be_bytes());
    sa.extend_from_slice(&[0; 4]); // flowinfo
    sa.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    sa.extend_from_slice(&[0; 4]); // scope id
    sa
}

fn calls() -> Vec<(&'static str, Call)> {
    let rpcb = |vers, proc_, prog, pvers, netid: &str, addr: &str| {
        Call::rpcb(vers, proc_, rpcb_args(prog, pvers, netid, addr, ""))
    };
    vec![
        (
            "v3 GETADDR portmapper",
            rpcb(3, RPCBPROC_GETADDR, PMAP_PROG, 3, "tcp6", ""),
        ),
        (
            "v4 GETADDR 300001",
            rpcb(4, RPCBPROC_GETADDR, 300_001, 1, "tcp6", ""),
        ),
        (
            "v4 GETADDR 300001 hint",
            rpcb(4, RPCBPROC_GETADDR, 300_001, 1, "tcp6", "::1.1.2"),
        ),
        (
            "v4 GETVERSADDR 300001",
            rpcb(4, RPCBPROC_GETVERSADDR, 300_001, 1, "udp6", ""),
        ),
        (
            "v4 GETADDRLIST portmapper",
            rpcb(4, RPCBPROC_GETADDRLIST, PMAP_PROG, 4, "tcp6", ""),
        ),
        (
            "v4 GETADDR v4-only program",
            rpcb(4, RPCBPROC_GETADDR, 300_002, 1, "tcp", ""),
        ),
        (
            "UADDR2TADDR ::1.0.111",
            Call::rpcb(
                3,
                RPCBPROC_UADDR2TADDR,
                Xdr::new().string("::1.0.111").into_bytes(),
            ),
        ),
        (
            "TADDR2UADDR sockaddr_in6",
            Call::rpcb(
                3,
                RPCBPROC_TADDR2UADDR,
                Xdr::new()
                    .u32(28)
                    .opaque(&sockaddr_in6_loopback(111))
                    .into_bytes(),
            ),
        ),
        ("v4 DUMP", Call::rpcb(4, RPCBPROC_DUMP, vec![])),
        (
            "GETPORT portmapper",
            Call::new(
                PMAP_PROG,
                2,
                PMAPPROC_GETPORT,
                pmap_args(PMAP_PROG, 2, IPPROTO_TCP, 0),
            ),
        ),
    ]
}

async fn register(sb: &Sandbox) {
    assert!(sb.rpcbind_set(300_001, 1, "tcp6", "::.4.3").await);
    assert!(sb.rpcbind_set(300_001, 1, "udp6", "::.5.3").await);
    assert!(sb.rpcbind_set(300_001, 1, "tcp", "0.0.0.0.4.1").await);
    assert!(sb.rpcbind_set(300_002, 1, "tcp", "0.0.0.0.4.2").await);
}

/// Sends every call to both endpoints of each pair, twice; returns the
/// differences.
async fn compare(
    pairs: &[(&str, Endpoint, Endpoint)],
    connect: impl Fn(&Endpoint) -> Endpoint,
) -> Vec<String> {
    let mut problems = Vec::new();
    for pass in 1..=2 {
        for (name, call) in calls() {
            for (transport, direct, proxy) in pairs {
                let d = call_once(&connect(direct), &call.fresh()).await;
                let p = call_once(&connect(proxy), &call.fresh()).await;
                println!("[pass {pass}] {name:<28} {transport:<5} direct: {d}");
                if d != p || !d.is_success() {
                    problems.push(format!(
                        "[pass {pass}] {name} over {transport}: direct {d}, proxy {p}"
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn ipv6_clients_get_rpcbinds_ipv6_answers() {
    let opts = Options {
        proxy: false,
        ..Options::default()
    };
    run_with(opts, |mut sb| async move {
        register(&sb).await;
        sb.start_proxy(&V6_LISTEN).await.unwrap();
        let v6 = |port: u16| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let pairs = [
            (
                "tcp6",
                Endpoint::Tcp(v6(RPCBIND_PORT)),
                Endpoint::Tcp(v6(PROXY_PORT)),
            ),
            (
                "udp6",
                Endpoint::Udp(v6(RPCBIND_PORT)),
                Endpoint::Udp(v6(PROXY_PORT)),
            ),
        ];
        let problems = compare(&pairs, |e| e.clone()).await;
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    });
}

#[test]
fn a_client_on_another_loopback_address_gets_rpcbinds_answer_for_it() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        sb.start_proxy(&[]).await.unwrap();
        let mut problems = Vec::new();
        for (name, call) in calls() {
            for transport in [Transport::Tcp, Transport::Udp] {
                let d = call_from(&sb.endpoint(Target::Direct, transport), &call).await;
                let p = call_from(&sb.endpoint(Target::Proxy, transport), &call).await;
                println!("{name:<28} {transport:?} from 127.0.0.2, direct: {d}");
                if d != p {
                    problems.push(format!("{name} over {transport:?}: direct {d}, proxy {p}"));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    });
}

/// One call from 127.0.0.2 (not the proxy's own source address).
async fn call_from(ep: &Endpoint, call: &Call) -> Outcome {
    let local: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let call = call.fresh();
    let mut conn = match ep {
        Endpoint::Tcp(addr) => {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(local).unwrap();
            Conn::stream(sock.connect(*addr).await.unwrap())
        }
        Endpoint::Udp(addr) => {
            let sock = tokio::net::UdpSocket::bind(local).await.unwrap();
            sock.connect(addr).await.unwrap();
            Conn::Dgram(sock)
        }
        Endpoint::Unix(_) => unreachable!("address tests are TCP and UDP"),
    };
    conn.call(&call).await
}
