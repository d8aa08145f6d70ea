//! Sandbox harness shared by the integration tests.
//!
//! Every test body runs on a fresh thread that has unshared its network
//! namespace, with a tokio current_thread runtime built on that thread, so
//! every socket the test opens (and every child it spawns) lives in a private
//! network namespace with its own loopback, 127.0.0.1:111 and 127.0.0.1:1111.
//!
//! Inside that namespace:
//! - an *anchor* process (`sleep infinity` in a new mount namespace with a
//!   tmpfs on /run) holds the private mount namespace. rpcbind and the proxy
//!   are started inside it with `nsenter -m`, so rpcbind can be killed and
//!   restarted without the namespace (and the proxy's view of
//!   /run/rpcbind.sock) going away;
//! - rpcbind (`rpcbind -f`), with its unix socket at /run/rpcbind.sock,
//!   reachable from the test as `/proc/<anchor>/root/run/rpcbind.sock`;
//! - the proxy under test, listening on /run/rpcbind-proxy/rpcbind.sock,
//!   127.0.0.1:1111 (TCP and UDP), readiness signalled with sd_notify.
//!
//! All children are killed and reaped when the [`Sandbox`] is dropped; if the
//! test is failing, the proxy's and rpcbind's output is printed.
// Each test crate uses a part of these helpers, through their `pub`
// items: neither lint says anything about the library.
#![allow(dead_code, unreachable_pub)]

pub mod fake_rpcbind;
pub mod http;
pub mod namespaces;
pub mod rpc;
pub mod tirpc;
pub mod topology;
pub mod units;
pub use nix::sys::signal::Signal;
pub use rpc::*;

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::time::Instant;

/// Port the proxy listens on (TCP and UDP) in the sandbox.
pub const PROXY_PORT: u16 = 1111;
/// rpcbind's port.
pub const RPCBIND_PORT: u16 = 111;
/// Bound on every readiness wait (rpcbind's socket, the proxy's READY=1).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on commands run with [`Sandbox::run_in_ns`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths as seen inside the sandbox's mount namespace.
pub const RPCBIND_SOCK: &str = "/run/rpcbind.sock";
pub const PROXY_DIR: &str = "/run/rpcbind-proxy";
pub const PROXY_SOCK: &str = "/run/rpcbind-proxy/rpcbind.sock";
pub const CONTROL_SOCK: &str = "/run/rpcbind-proxy/control.sock";
/// Transparent mode: rpcbind's unix socket, moved (socket activation) so
/// that the proxy can take /run/rpcbind.sock.
pub const RPCBIND_UPSTREAM_SOCK: &str = "/run/rpcbind/upstream.sock";
/// The nftables table of transparent mode.
pub const INTERCEPT_TABLE: &str = "rpcbind_proxy";
/// The proxy binary under test.
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_rpcbind-proxy");

/// PMAP v2 GETPORT of `prog` version 1 on tcp: the lookup most tests make.
pub fn getport_call(prog: u32) -> Call {
    Call::new(
        PMAP_PROG,
        2,
        PMAPPROC_GETPORT,
        pmap_args(prog, 1, IPPROTO_TCP, 0),
    )
}

/// How a call travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Unix,
    Tcp,
    Udp,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Unix, Transport::Tcp, Transport::Udp];
    pub const STREAMS: [Transport; 2] = [Transport::Unix, Transport::Tcp];
}

/// Whom a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// rpcbind itself: /run/rpcbind.sock, 127.0.0.1:111.
    Direct,
    /// The proxy: /run/rpcbind-proxy/rpcbind.sock, 127.0.0.1:1111.
    Proxy,
}

/// What [`run_with`] starts before handing the sandbox to the test.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start the proxy (and wait for READY=1) before the test body runs.
    pub proxy: bool,
    /// Extra arguments appended to the proxy's `serve` command line.
    pub proxy_args: Vec<String>,
    /// Transparent mode, as `rpcbind-proxy intercept enable` sets it up:
    /// rpcbind socket-activated on [`RPCBIND_UPSTREAM_SOCK`] (its TCP/UDP
    /// port 111 as usual), the proxy on /run/rpcbind.sock, 127.0.0.1:1111
    /// and [::1]:1111 with `--intercept`.
    pub transparent: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            proxy: true,
            proxy_args: Vec::new(),
            transparent: false,
        }
    }
}

/// Whether the eBPF recorder must load here: this process (root) has
/// CAP_BPF and CAP_NET_ADMIN, no seccomp filter, and Linux is 6.1 or later
/// (cgroup socket programs have every helper the recorder uses there).
/// Elsewhere the eBPF checks print why they skip; here a refusal fails
/// them, so a broken recorder cannot pass as a machine that refuses it.
pub fn ebpf_expected() -> bool {
    use rpcbind_proxy::host::privileges::{Privileges, CAP_BPF, CAP_NET_ADMIN};
    let own = Privileges::own();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    own.has(CAP_BPF) && own.has(CAP_NET_ADMIN) && !own.seccomp_filter && version >= (6, 1)
}

