//! Server mode (`--intercept-remote`): the proxy serves port 111 of the
//! NFS server for the network, and a client on another host sees exactly
//! what rpcbind would have told it.
//!
//! The sandbox is the server; client hosts are network namespaces of their
//! own, each joined to it by a veth pair (`support::topology`): client 1 on
//! the server's interface s1 (169.254.1.1, fd51:1::1), client 2 on s2
//! (169.254.2.1, fd51:2::1), client 3 on s3, which the proxy is not told
//! about. Every comparison is of the same call from the same client to the
//! same server address, made once with no proxy (rpcbind answers) and once
//! with the proxy in server mode (`--intercept-remote --remote-interface s1
//! --remote-interface s2`), and every check that the proxy answered reads
//! its own counters (requests, its table's rules' flows): a comparison of
//! two answers both given by rpcbind would prove nothing.
//!
//! Where the proxy deliberately answers otherwise, the test says what it
//! owes instead: a UDP reply to another host larger than
//! `--remote-udp-amplification` times the call is what rpcbind sends for a
//! reply too large for a datagram (the differential runs with the default
//! bound and with one no reply reaches, where every byte is rpcbind's).

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::topology::{call_and_source, call_from, server_addrs, server_interface, Client};
use support::*;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Bound on every wait for an event (a socket settling, a batch of calls).
const WAIT: Duration = Duration::from_secs(60);
/// Calls in flight at once from one client.
const CONCURRENCY: usize = 32;
/// The links whose interfaces the proxy is told to serve.
const SERVED_LINKS: [u8; 2] = [1, 2];
/// A link the proxy is not told about.
const UNSERVED_LINK: u8 = 3;
/// auth_stat of an AUTH_ERROR reply: the credential is too weak.
const AUTH_TOOWEAK: u32 = 5;
/// One-shot lookups of the TIME_WAIT check.
const ONE_SHOT: usize = 300;

/// rpcbind's registrations for the comparisons: wildcard ones on every
/// inet netid (answered with an address chosen per caller), specific ones,
/// a local one.
const REGISTRATIONS: &[(u32, u32, &str, &str)] = &[
    (300_001, 1, "tcp", "0.0.0.0.8.1"),
    (300_001, 1, "udp", "0.0.0.0.8.2"),
    (300_001, 1, "tcp6", "::.8.1"),
    (300_001, 1, "udp6", "::.8.2"),
    (300_001, 1, "local", "/run/p1.sock"),
    (300_001, 3, "tcp", "0.0.0.0.8.5"),
    (300_002, 1, "tcp", "169.254.1.1.8.3"),
    (300_002, 1, "tcp6", "fd51:1::1.8.3"),
    (300_003, 2, "udp", "127.0.0.1.8.4"),
    (300_004, 1, "tcp6", "::.8.6"),
];

/// The proxy's arguments for server mode on the served links.
fn server_mode_args() -> Vec<String> {
    let mut args = vec!["--intercept-remote".to_string()];
    for n in SERVED_LINKS {
        args.push("--remote-interface".into());
        args.push(server_interface(n));
    }
    args
}

/// Starts the proxy in server mode (see [`server_mode_args`]).
async fn start_server_mode(sb: &mut Sandbox) {
    start_server_mode_with(sb, &[]).await;
}

/// Starts the proxy in server mode with `extra` arguments.
async fn start_server_mode_with(sb: &mut Sandbox, extra: &[&str]) {
    let args = server_mode_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    if let Err(e) = sb.start_proxy(&args).await {
        panic!("starting the proxy in server mode: {e}");
    }
}

/// Stops the proxy (SIGTERM: it removes its table, and clients reach
/// rpcbind again).
async fn stop_server_mode(sb: &mut Sandbox) {
    let how = sb.stop_proxy().await;
    assert_eq!(how.as_deref(), Some("exit code 0"), "the proxy's stop");
}

/// Registers [`REGISTRATIONS`] directly at rpcbind.
async fn register(sb: &Sandbox) {
    for &(prog, vers, netid, addr) in REGISTRATIONS {
        assert!(
            sb.rpcbind_set(prog, vers, netid, addr).await,
            "SET {prog} {vers} {netid} {addr}"
        );
    }
}

/// The clients of `links`, attached to the sandbox.
async fn attach(sb: &Sandbox, links: &[u8]) -> Vec<Client> {
    let mut clients = Vec::new();
    for &n in links {
        clients.push(Client::attach(sb, n).await);
    }
    clients
}

/// Calls the proxy counted (every call that reached it, whatever came of it).
async fn proxy_requests(sb: &Sandbox) -> u64 {
    sb.status_number("/requests/total").await
}

/// Flows server mode's rules (the table's `remote` rules) sent to the
/// proxy so far; 0 where it has none.
async fn remote_flows(sb: &Sandbox) -> u64 {
    let status = sb.status().await;
    let rules = status
        .pointer("/intercept/rules")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    rules
        .iter()
        .filter(|r| r["rule"].as_str().is_some_and(|n| n.starts_with("remote")))
        .map(|r| r["flows"].as_u64().expect("a rule's flows"))
        .sum()
}

/// UDP replies to other hosts held back by the amplification bound.
async fn amplification_refused(sb: &Sandbox) -> u64 {
    sb.status_number("/limits/remote_udp_amplification/refused")
        .await
}

/// Port 111 of every address of the served links' server side.
fn served_addrs() -> Vec<SocketAddr> {
    on_111(
        &SERVED_LINKS
            .iter()
            .flat_map(|&n| server_addrs(n))
            .collect::<Vec<_>>(),
    )
}

/// Port 111 of each of `ips`.
fn on_111(ips: &[IpAddr]) -> Vec<SocketAddr> {
    ips.iter().map(|&ip| port_111(ip)).collect()
}

fn port_111(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, RPCBIND_PORT)
}

/// The universal address of `ip` port 111 (`169.254.1.1.0.111`).
fn uaddr_111(ip: IpAddr) -> String {
    format!("{ip}.0.111")
}

// ---------------------------------------------------------------------------
// The call table
// ---------------------------------------------------------------------------

/// How the direct and proxied outcomes of a case are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Identical outcomes: the reply bytes after the XID.
    Bytes,
    /// GETTIME: both a 4-byte SUCCESS within a minute of the test's clock.
    Clock,
    /// GETSTAT: both SUCCESS (rpcbind's counters move between the runs).
    Success,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    call: Call,
    compare: Compare,
}

fn case(name: impl Into<String>, call: Call) -> Case {
    Case {
        name: name.into(),
        call,
        compare: Compare::Bytes,
    }
}

