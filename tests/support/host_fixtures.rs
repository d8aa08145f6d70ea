//! Host fixtures shared by tests/sockdiag.rs, tests/netfilter.rs,
//! tests/nat_keeper.rs and benches/attribution.rs
//! (included by path): a private network namespace, a private cgroup named
//! like a systemd unit, a client process as nobody inside it, and TCP
//! TIME_WAIT counts read from /proc/thread-self/net as the reference.
// Each test crate uses a part of these helpers, through their `pub`
// items: neither lint says anything about the library.
#![allow(dead_code, unreachable_pub)]

#[path = "namespaces.rs"]
pub mod namespaces;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::Uid;
use rpcbind_proxy::host::cgroup;
use rpcbind_proxy::host::procnet;

pub const NOBODY: u32 = 65534;

/// Runs `f` on a new thread that first moves into a fresh network namespace
/// with `lo` up. Panics when not root.
pub fn in_netns<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    assert!(
        Uid::effective().is_root(),
        "{name}: the tests must run as root (unshare(CLONE_NEWNET), cgroups)"
    );
    let h = std::thread::spawn(move || {
        if let Err(e) = namespaces::enter_netns() {
            panic!("{e} (the tests must run as root)");
        }
        f();
    });
    if let Err(p) = h.join() {
        std::panic::resume_unwind(p);
    }
}

/// The inode of one of this process's descriptors (what `socket:[N]` names).
pub fn own_inode(fd: &impl AsRawFd) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("stat /proc/self/fd/N")
        .ino()
}

static CGROUP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// `<cgroup2>/rbp-test-<pid>-<n>/hammer.service`, removed on drop.
pub struct TestCgroup {
    pub parent: PathBuf,
    pub leaf: PathBuf,
    /// The leaf's path relative to the hierarchy ("/rbp-test-…/hammer.service").
    pub path: String,
}

impl TestCgroup {
    /// Panics when this machine has no writable cgroup2 hierarchy.
    pub fn create() -> Self {
        let mp = cgroup::cgroup2_mountpoint()
            .expect("reading /proc/self/mountinfo")
            .unwrap_or_else(|| {
                panic!(
                    "needs a writable cgroup2 hierarchy: \
                     no cgroup2 mount in /proc/self/mountinfo"
                )
            });
        let name = format!(
            "rbp-test-{}-{}",
            std::process::id(),
            CGROUP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let parent = mp.join(&name);
        if let Err(e) = std::fs::create_dir(&parent) {
            panic!(
                "needs a writable cgroup2 hierarchy: cannot create {}: {e}",
                parent.display()
            );
        }
        let leaf = parent.join("hammer.service");
        std::fs::create_dir(&leaf).expect("mkdir leaf cgroup");
        TestCgroup {
            parent,
            leaf,
            path: format!("/{name}/hammer.service"),
        }
    }

    /// The cgroup id: on 64-bit kernels the kernfs inode number of the
    /// directory is the cgroup id (what INET_DIAG_CGROUP_ID reports).
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.leaf).unwrap().ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Every process started in it has been reaped by now.
        let a = std::fs::remove_dir(&self.leaf);
        let b = std::fs::remove_dir(&self.parent);
        if !std::thread::panicking() {
            a.expect("rmdir leaf cgroup");
            b.expect("rmdir test cgroup");
        }
    }
}

/// A bash that moved itself into `cg` before dropping to nobody, holding a
/// TCP connection (fd 3) to `tcp` and a UDP socket (fd 4) connected to `udp`
/// (one datagram sent). Ends when its stdin closes.
pub struct NobodyClient {
    child: Child,
}

impl NobodyClient {
    pub fn start(cg: &TestCgroup, tcp: SocketAddr, udp: SocketAddr) -> Self {
        let procs = cg.leaf.join("cgroup.procs");
        let inner = format!(
            "exec 3<>/dev/tcp/{}/{} 4<>/dev/udp/{}/{} && printf hi >&4 && echo ready && {{ read x; true; }}",
            tcp.ip(),
            tcp.port(),
            udp.ip(),
            udp.port()
        );
        // The shell moves itself first, so every socket is created in `cg`
        // (a socket records the cgroup of its creator at creation).
        let script = format!(
            "echo $$ > '{}' && exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups bash -c '{inner}'",
            procs.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "client did not connect");
        NobodyClient { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "client: {st}");
    }
}

impl Drop for NobodyClient {
    /// On a failed assertion: end and reap the client, so that its cgroup
    /// can be removed.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `n` connections to `listener`, each closed by the side `client_first`
/// says first, then by the other (which sees EOF first).
pub fn one_shots(listener: &TcpListener, n: usize, client_first: bool) {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 1];
        if client_first {
            drop(c);
            assert_eq!(s.read(&mut b).unwrap(), 0);
        } else {
            s.write_all(b"r").unwrap();
            drop(s);
            c.read_exact(&mut b).unwrap();
            assert_eq!(c.read(&mut b).unwrap(), 0);
            s = c; // the client now closes second
        }
        drop(s);
    }
}

/// TIME_WAIT sockets of this thread's network namespace with `port` as
/// local or remote port, from /proc/thread-self/net/tcp{,6}: the reference.
/// (Not `procnet::tcp_sockets`: /proc/net is the namespace of the process's
/// main thread, and these tests unshare on a thread of their own.) Reads and
/// parses every line, as `procnet` does.
pub fn proc_time_wait(port: u16) -> u64 {
    let mut n = 0;
    for file in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if f.len() > 3
                && u8::from_str_radix(f[3], 16) == Ok(procnet::TCP_TIME_WAIT)
                && (port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port))
            {
                n += 1;
            }
        }
    }
    n
}

/// Waits (bounded) until /proc/net/tcp shows `want` TIME_WAIT for `port`:
/// the last FIN of each connection is processed by the kernel on its own.
pub fn settle(port: u16, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_time_wait(port) != want {
        assert!(
            Instant::now() < deadline,
            "port {port}: {} TIME_WAIT in /proc/net/tcp, expected {want}",
            proc_time_wait(port)
        );
        std::thread::yield_now();
    }
}

/// `nft ARGS`' standard output (the test's view of the ruleset: the crate
/// itself never runs nft); fails the test with nft's message.
pub fn nft(args: &[&str]) -> String {
    let out = Command::new("nft")
        .args(args)
        .output()
        .expect("run nft (apt-get install nftables)");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Transparent mode's redirect of TCP and UDP to 127.0.0.1:111 (and
/// [::1]:111 if `ipv6`) to `port`, in table `table`, letting `mark` through.
pub fn redirect_rules(
    table: &str,
    mark: u32,
    port: u16,
    ipv6: bool,
) -> rpcbind_proxy::host::netfilter::InterceptRules {
    use rpcbind_proxy::host::netfilter::{InterceptRules, Redirect};
    let r = Redirect {
        tcp_port: port,
        udp_port: port,
    };
    InterceptRules {
        table: table.into(),
        mark,
        ipv4: Some(r),
        ipv6: ipv6.then_some(r),
        remote: None,
        outbound: None,
    }
}
