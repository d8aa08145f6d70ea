//! The client side (`--intercept-outbound`): this host's TCP lookups at
//! another host's rpcbind go through the local proxy, which sends them over
//! one persistent connection and resets the client: no TIME_WAIT and no
//! reserved port held here per lookup, and answers identical to the
//! server's.
//!
//! The sandbox is the client host (its rpcbind and the proxy); the server
//! is client namespace 1 of `support::topology` running an rpcbind of its
//! own, called at 169.254.1.2 and fd51:1::2. Every comparison is of the
//! same call from the sandbox, once with no proxy and once through it, and
//! each check that the proxy carried the calls reads its own counters (a
//! comparison of two answers both given straight by the server would prove
//! nothing).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::topology::{call_from, client_addrs, Client};
use support::*;

/// Bound on every wait for sockets to settle.
const WAIT: Duration = Duration::from_secs(60);
/// One-shot lookups of the TIME_WAIT check.
const ONE_SHOT: usize = 1_000;
/// One-shot lookups made straight to the server, the contrast.
const DIRECT: usize = 100;
/// The client side's port on loopback (the daemon's own).
const OUTBOUND_PORT: u16 = 1113;

/// The server's addresses as the sandbox calls them (IPv4, IPv6).
fn server_addrs() -> Vec<SocketAddr> {
    client_addrs(1)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, RPCBIND_PORT))
        .collect()
}

/// Calls whose answers do not change from one moment to the next (not
/// GETTIME), of every version, lookups and DUMPs.
fn calls() -> Vec<(String, Call)> {
    let mut out = vec![
        ("v2 NULL".to_string(), Call::rpcb(2, 0, vec![])),
        ("v2 GETPORT 100000 tcp".into(), getport_call(PMAP_PROG)),
        (
            "v2 GETPORT unknown".into(),
            Call::rpcb(2, 3, pmap_args(400_001, 1, 6, 0)),
        ),
        ("v2 DUMP".into(), Call::rpcb(2, 4, vec![])),
    ];
    for vers in [3, 4] {
        out.push((format!("v{vers} DUMP"), Call::rpcb(vers, 4, vec![])));
        for netid in ["tcp", "udp", "tcp6", "udp6", "local"] {
            out.push((
                format!("v{vers} GETADDR 100000 {netid}"),
                Call::rpcb(vers, 3, rpcb_args(PMAP_PROG, vers, netid, "", "")),
            ));
        }
    }
    out.push((
        "v4 GETVERSADDR 100000 tcp".into(),
        Call::rpcb(4, 9, rpcb_args(PMAP_PROG, 4, "tcp", "", "")),
    ));
    out.push((
        "v4 GETADDRLIST 100000".into(),
        Call::rpcb(4, 11, rpcb_args(PMAP_PROG, 4, "tcp", "", "")),
    ));
    out
}

/// Each call of [`calls`] to each server address, from a fresh TCP
/// socket: (what, answer bytes after the XID).
async fn answers() -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    for server in server_addrs() {
        for (what, call) in calls() {
            let outcome = call_from(server, Transport::Tcp, false, &call).await;
            out.push((format!("{what} at {server}"), outcome));
        }
    }
    out
}

/// TCP connections established to the server's port 111, as the server
/// sees them.
fn server_connections(server: &Client) -> usize {
    tcp_sockets_of(server.pid())
        .iter()
        .filter(|s| s.state == TCP_ESTABLISHED && s.local_port == RPCBIND_PORT)
        .count()
}

/// The other host with its rpcbind, and the proxy with the client side
/// on.
async fn server_and_proxy(sb: &mut Sandbox) -> Client {
    let mut server = Client::attach(sb, 1).await;
    server.start_rpcbind().await;
    sb.start_proxy(&["--intercept-outbound"])
        .await
        .expect("starting the proxy with the client side");
    server
}

/// `count` one-shot GETPORT lookups at the server from fresh sockets,
/// every other one from a reserved port (as a root mount does); all must
/// be answered.
async fn one_shot_lookups(count: usize) {
    let servers = server_addrs();
    for i in 0..count {
        let server = servers[i % servers.len()];
        let outcome = call_from(server, Transport::Tcp, i % 2 == 1, &getport_call(PMAP_PROG)).await;
        assert!(outcome.is_success(), "lookup {i} at {server}: {outcome:?}");
    }
}