/// Runs `body` in a fresh sandbox with rpcbind and the proxy running.
pub fn run<F, Fut>(body: F)
where
    F: FnOnce(Sandbox) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    run_with(Options::default(), body)
}

/// Runs `body` in a fresh sandbox with rpcbind only; the body may start the
/// proxy itself with [`Sandbox::start_proxy`].
pub fn run_without_proxy<F, Fut>(body: F)
where
    F: FnOnce(Sandbox) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    run_with(
        Options {
            proxy: false,
            ..Options::default()
        },
        body,
    )
}

/// Runs `body` on a new thread in a private network namespace, on a
/// current_thread runtime built on that thread, with a sandbox started as
/// `opts` says. A panic in the body (or in the sandbox's start) is re-raised
/// on the calling test thread.
pub fn run_with<F, Fut>(opts: Options, body: F)
where
    F: FnOnce(Sandbox) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let name = std::thread::current()
        .name()
        .unwrap_or("sandbox")
        .to_owned();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Err(e) = namespaces::enter_netns() {
                panic!("{e} (the tests must run as root)");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the tokio runtime");
            rt.block_on(async move {
                let sb = match Sandbox::start(&opts).await {
                    Ok(sb) => sb,
                    Err(e) => panic!("sandbox did not start: {e}"),
                };
                body(sb).await;
            });
        })
        .expect("spawning the sandbox thread");
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process, reaped by a thread of its own.
///
/// The reaper first waits with WNOWAIT (the child stays a zombie, so its pid
/// cannot be reused), then reaps it while holding the lock that
/// [`Proc::signal`] takes: a signal is never sent to a reaped (possibly
/// reused) pid.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    pid: Pid,
    cell: Arc<ExitCell>,
}

#[derive(Debug)]
struct ExitCell {
    status: Mutex<Option<String>>,
    cv: Condvar,
    exited: watch::Sender<bool>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> io::Result<(Proc, std::process::Child)> {
        let child = cmd.spawn()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let cell = Arc::new(ExitCell {
            status: Mutex::new(None),
            cv: Condvar::new(),
            exited: watch::Sender::new(false),
        });
        let reaper_cell = Arc::clone(&cell);
        std::thread::Builder::new()
            .name(format!("reap-{name}-{pid}"))
            .spawn(move || reap(pid, &reaper_cell))?;
        Ok((Proc { name, pid, cell }, child))
    }

    fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// How it ended, once it has.
    fn exit_status(&self) -> Option<String> {
        self.cell.status.lock().unwrap().clone()
    }

    /// Sends `sig` unless the process has already been reaped.
    fn signal(&self, sig: Signal) {
        let status = self.cell.status.lock().unwrap();
        if status.is_none() {
            let _ = kill(self.pid, sig);
        }
    }

    async fn wait(&self) -> String {
        let mut rx = self.cell.exited.subscribe();
        let _ = rx.wait_for(|&done| done).await;
        self.exit_status().unwrap_or_default()
    }

    async fn wait_timeout(&self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    fn wait_blocking(&self, timeout: Duration) -> Option<String> {
        let guard = self.cell.status.lock().unwrap();
        let (guard, _) = self
            .cell
            .cv
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap();
        guard.clone()
    }

    /// SIGKILL and wait (blocking) until reaped.
    fn kill_blocking(&self) {
        self.signal(Signal::SIGKILL);
        if self.wait_blocking(Duration::from_secs(10)).is_none() {
            eprintln!(
                "{} (pid {}) not reaped 10 s after SIGKILL",
                self.name, self.pid
            );
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; blocking.
    fn terminate_blocking(&self, grace: Duration) -> Option<String> {
        self.signal(Signal::SIGTERM);
        if let Some(s) = self.wait_blocking(grace) {
            return Some(s);
        }
        eprintln!(
            "{} (pid {}) still running {grace:?} after SIGTERM; sending SIGKILL",
            self.name, self.pid
        );
        self.kill_blocking();
        None
    }
}

fn reap(pid: Pid, cell: &ExitCell) {
    // Wait for the exit without reaping: the pid stays reserved meanwhile.
    let exited = || waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
    while matches!(exited(), Err(Errno::EINTR)) {}
    let mut status = cell.status.lock().unwrap();
    let desc = loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, code)) => break format!("exit code {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => break format!("killed by {sig}"),
            Ok(other) => break format!("{other:?}"),
            Err(e) => break format!("waitpid: {e}"),
        }
    };
    *status = Some(desc);
    cell.cv.notify_all();
    drop(status);
    cell.exited.send_replace(true);
}