/// A netbuf holding a sockaddr_in / sockaddr_in6 of `ip` port 111 (family
/// in host order, as libtirpc sends it), for TADDR2UADDR.
fn netbuf_111(ip: IpAddr) -> Vec<u8> {
    let mut sa = Vec::new();
    match ip {
        IpAddr::V4(v4) => {
            sa.extend_from_slice(&2u16.to_ne_bytes());
            sa.extend_from_slice(&111u16.to_be_bytes());
            sa.extend_from_slice(&v4.octets());
            sa.extend_from_slice(&[0; 8]);
        }
        IpAddr::V6(v6) => {
            sa.extend_from_slice(&10u16.to_ne_bytes());
            sa.extend_from_slice(&111u16.to_be_bytes());
            sa.extend_from_slice(&[0; 4]);
            sa.extend_from_slice(&v6.octets());
            sa.extend_from_slice(&[0; 4]);
        }
    }
    let len = u32::try_from(sa.len()).unwrap();
    Xdr::new().u32(len).opaque(&sa).into_bytes()
}

/// Every procedure of portmapper v2 and rpcbind v3/v4 but SET and UNSET
/// (see [`set_unset_calls`]), with the arguments whose answers depend on
/// the caller: wildcard registrations, hints naming each client, each
/// server address, an address no interface is on, loopback, garbage.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for vers in [2, 3, 4] {
        v.push(case(format!("NULL v{vers}"), Call::rpcb(vers, 0, vec![])));
        v.push(case(
            format!("DUMP v{vers}"),
            Call::rpcb(vers, RPCBPROC_DUMP, vec![]),
        ));
    }
    for (prog, vers, prot) in [
        (300_001, 1, IPPROTO_TCP),
        (300_001, 1, IPPROTO_UDP),
        (300_001, 2, IPPROTO_TCP),
        (300_002, 1, IPPROTO_TCP),
        (300_003, 2, IPPROTO_UDP),
        (300_004, 1, IPPROTO_TCP),
        (399_999, 1, IPPROTO_TCP),
        (PMAP_PROG, 2, IPPROTO_UDP),
    ] {
        v.push(case(
            format!("GETPORT {prog} {vers} {prot}"),
            Call::rpcb(2, PMAPPROC_GETPORT, pmap_args(prog, vers, prot, 0)),
        ));
    }
    let hints = [
        "",
        "169.254.1.2.0.1",
        "169.254.2.2.0.1",
        "169.254.3.2.0.1",
        "169.254.9.9.0.1",
        "169.254.1.1.0.111",
        "169.254.2.1.0.111",
        "fd51:1::1.0.111",
        "fd51:2::1.0.111",
        "fd51:1::2.0.1",
        "fd51:2::2.0.1",
        "127.0.0.1.0.1",
        "::1.0.1",
        "bogus",
    ];
    let lookups = [
        (300_001, 1, "tcp"),
        (300_001, 1, "udp"),
        (300_001, 1, "tcp6"),
        (300_001, 3, "tcp"),
        (300_001, 2, "tcp"),
        (300_002, 1, "tcp"),
        (300_003, 2, "udp"),
        (300_004, 1, "tcp6"),
        (399_999, 1, "tcp"),
        (PMAP_PROG, 4, "tcp"),
    ];
    for (proc_, pname, versions) in [
        (RPCBPROC_GETADDR, "GETADDR", &[3, 4][..]),
        (RPCBPROC_GETVERSADDR, "GETVERSADDR", &[4]),
        (RPCBPROC_GETADDRLIST, "GETADDRLIST", &[4]),
    ] {
        for &vers in versions {
            for (prog, pvers, netid) in lookups {
                for hint in hints {
                    v.push(case(
                        format!("{pname} v{vers} {prog} {pvers} {netid} hint {hint:?}"),
                        Call::rpcb(vers, proc_, rpcb_args(prog, pvers, netid, hint, "")),
                    ));
                }
            }
        }
    }
    for vers in [3, 4] {
        for uaddr in [
            "169.254.1.1.0.111",
            "fd51:1::1.0.111",
            "127.0.0.1.0.111",
            "garbage",
        ] {
            v.push(case(
                format!("UADDR2TADDR v{vers} {uaddr:?}"),
                Call::rpcb(
                    vers,
                    RPCBPROC_UADDR2TADDR,
                    Xdr::new().string(uaddr).into_bytes(),
                ),
            ));
        }
        for ip in server_addrs(1) {
            v.push(case(
                format!("TADDR2UADDR v{vers} {ip}"),
                Call::rpcb(vers, RPCBPROC_TADDR2UADDR, netbuf_111(ip)),
            ));
        }
        v.push(Case {
            compare: Compare::Clock,
            ..case(
                format!("GETTIME v{vers}"),
                Call::rpcb(vers, RPCBPROC_GETTIME, vec![]),
            )
        });
    }
    v.push(Case {
        compare: Compare::Success,
        ..case("GETSTAT v4", Call::rpcb(4, RPCBPROC_GETSTAT, vec![]))
    });
    let null_of_300001 = callit_args(300_001, 1, 0, &[]);
    for (vers, proc_, name) in [
        (2, PMAPPROC_CALLIT, "CALLIT"),
        (3, RPCBPROC_CALLIT, "CALLIT"),
        (4, RPCBPROC_BCAST, "BCAST"),
        (4, RPCBPROC_INDIRECT, "INDIRECT"),
    ] {
        v.push(case(
            format!("{name} v{vers}"),
            Call::rpcb(vers, proc_, null_of_300001.clone()),
        ));
    }
    v
}

/// SET and UNSET of every version, for a new program and for one rpcbind
/// holds (which an accepted UNSET would remove).
fn set_unset_calls() -> Vec<Case> {
    let mut v = vec![
        case(
            "PMAP SET new",
            Call::rpcb(2, PMAPPROC_SET, pmap_args(400_001, 1, IPPROTO_TCP, 999)),
        ),
        case(
            "PMAP UNSET held",
            Call::rpcb(2, PMAPPROC_UNSET, pmap_args(300_001, 1, 0, 0)),
        ),
    ];
    for vers in [3, 4] {
        v.push(case(
            format!("SET v{vers} new"),
            Call::rpcb(
                vers,
                RPCBPROC_SET,
                rpcb_args(400_001, 1, "tcp", "0.0.0.0.3.231", "superuser"),
            ),
        ));
        v.push(case(
            format!("SET v{vers} held"),
            Call::rpcb(
                vers,
                RPCBPROC_SET,
                rpcb_args(300_001, 1, "udp", "0.0.0.0.3.232", "superuser"),
            ),
        ));
        v.push(case(
            format!("UNSET v{vers} held"),
            Call::rpcb(
                vers,
                RPCBPROC_UNSET,
                rpcb_args(300_001, 1, "tcp", "", "superuser"),
            ),
        ));
        v.push(case(
            format!("UNSET v{vers} portmapper"),
            Call::rpcb(vers, RPCBPROC_UNSET, rpcb_args(PMAP_PROG, 4, "", "", "")),
        ));
    }
    v
}

/// Where one call of a pass went: server address, transport, reserved
/// source port, case.
type Key = (SocketAddr, Transport, bool, usize);

/// What came back for one call: the outcome, and over UDP the address the
/// reply came from (a client whose socket is connected to the address it
/// called drops a reply from any other).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    out: Outcome,
    from: Option<SocketAddr>,
}