#[test]
fn another_hosts_rpcbind_answers_through_the_proxy_as_it_answers_directly() {
    run_without_proxy(|mut sb| async move {
        let mut server = Client::attach(&sb, 1).await;
        server.start_rpcbind().await;
        let direct = answers().await;
        for (what, outcome) in &direct {
            assert!(
                matches!(outcome, Outcome::Reply(_)),
                "{what} directly: {outcome:?}"
            );
        }
        let rpcinfo_direct = sb.run_in_ns(&["rpcinfo", "-p", "169.254.1.2"]).await;
        assert!(rpcinfo_direct.status.success(), "rpcinfo -p directly");

        sb.start_proxy(&["--intercept-outbound"])
            .await
            .expect("starting the proxy with the client side");
        let through = answers().await;
        assert_eq!(direct.len(), through.len());
        for ((what, d), (_, t)) in direct.iter().zip(&through) {
            assert_eq!(
                d, t,
                "{what}: through the proxy, not what the server answers"
            );
        }
        let rpcinfo = sb.run_in_ns(&["rpcinfo", "-p", "169.254.1.2"]).await;
        assert_eq!(
            String::from_utf8_lossy(&rpcinfo.stdout),
            String::from_utf8_lossy(&rpcinfo_direct.stdout),
            "rpcinfo -p through the proxy"
        );
        // The proxy carried every one of them (and rpcinfo's).
        let carried = sb.status_number("/outbound/calls").await;
        assert!(
            carried > direct.len() as u64,
            "the proxy carried {carried} calls of {} and rpcinfo's",
            direct.len()
        );
        assert_eq!(sb.status_number("/outbound/failures").await, 0);
        // Over one connection per source address (IPv4, IPv6).
        assert_eq!(sb.status_number("/outbound/servers").await, 2);
        assert!(server_connections(&server) <= 2);
    });
}

#[test]
fn one_shot_lookups_at_another_host_leave_no_time_wait_here() {
    run_without_proxy(|mut sb| async move {
        let server = server_and_proxy(&mut sb).await;
        one_shot_lookups(ONE_SHOT).await;
        sb.wait_tcp_settled(Some(RPCBIND_PORT), WAIT)
            .await
            .expect("sockets settle");
        let through = sb.time_wait_count(Some(RPCBIND_PORT));
        let carried = sb.status_number("/outbound/clients").await;
        assert_eq!(carried, ONE_SHOT as u64, "clients the proxy carried");
        assert_eq!(
            through, 0,
            "TIME_WAIT here after {ONE_SHOT} lookups through the proxy"
        );
        assert!(
            server_connections(&server) <= 2,
            "the server holds {} connections",
            server_connections(&server)
        );

        // The contrast: the same lookups straight to the server, each
        // leaving a TIME_WAIT here.
        assert_eq!(sb.stop_proxy().await.as_deref(), Some("exit code 0"));
        one_shot_lookups(DIRECT).await;
        sb.wait_tcp_settled(Some(RPCBIND_PORT), WAIT)
            .await
            .expect("sockets settle");
        assert!(
            sb.time_wait_count(Some(RPCBIND_PORT)) >= DIRECT,
            "{DIRECT} direct lookups leave a TIME_WAIT each"
        );
    });
}

#[test]
fn a_killed_proxy_leaves_lookups_at_other_hosts_to_go_straight() {
    run_without_proxy(|mut sb| async move {
        let _server = server_and_proxy(&mut sb).await;
        one_shot_lookups(4).await;
        assert_eq!(sb.status_number("/outbound/clients").await, 4);
        sb.kill_proxy().await;
        assert!(
            !sb.intercept_table_exists(),
            "the table died with the proxy"
        );
        one_shot_lookups(4).await;
    });
}

#[test]
fn a_connection_made_to_the_client_sides_port_itself_is_closed_unanswered() {
    run_without_proxy(|mut sb| async move {
        sb.start_proxy(&["--intercept-outbound"])
            .await
            .expect("starting the proxy with the client side");
        let port: SocketAddr = (IpAddr::from([127, 0, 0, 1]), OUTBOUND_PORT).into();
        let outcome = call_from(port, Transport::Tcp, false, &getport_call(PMAP_PROG)).await;
        assert!(
            !matches!(outcome, Outcome::Reply(_)),
            "a connection straight to {port} was answered: {outcome:?}"
        );
        assert_eq!(sb.status_number("/outbound/strays").await, 1);
        // This host's own rpcbind is not another host's: answered by it,
        // not caught.
        let local = call_from(
            sb.rpcbind_tcp(),
            Transport::Tcp,
            false,
            &getport_call(PMAP_PROG),
        )
        .await;
        assert!(local.is_success(), "127.0.0.1:111: {local:?}");
        assert_eq!(sb.status_number("/outbound/clients").await, 0);
        assert_eq!(sb.status_number("/outbound/strays").await, 1);
    });
}