/// Environment a daemon must not inherit from the test runner.
const SCRUBBED_ENV: [&str; 5] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
];

static SANDBOX_SEQ: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------

/// A private network + mount namespace with rpcbind and (optionally) the proxy.
#[derive(Debug)]
pub struct Sandbox {
    anchor: Proc,
    /// `/proc/<anchor>/root`, opened while root: `/proc/self/fd/<n>/...`
    /// reaches the sandbox's files for any euid (see [`Sandbox::connect_unix_as`]).
    root_dir: File,
    rpcbind: Option<Proc>,
    proxy: Option<Proc>,
    /// Bound for the proxy's sd_notify messages while it runs.
    notify: Option<UnixDatagram>,
    proxy_starts: usize,
    tmp: PathBuf,
    transparent: bool,
    /// A command the proxy is started under (e.g. a seccomp filter), set
    /// with [`Sandbox::wrap_proxy`].
    proxy_wrapper: Vec<String>,
}

impl Sandbox {
    /// Starts the anchor and rpcbind, and the proxy if `opts.proxy`.
    pub async fn start(opts: &Options) -> Result<Sandbox, String> {
        let seq = SANDBOX_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp =
            std::env::temp_dir().join(format!("rpcbind-proxy-test.{}.{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;

        let (anchor, root_dir) = start_anchor().await?;
        let mut sb = Sandbox {
            anchor,
            root_dir,
            rpcbind: None,
            proxy: None,
            notify: None,
            proxy_starts: 0,
            tmp,
            transparent: opts.transparent,
            proxy_wrapper: Vec::new(),
        };
        sb.start_rpcbind().await?;
        if opts.proxy {
            let args: Vec<&str> = opts.proxy_args.iter().map(String::as_str).collect();
            sb.start_proxy(&args).await?;
        }
        Ok(sb)
    }

    // --- pids and paths ---------------------------------------------------

    /// Pid of the process holding the sandbox's mount namespace.
    pub fn anchor_pid(&self) -> u32 {
        self.anchor.pid()
    }

    pub fn rpcbind_pid(&self) -> Option<u32> {
        self.rpcbind.as_ref().map(Proc::pid)
    }

    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(Proc::pid)
    }

    /// The sandbox's root directory as seen from the test process (root only).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.anchor.pid))
    }

    /// A path inside the sandbox (`inner` is absolute, e.g. "/run/x"), as
    /// seen from the test process (root only).
    pub fn path(&self, inner: &str) -> PathBuf {
        self.root().join(inner.trim_start_matches('/'))
    }

    /// rpcbind's own unix socket (moved in transparent mode).
    pub fn rpcbind_unix(&self) -> PathBuf {
        self.path(if self.transparent {
            RPCBIND_UPSTREAM_SOCK
        } else {
            RPCBIND_SOCK
        })
    }

    /// The proxy's unix socket (/run/rpcbind.sock in transparent mode).
    pub fn proxy_unix(&self) -> PathBuf {
        self.path(if self.transparent {
            RPCBIND_SOCK
        } else {
            PROXY_SOCK
        })
    }

    /// Whether transparent mode's nftables table exists in the sandbox's
    /// network namespace (asked over netlink from this thread, which is in
    /// it).
    pub fn intercept_table_exists(&self) -> bool {
        rpcbind_proxy::host::netfilter::table_exists(INTERCEPT_TABLE)
            .expect("asking nf_tables for the table")
    }

    pub fn control_unix(&self) -> PathBuf {
        self.path(CONTROL_SOCK)
    }