/// Sends every case from `client` to each of `servers` over TCP and UDP
/// (from ephemeral ports, and with `reserved` also from reserved ones),
/// each on a fresh socket, at most [`CONCURRENCY`] at once.
async fn pass(
    client: &Client,
    servers: &[SocketAddr],
    cases: &[Case],
    reserved: bool,
) -> BTreeMap<Key, Answer> {
    let servers = servers.to_vec();
    let cases = cases.to_vec();
    let run = client.within(move || async move {
        let sem = Arc::new(Semaphore::new(CONCURRENCY));
        let mut set = JoinSet::new();
        let ports: &[bool] = if reserved { &[false, true] } else { &[false] };
        for &server in &servers {
            for t in [Transport::Tcp, Transport::Udp] {
                for &from_reserved in ports {
                    for (i, c) in cases.iter().enumerate() {
                        let call = c.call.fresh();
                        let sem = Arc::clone(&sem);
                        set.spawn(async move {
                            let _permit = sem.acquire().await.unwrap();
                            let (out, from) =
                                call_and_source(server, t, from_reserved, &call).await;
                            ((server, t, from_reserved, i), Answer { out, from })
                        });
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        while let Some(r) = set.join_next().await {
            let (k, o) = r.expect("a call's task panicked");
            out.insert(k, o);
        }
        out
    });
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("client {}: a pass took over {WAIT:?}", client.link()))
}

/// Whether a GETTIME outcome is a time within a minute of this clock.
fn plausible_time(out: &Outcome) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    out.results()
        .and_then(|r| decode_u32(&r).ok())
        .is_some_and(|t| u64::from(t).abs_diff(now) < 60)
}

/// What the proxy owed and what it answered, in full hex when both are
/// replies.
fn difference(owed: &Outcome, proxy: &Outcome) -> String {
    match (owed, proxy) {
        (Outcome::Reply(o), Outcome::Reply(p)) => {
            format!("      owed:  {}\n      proxy: {}", hex(o), hex(p))
        }
        _ => format!("      owed:  {owed}\n      proxy: {proxy}"),
    }
}

/// SYSTEM_ERR after the XID, as rpcbind sends it: REPLY, MSG_ACCEPTED, an
/// empty AUTH_NONE verifier, SYSTEM_ERR.
fn system_err() -> Vec<u8> {
    Xdr::new()
        .u32(MSG_REPLY)
        .u32(0)
        .u32(AUTH_NONE)
        .u32(0)
        .u32(5)
        .into_bytes()
}

/// What the proxy owes a remote client for rpcbind's `direct` answer to
/// case `c` over `t`, when its UDP replies to other hosts are at most
/// `amplification` times the call (the reflection bound of server mode):
/// rpcbind's answer, or for a bigger UDP reply what rpcbind gives a reply
/// too large for a datagram (nothing for v2, SYSTEM_ERR for v3/v4).
fn owed(c: &Case, t: Transport, direct: &Answer, amplification: usize) -> Answer {
    let Outcome::Reply(after_xid) = &direct.out else {
        return direct.clone();
    };
    let (call, reply) = (c.call.encode().len(), 4 + after_xid.len());
    if t != Transport::Udp || reply <= call * amplification {
        return direct.clone();
    }
    if c.call.vers == 2 {
        Answer {
            out: Outcome::NoReply,
            from: None,
        }
    } else {
        Answer {
            out: Outcome::Reply(system_err()),
            from: direct.from,
        }
    }
}

/// Every case whose proxied outcome is not what the proxy owes (see
/// [`owed`]) for rpcbind's direct one.
fn differences(
    client: &Client,
    cases: &[Case],
    direct: &BTreeMap<Key, Answer>,
    proxy: &BTreeMap<Key, Answer>,
    amplification: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, d) in direct {
        let (server, t, reserved, i) = *key;
        let c = &cases[i];
        let p = &proxy[key];
        let o = owed(c, t, d, amplification);
        let (same, how) = if o != *d {
            (o.out == p.out, "held back: bigger than the bound")
        } else {
            let same = match c.compare {
                Compare::Bytes => d.out == p.out,
                Compare::Clock => plausible_time(&d.out) && plausible_time(&p.out),
                Compare::Success => d.out.is_success() && p.out.is_success(),
            };
            (same, "")
        };
        let from = if reserved { ", reserved port" } else { "" };
        if !same {
            problems.push(format!(
                "client {} -> {server} {t:?}{from}: {} ({:?} compare{how})\n{}",
                client.link(),
                c.name,
                c.compare,
                difference(&o.out, &p.out)
            ));
        }
    }
    problems
}

/// Every UDP reply through the proxy that came from another address than
/// rpcbind's reply to the same call (rpcbind answers from the address the
/// client called; a client whose socket is connected to it, or a stateful
/// firewall, drops a reply from any other).
fn source_differences(
    client: &Client,
    cases: &[Case],
    direct: &BTreeMap<Key, Answer>,
    proxy: &BTreeMap<Key, Answer>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, d) in direct {
        let (server, t, _, i) = *key;
        let p = &proxy[key];
        if d.from != p.from {
            problems.push(format!(
                "client {} -> {server} {t:?}: {}: the reply came from {:?} directly, from {:?} through the proxy",
                client.link(),
                cases[i].name,
                d.from,
                p.from
            ));
        }
    }
    problems
}

/// How many of `direct`'s answers the proxy owes held back (see [`owed`]).
fn held_back(cases: &[Case], direct: &BTreeMap<Key, Answer>, amplification: usize) -> usize {
    direct
        .iter()
        .filter(|(k, d)| owed(&cases[k.3], k.1, d, amplification) != **d)
        .count()
}

/// Differences shown in full in a failure's message; all are counted, by
/// the route they took.
const SHOWN: usize = 40;

/// `problems` counted by the route they took, and the first [`SHOWN`].
fn differences_report(what: &str, problems: &[String]) -> String {
    let mut by_route: BTreeMap<&str, usize> = BTreeMap::new();
    for p in problems {
        let route = p.split(": ").next().unwrap_or(p);
        *by_route.entry(route).or_default() += 1;
    }
    let routes: Vec<String> = by_route
        .iter()
        .map(|(r, n)| format!("  {n:5}  {r}"))
        .collect();
    format!(
        "{what}: {} differences between rpcbind and the proxy, by route:\n{}\nthe first {SHOWN}:\n{}",
        problems.len(),
        routes.join("\n"),
        problems[..problems.len().min(SHOWN)].join("\n")
    )
}

fn assert_no_differences(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{}",
        differences_report(what, problems)
    );
}

/// The decoded string of a GETADDR-like outcome, for the checks on
/// rpcbind's own answers.
fn addr_of(out: &Outcome) -> String {
    out.results()
        .and_then(|r| decode_string(&r).ok())
        .unwrap_or_else(|| format!("<{out}>"))
}

