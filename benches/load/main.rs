//! The load harness: rpcbind, the proxy and a zero-work responder (the
//! floor) measured side by side, in one run, on this machine.
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
//! - runs the floor, a responder that answers every call with a fixed
//!   GETPORT reply (XID patched) on a unix socket, TCP and UDP, a blocking
//!   thread per connection (`floor.rs`), twice: in its own process (this
//!   binary re-executed with the hidden first argument `--floor-process`, a
//!   child in the same namespaces that exits when the bench's end of its
//!   stdin closes), the yardstick, since the proxy too is a process of its
//!   own; and, for comparison, in this process beside the client threads
//!   ("floor, in-process"), which switching between threads of one process
//!   (no address-space switch) may favour (see floor.rs);
//! - drives each target with client threads (plain blocking std sockets,
//!   GETPORT of the registered program) for a fixed time per row, and prints
//!   one table, then the memory section (10,000 idle connections and
//!   100,000 cache entries, and an active client's rate beside them) and
//!   instructions per cached hit (callgrind), and the targets (targets.rs)
//!   with the measured figures.
//!
//! Rows: per transport (unix, tcp, udp) and mode ("persistent": one
//! connection per client thread for the whole row; "datagrams" for UDP;
//! "conn/lookup": connect, call, read, close, the client closing first as
//! libtirpc does) the proxy (cache warm: every lookup a hit), the floor (in
//! its own process and in-process) and rpcbind with 4 client threads; then
//! two more proxy / floor / floor in-process triples per transport
//! (persistent), interleaved; then the miss rows, the proxy with its cache
//! off against rpcbind directly, with 1 client (latency) and 4.
//!
//! Then the same paths (unix, TCP; persistent and one connection per
//! lookup; proxy and rpcbind) driven by stock libtirpc clients (`tirpc.rs`,
//! `tirpc_bench.c` compiled with the system compiler): what a real client
//! sees.
//!
//! Flags after `--`: `--no-instructions` skips the callgrind part,
//! `--only=table|tirpc|memory|instructions` runs one section,
//! `--transport=unix|tcp|udp` keeps the table's rows of one transport, `--keep` keeps the
//! logs and callgrind's dumps (for `callgrind_annotate`).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a smoke
//! version (rows of 0.2 s, a small memory section, no callgrind, the debug
//! proxy binary) in a few seconds, and exits 0 saying why when it cannot run
//! at all (not root, no rpcbind). The smoke run's figures are no measurement
//! (a debug build, rows too short), so it prints one line saying it ran,
//! not a table and targets that read as results; `--verbose` (or
//! LOAD_VERBOSE=1 in the environment) prints them anyway.

mod clients;
mod env;
mod floor;
mod instructions;
mod memory;
#[path = "../../tests/support/namespaces.rs"]
#[allow(unreachable_pub)] // pub for the tests that include it too
mod namespaces;
mod table;
mod targets;
mod tirpc;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use clients::{drive, expected_reply, register, run_row, Endpoint, Mode, Spec, Target, Transport};
use env::{proxy_binary, Env};
use floor::{floor_process, start_floor, FLOOR_PROCESS_ARG};
use instructions::instructions_section;
use memory::memory_section;
use table::print_table;
use targets::print_targets;

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
/// The floor in this process (`Target::FloorInProcess`).
const FLOOR_SOCK: &str = "/run/floor.sock";
const FLOOR_PORT: u16 = 2222;
/// The floor in its own process (`Target::Floor`).
const FLOOR_PROCESS_SOCK: &str = "/run/floor-process.sock";
const FLOOR_PROCESS_PORT: u16 = FLOOR_PORT + 1;

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
/// The memory section: negative answers kept long enough to count them all,
/// and room for every idle connection (at the default max-connections, 4096,
/// the proxy would evict the longest-idle ones to admit newer clients).
const MEM: Instance = Instance {
    name: "proxy-mem",
    dir: "/run/rpcbind-proxy-mem",
    port: 1113,
    args: &[
        "--negative-ttl",
        "600",
        "--max-entries",
        "200000",
        "--max-connections",
        "12000",
    ],
};
/// Attribution off: what naming each client costs, next to MAIN.
const NOATTR: Instance = Instance {
    name: "proxy-noattr",
    dir: "/run/rpcbind-proxy-noattr",
    port: 1115,
    args: &["--no-attribution"],
};
/// Attribution by the /proc search only (the eBPF recorder not loaded):
/// what the fallback costs, next to MAIN (which names clients by eBPF where
/// the kernel allows).
const SEARCH: Instance = Instance {
    name: "proxy-search",
    dir: "/run/rpcbind-proxy-search",
    port: 1116,
    args: &["--no-attribution-ebpf"],
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

/// The smoke run prints its progress, table and targets only when asked.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether the figures stay unprinted (a smoke run not asked to show them).
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
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
    /// How long the memory section's active client runs, with the idle
    /// connections open and again without them.
    active: Duration,
    instructions: bool,
    cg_hits: u32,
    /// `--only=table|memory|instructions`: one section (for working on it).
    only: Option<&'static str>,
    /// `--transport=unix|tcp|udp`: the table's rows of one transport only.
    transport: Option<Transport>,
    /// `--keep`: keep the logs and callgrind's dumps.
    keep: bool,
}

const FULL: Plan = Plan {
    full: true,
    clients: 4,
    row: Duration::from_millis(2500),
    miss_row: Duration::from_millis(1500),
    idle_connections: 10_000,
    entries: 100_000,
    active: Duration::from_millis(1500),
    instructions: true,
    cg_hits: 5000,
    only: None,
    transport: None,
    keep: false,
};

