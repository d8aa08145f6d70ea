//! The load harness of issue 5: rpcbind, the proxy and a zero-work responder
//! (the floor) measured side by side, in one run, on this machine.
//!
//! `cargo bench --bench load` (as root; about 75 s, plus the builds) builds the proxy in
//! release (`cargo build --release --bin rpcbind-proxy`, the binary users
//! run: without the dev-dependencies' tokio features) unless
//! `RPCBIND_PROXY_BIN` names one, then by itself:
//!
//! - moves into a private network and mount namespace (a tmpfs on /run), so
//!   it gets its own 127.0.0.1:111 and /run/rpcbind.sock and the machine's
//!   rpcbind is never touched; everything it starts dies with it;
//! - starts rpcbind (`rpcbind -f`), registers a test program (v3 SET over
//!   the unix socket), starts the proxy in front of it, and a second proxy
//!   with the cache off (`--ttl 0 --negative-ttl 0`) for the miss rows;
//! - runs the floor in this process: a responder that answers every call
//!   with a fixed GETPORT reply (XID patched) on a unix socket, TCP and UDP,
//!   a blocking thread per connection;
//! - drives each target with client threads (plain blocking std sockets,
//!   GETPORT of the registered program) for a fixed time per row, and prints
//!   one table, then the memory section (1,000 idle connections and 100,000
//!   cache entries) and instructions per cached hit (callgrind), and the
//!   issue's targets with the measured figures.
//!
//! Rows: per transport (unix, tcp, udp) and mode ("persistent": one
//! connection per client thread for the whole row; "datagrams" for UDP;
//! "conn/lookup": connect, call, read, close, the client closing first as
//! libtirpc does) the proxy (cache warm: every lookup a hit), the floor and
//! rpcbind with 4 client threads; then the miss rows, the proxy with its
//! cache off against rpcbind directly, with 1 client (latency) and 4.
//!
//! Flags after `--`: `--no-instructions` skips the callgrind part,
//! `--only=table|memory|instructions` runs one section, `--keep` keeps the
//! logs and callgrind's dumps (for `callgrind_annotate`).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a smoke
//! version (rows of 0.2 s, a small memory section, no callgrind, the debug
//! proxy binary) in a few seconds, and exits 0 saying why when it cannot run
//! at all (not root, no rpcbind).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{setsockopt, sockopt};

use rpcbind_proxy::protocol::rpc::{self, AcceptStat, OpaqueAuth};
use rpcbind_proxy::protocol::rpcb::{self, Mapping, Rpcb};
use rpcbind_proxy::protocol::xdr::Reader;

// ---------------------------------------------------------------------------
// What runs where
// ---------------------------------------------------------------------------

/// The program the clients look up, registered at rpcbind on tcp and udp.
const TEST_PROG: u32 = 0x2000_0001;
const TEST_VERS: u32 = 1;
const TEST_PORT: u32 = 2049;
/// Unregistered programs from here on fill the cache in the memory section.
const FILL_PROG_BASE: u32 = 0x3000_0000;

const RPCBIND_SOCK: &str = "/run/rpcbind.sock";
const RPCBIND_PORT: u16 = 111;
const FLOOR_SOCK: &str = "/run/floor.sock";
const FLOOR_PORT: u16 = 2222;

/// A proxy instance: its sockets and the extra flags it runs with.
struct Instance {
    name: &'static str,
    dir: &'static str,
    port: u16,
    args: &'static [&'static str],
}

/// The proxy as deployed (default cache settings).
const MAIN: Instance = Instance {
    name: "proxy",
    dir: "/run/rpcbind-proxy",
    port: 1111,
    args: &[],
};
/// The cache off: every lookup is a miss that goes to rpcbind.
const MISS: Instance = Instance {
    name: "proxy-miss",
    dir: "/run/rpcbind-proxy-miss",
    port: 1112,
    args: &["--ttl", "0", "--negative-ttl", "0"],
};
/// The memory section: negative answers kept long enough to count them all.
const MEM: Instance = Instance {
    name: "proxy-mem",
    dir: "/run/rpcbind-proxy-mem",
    port: 1113,
    args: &["--negative-ttl", "600", "--max-entries", "200000"],
};
/// Run under callgrind for instructions per hit.
const CG: Instance = Instance {
    name: "proxy-callgrind",
    dir: "/run/rpcbind-proxy-cg",
    port: 1114,
    args: &[],
};

impl Instance {
    fn sock(&self) -> PathBuf {
        Path::new(self.dir).join("rpcbind.sock")
    }
    fn control(&self) -> PathBuf {
        Path::new(self.dir).join("control.sock")
    }
}

/// How long things take: the full run or the smoke run of `cargo test`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    full: bool,
    clients: usize,
    row: Duration,
    miss_row: Duration,
    idle_connections: usize,
    entries: u32,
    instructions: bool,
    cg_hits: u32,
    /// `--only=table|memory|instructions`: one section (for working on it).
    only: Option<&'static str>,
    /// `--keep`: keep the logs and callgrind's dumps.
    keep: bool,
}

const FULL: Plan = Plan {
    full: true,
    clients: 4,
    row: Duration::from_millis(2500),
    miss_row: Duration::from_millis(1500),
    idle_connections: 1000,
    entries: 100_000,
    instructions: true,
    cg_hits: 5000,
    only: None,
    keep: false,
};