// ---------------------------------------------------------------------------
// rpcinfo on the client
// ---------------------------------------------------------------------------

/// The rpcinfo commands a client runs against the server's addresses.
fn rpcinfo_commands() -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for n in SERVED_LINKS {
        let [ip4, ip6] = server_addrs(n).map(|a| a.to_string());
        let [u4, u6] = server_addrs(n).map(uaddr_111);
        for args in [
            vec!["-p", &ip4],
            vec![&ip4],
            vec!["-s", &ip4],
            vec!["-T", "tcp", &ip4, "100000"],
            vec!["-T", "udp", &ip4, "100000"],
            vec!["-T", "tcp", &ip4, "300001", "1"],
            vec!["-l", &ip4, "300001", "1"],
            vec!["-l", "-T", "udp", &ip4, "300001", "1"],
            vec!["-a", &u4, "-T", "tcp", "100000", "4"],
            vec!["-a", &u4, "-T", "udp", "100000", "2"],
            vec!["-T", "tcp6", &ip6, "100000"],
            vec!["-T", "udp6", &ip6, "100000"],
            vec!["-s", &ip6],
            vec!["-l", "-T", "tcp6", &ip6, "300001", "1"],
            vec!["-a", &u6, "-T", "tcp6", "100000", "3"],
        ] {
            let mut full = vec!["rpcinfo".to_string()];
            full.extend(args.iter().map(|s| s.to_string()));
            v.push(full);
        }
    }
    v
}

/// Each rpcinfo command run from `client`, with what it printed.
async fn rpcinfo_transcripts(client: &Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for cmd in rpcinfo_commands() {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let o = client.run(&args).await;
        out.push((cmd.join(" "), transcript(&o)));
    }
    out
}

/// What rpcinfo prints when rpcbind's answer to its UDP call is SYSTEM_ERR
/// (what a reply too large for a datagram gets).
const RPCINFO_SYSTEM_ERR: &str =
    "rpcinfo: can't contact rpcbind: : RPC: Remote system error\n[exit status: 1]";

/// Whether `cmd`'s UDP call is answered with a list (GETADDRLIST): larger
/// than the call, so held back under an amplification bound of 1.
fn lists_over_udp(cmd: &str) -> bool {
    cmd.contains(" -l ") && cmd.contains(" udp ")
}

/// Every rpcinfo command whose output through the proxy is not what it
/// printed against rpcbind, or under an amplification bound of 1, for a
/// list over UDP, what it prints for a SYSTEM_ERR.
fn transcript_differences(
    client: &Client,
    direct: &[(String, String)],
    proxy: &[(String, String)],
    amplification: usize,
) -> Vec<String> {
    direct
        .iter()
        .zip(proxy)
        .filter_map(|((cmd, d), (_, p))| {
            let owed = if amplification == 1 && lists_over_udp(cmd) {
                RPCINFO_SYSTEM_ERR
            } else {
                d.as_str()
            };
            (owed != p).then(|| {
                format!(
                    "client {}: {cmd}\n--- rpcbind:\n{d}\n--- owed:\n{owed}\n--- through the proxy:\n{p}",
                    client.link()
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// What one client saw of one run (direct or through the proxy).
struct Seen {
    calls: BTreeMap<Key, Answer>,
    rpcinfo: Vec<(String, String)>,
}

async fn look(clients: &[Client], table: &[Case]) -> Vec<Seen> {
    let mut seen = Vec::new();
    for c in clients {
        seen.push(Seen {
            calls: pass(c, &served_addrs(), table, false).await,
            rpcinfo: rpcinfo_transcripts(c).await,
        });
    }
    seen
}

/// The direct half on its own says what a remote client is owed: for a
/// wildcard registration, an address of the server's (not 0.0.0.0), of
/// the entry of the arrival transport's netid, and where the hint names an
/// address of the server (as libtirpc's clients send the address they
/// called), that address: bytes that differ per hint and transport, which
/// a proxy answering over its own loopback connection would get wrong.
fn check_rpcbinds_own_answers(clients: &[Client], table: &[Case], direct: &[Seen]) {
    let named = |name: &str| {
        table
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("the table has {name}"))
    };
    let plain = named("GETADDR v3 300001 1 tcp hint \"\"");
    let hinted = named("GETADDR v4 300001 1 tcp hint \"169.254.2.1.0.111\"");
    let ours: Vec<String> = (1..=UNSERVED_LINK)
        .flat_map(server_addrs)
        .map(|a| a.to_string())
        .collect();
    for (client, seen) in clients.iter().zip(direct) {
        for server in served_addrs().into_iter().filter(SocketAddr::is_ipv4) {
            for t in [Transport::Tcp, Transport::Udp] {
                // The entry of the arrival transport's netid.
                let port = if t == Transport::Tcp { "8.1" } else { "8.2" };
                let got = addr_of(&seen.calls[&(server, t, false, plain)].out);
                let (ip, p) = got
                    .rsplit_once('.')
                    .and_then(|(a, lo)| {
                        a.rsplit_once('.')
                            .map(|(ip, hi)| (ip.to_string(), format!("{hi}.{lo}")))
                    })
                    .unwrap_or_default();
                assert!(
                    ours.contains(&ip) && p == port,
                    "rpcbind answered {got:?} to client {} calling {server} over {t:?} ({})",
                    client.link(),
                    table[plain].name
                );
                let got = addr_of(&seen.calls[&(server, t, false, hinted)].out);
                assert_eq!(
                    got,
                    format!("169.254.2.1.{port}"),
                    "rpcbind's answer to client {} calling {server} over {t:?} ({})",
                    client.link(),
                    table[hinted].name
                );
            }
        }
    }
    let per_client = direct[0]
        .calls
        .iter()
        .filter(|(k, d)| direct[1].calls[*k] != **d && table[k.3].compare == Compare::Bytes)
        .count();
    println!("rpcbind answered {per_client} calls differently to the two clients");
    let listing = &direct[0].rpcinfo[0].1;
    assert!(
        listing.contains("portmapper") && listing.contains("300001"),
        "rpcinfo -p from client 1: {listing}"
    );
}

/// Starts the proxy in server mode with `extra` arguments, makes the same
/// calls and rpcinfo commands as `direct` from each client, and checks
/// them against rpcbind's (see [`owed`]) and that the proxy's own counters
/// saw them.
async fn compare_through_proxy(
    sb: &mut Sandbox,
    clients: &[Client],
    table: &[Case],
    direct: &[Seen],
    amplification: usize,
) {
    let bound = amplification.to_string();
    // No rate limit: each client makes thousands of calls in seconds.
    start_server_mode_with(
        sb,
        &["--remote-udp-amplification", &bound, "--remote-rate", "0"],
    )
    .await;
    let (requests, flows, refused) = (
        proxy_requests(sb).await,
        remote_flows(sb).await,
        amplification_refused(sb).await,
    );
    let proxied = look(clients, table).await;
    let requests = proxy_requests(sb).await - requests;
    let flows = remote_flows(sb).await - flows;
    let refused = amplification_refused(sb).await - refused;

    let mut problems = Vec::new();
    let mut transcripts = Vec::new();
    let mut held = 0;
    for ((client, d), p) in clients.iter().zip(direct).zip(&proxied) {
        problems.extend(differences(
            client,
            table,
            &d.calls,
            &p.calls,
            amplification,
        ));
        transcripts.extend(transcript_differences(
            client,
            &d.rpcinfo,
            &p.rpcinfo,
            amplification,
        ));
        held += held_back(table, &d.calls, amplification);
    }
    let sent: usize = proxied.iter().map(|s| s.calls.len()).sum();
    println!(
        "bound {amplification}: {sent} calls and {} rpcinfo commands from {} clients, {held} UDP \
         replies owed held back; the proxy counted {requests} requests, its remote rules {flows} \
         flows, {refused} replies held back",
        rpcinfo_commands().len() * clients.len(),
        clients.len()
    );
    let mut failures = Vec::new();
    if !problems.is_empty() {
        failures.push(differences_report("raw calls", &problems));
    }
    if !transcripts.is_empty() {
        failures.push(format!(
            "{} rpcinfo commands print differently:\n{}",
            transcripts.len(),
            transcripts.join("\n")
        ));
    }
    // The comparison proves nothing unless the proxy answered every call.
    // (A UDP call from a port an earlier one used is no new flow to the
    // rules' counters while conntrack remembers the earlier one.)
    if requests < sent as u64 || flows == 0 {
        failures.push(format!(
            "the proxy counted {requests} requests and its remote rules {flows} flows \
             for the {sent} calls sent to port 111"
        ));
    }
    // rpcinfo's UDP calls may be held back too.
    if refused < held as u64 {
        failures.push(format!(
            "the proxy counted {refused} replies held back by the amplification bound, \
             {held} were owed held back"
        ));
    }
    assert!(
        failures.is_empty(),
        "bound {amplification}:\n{}",
        failures.join("\n\n")
    );
    stop_server_mode(sb).await;
}

#[test]
fn remote_clients_get_byte_identical_answers() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let clients = attach(&sb, &SERVED_LINKS).await;
        let table = cases();
        let direct = look(&clients, &table).await;
        check_rpcbinds_own_answers(&clients, &table, &direct);
        // The default bound (a UDP reply at most the call's size), then
        // one no reply here reaches: every answer rpcbind's, byte for byte.
        compare_through_proxy(&mut sb, &clients, &table, &direct, 1).await;
        compare_through_proxy(&mut sb, &clients, &table, &direct, 1000).await;
    });
}

#[test]
fn udp_replies_come_from_the_address_the_client_called() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let clients = attach(&sb, &SERVED_LINKS).await;
        let table: Vec<Case> = cases()
            .into_iter()
            .filter(|c| {
                c.name.starts_with("NULL")
                    || c.name.starts_with("GETPORT")
                    || c.name == "GETADDR v3 300001 1 tcp hint \"\""
            })
            .collect();
        let mut direct = Vec::new();
        for c in &clients {
            let calls = pass(c, &served_addrs(), &table, false).await;
            for (k, a) in calls.iter().filter(|(k, _)| k.1 == Transport::Udp) {
                assert_eq!(
                    a.from,
                    Some(k.0),
                    "rpcbind's reply to client {} calling {}: {}",
                    c.link(),
                    k.0,
                    a.out
                );
            }
            direct.push(calls);
        }
        start_server_mode(&mut sb).await;
        let flows = remote_flows(&sb).await;
        let mut problems = Vec::new();
        for (c, d) in clients.iter().zip(&direct) {
            let proxied = pass(c, &served_addrs(), &table, false).await;
            problems.extend(source_differences(c, &table, d, &proxied));
        }
        assert!(
            remote_flows(&sb).await > flows,
            "the calls did not go through the proxy"
        );
        assert_no_differences("UDP reply sources", &problems);
    });
}