    pub fn rpcbind_tcp(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, RPCBIND_PORT).into()
    }

    pub fn rpcbind_udp(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, RPCBIND_PORT).into()
    }

    pub fn proxy_tcp(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, PROXY_PORT).into()
    }

    pub fn proxy_udp(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, PROXY_PORT).into()
    }

    pub fn endpoint(&self, target: Target, transport: Transport) -> Endpoint {
        match (target, transport) {
            (Target::Direct, Transport::Unix) => Endpoint::Unix(self.rpcbind_unix()),
            (Target::Direct, Transport::Tcp) => Endpoint::Tcp(self.rpcbind_tcp()),
            (Target::Direct, Transport::Udp) => Endpoint::Udp(self.rpcbind_udp()),
            (Target::Proxy, Transport::Unix) => Endpoint::Unix(self.proxy_unix()),
            (Target::Proxy, Transport::Tcp) => Endpoint::Tcp(self.proxy_tcp()),
            (Target::Proxy, Transport::Udp) => Endpoint::Udp(self.proxy_udp()),
        }
    }

    /// Temporary directory of this sandbox (on the host's /tmp, which the
    /// sandbox shares).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    // --- calls --------------------------------------------------------------

    /// One call on a fresh connection.
    pub async fn call(&self, target: Target, transport: Transport, call: &Call) -> Outcome {
        call_once(&self.endpoint(target, transport), call).await
    }

    /// Connects to a unix socket of the sandbox (a path from
    /// [`Sandbox::rpcbind_unix`] or [`Sandbox::proxy_unix`]) with the given
    /// effective uid and gid, so the server sees them with SO_PEERCRED.
    ///
    /// `/proc/<anchor>/root` cannot be followed by an unprivileged euid (it
    /// needs ptrace access to the anchor), so the path is rewritten to go
    /// through a directory descriptor this process opened while root.
    pub async fn connect_unix_as(&self, path: &Path, uid: u32, gid: u32) -> io::Result<Conn> {
        let inner = path.strip_prefix(self.root()).map_err(|_| {
            io::Error::other(format!("{} is not inside the sandbox", path.display()))
        })?;
        let via_fd =
            PathBuf::from(format!("/proc/self/fd/{}", self.root_dir.as_raw_fd())).join(inner);
        let std = rpcbind_proxy::host::sys::connect_unix_as(&via_fd, uid, gid)?;
        Conn::from_std_unix(std)
    }

    /// The daemon's status, read with the real binary (`status --json`)
    /// inside the sandbox, from the control socket at `control`.
    pub async fn status_at(&self, control: &str) -> serde_json::Value {
        let out = self
            .run_in_ns(&[PROXY_BIN, "status", "--json", "--control", control])
            .await;
        assert!(out.status.success(), "rpcbind-proxy status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
    }

    /// The status from the default control socket.
    pub async fn status(&self) -> serde_json::Value {
        self.status_at(CONTROL_SOCK).await
    }

    /// A number in the status (`status --json`) at `pointer`.
    pub async fn status_number(&self, pointer: &str) -> u64 {
        self.status()
            .await
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("status --json has {pointer}"))
    }

    /// `rpcbind-proxy status FORMAT...` from the default control socket, as
    /// printed (`&[]` for the text, `&["--prometheus"]`).
    pub async fn status_printed(&self, format: &[&str]) -> String {
        let mut args = vec![PROXY_BIN, "status"];
        args.extend_from_slice(format);
        args.extend_from_slice(&["--control", CONTROL_SOCK]);
        let out = self.run_in_ns(&args).await;
        assert!(
            out.status.success(),
            "rpcbind-proxy status {format:?}: {out:?}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers directly at rpcbind (v4 SET over its unix socket, as root).
    pub async fn rpcbind_set(&self, prog: u32, vers: u32, netid: &str, addr: &str) -> bool {
        let call = Call::rpcb(
            4,
            RPCBPROC_SET,
            rpcb_args(prog, vers, netid, addr, "superuser"),
        );
        let out = self.call(Target::Direct, Transport::Unix, &call).await;
        decode_bool(&out.expect_results("rpcbind SET")).unwrap()
    }

    /// Unregisters directly at rpcbind (v4 UNSET over its unix socket, as root).
    pub async fn rpcbind_unset(&self, prog: u32, vers: u32, netid: &str) -> bool {
        let call = Call::rpcb(4, RPCBPROC_UNSET, rpcb_args(prog, vers, netid, "", ""));
        let out = self.call(Target::Direct, Transport::Unix, &call).await;
        decode_bool(&out.expect_results("rpcbind UNSET")).unwrap()
    }

    /// rpcbind's registrations, read directly (v3 DUMP over its unix socket).
    pub async fn rpcbind_dump(&self) -> Vec<RpcbEntry> {
        let call = Call::rpcb(3, RPCBPROC_DUMP, vec![]);
        let out = self.call(Target::Direct, Transport::Unix, &call).await;
        decode_rpcb_list(&out.expect_results("rpcbind DUMP")).unwrap()
    }

    /// Lookups rpcbind itself served (GETPORT, GETADDR, GETVERSADDR,
    /// GETADDRLIST), from its own counters (v4 GETSTAT, as `rpcinfo -m`).
    pub async fn rpcbind_lookups(&self) -> u64 {
        let call = Call::rpcb(4, RPCBPROC_GETSTAT, vec![]);
        let stat = self.call(Target::Direct, Transport::Unix, &call).await;
        let body = stat.expect_results("GETSTAT");
        let mut r = XdrReader::new(&body);
        let mut total = 0u64;
        for vers in [2, 3, 4] {
            let info: Vec<u32> = (0..13).map(|_| r.u32().unwrap()).collect();
            total += info[3] as u64; // GETPORT (v2) / GETADDR (v3, v4)
            if vers == 4 {
                total += (info[9] + info[11]) as u64;
            }
            let (_set, _unset) = (r.u32().unwrap(), r.u32().unwrap());
            while r.bool().unwrap() {
                // rpcbs_addrlist: prog, vers, success, failure, netid
                for _ in 0..4 {
                    r.u32().unwrap();
                }
                r.string().unwrap();
            }
            while r.bool().unwrap() {
                // rpcbs_rmtcalllist: prog, vers, proc, success, failure, indirect, netid
                for _ in 0..6 {
                    r.u32().unwrap();
                }
                r.string().unwrap();
            }
        }
        total
    }

    // --- rpcbind --------------------------------------------------------------

    async fn start_rpcbind(&mut self) -> Result<(), String> {
        // Remove the socket file a killed rpcbind leaves behind, so that the
        // path exists only once the new rpcbind has bound it.
        let _ = fs::remove_file(self.rpcbind_unix());
        let log = self.log_file("rpcbind.log")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.anchor.pid.to_string())
            .args(["-m", "--"]);
        if self.transparent {
            // As rpcbind.socket moved by `intercept enable`: rpcbind adopts
            // the unix socket passed to it, whatever its path, and opens its
            // TCP/UDP sockets on port 111 itself.
            let dir = self.path("/run/rpcbind");
            fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            cmd.args(["systemd-socket-activate", "-l", RPCBIND_UPSTREAM_SOCK]);
        }
        cmd.args(["rpcbind", "-f"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        for v in SCRUBBED_ENV {
            cmd.env_remove(v);
        }
        let (proc, _child) =
            Proc::spawn("rpcbind", &mut cmd).map_err(|e| format!("spawning rpcbind: {e}"))?;
        self.rpcbind = Some(proc);

        // Ready once its unix socket accepts and its TCP socket listens on
        // port 111 (read from /proc, so that the check leaves no TIME_WAIT
        // behind: the order rpcbind opens them in is not to be relied on).
        // Socket-activated, it starts on the first connection: the socket
        // accepts at once, so wait for an answer to NULL instead.
        let sock = self.rpcbind_unix();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut backoff = Duration::from_millis(1);
        loop {
            let ready = if self.transparent {
                let null = Call::new(PMAP_PROG, 2, 0, vec![]);
                matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        call_once(&Endpoint::Unix(sock.clone()), &null)
                    )
                    .await,
                    Ok(Outcome::Reply(_))
                )
            } else {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
                    && self
                        .tcp_sockets()
                        .iter()
                        .any(|s| s.state == TCP_LISTEN && s.local_port == RPCBIND_PORT)
            };
            if ready {
                if self.transparent {
                    // What rpcbind.socket's SocketMode= (0666) gives it:
                    // systemd-socket-activate leaves the umask's mode.
                    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666))
                        .map_err(|e| format!("chmod {}: {e}", sock.display()))?;
                }
                return Ok(());
            }
            if let Some(status) = self.rpcbind.as_ref().and_then(Proc::exit_status) {
                return Err(format!(
                    "rpcbind exited ({status}) before accepting connections; its output:\n{}",
                    self.read_log("rpcbind.log")
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "rpcbind did not accept connections on {} within {READY_TIMEOUT:?}; its output:\n{}",
                    sock.display(),
                    self.read_log("rpcbind.log")
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// SIGKILLs rpcbind and waits until it is gone. Its socket file stays
    /// behind, as after a crash.
    pub async fn kill_rpcbind(&mut self) {
        if let Some(p) = self.rpcbind.take() {
            p.signal(Signal::SIGKILL);
            if p.wait_timeout(READY_TIMEOUT).await.is_none() {
                panic!("rpcbind (pid {}) not reaped after SIGKILL", p.pid);
            }
        }
    }

    /// Kills rpcbind (if running) and starts a fresh one (empty registrations)
    /// in the same namespaces; returns once its unix socket accepts.
    pub async fn restart_rpcbind(&mut self) {
        self.kill_rpcbind().await;
        if let Err(e) = self.start_rpcbind().await {
            panic!("restarting rpcbind: {e}");
        }
    }

    // --- the proxy --------------------------------------------------------------

    /// Starts the proxy inside the sandbox's mount namespace:
    /// `serve --listen unix:/run/rpcbind-proxy/rpcbind.sock --listen
    /// tcp:127.0.0.1:1111 --listen udp:127.0.0.1:1111 --rpcbind-socket
    /// /run/rpcbind.sock --control /run/rpcbind-proxy/control.sock`
    /// followed by `extra_args`, and waits (at most 10 s) for READY=1.
    /// Starts the proxy under `wrapper` (a program that execs its
    /// arguments) from its next start on.
    pub fn wrap_proxy(&mut self, wrapper: &[&str]) {
        self.proxy_wrapper = wrapper.iter().map(|s| s.to_string()).collect();
    }

    pub async fn start_proxy(&mut self, extra_args: &[&str]) -> Result<(), String> {
        self.start_proxy_with_env(extra_args, &[]).await
    }

    /// [`Sandbox::start_proxy`] with extra environment variables (e.g.
    /// WATCHDOG_USEC, as systemd sets it).
    pub async fn start_proxy_with_env(
        &mut self,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        assert!(self.proxy.is_none(), "the proxy is already running");
        self.proxy_starts += 1;
        // What systemd's RuntimeDirectory= would provide.
        let dir = self.path(PROXY_DIR);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;

        let notify_path = self.tmp.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .map_err(|e| format!("binding {}: {e}", notify_path.display()))?;
        // Writable for the proxy even if it has dropped privileges.
        fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("chmod {}: {e}", notify_path.display()))?;

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.join("proxy.log"))
            .map_err(|e| format!("opening proxy.log: {e}"))?;
        let mut args: Vec<String> = if self.transparent {
            vec![
                "serve".into(),
                "--listen".into(),
                format!("unix:{RPCBIND_SOCK}"),
                "--listen".into(),
                format!("tcp:127.0.0.1:{PROXY_PORT}"),
                "--listen".into(),
                format!("udp:127.0.0.1:{PROXY_PORT}"),
                "--listen".into(),
                format!("tcp:[::1]:{PROXY_PORT}"),
                "--listen".into(),
                format!("udp:[::1]:{PROXY_PORT}"),
                "--rpcbind-socket".into(),
                RPCBIND_UPSTREAM_SOCK.into(),
                "--control".into(),
                CONTROL_SOCK.into(),
                "--intercept".into(),
            ]
        } else {
            [
                "serve",
                "--listen",
                &format!("unix:{PROXY_SOCK}"),
                "--listen",
                &format!("tcp:127.0.0.1:{PROXY_PORT}"),
                "--listen",
                &format!("udp:127.0.0.1:{PROXY_PORT}"),
                "--rpcbind-socket",
                RPCBIND_SOCK,
                "--control",
                CONTROL_SOCK,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let bin = env!("CARGO_BIN_EXE_rpcbind-proxy");
        let _ = writeln!(
            log,
            "=== proxy start #{}: {bin} {}",
            self.proxy_starts,
            args.join(" ")
        );

        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.anchor.pid.to_string())
            .args(["-m", "--"]);
        if env.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            // systemd also sets WATCHDOG_PID, the service's own pid, which
            // the daemon checks: known only once it runs (nsenter and sh
            // exec it in place, so it keeps sh's pid).
            cmd.args(["sh", "-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""]);
        }
        cmd.args(&self.proxy_wrapper)
            .arg(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        for v in SCRUBBED_ENV {
            cmd.env_remove(v);
        }
        cmd.env("NOTIFY_SOCKET", &notify_path);
        cmd.envs(env.iter().copied());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "debug");
        }
        cmd.env("RUST_BACKTRACE", "1");
        let (proc, _child) =
            Proc::spawn("proxy", &mut cmd).map_err(|e| format!("spawning the proxy: {e}"))?;

        let ready = async {
            let mut buf = vec![0u8; 4096];
            loop {
                match notify.recv(&mut buf).await {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]);
                        if msg.lines().any(|l| l == "READY=1") {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(format!("reading the notify socket: {e}")),
                }
            }
        };
        let result = tokio::select! {
            r = ready => r,
            status = proc.wait() => Err(format!("proxy exited ({status}) before sending READY=1")),
            () = tokio::time::sleep(READY_TIMEOUT) => {
                Err(format!("proxy did not send READY=1 within {READY_TIMEOUT:?}"))
            }
        };
        self.proxy = Some(proc);
        self.notify = Some(notify);
        result.map_err(|e| format!("{e}; its output:\n{}", self.proxy_log()))
    }

    /// Sends `sig` to the running proxy.
    pub fn signal_proxy(&self, sig: Signal) {
        if let Some(p) = &self.proxy {
            p.signal(sig);
        }
    }

    /// Sends `sig` to rpcbind (SIGSTOP/SIGCONT to stall it).
    pub fn signal_rpcbind(&self, sig: Signal) {
        if let Some(p) = &self.rpcbind {
            p.signal(sig);
        }
    }

    /// Waits for the proxy's next sd_notify message containing the line
    /// `want` (e.g. READY=1 after a reload) and returns the message.
    pub async fn next_notify(&mut self, want: &str, timeout: Duration) -> Result<String, String> {
        let notify = self
            .notify
            .as_ref()
            .ok_or("the proxy was not started by start_proxy")?;
        let mut buf = vec![0u8; 4096];
        let wait = async {
            loop {
                let n = notify.recv(&mut buf).await.map_err(|e| e.to_string())?;
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return Ok(msg);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| format!("no {want} from the proxy within {timeout:?}"))?
    }

    /// SIGTERM to the proxy, up to 10 s to exit, then SIGKILL. Returns how it
    /// ended ("exit code 0", "killed by SIGKILL", ...).
    pub async fn stop_proxy(&mut self) -> Option<String> {
        let p = self.proxy.take()?;
        self.notify = None;
        p.signal(Signal::SIGTERM);
        if let Some(s) = p.wait_timeout(Duration::from_secs(10)).await {
            return Some(s);
        }
        p.signal(Signal::SIGKILL);
        Some(
            p.wait_timeout(READY_TIMEOUT)
                .await
                .unwrap_or_else(|| "not reaped after SIGKILL".into()),
        )
    }

    /// SIGKILLs the proxy and waits until it is gone.
    pub async fn kill_proxy(&mut self) {
        if let Some(p) = self.proxy.take() {
            self.notify = None;
            p.signal(Signal::SIGKILL);
            p.wait_timeout(READY_TIMEOUT).await;
        }
    }

    /// Whether the proxy process has exited (and how).
    pub fn proxy_exit_status(&self) -> Option<String> {
        self.proxy.as_ref().and_then(Proc::exit_status)
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn proxy_log(&self) -> String {
        self.read_log("proxy.log")
    }

    pub fn rpcbind_log(&self) -> String {
        self.read_log("rpcbind.log")
    }

    fn log_file(&self, name: &str) -> Result<File, String> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.join(name))
            .map_err(|e| format!("opening {name}: {e}"))
    }

    fn read_log(&self, name: &str) -> String {
        match fs::read(self.tmp.join(name)) {
            Ok(b) if b.is_empty() => "(empty)".into(),
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("(cannot read {name}: {e})"),
        }
    }

    // --- sockets in the namespace -------------------------------------------------

    /// Every TCP socket (v4 and v6) of the sandbox's network namespace.
    pub fn tcp_sockets(&self) -> Vec<TcpSocketInfo> {
        tcp_sockets_of(self.anchor.pid())
    }

    /// Number of TIME_WAIT sockets in the namespace, optionally only those
    /// with `port` as local or remote port.
    pub fn time_wait_count(&self, port: Option<u16>) -> usize {
        time_wait_count_of(self.anchor.pid(), port)
    }

    /// Waits (polling /proc, at most `timeout`) until no TCP socket of the
    /// namespace (optionally: involving `port`) is half-way through closing
    /// (FIN_WAIT1/2, CLOSE_WAIT, CLOSING, LAST_ACK). Fails listing the
    /// leftovers.
    pub async fn wait_tcp_settled(
        &self,
        port: Option<u16>,
        timeout: Duration,
    ) -> Result<(), String> {
        wait_tcp_settled_of(self.anchor.pid(), port, timeout).await
    }

    // --- commands in the sandbox -----------------------------------------------------

    /// Runs a command inside the sandbox (its network and mount namespaces)
    /// and captures its output. Fails the test if it cannot be run or does
    /// not finish within [`COMMAND_TIMEOUT`].
    pub async fn run_in_ns(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.anchor.pid.to_string())
            .args(["-m", "--"])
            .args(args);
        run_command(cmd, args).await
    }

    /// Runs a command inside the sandbox as `uid` (and gid `uid`, no
    /// supplementary groups), like [`Sandbox::run_in_ns`]; uid 0 runs it as
    /// root.
    pub async fn run_in_ns_as(&self, uid: u32, args: &[&str]) -> Output {
        if uid == 0 {
            return self.run_in_ns(args).await;
        }
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let mut full = vec!["setpriv", &reuid, &regid, "--clear-groups", "--"];
        full.extend_from_slice(args);
        self.run_in_ns(&full).await
    }

    /// `rpcinfo ARGS` inside the sandbox, talking to rpcbind directly.
    pub async fn run_rpcinfo(&self, args: &[&str]) -> Output {
        let mut full = vec!["rpcinfo"];
        full.extend_from_slice(args);
        self.run_in_ns(&full).await
    }

    /// `rpcinfo ARGS` in a private mount namespace (inside the sandbox) in
    /// which the proxy's unix socket is bind-mounted over /run/rpcbind.sock,
    /// so rpcinfo's local transport goes through the proxy. Its network
    /// calls (to 127.0.0.1:111) still reach rpcbind directly.
    pub async fn run_rpcinfo_via_proxy(&self, args: &[&str]) -> Output {
        let script = format!("mount --bind {PROXY_SOCK} {RPCBIND_SOCK} && exec rpcinfo \"$@\"");
        let mut full = vec![
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ];
        full.extend_from_slice(args);
        self.run_in_ns(&full).await
    }
}

