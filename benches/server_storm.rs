//! Server mode in a mount storm: what the network's clients see with the
//! proxy in front of rpcbind, against rpcbind alone.
//!
//!   sudo cargo bench --bench server_storm
//!
//! As root, in network namespaces this bench makes (tests/support: the
//! sandbox is the server, with the real rpcbind and the proxy started with
//! `--intercept-remote`; client hosts joined to it by veth pairs, with
//! link-local IPv4 addresses only):
//! - the storm: 200 client addresses on one client link, each making the
//!   three lookups `mount.nfs` makes (GETPORT of MOUNT v3, GETPORT of NFS
//!   v3, a portmapper DUMP) on fresh TCP connections from reserved ports
//!   (600-1023, as a root mount binds them), all clients at once; lookups a
//!   second over the storm, and each lookup's latency (connect to reply);
//!   TIME_WAIT sockets and reserved ports held on the client after it;
//!   rpcbind's own lookup count (GETSTAT) over the proxied storms;
//! - an abusive host on a second link: 10,000 TCP connections held open
//!   (at most what connects in 10 s) and a UDP DUMP flood while the storm
//!   runs again, its rate against the storm's without it, and what the
//!   proxy's status says of the abuser.
//!
//! `STORM_PIN=1`: the server's processes (rpcbind, the proxy, every thread)
//! on CPU 0 and the clients' thread on CPU 1, so that neither side takes the
//! other's CPU (the client side of a real storm is other machines'); the
//! proxy then has the one CPU rpcbind has.
//!
//! Each row is 3 storms, interleaved direct / proxied, medians. Prints the
//! table; asserts nothing. Under `cargo test --all-targets` (no `--bench`
//! argument) it runs one small storm of each kind as a smoke run; without
//! root it says so and exits 0.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::topology::{server_addrs, server_interface, Client};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The storm's size: client addresses, and rounds of each row.
#[derive(Debug, Clone, Copy)]
struct Size {
    clients: u8,
    rounds: usize,
    abuser_connections: usize,
}

const FULL: Size = Size {
    clients: 200,
    rounds: 3,
    abuser_connections: 10_000,
};
const SMOKE: Size = Size {
    clients: 10,
    rounds: 1,
    abuser_connections: 200,
};

/// MOUNT and NFS, as an NFS server registers them.
const MOUNT: u32 = 100_005;
const NFS: u32 = 100_003;
/// The first of the storm's client addresses on link 1 (169.254.1.10 on).
const FIRST_HOST: u8 = 10;
/// Bound on one lookup, connect to reply.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the abuser's connecting.
const ABUSER_CONNECTING: Duration = Duration::from_secs(10);

/// One storm's outcome.
#[derive(Debug, Default, Clone)]
struct Storm {
    lookups: usize,
    failed: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Storm {
    fn rate(&self) -> f64 {
        self.lookups as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// The middle value (the upper middle of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !nix::unistd::Uid::effective().is_root() {
        println!("server_storm: needs root (namespaces, nftables); not run");
        return;
    }
    let size = if full { FULL } else { SMOKE };
    run_without_proxy(move |sb| async move { bench(sb, size, full).await });
}

async fn bench(mut sb: Sandbox, size: Size, full: bool) {
    for prog in [MOUNT, NFS] {
        for (netid, addr) in [("tcp", "0.0.0.0.8.1"), ("udp", "0.0.0.0.8.1")] {
            assert!(
                sb.rpcbind_set(prog, 3, netid, addr).await,
                "registering {prog}"
            );
        }
    }
    if pinned() {
        pin_process(sb.rpcbind_pid(), 0);
    }
    let client = Client::attach(&sb, 1).await;
    let abuser = Client::attach(&sb, 2).await;
    let hosts: Vec<IpAddr> = (0..size.clients)
        .map(|i| Ipv4Addr::new(169, 254, 1, FIRST_HOST + i).into())
        .collect();
    for h in &hosts {
        let out = client
            .run(&["ip", "addr", "add", &format!("{h}/24"), "dev", "eth0"])
            .await;
        assert!(out.status.success(), "adding {h}: {out:?}");
    }
    let server: SocketAddr = (server_addrs(1)[0], 111).into();
    let proxy_args: Vec<String> = [
        "--intercept-remote",
        "--remote-interface",
        &server_interface(1),
        "--remote-interface",
        &server_interface(2),
    ]
    .map(String::from)
    .into_iter()
    // Extra serve options for experiments, e.g. RPCBIND_PROXY_ARGS="--threads 1".
    .chain(
        std::env::var("RPCBIND_PROXY_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from),
    )
    .collect();
    let args: Vec<&str> = proxy_args.iter().map(String::as_str).collect();

    let (mut direct, mut proxied, mut abused) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tw_direct, mut tw_proxied) = (0, 0);
    let mut rpcbind_lookups = 0;
    let mut proxied_lookups = 0;
    for _ in 0..size.rounds {
        let before = client
            .time_wait_count(Some(111), Duration::from_secs(5))
            .await;
        direct.push(storm(&client, &hosts, server).await);
        tw_direct += client
            .time_wait_count(Some(111), Duration::from_secs(5))
            .await
            - before;

        sb.start_proxy(&args).await.expect("the proxy starts");
        if pinned() {
            pin_process(sb.proxy_pid(), 0);
        }
        let before = client
            .time_wait_count(Some(111), Duration::from_secs(5))
            .await;
        let counted = sb.rpcbind_lookups().await;
        let s = storm(&client, &hosts, server).await;
        rpcbind_lookups += sb.rpcbind_lookups().await - counted;
        proxied_lookups += s.lookups;
        proxied.push(s);
        tw_proxied += client
            .time_wait_count(Some(111), Duration::from_secs(5))
            .await
            - before;

        // The abuser: connections held open, and a UDP DUMP flood, while
        // the storm runs again.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let abuse = {
            let n = size.abuser_connections;
            let stop = stop_rx.clone();
            abuser.within(move || abuse(server, n, ready_tx, stop))
        };
        let (s, held) = tokio::join!(
            async {
                // The connections first, then the storm beside the flood.
                let _ = ready_rx.await;
                let s = storm(&client, &hosts, server).await;
                let _ = stop_tx.send(true);
                s
            },
            abuse
        );
        abused.push((s, held));
        let status = sb.status_printed(&[]).await;
        if full {
            for line in status
                .lines()
                .filter(|l| l.starts_with("limits") || l.starts_with("held back"))
            {
                println!("  status: {line}");
            }
        }
        sb.stop_proxy().await;
    }