#[test]
fn remote_set_and_unset_are_refused_as_rpcbind_refuses_them() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let clients = attach(&sb, &[1]).await;
        let client = &clients[0];
        let table = set_unset_calls();
        let servers = on_111(&server_addrs(1));
        let registrations = sb.rpcbind_dump().await;

        let direct = pass(client, &servers, &table, true).await;
        assert_eq!(
            sb.rpcbind_dump().await,
            registrations,
            "rpcbind took a remote registration"
        );
        // rpcbind refuses a remote caller's SET/UNSET with AUTH_ERROR
        // (AUTH_TOOWEAK), from a reserved port too.
        for (key, Answer { out, .. }) in &direct {
            assert_eq!(
                out.reply(),
                Some(Ok(Reply::AuthError(AUTH_TOOWEAK))),
                "rpcbind's answer to {} from client 1 to {} over {:?}: {out}",
                table[key.3].name,
                key.0,
                key.1
            );
        }

        start_server_mode(&mut sb).await;
        let before = proxy_requests(&sb).await;
        let proxied = pass(client, &servers, &table, true).await;
        let counted = proxy_requests(&sb).await - before;
        assert_no_differences(
            "SET/UNSET",
            &differences(client, &table, &direct, &proxied, 1),
        );
        assert_eq!(
            sb.rpcbind_dump().await,
            registrations,
            "a remote SET/UNSET through the proxy changed rpcbind's registrations"
        );
        assert!(
            counted >= proxied.len() as u64,
            "the proxy counted {counted} requests for {} SET/UNSET calls",
            proxied.len()
        );
        println!(
            "{} remote SET/UNSET calls refused as rpcbind refuses them",
            proxied.len()
        );
    });
}

/// Whether the server's namespace has the proxy's table, from `nft list
/// tables`.
async fn nft_has_table(sb: &Sandbox) -> bool {
    let out = sb.run_in_ns(&["nft", "list", "tables"]).await;
    assert!(
        out.status.success(),
        "nft list tables: {}",
        transcript(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == format!("table inet {INTERCEPT_TABLE}"))
}

#[test]
fn a_killed_proxy_hands_remote_clients_back_to_rpcbind() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let clients = attach(&sb, &[1]).await;
        let client = &clients[0];
        let server = server_addrs(1)[0].to_string();
        let listing = ["rpcinfo", "-p", server.as_str()];
        let udp = ["rpcinfo", "-T", "udp", server.as_str(), "100000"];
        let direct = transcript(&client.run(&listing).await);
        assert!(direct.contains("portmapper"), "rpcinfo -p: {direct}");
        assert!(!nft_has_table(&sb).await, "a table before the proxy ran");

        start_server_mode(&mut sb).await;
        assert!(nft_has_table(&sb).await, "no table while the proxy runs");
        let before = proxy_requests(&sb).await;
        assert_eq!(transcript(&client.run(&listing).await), direct);
        assert!(
            proxy_requests(&sb).await > before,
            "rpcinfo -p {server} did not reach the proxy"
        );

        sb.kill_proxy().await;
        assert!(
            !nft_has_table(&sb).await,
            "the table outlived the SIGKILLed proxy"
        );
        let after = client.run(&listing).await;
        assert_eq!(
            transcript(&after),
            direct,
            "rpcinfo -p {server} straight after the SIGKILL"
        );
        let after = client.run(&udp).await;
        assert!(
            after.status.success(),
            "rpcinfo -T udp straight after the SIGKILL: {}",
            transcript(&after)
        );
    });
}