const SMOKE: Plan = Plan {
    full: false,
    clients: 4,
    row: Duration::from_millis(200),
    miss_row: Duration::from_millis(200),
    idle_connections: 20,
    entries: 500,
    instructions: false,
    cg_hits: 0,
    only: None,
    keep: false,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mut plan = if full { FULL } else { SMOKE };
    if args.iter().any(|a| a == "--no-instructions") {
        plan.instructions = false;
    }
    plan.keep = args.iter().any(|a| a == "--keep");
    for section in ["table", "memory", "instructions"] {
        if args.iter().any(|a| *a == format!("--only={section}")) {
            plan.only = Some(section);
        }
    }
    if let Some(why) = cannot_run() {
        if full {
            eprintln!("load: cannot run: {why}");
            return ExitCode::FAILURE;
        }
        println!("load: smoke run skipped: {why}");
        return ExitCode::SUCCESS;
    }
    if plan.instructions && find_in_path("valgrind").is_none() {
        println!("load: valgrind not found: no instructions per hit");
        plan.instructions = false;
    }
    match run(plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cannot_run() -> Option<String> {
    match fs::metadata("/proc/self") {
        Ok(m) if m.uid() == 0 => {}
        _ => return Some("needs root (it creates network and mount namespaces)".into()),
    }
    for tool in ["rpcbind", "ip"] {
        if find_in_path(tool).is_none() {
            return Some(format!("`{tool}` not found (scripts/deps installs it)"));
        }
    }
    None
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

fn run(plan: Plan) -> Result<(), String> {
    let bin = proxy_binary(plan.full)?;
    // 1,000 idle connections plus everything else, in here and in the
    // proxy (which inherits the limit).
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let want = hard.min(65536);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).map_err(|e| format!("setrlimit: {e}"))?;

    // Still one thread here: unshare(CLONE_NEWNS) refuses a multi-threaded
    // process. Every thread and child from now on lives in these namespaces.
    enter_namespaces()?;
    let tmp = std::env::temp_dir().join(format!("rpcbind-proxy-load.{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut env = Env {
        procs: Vec::new(),
        tmp: tmp.clone(),
        bin,
    };
    let result = measure(&mut env, plan);
    let failed = result.is_err();
    drop(env);
    if failed || plan.keep {
        eprintln!(
            "load: logs (and callgrind's dumps) kept in {}",
            tmp.display()
        );
    } else {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn measure(env: &mut Env, plan: Plan) -> Result<(), String> {
    let started = Instant::now();
    env.start_rpcbind()?;
    register(TEST_PROG, TEST_VERS, "tcp", "0.0.0.0.8.1")?;
    register(TEST_PROG, TEST_VERS, "udp", "0.0.0.0.8.1")?;
    let expected = expected_reply()?;
    let proxy_pid = env.start_proxy(&MAIN, None)?;
    let miss_pid = env.start_proxy(&MISS, None)?;
    start_floor(&expected)?;

    // Warm the cache: the rows below measure hits (an entry lives 60 s, so a
    // long run sees one miss a minute; the "rpcbind served" column shows it).
    let ep = Endpoint::Unix(MAIN.sock());
    drive(&ep, Mode::Persistent, 1, Duration::ZERO, &expected, 1)?;

    let c = plan.clients;
    let mut specs = Vec::new();
    // rpcbind last in each group: its one-TCP-connection-per-lookup row
    // leaves thousands of TIME_WAIT sockets, which would make the other
    // rows' connects search longer for a free port.
    let targets = [Target::Proxy, Target::Floor, Target::Rpcbind];
    for t in Transport::ALL {
        for target in targets {
            specs.push(Spec::new(t, Mode::Persistent, target, c, plan.row));
        }
    }
    for t in [Transport::Unix, Transport::Tcp] {
        for target in targets {
            specs.push(Spec::new(t, Mode::OneShot, target, c, plan.row));
        }
    }
    for t in Transport::ALL {
        specs.push(Spec::new(
            t,
            Mode::Persistent,
            Target::Rpcbind,
            1,
            plan.miss_row,
        ));
        specs.push(Spec::new(
            t,
            Mode::Persistent,
            Target::Miss,
            1,
            plan.miss_row,
        ));
        specs.push(Spec::new(
            t,
            Mode::Persistent,
            Target::Miss,
            c,
            plan.miss_row,
        ));
    }

    let only = |section: &str| plan.only.is_none_or(|o| o == section);
    if !only("table") {
        specs.clear();
    }
    let mut rows = Vec::new();
    for spec in specs {
        let pid = match spec.target {
            Target::Proxy => Some(proxy_pid),
            Target::Miss => Some(miss_pid),
            _ => None,
        };
        let row = run_row(spec, &expected, pid)?;
        if row.lookups == 0 {
            return Err(format!("{}: no lookup answered", spec.label()));
        }
        rows.push(row);
    }
    if !rows.is_empty() {
        println!();
        println!(
        "rpcbind-proxy load harness: {} client threads, {:.1} s per row ({:.1} s for the miss rows), {} CPUs",
        plan.clients,
        plan.row.as_secs_f64(),
        plan.miss_row.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
        println!();
        print_table(&rows);
    }
    env.stop(miss_pid);
    eprintln!(
        "load: table done at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let mem = if only("memory") {
        Some(memory_section(env, plan, &expected)?)
    } else {
        None
    };
    eprintln!(
        "load: memory done at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let cg = if plan.instructions && only("instructions") {
        Some(instructions_section(env, plan, &expected)?)
    } else {
        None
    };
    print_targets(plan.full, &rows, mem.as_ref(), cg.as_ref());
    println!();
    println!(
        "whole run: {:.0} s (not counting the build)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Namespaces and children
// ---------------------------------------------------------------------------

fn enter_namespaces() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNET | CLONE_NEWNS): {e}"))?;
    // Nothing mounted here may leak back to the machine.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on /run: {e}"))?;
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .map_err(|e| format!("ip link set lo up: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The proxy binary: in a full run the release build users run (built here,
/// so that `cargo bench`'s dev-dependency features, e.g. tokio's test-util,
/// are not in it); in a smoke run the one cargo built for this target.
fn proxy_binary(full: bool) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RPCBIND_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    if !full {
        return Ok(PathBuf::from(env!("CARGO_BIN_EXE_rpcbind-proxy")));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("load: cargo build --release --bin rpcbind-proxy");
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--release",
            "--bin",
            "rpcbind-proxy",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !out.status.success() {
        return Err("cargo build --release --bin rpcbind-proxy failed".into());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "rpcbind-proxy" {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err("cargo build did not report the rpcbind-proxy executable".into())
}

/// Environment variables children must not inherit.
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "RUST_LOG",
];

/// A command for a child: without the variables above.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for v in SCRUBBED_ENV {
        cmd.env_remove(v);
    }
    cmd
}

struct Env {
    procs: Vec<(u32, Child)>,
    tmp: PathBuf,
    bin: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Env {
    fn spawn(&mut self, log: &str, cmd: &mut Command) -> Result<u32, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.tmp.join(log))
            .map_err(|e| format!("opening {log}: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let pid = child.id();
        self.procs.push((pid, child));
        Ok(pid)
    }

    fn exited(&mut self, pid: u32) -> Option<String> {
        let (_, child) = self.procs.iter_mut().find(|(p, _)| *p == pid)?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    fn stop(&mut self, pid: u32) {
        if let Some(i) = self.procs.iter().position(|(p, _)| *p == pid) {
            let (_, mut child) = self.procs.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.tmp.join(name)).unwrap_or_default()
    }

    fn start_rpcbind(&mut self) -> Result<u32, String> {
        let pid = self.spawn("rpcbind.log", command("rpcbind").arg("-f"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // It creates its unix socket after the inet ones.
        while UnixStream::connect(RPCBIND_SOCK).is_err() {
            if let Some(status) = self.exited(pid) {
                return Err(format!(
                    "rpcbind exited ({status}): {}",
                    self.log("rpcbind.log")
                ));
            }
            if Instant::now() > deadline {
                return Err("rpcbind did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(pid)
    }

    /// Starts a proxy instance (under `wrapper`, e.g. valgrind, if given)
    /// and waits for its READY=1.
    fn start_proxy(&mut self, inst: &Instance, wrapper: Option<&[String]>) -> Result<u32, String> {
        fs::create_dir_all(inst.dir).map_err(|e| format!("creating {}: {e}", inst.dir))?;
        fs::set_permissions(inst.dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let notify_path = self.tmp.join(format!("notify-{}.sock", inst.name));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| e.to_string())?;
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = command(&w[0]);
                c.args(&w[1..]).arg(&self.bin);
                c
            }
            None => command(&self.bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", inst.sock().display()))
            .arg("--listen")
            .arg(format!("tcp:127.0.0.1:{}", inst.port))
            .arg("--listen")
            .arg(format!("udp:127.0.0.1:{}", inst.port))
            .args(["--rpcbind-socket", RPCBIND_SOCK])
            .arg("--control")
            .arg(inst.control())
            .args(inst.args)
            // Extra serve options for experiments, e.g. RPCBIND_PROXY_ARGS="--threads 1".
            .args(
                std::env::var("RPCBIND_PROXY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("NOTIFY_SOCKET", &notify_path);
        let log = format!("{}.log", inst.name);
        let pid = self.spawn(&log, &mut cmd)?;
        let timeout = if wrapper.is_some() { 120 } else { 10 };
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return Ok(pid);
                }
            }
            if let Some(status) = self.exited(pid) {
                return Err(format!(
                    "{} exited ({status}) before READY=1: {}",
                    inst.name,
                    self.log(&log)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} sent no READY=1 within {timeout} s: {}",
                    inst.name,
                    self.log(&log)
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// RPC helpers
// ---------------------------------------------------------------------------

fn getport_call(xid: u32, prog: u32) -> BytesMut {
    let mut args = BytesMut::new();
    Mapping {
        prog,
        vers: TEST_VERS,
        prot: rpcb::IPPROTO_TCP,
        port: 0,
    }
    .encode(&mut args);
    rpc::encode_call(xid, rpcb::PROGRAM, 2, 3, &args)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    rpc::put_record(&mut b, payload);
    b.to_vec()
}

/// One call over a fresh connection to a unix socket; the reply record.
fn unix_call(path: &str, call: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connecting to {path}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(&framed(call)).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark)
            .map_err(|e| format!("reading from {path}: {e}"))?;
        let mark = u32::from_be_bytes(mark);
        let start = reply.len();
        reply.resize(start + (mark & 0x7fff_ffff) as usize, 0);
        s.read_exact(&mut reply[start..])
            .map_err(|e| format!("reading from {path}: {e}"))?;
        if mark & 0x8000_0000 != 0 {
            return Ok(reply);
        }
    }
}

fn success_body(reply: &[u8]) -> Result<&[u8], String> {
    let r = rpc::parse_reply(reply).map_err(|e| e.to_string())?;
    if r.accept != Some(AcceptStat::Success) {
        return Err(format!("reply not SUCCESS: {:?}", r.accept));
    }
    Ok(r.body)
}

/// Registers at rpcbind: v3 SET over its unix socket, as root (superuser).
fn register(prog: u32, vers: u32, netid: &str, addr: &str) -> Result<(), String> {
    let mut args = BytesMut::new();
    Rpcb {
        prog,
        vers,
        netid: netid.as_bytes(),
        addr: addr.as_bytes(),
        owner: b"superuser",
    }
    .encode(&mut args);
    let reply = unix_call(
        RPCBIND_SOCK,
        &rpc::encode_call(7, rpcb::PROGRAM, 3, 1, &args),
    )?;
    match success_body(&reply)? {
        [0, 0, 0, 1, ..] => Ok(()),
        _ => Err(format!("rpcbind refused SET {prog} {vers} {netid}")),
    }
}

/// rpcbind's reply to GETPORT of the test program, as the clients must see
/// it from every target (byte for byte after the XID).
fn expected_reply() -> Result<Vec<u8>, String> {
    let reply = unix_call(RPCBIND_SOCK, &getport_call(1, TEST_PROG))?;
    let body = success_body(&reply)?;
    if body != TEST_PORT.to_be_bytes() {
        return Err(format!("GETPORT at rpcbind answered {body:?}"));
    }
    let built = rpc::accepted_reply(
        1,
        OpaqueAuth::NONE,
        AcceptStat::Success,
        &TEST_PORT.to_be_bytes(),
    );
    if built[..] != reply[..] {
        return Err("rpcbind's GETPORT reply differs from the floor's".into());
    }
    Ok(reply)
}

/// Lookups rpcbind itself served (GETPORT, GETADDR, GETVERSADDR,
/// GETADDRLIST) since it started: its own counters (v4 GETSTAT), as
/// `rpcinfo -m` shows them.
fn rpcbind_lookups() -> Result<u64, String> {
    let reply = unix_call(
        RPCBIND_SOCK,
        &rpc::encode_call(3, rpcb::PROGRAM, 4, 12, &[]),
    )?;
    let body = success_body(&reply)?;
    let mut r = Reader::new(body);
    let e = |e: rpcbind_proxy::protocol::xdr::XdrError| format!("GETSTAT reply: {e}");
    let mut total = 0u64;
    for vers in [2, 3, 4] {
        let mut info = [0u32; 13];
        for v in &mut info {
            *v = r.u32().map_err(e)?;
        }
        total += u64::from(info[3]); // GETPORT (v2) / GETADDR (v3, v4)
        if vers == 4 {
            total += u64::from(info[9]) + u64::from(info[11]); // GETVERSADDR, GETADDRLIST
        }
        r.u32().map_err(e)?; // setinfo
        r.u32().map_err(e)?; // unsetinfo
        while r.bool().map_err(e)? {
            // rpcbs_addrlist: prog, vers, success, failure, netid
            for _ in 0..4 {
                r.u32().map_err(e)?;
            }
            r.string(1024).map_err(e)?;
        }
        while r.bool().map_err(e)? {
            // rpcbs_rmtcalllist: prog, vers, proc, success, failure, indirect, netid
            for _ in 0..6 {
                r.u32().map_err(e)?;
            }
            r.string(1024).map_err(e)?;
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// The floor: a zero-work responder in this process
// ---------------------------------------------------------------------------

/// Threads accepting (and then serving) stream connections, per listener.
/// A connection keeps its thread until the client closes it, so this is the
/// most persistent connections the floor serves at once; one-shot
/// connections never wait for a thread.
const FLOOR_STREAM_THREADS: usize = 8;
const FLOOR_UDP_THREADS: usize = 4;

fn start_floor(expected: &[u8]) -> Result<(), String> {
    let reply = framed(expected);
    let unix = UnixListener::bind(FLOOR_SOCK).map_err(|e| format!("floor: {e}"))?;
    let tcp =
        TcpListener::bind(("127.0.0.1", FLOOR_PORT)).map_err(|e| format!("floor tcp: {e}"))?;
    let udp = UdpSocket::bind(("127.0.0.1", FLOOR_PORT)).map_err(|e| format!("floor udp: {e}"))?;
    for _ in 0..FLOOR_STREAM_THREADS {
        let (l, r) = (unix.try_clone().map_err(|e| e.to_string())?, reply.clone());
        std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                let _ = floor_serve(s, &r);
            }
        });
        let (l, reply) = (tcp.try_clone().map_err(|e| e.to_string())?, reply.clone());
        std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                let _ = s.set_nodelay(true);
                let mut s = s;
                if floor_serve(&mut s, &reply).is_ok() {
                    // The client closed first: RST, as the proxy does, so the
                    // floor leaves no TIME_WAIT (and runs out of no ports).
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    let _ = setsockopt(&s, sockopt::Linger, &linger);
                }
            }
        });
    }
    for _ in 0..FLOOR_UDP_THREADS {
        let (s, mut reply) = (
            udp.try_clone().map_err(|e| e.to_string())?,
            expected.to_vec(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 9000];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                if n >= 4 {
                    reply[..4].copy_from_slice(&buf[..4]);
                    let _ = s.send_to(&reply, peer);
                }
            }
        });
    }
    Ok(())
}

/// Answers every record on `s` with `reply` (record-marked), the call's XID
/// patched in, until the client closes.
fn floor_serve(mut s: impl Read + Write, reply: &[u8]) -> io::Result<()> {
    let mut buf = vec![0u8; 16384];
    let mut out = Vec::with_capacity(4096);
    let (mut start, mut end) = (0, 0);
    loop {
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = s.read(&mut buf[end..])?;
        if n == 0 {
            return Ok(());
        }
        end += n;
        out.clear();
        while end - start >= 4 {
            let mark = u32::from_be_bytes(buf[start..start + 4].try_into().unwrap());
            let len = (mark & 0x7fff_ffff) as usize;
            if !(4..=rpc::MAX_CLIENT_RECORD).contains(&len) {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if end - start < 4 + len {
                break;
            }
            let at = out.len();
            out.extend_from_slice(reply);
            out[at + 4..at + 8].copy_from_slice(&buf[start + 4..start + 8]);
            start += 4 + len;
        }
        if !out.is_empty() {
            s.write_all(&out)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
    Udp,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Unix, Transport::Tcp, Transport::Udp];
    fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One connection per client thread for the whole row.
    Persistent,
    /// Connect, call, read, close (the client closes first, like libtirpc).
    OneShot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Rpcbind,
    Proxy,
    Floor,
    /// The proxy with its cache off: every lookup is a miss.
    Miss,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Rpcbind => "rpcbind",
            Target::Proxy => "proxy",
            Target::Floor => "floor",
            Target::Miss => "proxy, miss",
        }
    }

    fn endpoint(self, t: Transport) -> Endpoint {
        let (sock, port): (PathBuf, u16) = match self {
            Target::Rpcbind => (RPCBIND_SOCK.into(), RPCBIND_PORT),
            Target::Proxy => (MAIN.sock(), MAIN.port),
            Target::Floor => (FLOOR_SOCK.into(), FLOOR_PORT),
            Target::Miss => (MISS.sock(), MISS.port),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match t {
            Transport::Unix => Endpoint::Unix(sock),
            Transport::Tcp => Endpoint::Tcp(addr),
            Transport::Udp => Endpoint::Udp(addr),
        }
    }
}

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Endpoint {
    fn connect(&self) -> io::Result<Conn> {
        let timeout = Some(Duration::from_secs(2));
        Ok(match self {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(timeout)?;
                Conn::Unix(s)
            }
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(timeout)?;
                Conn::Tcp(s)
            }
            Endpoint::Udp(a) => {
                let s = UdpSocket::bind(("127.0.0.1", 0))?;
                s.connect(a)?;
                // A lost datagram costs this much, counted as an error.
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Conn::Udp(s)
            }
        })
    }
}

/// Reads one record-marked reply into `buf`; returns its length.
fn read_record(s: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        if have >= 4 {
            let len = (u32::from_be_bytes(buf[..4].try_into().unwrap()) & 0x7fff_ffff) as usize;
            if 4 + len > buf.len() {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if have >= 4 + len {
                return Ok(4 + len);
            }
        }
    }
}

impl Conn {
    /// One call; the reply must be `expected` (after the XID) with `xid`.
    fn call(
        &mut self,
        framed_call: &[u8],
        xid: u32,
        expected: &[u8],
        buf: &mut [u8],
    ) -> io::Result<()> {
        let reply = match self {
            Conn::Unix(s) => {
                s.write_all(framed_call)?;
                let n = read_record(s, buf)?;
                &buf[4..n]
            }
            Conn::Tcp(s) => {
                s.write_all(framed_call)?;
                let n = read_record(s, buf)?;
                &buf[4..n]
            }
            Conn::Udp(s) => {
                s.send(&framed_call[4..])?;
                loop {
                    let n = s.recv(buf)?;
                    // A late answer to an earlier (timed out) call: skip it.
                    if n >= 4 && buf[..4] == xid.to_be_bytes() {
                        break &buf[..n];
                    }
                }
            }
        };
        if reply.len() != expected.len()
            || reply[..4] != xid.to_be_bytes()
            || reply[4..] != expected[4..]
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong reply"));
        }
        Ok(())
    }
}

/// What the client threads of one row measured.
#[derive(Debug, Default)]
struct Load {
    lookups: u64,
    errors: u64,
    secs: f64,
    /// Latencies in nanoseconds, sorted.
    lat: Vec<u32>,
}

impl Load {
    fn percentile_us(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len() - 1);
        f64::from(self.lat[i]) / 1000.0
    }
}

/// Drives `ep` with `clients` threads for `dur` (at least `min_calls` calls
/// per thread), each asking GETPORT of the test program in a loop.
fn drive(
    ep: &Endpoint,
    mode: Mode,
    clients: usize,
    dur: Duration,
    expected: &[u8],
    min_calls: u64,
) -> Result<Load, String> {
    let barrier = Barrier::new(clients + 1);
    let results: Vec<(u64, u64, Duration, Vec<u32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|id| {
                let barrier = &barrier;
                scope.spawn(move || client(ep, mode, id as u32, barrier, dur, expected, min_calls))
            })
            .collect();
        barrier.wait();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut load = Load::default();
    for (n, errors, elapsed, lat) in results {
        load.lookups += n;
        load.errors += errors;
        load.secs = load.secs.max(elapsed.as_secs_f64());
        load.lat.extend(lat);
    }
    load.lat.sort_unstable();
    Ok(load)
}

fn client(
    ep: &Endpoint,
    mode: Mode,
    id: u32,
    barrier: &Barrier,
    dur: Duration,
    expected: &[u8],
    min_calls: u64,
) -> (u64, u64, Duration, Vec<u32>) {
    let mut call = framed(&getport_call(0, TEST_PROG));
    let mut buf = vec![0u8; 65536];
    let mut lat = Vec::with_capacity(1 << 16);
    let (mut n, mut errors) = (0u64, 0u64);
    let mut conn = match mode {
        Mode::Persistent => ep.connect().ok(),
        Mode::OneShot => None,
    };
    barrier.wait();
    let start = Instant::now();
    let deadline = start + dur;
    let mut xid = id << 24;
    loop {
        xid = xid.wrapping_add(1);
        call[4..8].copy_from_slice(&xid.to_be_bytes());
        let t0 = Instant::now();
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => ep.connect(),
        }
        .and_then(|mut c| {
            c.call(&call, xid, expected, &mut buf)?;
            Ok(c)
        });
        let t1 = Instant::now();
        match result {
            Ok(c) => {
                n += 1;
                lat.push((t1 - t0).as_nanos().min(u128::from(u32::MAX)) as u32);
                if mode == Mode::Persistent {
                    conn = Some(c);
                }
                // One-shot: `c` dropped here, the client closes first.
            }
            Err(_) => {
                errors += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if t1 >= deadline && n >= min_calls {
            return (n, errors, t1 - start, lat);
        }
        if errors > 1000 && n == 0 {
            return (n, errors, t1 - start, lat);
        }
    }
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Spec {
    transport: Transport,
    mode: Mode,
    target: Target,
    clients: usize,
    dur: Duration,
}

impl Spec {
    fn new(
        transport: Transport,
        mode: Mode,
        target: Target,
        clients: usize,
        dur: Duration,
    ) -> Spec {
        Spec {
            transport,
            mode,
            target,
            clients,
            dur,
        }
    }

    fn mode_name(&self) -> &'static str {
        match (self.mode, self.transport) {
            (Mode::Persistent, Transport::Udp) => "datagrams",
            (Mode::Persistent, _) => "persistent",
            (Mode::OneShot, _) => "conn/lookup",
        }
    }

    fn label(&self) -> String {
        format!(
            "{} {} {} x{}",
            self.transport.name(),
            self.mode_name(),
            self.target.name(),
            self.clients
        )
    }
}

#[derive(Debug)]
struct Row {
    spec: Spec,
    lookups: u64,
    errors: u64,
    rate: f64,
    p50: f64,
    p99: f64,
    time_wait: usize,
    rpcbind_served: u64,
    proxy_hwm_kib: Option<u64>,
}

fn run_row(spec: Spec, expected: &[u8], proxy_pid: Option<u32>) -> Result<Row, String> {
    let before_tw = time_wait_sockets();
    let before_served = rpcbind_lookups()?;
    let load = drive(
        &spec.target.endpoint(spec.transport),
        spec.mode,
        spec.clients,
        spec.dur,
        expected,
        1,
    )?;
    settle_tcp();
    // TIME_WAIT sockets live 60 s, so the namespace still holds those of
    // earlier rows (and some of them expire during this one): a plain count,
    // or a difference of counts, would mix rows up. Each socket is
    // identified by its address pair instead, and only those in TIME_WAIT
    // now that were not before the row are this row's. (Against rpcbind the
    // count stays below one per lookup: with the kernel's default
    // tcp_tw_reuse=2 a new loopback connect may take over a TIME_WAIT
    // socket's port pair, ending it early. libtirpc's root clients bind a
    // reserved port explicitly, where that does not happen.)
    let time_wait = time_wait_sockets().difference(&before_tw).count();
    let rpcbind_served = rpcbind_lookups()? - before_served;
    let proxy_hwm_kib = proxy_pid.and_then(|p| proc_status_kib(p, "VmHWM"));
    let row = Row {
        spec,
        lookups: load.lookups,
        errors: load.errors,
        rate: load.lookups as f64 / load.secs.max(1e-9),
        p50: load.percentile_us(0.50),
        p99: load.percentile_us(0.99),
        time_wait,
        rpcbind_served,
        proxy_hwm_kib,
    };
    eprintln!(
        "load: {:<34} {:>9.0}/s p50 {:>7.1} µs p99 {:>7.1} µs, {} errors",
        spec.label(),
        row.rate,
        row.p50,
        row.p99,
        row.errors
    );
    Ok(row)
}

/// /proc/net/tcp states.
const TCP_TIME_WAIT: &str = "06";
const TCP_CLOSING_STATES: [&str; 5] = ["04", "05", "08", "09", "0B"];

/// (local, remote, state) of every TCP socket of this network namespace.
fn tcp_sockets() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 {
                out.push((f[1].to_owned(), f[2].to_owned(), f[3].to_owned()));
            }
        }
    }
    out
}

fn time_wait_sockets() -> HashSet<(String, String)> {
    tcp_sockets()
        .into_iter()
        .filter(|(_, _, st)| st == TCP_TIME_WAIT)
        .map(|(l, r, _)| (l, r))
        .collect()
}

/// Waits (at most 2 s) until no TCP socket is half-way through closing, so
/// that the ones bound for TIME_WAIT are there.
fn settle_tcp() {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && tcp_sockets()
            .iter()
            .any(|(_, _, st)| TCP_CLOSING_STATES.contains(&st.as_str()))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn find(rows: &[Row], t: Transport, mode: Mode, target: Target, clients: usize) -> Option<&Row> {
    rows.iter().find(|r| {
        r.spec.transport == t
            && r.spec.mode == mode
            && r.spec.target == target
            && r.spec.clients == clients
    })
}

fn print_table(rows: &[Row]) {
    let header = [
        "transport",
        "mode",
        "target",
        "clients",
        "lookups/s",
        "p50 µs",
        "p99 µs",
        "errors",
        "TIME_WAIT",
        "rpcbind served",
        "proxy VmHWM",
        "proxy/floor",
        "proxy/rpcbind",
    ];
    let mut table: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let s = &r.spec;
        let ratio = |other: Target| {
            if !matches!(s.target, Target::Proxy | Target::Miss) {
                return String::new();
            }
            find(rows, s.transport, s.mode, other, s.clients)
                .map_or(String::new(), |o| format!("{:.2}", r.rate / o.rate))
        };
        table.push(vec![
            s.transport.name().into(),
            s.mode_name().into(),
            s.target.name().into(),
            s.clients.to_string(),
            format!("{:.0}", r.rate),
            format!("{:.1}", r.p50),
            format!("{:.1}", r.p99),
            r.errors.to_string(),
            r.time_wait.to_string(),
            r.rpcbind_served.to_string(),
            r.proxy_hwm_kib
                .map_or(String::new(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            ratio(Target::Floor),
            ratio(Target::Rpcbind),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i < 3 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| if i < 3 {
                format!(":{}-", "-".repeat(*w))
            } else {
                format!("-{}:", "-".repeat(*w))
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in table {
        line(row);
    }
}

// ---------------------------------------------------------------------------
// Memory: idle connections and a full cache
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Memory {
    idle: usize,
    entries: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory_section(env: &mut Env, plan: Plan, expected: &[u8]) -> Result<Memory, String> {
    let pid = env.start_proxy(&MEM, None)?;
    let rss = |field| proc_status_kib(pid, field).unwrap_or(0);
    let at_start = rss("VmRSS");
    let ep = Endpoint::Unix(MEM.sock());
    // Idle connections that have each asked one question (so whatever a
    // connection holds once used is allocated), then stay open (the proxy's
    // idle timeout, 120 s by default, is far away).
    let mut idle = Vec::with_capacity(plan.idle_connections);
    let mut buf = vec![0u8; 4096];
    let call = framed(&getport_call(9, TEST_PROG));
    for i in 0..plan.idle_connections {
        let mut c = ep
            .connect()
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        c.call(&call, 9, expected, &mut buf)
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    let with_idle = rss("VmRSS");
    // Distinct lookups of unregistered programs: each is a miss answered
    // "port 0" by rpcbind, kept as a negative entry (--negative-ttl 600).
    // (rpcbind keeps a statistics record per (prog, vers, netid) looked up,
    // so this is slower than the other misses, and its GETSTAT reply no
    // longer comes back afterwards: the proxy's counters tell instead.)
    let t0 = Instant::now();
    let threads = plan.clients as u32;
    let per = plan.entries.div_ceil(threads);
    let filled: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ep = ep.clone();
                scope.spawn(move || {
                    let lo = t * per;
                    let hi = ((t + 1) * per).min(plan.entries);
                    fill(&ep, FILL_PROG_BASE + lo..FILL_PROG_BASE + hi)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Result<Vec<u64>, String>>()
    })?
    .iter()
    .sum();
    let fill_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    // Read before `status`, whose JSON (a row per program looked up) is
    // itself big.
    let (rss_kib, hwm_kib) = (rss("VmRSS"), rss("VmHWM"));
    let status = proxy_status(&env.bin, &MEM)?;
    let field = |p: &str| status.pointer(p).and_then(serde_json::Value::as_u64);
    let entries = field("/cache/entries").unwrap_or(0);
    let connected = field("/clients/connected").map_or("?".into(), |n| n.to_string());
    let misses = field("/cache/misses").map_or("?".into(), |n| n.to_string());
    drop(idle);
    env.stop(pid);
    let mib = |k: u64| k as f64 / 1024.0;
    println!();
    println!(
        "memory: VmRSS {:.1} MiB, VmHWM {:.1} MiB with {connected} client connections open ({} idle, each used once) and {entries} cache entries \
         ({filled} distinct lookups of unregistered programs in {fill_secs:.1} s, {misses} misses); \
         VmRSS {:.1} MiB at start, {:.1} MiB with the idle connections",
        mib(rss_kib),
        mib(hwm_kib),
        plan.idle_connections,
        mib(at_start),
        mib(with_idle),
    );
    Ok(Memory {
        idle: plan.idle_connections,
        entries,
        rss_kib,
        hwm_kib,
    })
}

/// GETPORT of every program in `progs` over one connection, 32 calls in
/// flight at a time; every answer must be "port 0".
fn fill(ep: &Endpoint, progs: std::ops::Range<u32>) -> Result<u64, String> {
    let Endpoint::Unix(path) = ep else {
        return Err("fill: unix only".into());
    };
    let mut s = UnixStream::connect(path).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let progs: Vec<u32> = progs.collect();
    let mut buf = vec![0u8; 65536];
    let mut done = 0u64;
    for batch in progs.chunks(32) {
        let mut out = Vec::new();
        for &p in batch {
            out.extend(framed(&getport_call(p, p)));
        }
        s.write_all(&out).map_err(|e| e.to_string())?;
        let (mut have, mut seen) = (0usize, 0usize);
        let mut pos = 0usize;
        while seen < batch.len() {
            if have - pos >= 4 {
                let len = (u32::from_be_bytes(buf[pos..pos + 4].try_into().unwrap()) & 0x7fff_ffff)
                    as usize;
                if have - pos >= 4 + len {
                    let body = success_body(&buf[pos + 4..pos + 4 + len])?;
                    if body != [0, 0, 0, 0] {
                        return Err(format!("unregistered program answered {body:?}"));
                    }
                    pos += 4 + len;
                    seen += 1;
                    continue;
                }
            }
            let n = s.read(&mut buf[have..]).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("fill: the proxy closed the connection".into());
            }
            have += n;
        }
        done += batch.len() as u64;
    }
    Ok(done)
}

/// `rpcbind-proxy status --json`.
fn proxy_status(bin: &Path, inst: &Instance) -> Result<serde_json::Value, String> {
    let out = Command::new(bin)
        .arg("status")
        .arg("--json")
        .arg("--control")
        .arg(inst.control())
        .output()
        .map_err(|e| format!("rpcbind-proxy status: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "rpcbind-proxy status --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

// ---------------------------------------------------------------------------
// Instructions per cached hit (callgrind)
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Instructions {
    hits: u32,
    /// (transport, instructions in the hit window, instructions in an idle
    /// window as long).
    per_transport: Vec<(Transport, u64, u64)>,
}

impl Instructions {
    fn per_hit(&self, t: Transport) -> Option<f64> {
        self.per_transport
            .iter()
            .find(|(x, _, _)| *x == t)
            .map(|(_, busy, idle)| busy.saturating_sub(*idle) as f64 / f64::from(self.hits))
    }
}

/// The proxy under `valgrind --tool=callgrind`: per transport, warm a
/// persistent connection, zero the counters, make `hits` cached lookups, dump;
/// then zero, stay idle as long, dump (timers, the refresh loop): the
/// difference over `hits` is the proxy's instructions per cached hit.
fn instructions_section(
    env: &mut Env,
    plan: Plan,
    expected: &[u8],
) -> Result<Instructions, String> {
    let out_dir = env.tmp.join("callgrind");
    fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let wrapper: Vec<String> = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!(
            "--callgrind-out-file={}/callgrind.out.%p",
            out_dir.display()
        ),
    ];
    let pid = env.start_proxy(&CG, Some(&wrapper))?;
    let mut result = Instructions {
        hits: plan.cg_hits,
        per_transport: Vec::new(),
    };
    for t in Transport::ALL {
        let addr = SocketAddr::from(([127, 0, 0, 1], CG.port));
        let ep = match t {
            Transport::Unix => Endpoint::Unix(CG.sock()),
            Transport::Tcp => Endpoint::Tcp(addr),
            Transport::Udp => Endpoint::Udp(addr),
        };
        let mut c = ep.connect().map_err(|e| format!("callgrind proxy: {e}"))?;
        let mut buf = vec![0u8; 4096];
        let mut call = framed(&getport_call(0, TEST_PROG));
        let mut xid = 0u32;
        let mut calls = |c: &mut Conn, n: u32| -> Result<(), String> {
            for _ in 0..n {
                xid += 1;
                call[4..8].copy_from_slice(&xid.to_be_bytes());
                // Under valgrind a UDP reply can be slow: retry on timeout.
                let mut tries = 0;
                while let Err(e) = c.call(&call, xid, expected, &mut buf) {
                    tries += 1;
                    if tries > 20 {
                        return Err(format!("callgrind proxy, {}: {e}", t.name()));
                    }
                }
            }
            Ok(())
        };
        calls(&mut c, 50)?;
        callgrind_control(&["-z"], pid)?;
        let t0 = Instant::now();
        calls(&mut c, plan.cg_hits)?;
        let busy = callgrind_dump(pid, &out_dir)?;
        let took = t0.elapsed();
        callgrind_control(&["-z"], pid)?;
        std::thread::sleep(took);
        let idle = callgrind_dump(pid, &out_dir)?;
        eprintln!(
            "load: callgrind {}: {} hits in {:.1} s: {busy} instructions, {idle} idle",
            t.name(),
            plan.cg_hits,
            took.as_secs_f64()
        );
        result.per_transport.push((t, busy, idle));
    }
    env.stop(pid);
    println!();
    println!(
        "instructions per cached hit (callgrind, proxy process, {} hits on one persistent connection, idle window subtracted): {}",
        plan.cg_hits,
        Transport::ALL
            .iter()
            .map(|&t| format!("{} {:.0}", t.name(), result.per_hit(t).unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(result)
}

fn callgrind_control(args: &[&str], pid: u32) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "callgrind_control {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Dumps the counters and returns the new dump's total instructions.
fn callgrind_dump(pid: u32, dir: &Path) -> Result<u64, String> {
    let listing = || -> HashSet<PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let before = listing();
    callgrind_control(&["-d"], pid)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for p in listing().difference(&before) {
            let text = fs::read_to_string(p).unwrap_or_default();
            // Complete once the totals line is written.
            if let Some(v) = text.lines().find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            }) {
                if let Some(Ok(n)) = v.split_whitespace().next().map(str::parse::<u64>) {
                    return Ok(n);
                }
            }
        }
        if Instant::now() > deadline {
            return Err("callgrind wrote no dump within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------

fn print_targets(full: bool, rows: &[Row], mem: Option<&Memory>, cg: Option<&Instructions>) {
    println!();
    if full {
        println!("targets (issue 5):");
    } else {
        println!("targets (issue 5), from a smoke run of the debug build: not a measurement:");
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let check = |ok: bool, text: String| println!("- {}: {text}", verdict(ok));
    let c = rows.iter().map(|r| r.spec.clients).max().unwrap_or(1);
    for t in Transport::ALL {
        if let (Some(p), Some(f)) = (
            find(rows, t, Mode::Persistent, Target::Proxy, c),
            find(rows, t, Mode::Persistent, Target::Floor, c),
        ) {
            check(
                p.rate >= 0.9 * f.rate,
                format!(
                    "cached hits over {} at >= 0.9 of the floor: {:.0}/s vs {:.0}/s = {:.2}",
                    t.name(),
                    p.rate,
                    f.rate,
                    p.rate / f.rate
                ),
            );
        }
    }
    let one = |t, target| find(rows, t, Mode::OneShot, target, c);
    if let (Some(p), Some(r)) = (
        one(Transport::Unix, Target::Proxy),
        one(Transport::Tcp, Target::Rpcbind),
    ) {
        check(
            p.rate >= 15.0 * r.rate,
            format!(
                "one unix connection per lookup through the proxy >= 15x rpcbind's one TCP connection per lookup: {:.0}/s vs {:.0}/s = {:.1}x",
                p.rate,
                r.rate,
                p.rate / r.rate
            ),
        );
    }
    if let (Some(p), Some(r)) = (
        one(Transport::Tcp, Target::Proxy),
        one(Transport::Tcp, Target::Rpcbind),
    ) {
        check(
            p.rate >= r.rate && p.time_wait == 0,
            format!(
                "one TCP connection per lookup through the proxy no slower than against rpcbind, 0 TIME_WAIT: {:.0}/s vs {:.0}/s ({:.2}x), {} TIME_WAIT (rpcbind: {})",
                p.rate,
                r.rate,
                p.rate / r.rate,
                p.time_wait,
                r.time_wait
            ),
        );
    }
    for t in Transport::ALL {
        if let (Some(m), Some(d)) = (
            find(rows, t, Mode::Persistent, Target::Miss, 1),
            find(rows, t, Mode::Persistent, Target::Rpcbind, 1),
        ) {
            check(
                m.p50 <= d.p50 + 30.0,
                format!(
                    "miss p50 over {} <= direct p50 + 30 µs (one client): {:.1} µs vs {:.1} µs (+{:.1} µs)",
                    t.name(),
                    m.p50,
                    d.p50,
                    m.p50 - d.p50
                ),
            );
        }
    }
    let hit_rows = rows.iter().filter(|r| r.spec.target == Target::Proxy);
    let (served, answered) =
        hit_rows.fold((0, 0), |(s, a), r| (s + r.rpcbind_served, a + r.lookups));
    check(
        served * 1000 <= answered,
        format!(
            "rpcbind serves <= 1 per 1,000 in the hit rows: {served} of {answered} ({:.5} per 1,000)",
            served as f64 * 1000.0 / answered.max(1) as f64
        ),
    );
    if let Some(mem) = mem {
        check(
        mem.rss_kib <= 32 * 1024 && mem.hwm_kib <= 32 * 1024,
        format!(
            "RSS <= 32 MiB with {} idle connections and {} cache entries: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            mem.idle,
            mem.entries,
            mem.rss_kib as f64 / 1024.0,
            mem.hwm_kib as f64 / 1024.0
        ),
    );
    }
    match cg {
        Some(cg) => println!(
            "- report: instructions per cached hit (callgrind): {}",
            Transport::ALL
                .iter()
                .map(|&t| format!("{} {:.0}", t.name(), cg.per_hit(t).unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("- report: instructions per cached hit: not measured in this run"),
    }
}