    let row = |name: &str, storms: &[Storm], tw: usize| {
        let rates: Vec<f64> = storms.iter().map(Storm::rate).collect();
        let p50: Vec<f64> = storms
            .iter()
            .map(|s| s.percentile(0.5).as_secs_f64() * 1e3)
            .collect();
        let p99: Vec<f64> = storms
            .iter()
            .map(|s| s.percentile(0.99).as_secs_f64() * 1e3)
            .collect();
        let failed: usize = storms.iter().map(|s| s.failed).sum();
        let lookups: usize = storms.iter().map(|s| s.lookups).sum();
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {failed} of {lookups} | {:.1} |",
            median(rates),
            median(p50),
            median(p99),
            tw as f64 / storms.len() as f64,
        );
        if let Some(f) = storms.iter().find_map(|s| s.first_failure.clone()) {
            println!("  (first failure: {f})");
        }
    };
    println!(
        "server_storm: {} clients x 3 lookups on fresh TCP connections from reserved ports, {} rounds",
        size.clients, size.rounds
    );
    println!(
        "| storm | lookups/s | p50 ms | p99 ms | failed | TIME_WAIT on the client after a storm |"
    );
    println!("|---|---|---|---|---|---|");
    row("rpcbind alone", &direct, tw_direct);
    row("through the proxy", &proxied, tw_proxied);
    let abused_storms: Vec<Storm> = abused.iter().map(|(s, _)| s.clone()).collect();
    row("through the proxy, beside an abuser", &abused_storms, 0);
    let d = median(direct.iter().map(Storm::rate).collect());
    let p = median(proxied.iter().map(Storm::rate).collect());
    let a = median(abused_storms.iter().map(Storm::rate).collect());
    println!(
        "proxied/direct lookups/s {:.2}; with the abuser/without {:.2}; rpcbind answered {rpcbind_lookups} lookups for {proxied_lookups} proxied ({:.2} per 1,000)",
        p / d,
        a / p,
        rpcbind_lookups as f64 * 1000.0 / proxied_lookups.max(1) as f64
    );
    for (i, (_, held)) in abused.iter().enumerate() {
        println!(
            "abuser, round {}: {} connections open at once, {} DUMP datagrams sent, {} answered",
            i + 1,
            held.connections,
            held.datagrams,
            held.answered
        );
    }
}

/// Whether `STORM_PIN=1` asks for the two sides on CPUs of their own.
fn pinned() -> bool {
    std::env::var_os("STORM_PIN").is_some_and(|v| v == "1")
}