/// `count` GETPORT calls from `client` to `server`:111 over TCP, each on a
/// connection of its own (from a reserved port with `reserved`, as a root
/// `mount` makes them), 8 at a time; what came of those that did not
/// answer portmapper's port.
async fn one_shot_lookups(
    client: &Client,
    server: IpAddr,
    count: usize,
    reserved: bool,
) -> Vec<String> {
    let run = client.within(move || async move {
        let sem = Arc::new(Semaphore::new(8));
        let mut set = JoinSet::new();
        for _ in 0..count {
            let sem = Arc::clone(&sem);
            set.spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let call = Call::rpcb(2, PMAPPROC_GETPORT, pmap_args(PMAP_PROG, 2, IPPROTO_TCP, 0));
                call_from(port_111(server), Transport::Tcp, reserved, &call).await
            });
        }
        let mut wrong = Vec::new();
        while let Some(r) = set.join_next().await {
            let out = r.expect("a lookup's task panicked");
            if out.results().and_then(|r| decode_u32(&r).ok()) != Some(111) {
                wrong.push(out.to_string());
            }
        }
        wrong
    });
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("{count} lookups took over {WAIT:?}"))
}

/// [`one_shot_lookups`], every one of which must succeed.
async fn one_shot_lookups_ok(client: &Client, server: IpAddr, count: usize, reserved: bool) {
    let wrong = one_shot_lookups(client, server, count, reserved).await;
    assert!(
        wrong.is_empty(),
        "{} of {count} lookups went wrong, e.g. {}",
        wrong.len(),
        wrong[0]
    );
}

#[test]
fn one_shot_remote_lookups_leave_no_time_wait_on_the_client() {
    run_without_proxy(|mut sb| async move {
        let clients = attach(&sb, &[1]).await;
        let client = &clients[0];
        let server = server_addrs(1)[0];

        start_server_mode(&mut sb).await;
        let before = proxy_requests(&sb).await;
        one_shot_lookups_ok(client, server, ONE_SHOT, false).await;
        let counted = proxy_requests(&sb).await - before;
        let through = client.time_wait_count(Some(RPCBIND_PORT), WAIT).await;
        sb.wait_tcp_settled(None, WAIT).await.unwrap();
        let server_side = sb.time_wait_count(None);
        stop_server_mode(&mut sb).await;

        one_shot_lookups_ok(client, server, ONE_SHOT, false).await;
        // Those through the proxy's still there (60 s) are not counted.
        let direct = client.time_wait_count(Some(RPCBIND_PORT), WAIT).await - through;
        println!(
            "{ONE_SHOT} one-shot lookups from client 1: {through} TIME_WAIT through the proxy \
             ({counted} requests counted, {server_side} TIME_WAIT on the server), {direct} directly"
        );
        assert!(
            counted >= ONE_SHOT as u64,
            "the proxy counted {counted} of {ONE_SHOT} lookups"
        );
        assert_eq!(
            through, 0,
            "TIME_WAIT sockets on the client through the proxy"
        );
        assert_eq!(
            server_side, 0,
            "TIME_WAIT sockets on the server through the proxy"
        );
        // The check can fail: rpcbind itself leaves one per lookup.
        assert!(
            direct >= ONE_SHOT * 9 / 10,
            "only {direct} TIME_WAIT after {ONE_SHOT} direct lookups: the check cannot tell"
        );
    });
}

/// Reserved ports a root client binds from (600-1023, then 512-599).
const RESERVED_PORTS: usize = 512;

#[test]
fn a_root_mount_storm_keeps_its_reserved_ports_through_the_proxy() {
    run_without_proxy(|mut sb| async move {
        let clients = attach(&sb, &[1]).await;
        let client = &clients[0];
        let server = server_addrs(1)[0];
        // More one-shot lookups from reserved ports than there are ports.
        let storm = RESERVED_PORTS + 150;

        start_server_mode(&mut sb).await;
        let before = proxy_requests(&sb).await;
        one_shot_lookups_ok(client, server, storm, true).await;
        let counted = proxy_requests(&sb).await - before;
        let through = client.time_wait_count(Some(RPCBIND_PORT), WAIT).await;
        stop_server_mode(&mut sb).await;

        let failed = one_shot_lookups(client, server, storm, true).await;
        let direct = client.time_wait_count(Some(RPCBIND_PORT), WAIT).await - through;
        println!(
            "{storm} one-shot lookups from reserved ports: all answered through the proxy \
             ({counted} requests counted, {through} TIME_WAIT); directly {} failed ({}), \
             {direct} TIME_WAIT",
            failed.len(),
            failed.first().map_or("", String::as_str)
        );
        assert!(
            counted >= storm as u64,
            "the proxy counted {counted} of {storm} lookups"
        );
        assert_eq!(
            through, 0,
            "TIME_WAIT sockets on the client through the proxy"
        );
        // The check can fail: directly, each lookup holds its port in
        // TIME_WAIT for a minute, and the ports run out.
        assert!(
            failed.len() >= storm - RESERVED_PORTS && direct >= RESERVED_PORTS * 9 / 10,
            "directly, {} of {storm} lookups failed and {direct} ports are in TIME_WAIT: \
             the check cannot tell",
            failed.len()
        );
    });
}

#[test]
fn clients_on_interfaces_not_named_reach_rpcbind_itself() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let clients = attach(&sb, &[1, UNSERVED_LINK]).await;
        let (served, unserved) = (&clients[0], &clients[1]);
        let table: Vec<Case> = cases()
            .into_iter()
            .filter(|c| c.name.starts_with("GETADDR v4") || c.name.starts_with("NULL"))
            .collect();
        // From the unserved link, to its own server address and to one of
        // a served link (which it reaches through its own interface).
        let targets = on_111(&[
            server_addrs(UNSERVED_LINK)[0],
            server_addrs(1)[0],
            server_addrs(1)[1],
        ]);
        let direct = pass(unserved, &targets, &table, false).await;

        start_server_mode(&mut sb).await;
        let (before, flows) = (proxy_requests(&sb).await, remote_flows(&sb).await);
        let proxied = pass(unserved, &targets, &table, false).await;
        let listing = unserved
            .run(&["rpcinfo", "-p", &server_addrs(UNSERVED_LINK)[0].to_string()])
            .await;
        let counted = proxy_requests(&sb).await - before;
        let caught = remote_flows(&sb).await - flows;
        assert!(
            listing.status.success(),
            "rpcinfo -p from the unserved link: {}",
            transcript(&listing)
        );
        assert_eq!(
            (counted, caught),
            (0, 0),
            "calls the proxy answered, and flows its rules caught, from an interface it was not given"
        );
        assert_no_differences(
            "unserved link",
            &differences(unserved, &table, &direct, &proxied, 1),
        );
        // The counter does move for a served link's client.
        let call = Call::rpcb(4, RPCBPROC_GETADDR, rpcb_args(300_001, 1, "tcp", "", ""));
        let out = served
            .call(port_111(server_addrs(1)[0]), Transport::Tcp, false, &call)
            .await;
        assert!(out.is_success(), "client 1 through the proxy: {out}");
        assert!(
            proxy_requests(&sb).await > before && remote_flows(&sb).await > flows,
            "a served client's call did not reach the proxy either"
        );
    });
}

