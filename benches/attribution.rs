//! What naming a client costs: `host::sockdiag` lookups and TIME_WAIT
//! counts, each step of the naming chain (`host::cgroup`: cgroup id → path
//! → unit, socket → pid → command), and `proxy::attribution::Attributor`
//! itself (`tcp`, `udp`, `unix`; first call and cached call), with 10,000
//! unrelated TCP sockets (5,000 connections) open, then 10,000 unrelated
//! TIME_WAIT sockets as well.
//!
//!   sudo cargo bench --bench attribution
//!
//! Prints the figures; asserts that every call names what it should, never
//! anything on time. Needs root: it moves into a network namespace of its
//! own (`lo` up; the machine's sockets are not counted), and creates a
//! cgroup `rbp-bench-<pid>/hammer.service` under the machine's cgroup2 mount
//! (removed afterwards) for a client process running as nobody (`setpriv`,
//! util-linux; bash's /dev/tcp and /dev/udp).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a smoke
//! version (a few hundred sockets, tens of calls) that checks the calls,
//! and prints one line. Without root or a writable cgroup2 hierarchy it
//! fails, in either mode.

#[path = "../tests/support/host_fixtures.rs"]
mod host_fixtures;
use host_fixtures::*;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Uid;
use rpcbind_proxy::host::cgroup;
use rpcbind_proxy::host::sockdiag::{self, Proto, SockDiag};
use rpcbind_proxy::proxy::attribution::{Attributor, Identity};

/// The port `Attributor::udp` also tries (the one a redirected client
/// addressed).
const RPCBIND_PORT: u16 = 111;
/// The cgroup the client runs in, named like a systemd unit.
const UNIT: &str = "hammer.service";

/// How much is done: the full run or the smoke run of `cargo test`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    full: bool,
    /// Unrelated established connections (two sockets each).
    noise_connections: usize,
    /// TIME_WAIT sockets on the port asked about.
    time_wait: usize,
    /// Unrelated TIME_WAIT sockets added for the second part.
    unrelated_time_wait: usize,
    /// Calls per figure, for the cheap calls (µs).
    calls: u32,
    /// For the TIME_WAIT counts.
    counts: u32,
    /// For reading /proc/net/tcp and for a search of this (big) process.
    slow: u32,
}

const FULL: Plan = Plan {
    full: true,
    noise_connections: 5_000,
    time_wait: 100,
    unrelated_time_wait: 10_000,
    calls: 20_000,
    counts: 200,
    slow: 5,
};

const SMOKE: Plan = Plan {
    full: false,
    noise_connections: 100,
    time_wait: 20,
    unrelated_time_wait: 200,
    calls: 30,
    counts: 10,
    slow: 2,
};

impl Plan {
    /// Prints in the full run only.
    fn say(&self, text: &str) {
        if self.full {
            println!("{text}");
        }
    }

    /// Runs `f` `n` times; prints the time per call.
    fn per_call(&self, label: &str, n: u32, mut f: impl FnMut()) {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        self.figure(label, t.elapsed() / n);
    }

    /// `f` on a new `Attributor` each time, whose sock_diag socket is
    /// already open and whose caches are empty: the first call for a
    /// client (only `f` is timed).
    fn first_call(&self, label: &str, n: u32, mut f: impl FnMut(&Attributor)) {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let a = Attributor::new(true);
            open_diag(&a);
            let t = Instant::now();
            f(&a);
            total += t.elapsed();
        }
        self.figure(label, total / n);
    }

    fn figure(&self, label: &str, each: Duration) {
        self.say(&format!("{label:<62} {:>9.1} µs", each.as_secs_f64() * 1e6));
    }
}

/// Makes `a` open its sock_diag socket without naming anyone (a loopback
/// source that no socket has), so that its caches stay empty.
fn open_diag(a: &Attributor) {
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let id = a.udp(nowhere, local, RPCBIND_PORT);
    assert_eq!(id.uid, None, "no socket is bound to 127.0.0.1:1");
}

fn main() {
    let full = std::env::args().skip(1).any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    assert!(
        Uid::effective().is_root(),
        "attribution bench: must run as root (unshare(CLONE_NEWNET), cgroups)"
    );
    // Still single-threaded: the whole process moves.
    if let Err(e) = host_fixtures::namespaces::enter_netns() {
        panic!("attribution bench: {e}");
    }
    run(plan);
}