/// Puts every thread of `pid` on `cpu` (taskset -a).
fn pin_process(pid: Option<u32>, cpu: u32) {
    let pid = pid.expect("the process runs").to_string();
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid])
        .output()
        .expect("running taskset");
    assert!(out.status.success(), "taskset {pid}: {out:?}");
}

/// Every host makes its three lookups, one after the other, each on a
/// fresh connection from a reserved port; all hosts at once.
async fn storm(client: &Client, hosts: &[IpAddr], server: SocketAddr) -> Storm {
    let hosts = hosts.to_vec();
    client
        .within(move || async move {
            if pinned() {
                let mut one = nix::sched::CpuSet::new();
                one.set(1).expect("CPU 1");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)
                    .expect("pinning the clients' thread to CPU 1");
            }
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for host in hosts {
                tasks.spawn(async move {
                    let mut out = Vec::new();
                    for call in mount_lookups() {
                        out.push(lookup(host, server, &call).await);
                    }
                    out
                });
            }
            let mut s = Storm::default();
            while let Some(done) = tasks.join_next().await {
                for r in done.expect("a storm task") {
                    s.lookups += 1;
                    match r {
                        Ok(latency) => s.latencies.push(latency),
                        Err(e) => {
                            s.failed += 1;
                            s.first_failure.get_or_insert(e);
                        }
                    }
                }
            }
            s.elapsed = started.elapsed();
            s
        })
        .await
}

/// The lookups `mount.nfs` makes of a server's portmapper.
fn mount_lookups() -> [Call; 3] {
    [
        Call::new(
            PMAP_PROG,
            2,
            PMAPPROC_GETPORT,
            pmap_args(MOUNT, 3, IPPROTO_TCP, 0),
        ),
        Call::new(
            PMAP_PROG,
            2,
            PMAPPROC_GETPORT,
            pmap_args(NFS, 3, IPPROTO_TCP, 0),
        ),
        Call::new(PMAP_PROG, 2, PMAPPROC_DUMP, Vec::new()),
    ]
}

/// One lookup on a fresh TCP connection from `host` and a reserved port:
/// its latency, connect to reply, or why it failed.
async fn lookup(host: IpAddr, server: SocketAddr, call: &Call) -> Result<Duration, String> {
    let started = Instant::now();
    let mut wire = Vec::new();
    put_record(&mut wire, &call.encode());
    let go = async {
        let mut conn = connect_reserved(host, server).await?;
        conn.write_all(&wire)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut mark = [0u8; 4];
        conn.read_exact(&mut mark)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        if len > 1 << 20 {
            return Err(format!("a record of {len} bytes"));
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(started.elapsed())
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, go)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// A TCP connection from `host` and a free port below 1024, as
/// `bindresvport` finds one (600-1023, from a random start).
async fn connect_reserved(
    host: IpAddr,
    server: SocketAddr,
) -> Result<tokio::net::TcpStream, String> {
    const LOW: u16 = 600;
    const HIGH: u16 = 1023;
    let span = HIGH - LOW + 1;
    let start = (support::fake_rpcbind::rand_suffix() % u64::from(span)) as u16;
    for i in 0..span {
        let port = LOW + (start + i) % span;
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        match socket.bind((host, port).into()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(format!("bind {host}:{port}: {e}")),
        }
        return match socket.connect(server).await {
            Ok(c) => Ok(c),
            // The port is free to bind but its 4-tuple is in TIME_WAIT.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => continue,
            Err(e) => Err(format!("connect from {host}:{port}: {e}")),
        };
    }
    Err(format!("no reserved port free on {host}"))
}

/// What the abuser managed.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    connections: usize,
    datagrams: u64,
    answered: u64,
}

/// Opens up to `n` TCP connections to `server` and holds them, says
/// `ready`, and floods it with UDP DUMP calls until `stop`.
async fn abuse(
    server: SocketAddr,
    n: usize,
    ready: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Held {
    let mut held = Held::default();
    let mut conns = Vec::new();
    let until = Instant::now() + ABUSER_CONNECTING;
    while conns.len() < n && Instant::now() < until {
        match tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(server),
        )
        .await
        {
            Ok(Ok(c)) => conns.push(c),
            _ => break,
        }
    }
    held.connections = conns.len();
    let udp = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .expect("a UDP socket");
    let _ = ready.send(());
    let dump = Call::new(PMAP_PROG, 2, PMAPPROC_DUMP, Vec::new()).encode();
    let mut buf = vec![0u8; 9000];
    while !*stop.borrow() {
        for _ in 0..64 {
            if udp.send_to(&dump, server).await.is_ok() {
                held.datagrams += 1;
            }
        }
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, udp.recv_from(&mut buf)).await {
            held.answered += 1;
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    drop(conns);
    held
}