/// Calls a second the shield test lets each host make (a burst of twice
/// that).
const RATE: usize = 50;
/// Calls the shield test's flooding host sends in a burst.
const FLOOD: usize = 1000;

/// PMAP v2 GETPORT of portmapper on UDP: a small call with a smaller
/// reply (no amplification bound applies).
fn getport_portmapper() -> Call {
    Call::rpcb(2, PMAPPROC_GETPORT, pmap_args(PMAP_PROG, 2, IPPROTO_UDP, 0))
}

/// Sends [`FLOOD`] calls as datagrams from one socket of the calling
/// thread's namespace to `server` (10 a millisecond), then reads replies
/// until none came for a second; how many were answered, and in how long.
async fn udp_flood(server: SocketAddr) -> (usize, Duration) {
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(local_ip_for(&server), 0))
        .await
        .expect("a UDP socket");
    let start = tokio::time::Instant::now();
    for i in 0..FLOOD {
        sock.send_to(&getport_portmapper().encode(), server)
            .await
            .expect("sending a datagram");
        // 10 a millisecond, so that the proxy's receive buffer takes them.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut buf = vec![0u8; 65_536];
    let mut answered = 0;
    while answered < FLOOD {
        match tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
            Ok(Ok(_)) => answered += 1,
            Ok(Err(e)) => panic!("reading the replies: {e}"),
            Err(_) => break,
        }
    }
    (answered, start.elapsed())
}

/// Pipelines [`FLOOD`] calls on one TCP connection to `server` and reads
/// the replies until the connection ends; how many were answered, and
/// whether the proxy closed it.
async fn tcp_flood(server: SocketAddr) -> (usize, bool) {
    let mut conn = Conn::connect(&Endpoint::Tcp(server))
        .await
        .expect("connecting");
    let calls: Vec<Call> = (0..FLOOD).map(|_| getport_portmapper()).collect();
    let mut wire = Vec::new();
    for c in &calls {
        put_record(&mut wire, &c.encode());
    }
    if let Conn::Stream(io) = &mut conn {
        use tokio::io::AsyncWriteExt;
        if io.write_all(&wire).await.is_err() {
            return (0, true);
        }
    }
    let mut answered = 0;
    for c in &calls {
        match conn.recv(c.xid).await {
            Outcome::Reply(_) => answered += 1,
            Outcome::Closed => return (answered, true),
            other => panic!("call {answered} of the TCP flood: {other}"),
        }
    }
    (answered, false)
}

#[test]
fn a_host_over_the_rate_is_held_back_and_the_others_are_not() {
    run_without_proxy(|mut sb| async move {
        let clients = attach(&sb, &SERVED_LINKS).await;
        let (flooder, other) = (&clients[0], &clients[1]);
        let rate = RATE.to_string();
        start_server_mode_with(&mut sb, &["--remote-rate", &rate]).await;
        let table = vec![case("GETPORT portmapper", getport_portmapper())];
        // The other host first (it also warms the cache, so that every call
        // of the flood is answered at once).
        let calm = pass(other, &on_111(&server_addrs(2)), &table, false).await;
        let s1 = port_111(server_addrs(1)[0]);
        let (udp, took) = flooder.within(move || udp_flood(s1)).await;
        let (tcp, closed) = flooder.within(move || tcp_flood(s1)).await;
        let calm_after = pass(other, &on_111(&server_addrs(2)), &table, false).await;
        let status = sb.status().await;
        let limited = status["limits"]["remote_rate"]["limited"]
            .as_u64()
            .expect("status --json has limits.remote_rate.limited");
        let offenders = status["limits"]["remote_rate"]["offenders"].clone();
        println!(
            "rate {RATE}/s: {udp} of {FLOOD} datagrams answered in {took:?}, {tcp} of {FLOOD} \
             pipelined TCP calls (closed: {closed}); {limited} calls held back; offenders {offenders}"
        );
        // At most the burst and what the bucket refilled meanwhile (one
        // more second of slack for the timing).
        let most = 2 * RATE + RATE * (took.as_secs() as usize + 2);
        assert!(
            (RATE..=most).contains(&udp),
            "{udp} of {FLOOD} datagrams answered in {took:?} at {RATE}/s (a burst of {})",
            2 * RATE
        );
        assert!(
            closed && tcp < FLOOD,
            "a TCP client over the rate: {tcp} of {FLOOD} answered, closed: {closed}"
        );
        for (label, answers) in [("before", &calm), ("after", &calm_after)] {
            for (k, a) in answers {
                assert!(
                    a.out.is_success(),
                    "the other host's call to {} over {:?} ({label} the flood): {}",
                    k.0,
                    k.1,
                    a.out
                );
            }
        }
        let named: Vec<&str> = offenders
            .as_array()
            .expect("offenders is a list")
            .iter()
            .filter_map(|o| o["address"].as_str())
            .collect();
        assert_eq!(named, ["169.254.1.2"], "the hosts held back");
        // (A datagram lost before it reached the proxy is not counted.)
        assert!(
            limited >= (FLOOD - udp) as u64 / 2,
            "{limited} calls counted held back"
        );
    });
}

/// GETADDR, GETVERSADDR and GETADDRLIST of the wildcard tcp6/udp6
/// registrations, without a hint and with each link-local server address
/// as the hint (as libtirpc sends the address it called).
fn link_local_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (vers, proc_, name) in [
        (3, RPCBPROC_GETADDR, "GETADDR"),
        (4, RPCBPROC_GETADDR, "GETADDR"),
        (4, RPCBPROC_GETVERSADDR, "GETVERSADDR"),
        (4, RPCBPROC_GETADDRLIST, "GETADDRLIST"),
    ] {
        for hint in ["", "fe80::1:1.0.111", "fe80::2:1.0.111"] {
            v.push(case(
                format!("{name} v{vers} 300001 1 tcp6 hint {hint:?}"),
                Call::rpcb(vers, proc_, rpcb_args(300_001, 1, "tcp6", hint, "")),
            ));
        }
    }
    v
}