const SMOKE: Plan = Plan {
    full: false,
    clients: 4,
    row: Duration::from_millis(200),
    miss_row: Duration::from_millis(200),
    idle_connections: 20,
    entries: 500,
    active: Duration::from_millis(100),
    instructions: false,
    cg_hits: 0,
    only: None,
    transport: None,
    keep: false,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The floor's own process (floor.rs), started by a run below.
    if args.first().is_some_and(|a| a == FLOOR_PROCESS_ARG) {
        return floor_process(&args[1..]);
    }
    let full = args.iter().any(|a| a == "--bench");
    let mut plan = if full { FULL } else { SMOKE };
    let verbose = args.iter().any(|a| a == "--verbose")
        || std::env::var_os("LOAD_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0");
    QUIET.store(!full && !verbose, Ordering::Relaxed);
    if args.iter().any(|a| a == "--no-instructions") {
        plan.instructions = false;
    }
    plan.keep = args.iter().any(|a| a == "--keep");
    for t in Transport::ALL {
        if args
            .iter()
            .any(|a| *a == format!("--transport={}", t.name()))
        {
            plan.transport = Some(t);
        }
    }
    for section in ["table", "tirpc", "memory", "instructions"] {
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
    // The memory section's idle connections plus everything else, in here
    // (the client ends) and in the proxy (the server ends; it inherits the
    // limit and raises its soft limit to the hard one). As root the hard
    // limit may go up too, if it is below what the section needs.
    let need = plan.idle_connections as u64 + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let want = hard.min(65536).max(soft).max(need);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want))
        .map_err(|e| format!("setrlimit(RLIMIT_NOFILE, {want}): {e}"))?;

    // Still one thread here: unshare(CLONE_NEWNS) refuses a multi-threaded
    // process. Every thread and child from now on lives in these namespaces.
    namespaces::enter_netns_with_private_run()?;
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
    let noattr_pid = env.start_proxy(&NOATTR, None)?;
    let search_pid = env.start_proxy(&SEARCH, None)?;
    // How the main instance names its clients (eBPF where this kernel and
    // machine allow), for the table's reader.
    if !quiet() {
        for inst in [&MAIN, &SEARCH] {
            let a = memory::proxy_status(&env.bin, inst)?.clients.attribution;
            println!(
                "load: {} names clients by {}{}",
                inst.name,
                a.mode,
                a.why.map_or(String::new(), |w| format!(" ({w})"))
            );
        }
    }
    env.start_floor_process(&expected)?;
    start_floor(&expected, FLOOR_SOCK, FLOOR_PORT)?;

    // Warm the cache: the rows below measure hits (an entry lives 60 s, so a
    // long run sees one miss a minute; the "rpcbind served" column shows it).
    let ep = Endpoint::Unix(MAIN.sock());
    drive(&ep, Mode::Persistent, 1, Duration::ZERO, &expected, 1)?;

    let c = plan.clients;
    let mut specs = Vec::new();
    // rpcbind last in each group: its one-TCP-connection-per-lookup row
    // leaves thousands of TIME_WAIT sockets, which would make the other
    // rows' connects search longer for a free port.
    let targets = [
        Target::Proxy,
        Target::Floor,
        Target::FloorInProcess,
        Target::Rpcbind,
    ];
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
    // What attribution costs: the same rows with it off, right after.
    for mode in [Mode::OneShot, Mode::Persistent] {
        for t in [Transport::Unix, Transport::Tcp] {
            specs.push(Spec::new(t, mode, Target::Proxy, c, plan.row));
            specs.push(Spec::new(t, mode, Target::NoAttribution, c, plan.row));
            specs.push(Spec::new(t, mode, Target::SearchAttribution, c, plan.row));
        }
    }
    // Two more proxy / floor / floor in-process triples per transport,
    // interleaved: the floor moves from row to row as much as the proxy
    // (see the floor targets).
    for _ in 0..2 {
        for t in Transport::ALL {
            for target in [Target::Proxy, Target::Floor, Target::FloorInProcess] {
                specs.push(Spec::new(t, Mode::Persistent, target, c, plan.row));
            }
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
    specs.retain(|s| plan.transport.is_none_or(|t| s.transport == t));
    let mut rows = Vec::new();
    for spec in specs {
        let pid = match spec.target {
            Target::Proxy => Some(proxy_pid),
            Target::Miss => Some(miss_pid),
            Target::NoAttribution => Some(noattr_pid),
            Target::SearchAttribution => Some(search_pid),
            _ => None,
        };
        let row = run_row(spec, &expected, pid)?;
        if row.lookups == 0 {
            return Err(format!("{}: no lookup answered", spec.label()));
        }
        rows.push(row);
    }
    if !rows.is_empty() && !quiet() {
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
    let tirpc = if only("table") || only("tirpc") {
        let tirpc = tirpc::tirpc_rows(&env.tmp, plan.clients, plan.row)?;
        if !quiet() {
            tirpc::print_tirpc_table(&tirpc, &rows);
        }
        tirpc
    } else {
        Vec::new()
    };
    env.stop(miss_pid);
    if !quiet() {
        eprintln!(
            "load: table done at {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }

    let mem = if only("memory") {
        Some(memory_section(env, plan, &expected)?)
    } else {
        None
    };
    if !quiet() {
        eprintln!(
            "load: memory done at {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let cg = if plan.instructions && only("instructions") {
        Some(instructions_section(env, plan, &expected)?)
    } else {
        None
    };
    if quiet() {
        println!(
            "load: smoke run passed: {} rows answered, memory section {}, in {:.0} s (debug build, no figures; LOAD_VERBOSE=1 prints them)",
            rows.len(),
            if mem.is_some() { "ran" } else { "skipped" },
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    print_targets(plan.full, &rows, &tirpc, mem.as_ref(), cg.as_ref());
    println!();
    println!(
        "whole run: {:.0} s (not counting the build)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