/// Every TCP socket (v4 and v6) of the network namespace process `pid` is in.
pub fn tcp_sockets_of(pid: u32) -> Vec<TcpSocketInfo> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{file}");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            out.push(TcpSocketInfo {
                local_port: port(f[1]),
                remote_port: port(f[2]),
                state: u8::from_str_radix(f[3], 16).unwrap_or(0),
            });
        }
    }
    out
}

/// TIME_WAIT sockets in the network namespace of `pid`, optionally only
/// those with `port` as local or remote port.
pub fn time_wait_count_of(pid: u32, port: Option<u16>) -> usize {
    tcp_sockets_of(pid)
        .iter()
        .filter(|s| s.state == TCP_TIME_WAIT && s.matches(port))
        .count()
}

/// [`Sandbox::wait_tcp_settled`] for the network namespace of `pid`.
pub async fn wait_tcp_settled_of(
    pid: u32,
    port: Option<u16>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(1);
    loop {
        let closing: Vec<TcpSocketInfo> = tcp_sockets_of(pid)
            .into_iter()
            .filter(|s| s.is_closing() && s.matches(port))
            .collect();
        if closing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} TCP sockets still closing after {timeout:?}: {:?}",
                closing.len(),
                &closing[..closing.len().min(20)]
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// stdout, stderr and exit status of one command, as one comparable text.
pub fn transcript(out: &Output) -> String {
    format!(
        "{}{}[{}]",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    )
}

async fn run_command(mut cmd: tokio::process::Command, what: &[&str]) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for v in SCRUBBED_ENV {
        cmd.env_remove(v);
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("running {what:?}: {e}"),
        Err(_) => panic!("{what:?} did not finish within {COMMAND_TIMEOUT:?}"),
    }
}