#[test]
fn link_local_clients_get_rpcbinds_answers() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let clients = attach(&sb, &SERVED_LINKS).await;
        let mut servers = Vec::new();
        for c in &clients {
            servers.push(SocketAddr::V6(c.add_link_local(&sb).await));
        }
        let table = link_local_cases();
        let mut direct = Vec::new();
        for (c, &server) in clients.iter().zip(&servers) {
            let calls = pass(c, &[server], &table, false).await;
            // rpcbind answers a link-local caller with the link-local
            // address of the interface the call came in on.
            let plain = &calls[&(server, Transport::Tcp, false, 0)].out;
            assert_eq!(
                addr_of(plain),
                format!("fe80::{}:1.8.1", c.link()),
                "rpcbind's answer to client {}",
                c.link()
            );
            direct.push(calls);
        }
        start_server_mode_with(&mut sb, &["--remote-udp-amplification", "1000"]).await;
        let requests = proxy_requests(&sb).await;
        let mut problems = Vec::new();
        for ((c, &server), d) in clients.iter().zip(&servers).zip(&direct) {
            let proxied = pass(c, &[server], &table, false).await;
            problems.extend(differences(c, &table, d, &proxied, 1000));
        }
        assert!(
            proxy_requests(&sb).await > requests,
            "the calls did not reach the proxy"
        );
        assert_no_differences("link-local clients", &problems);
    });
}

#[test]
fn server_mode_from_the_config_file_catches_an_interface_that_comes_later() {
    run_without_proxy(|mut sb| async move {
        register(&sb).await;
        let mut clients = attach(&sb, &[1]).await;
        let conf = sb.tmp_dir().join("server-mode.toml");
        std::fs::write(
            &conf,
            "intercept-remote = true\nremote-interface = [\"s1\", \"s2\"]\n",
        )
        .unwrap();
        let conf = conf.to_str().expect("a UTF-8 path").to_string();
        if let Err(e) = sb.start_proxy(&["--config", &conf]).await {
            panic!("starting the proxy in server mode from {conf}: {e}");
        }
        // s2 appears only now, with the daemon running.
        clients.extend(attach(&sb, &[2]).await);
        let table: Vec<Case> = cases()
            .into_iter()
            .filter(|c| c.name.starts_with("GETADDR v4 300001 1") || c.name.starts_with("GETPORT"))
            .collect();
        let mut proxied = Vec::new();
        for c in &clients {
            let servers = on_111(&server_addrs(c.link()));
            let (requests, flows) = (proxy_requests(&sb).await, remote_flows(&sb).await);
            let calls = pass(c, &servers, &table, false).await;
            let requests = proxy_requests(&sb).await - requests;
            let flows = remote_flows(&sb).await - flows;
            assert!(
                requests >= calls.len() as u64 && flows > 0,
                "client {}'s {} calls: the proxy counted {requests} requests, its rules {flows} flows",
                c.link(),
                calls.len()
            );
            proxied.push(calls);
        }
        stop_server_mode(&mut sb).await;
        let mut problems = Vec::new();
        for (c, p) in clients.iter().zip(&proxied) {
            let direct = pass(c, &on_111(&server_addrs(c.link())), &table, false).await;
            problems.extend(differences(c, &table, &direct, p, 1));
        }
        assert_no_differences("configured from the file", &problems);
    });
}

/// Server mode's own port (the daemon's `[::]:1112` pair) answers other
/// hosts only through the redirect of port 111: a call addressed to it
/// from another host, on a served interface or not, is dropped, while
/// the same call to port 111 is answered through the proxy, and the
/// server itself still reaches it.
#[test]
fn other_hosts_reach_the_proxys_own_port_only_through_the_redirect() {
    run_without_proxy(|mut sb| async move {
        let clients = attach(&sb, &[1, UNSERVED_LINK]).await;
        start_server_mode(&mut sb).await;
        let call = getport_call(100_000);
        for client in &clients {
            for server in [server_addrs(1)[0], server_addrs(UNSERVED_LINK)[0]] {
                for transport in [Transport::Tcp, Transport::Udp] {
                    let direct = client
                        .call((server, 1112).into(), transport, false, &call)
                        .await;
                    assert!(
                        !matches!(direct, Outcome::Reply(_)),
                        "client {} reached {server}:1112 over {transport:?} without the redirect",
                        client.link()
                    );
                }
            }
        }
        let through = clients[0]
            .call(port_111(server_addrs(1)[0]), Transport::Tcp, false, &call)
            .await;
        assert!(matches!(through, Outcome::Reply(_)), "{through:?}");
        // The test runs in the server's namespace.
        let own = call_from(
            (server_addrs(1)[0], 1112).into(),
            Transport::Tcp,
            false,
            &call,
        )
        .await;
        assert!(
            matches!(own, Outcome::Reply(_)),
            "the server itself: {own:?}"
        );
    });
}

/// `--remote-in-flight`: a host with as many calls waiting for rpcbind as
/// it may has its next one refused (a TCP connection closed), while another
/// host's call still goes in. rpcbind is stopped (SIGSTOP) so that the
/// calls wait.
#[test]
fn a_host_with_its_calls_in_flight_is_held_back_and_the_others_are_not() {
    run_without_proxy(|mut sb| async move {
        let clients = attach(&sb, &SERVED_LINKS).await;
        let (busy, other) = (&clients[0], &clients[1]);
        start_server_mode_with(&mut sb, &["--remote-in-flight", "1"]).await;
        let miss = |prog| Call::rpcb(2, 3, pmap_args(prog, 1, 6, 0));
        let misses = sb.status_number("/cache/misses").await;
        sb.signal_rpcbind(Signal::SIGSTOP);
        let s1 = port_111(server_addrs(1)[0]);
        let s2 = port_111(server_addrs(2)[0]);
        let first_call = miss(400_101);
        let first = busy.call(s1, Transport::Udp, false, &first_call);
        let then = async {
            // The first is past the cache (a miss, waiting for rpcbind).
            let deadline = std::time::Instant::now() + WAIT;
            while sb.status_number("/cache/misses").await == misses {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the first call never missed"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let second = busy.call(s1, Transport::Tcp, false, &miss(400_102)).await;
            let others = other.call(s2, Transport::Tcp, false, &miss(400_103)).await;
            (second, others)
        };
        let (_, (second, others)) = tokio::join!(first, then);
        sb.signal_rpcbind(Signal::SIGCONT);
        assert_eq!(second, Outcome::Closed, "the busy host's second call");
        assert_ne!(others, Outcome::Closed, "the other host's call");
        let status = sb.status().await;
        assert_eq!(status["limits"]["remote_in_flight"]["refused"], 1);
        let offenders = &status["limits"]["remote_rate"]["offenders"];
        assert_eq!(offenders[0]["address"], "169.254.1.2", "{offenders}");
        assert_eq!(offenders[0]["in_flight"], 1, "{offenders}");
        // Once answered, the host has its calls back.
        let again = busy.call(s1, Transport::Tcp, false, &miss(400_104)).await;
        assert!(again.is_success(), "after rpcbind is back: {again:?}");
    });
}