fn run(plan: Plan) {
    let d = SockDiag::open().unwrap();
    plan.say("\nempty namespace");
    plan.per_call("count_time_wait([111]), kept SockDiag", plan.counts, || {
        assert_eq!(d.count_time_wait(&[111]).unwrap().total(), 0);
    });

    let limit = rpcbind_proxy::host::sys::raise_nofile_limit().unwrap();
    let need = 2 * plan.noise_connections as u64 + 1_000;
    assert!(
        limit >= need,
        "RLIMIT_NOFILE {limit} too low for {need} descriptors"
    );
    let noise = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut keep = Vec::with_capacity(2 * plan.noise_connections);
    for _ in 0..plan.noise_connections {
        keep.push(TcpStream::connect(noise.local_addr().unwrap()).unwrap());
        keep.push(noise.accept().unwrap().0);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let client = TcpStream::connect(server).unwrap();
    let (_acc, peer) = listener.accept().unwrap();
    let udp_server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (uc, us) = (
        udp_client.local_addr().unwrap(),
        udp_server.local_addr().unwrap(),
    );
    let tw = plan.time_wait as u64;
    one_shots(&listener, plan.time_wait, true);
    settle(server.port(), tw);
    let tcp_sockets = proc_tcp_count();
    plan.say(&format!(
        "\n{tcp_sockets} TCP sockets in the namespace ({tw} TIME_WAIT on the port asked for)"
    ));

    let want = own_inode(&client);
    plan.per_call("peer_socket TCP, kept SockDiag", plan.calls, || {
        let s = d.peer_socket(Proto::Tcp, peer, server).unwrap().unwrap();
        assert_eq!(s.inode, want);
    });
    plan.per_call("peer_socket TCP, socket per call", plan.calls, || {
        assert!(sockdiag::peer_socket(Proto::Tcp, peer, server)
            .unwrap()
            .is_some());
    });
    plan.per_call("peer_socket TCP, not found", plan.calls, || {
        assert!(d.peer_socket(Proto::Tcp, uc, server).unwrap().is_none());
    });
    plan.per_call(
        "peer_socket UDP (unconnected client), kept SockDiag",
        plan.calls,
        || {
            assert!(d.peer_socket(Proto::Udp, uc, us).unwrap().is_some());
        },
    );
    plan.per_call(
        "count_time_wait([port]), kept SockDiag",
        plan.counts,
        || {
            let c = d.count_time_wait(&[server.port()]).unwrap();
            assert_eq!(c.get(server.port()), tw);
        },
    );
    plan.per_call(
        "/proc/thread-self/net/tcp{,6} read + parse (as procnet)",
        plan.slow,
        || {
            assert_eq!(proc_time_wait(server.port()), tw);
        },
    );

    // More, unrelated, in TIME_WAIT: the state filter alone would send them
    // all; the port filter keeps them in the kernel.
    let unrelated = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = unrelated.local_addr().unwrap().port();
    let utw = plan.unrelated_time_wait as u64;
    one_shots(&unrelated, plan.unrelated_time_wait, true);
    settle(up, utw);
    plan.say(&format!(
        "+{utw} unrelated TIME_WAIT sockets ({} TCP sockets)",
        proc_tcp_count()
    ));
    plan.per_call(
        "count_time_wait([port]), kept SockDiag",
        plan.counts,
        || {
            let c = d.count_time_wait(&[server.port()]).unwrap();
            assert_eq!(c.get(server.port()), tw);
        },
    );
    plan.per_call(
        &format!("count_time_wait([that port]): {utw} sent"),
        plan.slow.max(2) * 4,
        || {
            assert_eq!(d.count_time_wait(&[up]).unwrap().get(up), utw);
        },
    );
    plan.per_call(
        "count_time_wait([port]), socket per call",
        plan.counts,
        || {
            let c = sockdiag::count_time_wait(&[server.port()]).unwrap();
            assert_eq!(c.get(server.port()), tw);
        },
    );
    plan.per_call(
        "/proc/thread-self/net/tcp{,6} read + parse (as procnet)",
        plan.slow,
        || {
            assert_eq!(proc_time_wait(server.port()), tw);
        },
    );
    plan.per_call("peer_socket TCP, kept SockDiag", plan.calls, || {
        assert!(d.peer_socket(Proto::Tcp, peer, server).unwrap().is_some());
    });

    // The naming chain, step by step, for this process's client socket (in
    // its own cgroup, holding every descriptor above).
    plan.say("\nnaming chain, client = this process");
    let s = d.peer_socket(Proto::Tcp, peer, server).unwrap().unwrap();
    let id = s.cgroup_id.expect("INET_DIAG_CGROUP_ID (Linux >= 5.7)");
    plan.per_call("cgroup_path_by_id", plan.calls, || {
        assert!(cgroup::cgroup_path_by_id(id).unwrap().is_some());
    });
    let path = cgroup::cgroup_path_by_id(id).unwrap().unwrap();
    plan.per_call("unit_of", plan.calls, || {
        let _ = cgroup::unit_of(&path);
    });
    plan.per_call("command", plan.calls, || {
        assert!(cgroup::command(std::process::id()).is_some());
    });
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let procs = std::fs::read_to_string(
        cgroup::cgroup2_mountpoint()
            .unwrap()
            .unwrap()
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .map(|t| t.lines().count())
    .unwrap_or(0);
    plan.per_call(
        &format!("pid_of_socket (cgroup {path}: {procs} pids, us {fds} fds)"),
        plan.slow,
        || {
            let _ = cgroup::pid_of_socket(&path, s.inode, 1024);
        },
    );
    plan.first_call(
        "Attributor::tcp, this process, first call",
        plan.slow,
        |a| {
            let i = a.tcp(peer, server, 111);
            assert_eq!(i.uid, Some(0), "{i:?}");
        },
    );
    let a = Attributor::new(true);
    a.tcp(peer, server, 111);
    plan.per_call(
        "Attributor::tcp, this process, cached call",
        plan.calls,
        || {
            let i = a.tcp(peer, server, 111);
            assert_eq!(i.uid, Some(0), "{i:?}");
        },
    );

    // A client in a cgroup of its own (one process, a few descriptors), as
    // a systemd unit's would be.
    plan.say(&format!(
        "\nnaming chain, client = bash as nobody in {UNIT}"
    ));
    let cg = TestCgroup::create();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let nobody = NobodyClient::start(&cg, server, udp_addr);
    let pid = nobody.pid();
    let (_conn, peer) = listener.accept().unwrap();
    let mut buf = [0u8; 8];
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (_, from) = udp.recv_from(&mut buf).unwrap();
    let s = d.peer_socket(Proto::Tcp, peer, server).unwrap().unwrap();
    assert_eq!((s.uid, s.cgroup_id), (NOBODY, Some(cg.id())));
    plan.per_call("pid_of_socket (a cgroup of 1 pid)", plan.calls, || {
        assert_eq!(cgroup::pid_of_socket(&cg.path, s.inode, 64), Some(pid));
    });
    plan.per_call(
        "whole chain: peer_socket+path+unit+pid_of_socket+command",
        plan.calls,
        || {
            let s = d.peer_socket(Proto::Tcp, peer, server).unwrap().unwrap();
            let path = cgroup::cgroup_path_by_id(s.cgroup_id.unwrap())
                .unwrap()
                .unwrap();
            assert_eq!(cgroup::unit_of(&path).as_deref(), Some(UNIT));
            let pid = cgroup::pid_of_socket(&path, s.inode, 64).unwrap();
            assert_eq!(cgroup::command(pid).as_deref(), Some("bash"));
        },
    );

    // The Attributor itself: what the proxy does per connection.
    let named = |i: &Identity, uid: u32| {
        assert_eq!(i.uid, Some(uid), "{i:?}");
        assert_eq!(i.pid, Some(pid), "{i:?}");
        assert_eq!(i.unit.as_deref(), Some(UNIT), "{i:?}");
        assert_eq!(i.command.as_deref(), Some("bash"), "{i:?}");
    };
    let tcp = |a: &Attributor| named(&a.tcp(peer, server, 111), NOBODY);
    let udp_call = |a: &Attributor| named(&a.udp(from, udp_addr, RPCBIND_PORT), NOBODY);
    // Its SO_PEERCRED, were it a unix client.
    let unix = |a: &Attributor| named(&a.unix(Some(pid as i32), NOBODY), NOBODY);
    plan.per_call(
        "Attributor::tcp, first call, opening sock_diag",
        plan.calls.min(2_000),
        || tcp(&Attributor::new(true)),
    );
    let a = Attributor::new(true);
    for (label, call) in [
        ("tcp", &tcp as &dyn Fn(&Attributor)),
        ("udp", &udp_call),
        ("unix", &unix),
    ] {
        plan.first_call(
            &format!("Attributor::{label}, first call"),
            plan.calls.min(2_000),
            call,
        );
        call(&a);
        plan.per_call(
            &format!("Attributor::{label}, cached call"),
            plan.calls,
            || call(&a),
        );
    }
    // This process as a unix client: the pid and uid from SO_PEERCRED.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let cred = getsockopt(&theirs, PeerCredentials).unwrap();
    let me = |a: &Attributor| {
        let i = a.unix(Some(cred.pid()), cred.uid());
        assert_eq!(i.pid, Some(std::process::id()), "{i:?}");
        assert!(i.command.is_some(), "{i:?}");
    };
    plan.first_call(
        "Attributor::unix, this process, first call",
        plan.calls.min(2_000),
        me,
    );
    me(&a);
    plan.per_call(
        "Attributor::unix, this process, cached call",
        plan.calls,
        || me(&a),
    );
    drop(ours);
    nobody.finish();
    drop(cg);
    drop(keep);

    if !plan.full {
        println!(
            "attribution: smoke run ok ({tcp_sockets} TCP sockets; \
             `cargo bench --bench attribution` prints the figures)"
        );
    }
}

// --- helpers (as in tests/sockdiag.rs) ---

fn proc_tcp_count() -> usize {
    ["tcp", "tcp6"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .unwrap()
                .lines()
                .count()
                - 1
        })
        .sum()
}