/// Starts the process that holds the sandbox's mount namespace (a tmpfs on
/// /run) and opens its root directory.
async fn start_anchor() -> Result<(Proc, File), String> {
    spawn_anchor("anchor", &[]).await
}

/// Starts a process (`name`) in a new mount namespace with a tmpfs on /run
/// and whatever other new namespaces `unshare_flags` ask for (`-n`: its own
/// network namespace), waits until it is set up, and opens its root
/// directory.
async fn spawn_anchor(name: &'static str, unshare_flags: &[&str]) -> Result<(Proc, File), String> {
    let mut cmd = Command::new("unshare");
    cmd.args(unshare_flags)
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=0755 tmpfs /run && echo ready && exec sleep infinity",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let (anchor, mut child) =
        Proc::spawn(name, &mut cmd).map_err(|e| format!("spawning the {name}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout.into())
        .map_err(|e| format!("anchor stdout: {e}"))?;
    let mut line = String::new();
    let read = tokio::time::timeout(READY_TIMEOUT, BufReader::new(pipe).read_line(&mut line)).await;
    match read {
        Ok(Ok(_)) if line.trim() == "ready" => {}
        other => {
            anchor.kill_blocking();
            return Err(format!(
                "the {name} did not start ({other:?}, status {:?})",
                anchor.exit_status()
            ));
        }
    }
    let root = format!("/proc/{}/root", anchor.pid);
    match File::open(&root) {
        Ok(f) => Ok((anchor, f)),
        Err(e) => {
            anchor.kill_blocking();
            Err(format!("opening {root}: {e}"))
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        self.notify = None;
        if let Some(p) = self.proxy.take() {
            p.terminate_blocking(Duration::from_secs(5));
        }
        if let Some(p) = self.rpcbind.take() {
            p.kill_blocking();
        }
        self.anchor.kill_blocking();
        if failing {
            if self.proxy_starts > 0 {
                eprintln!("----- proxy output -----\n{}", self.proxy_log());
            }
            eprintln!("----- rpcbind output -----\n{}", self.rpcbind_log());
            eprintln!("----- (kept in {}) -----", self.tmp.display());
        } else {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// TCP state numbers as in /proc/net/tcp.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_FIN_WAIT1: u8 = 0x04;
pub const TCP_FIN_WAIT2: u8 = 0x05;
pub const TCP_TIME_WAIT: u8 = 0x06;
pub const TCP_CLOSE_WAIT: u8 = 0x08;
pub const TCP_LAST_ACK: u8 = 0x09;
pub const TCP_LISTEN: u8 = 0x0a;
pub const TCP_CLOSING: u8 = 0x0b;

/// One line of /proc/<pid>/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocketInfo {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
}

impl TcpSocketInfo {
    pub fn involves(&self, port: u16) -> bool {
        self.local_port == port || self.remote_port == port
    }

    /// Every socket for `None`, those involving the port for `Some(port)`.
    pub fn matches(&self, port: Option<u16>) -> bool {
        match port {
            None => true,
            Some(p) => self.involves(p),
        }
    }

    pub fn is_closing(&self) -> bool {
        matches!(
            self.state,
            TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_CLOSING | TCP_LAST_ACK
        )
    }
}
