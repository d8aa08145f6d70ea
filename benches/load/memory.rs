//! Memory: idle connections and a full cache, and what the idle connections
//! cost an active client beside them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rpcbind_proxy::proxy::status::Status;

use crate::clients::{
    drive, framed, getport_call, proc_status_kib, success_body, Conn, Endpoint, Load, Mode,
};
use crate::env::Env;
use crate::{Instance, Plan, FILL_PROG_BASE, MEM, TEST_PROG};

#[derive(Debug)]
pub(crate) struct Memory {
    pub(crate) idle: usize,
    pub(crate) entries: u64,
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    /// One persistent client's cached hits per second with the idle
    /// connections open, and after they are closed.
    pub(crate) active_with: f64,
    pub(crate) active_without: f64,
}

impl Memory {
    pub(crate) fn active_ratio(&self) -> f64 {
        self.active_with / self.active_without
    }
}

/// The active client's windows each way (with the idle connections open,
/// and without them), `plan.active / ACTIVE_WINDOWS` each, in the order
/// with, without, without, with, four times over: each way is measured as
/// often first after a change, at the same mean time. Its rate each way is
/// its best window's: the machine's other work (this is a shared 2-core
/// machine) stalls the client for whole windows at times, either way, at
/// 1/5 to 1/8 of its rate, and with half the windows of one way stalled,
/// means and medians gave ratios from 0.4 to 6.6 in consecutive runs.
/// Other work only ever lowers a window's rate; a steady cost of the idle
/// connections (a bigger epoll set, timer wheel, heap) lowers every window
/// with them, the best one too. (A cost that came and went would hide in the
/// other windows: the median is printed beside.)
const ACTIVE_WINDOWS: u32 = 8;

pub(crate) fn memory_section(env: &mut Env, plan: Plan, expected: &[u8]) -> Result<Memory, String> {
    let pid = env.start_proxy(&MEM, None)?;
    let rss = |field| proc_status_kib(pid, field).unwrap_or(0);
    let at_start = rss("VmRSS");
    let ep = Endpoint::Unix(MEM.sock());
    let connected_at_start = connected(&env.bin)?;
    let t0 = Instant::now();
    let mut idle = open_idle(&ep, plan.idle_connections, expected)?;
    let idle_secs = t0.elapsed().as_secs_f64();
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
    let entries = status.cache.entries;
    let open = connected_of(&status);
    let limit = status.limits.max_connections.limit;
    let evicted = status.limits.max_connections.evicted;
    let misses = status.cache.misses;
    drop(status);
    let all_open = connected_at_start + plan.idle_connections as u64;
    if open < all_open || evicted > 0 {
        return Err(format!(
            "memory: the proxy holds {open} client connections (evicted {evicted}, max-connections {limit}), not the {} idle ones opened",
            plan.idle_connections
        ));
    }

    // An active client beside the idle connections: one persistent unix
    // connection asking the cached GETPORT of the table's rows; then the
    // same client without them. Both in this process, with the same cache
    // and heap (a fresh proxy would need the cache filled again, and start
    // from another heap), so that the idle connections are the only
    // difference: "without" begins once the proxy has let go of every idle
    // connection (its count back where it started), "with" once it holds
    // them all again (each reopened and used once, as at first).
    let window = plan.active / ACTIVE_WINDOWS;
    let (mut with, mut without) = (Load::default(), Load::default());
    let (mut with_rates, mut without_rates) = (Vec::new(), Vec::new());
    let mut drain_secs = 0f64;
    for beside in (0..2 * ACTIVE_WINDOWS).map(|i| matches!(i % 4, 0 | 3)) {
        if beside && idle.is_empty() {
            idle = open_idle(&ep, plan.idle_connections, expected)?;
            wait_connected(&env.bin, |n| n >= all_open, "reopening the idle ones")?;
        } else if !beside && !idle.is_empty() {
            drop(std::mem::take(&mut idle));
            let t0 = Instant::now();
            wait_connected(
                &env.bin,
                |n| n <= connected_at_start,
                "closing the idle ones",
            )?;
            drain_secs = drain_secs.max(t0.elapsed().as_secs_f64());
        }
        let load = active(&ep, window, expected)?;
        if beside {
            with_rates.push(load.rate());
            with.absorb(load);
        } else {
            without_rates.push(load.rate());
            without.absorb(load);
        }
    }
    drop(idle);
    env.stop(pid);

    let mem = Memory {
        idle: plan.idle_connections,
        entries,
        rss_kib,
        hwm_kib,
        active_with: best(&with_rates),
        active_without: best(&without_rates),
    };
    let mib = |k: u64| k as f64 / 1024.0;
    if !crate::quiet() {
        println!();
        println!(
        "memory (--max-connections {limit}): VmRSS {:.1} MiB, VmHWM {:.1} MiB with {open} client connections open ({} idle, each used once, opened in {idle_secs:.1} s) and {entries} cache entries \
         ({filled} distinct lookups of unregistered programs in {fill_secs:.1} s, {misses} misses); \
         VmRSS {:.1} MiB at start, {:.1} MiB with the idle connections",
        mib(rss_kib),
        mib(hwm_kib),
        plan.idle_connections,
        mib(at_start),
        mib(with_idle),
    );
        println!(
            "active client beside them (1 persistent unix connection, cached GETPORT; {:.1} s each way in {ACTIVE_WINDOWS} windows of {:.2} s, \
             alternated with-without-without-with; best window): {:.0}/s (median {:.0}/s, p50 {:.1} µs) with the {} idle connections open, \
             {:.0}/s (median {:.0}/s, p50 {:.1} µs) with them closed (the proxy's count back to {connected_at_start} within {drain_secs:.1} s of closing): {:.2}",
            plan.active.as_secs_f64(),
            window.as_secs_f64(),
            mem.active_with,
            median(&mut with_rates),
            with.percentile_us(0.5),
            plan.idle_connections,
            mem.active_without,
            median(&mut without_rates),
            without.percentile_us(0.5),
            mem.active_ratio(),
        );
    }
    Ok(mem)
}

/// The highest of `v`.
fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// The median of `v` (not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

/// `n` idle connections that have each asked one question (so whatever a
/// connection holds once used is allocated), then stay open (the proxy's
/// idle timeout, 120 s by default, is far away).
fn open_idle(ep: &Endpoint, n: usize, expected: &[u8]) -> Result<Vec<Conn>, String> {
    let mut idle = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    let call = framed(&getport_call(9, TEST_PROG));
    for i in 0..n {
        let mut c = ep
            .connect()
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        c.call(&call, 9, expected, &mut buf)
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        idle.push(c);
    }
    Ok(idle)
}

/// One persistent unix client for `dur`: every call must succeed.
fn active(ep: &Endpoint, dur: Duration, expected: &[u8]) -> Result<Load, String> {
    let load = drive(ep, Mode::Persistent, 1, dur, expected, 1)?;
    if load.errors() > 0 {
        return Err(format!(
            "memory: the active client saw {} errors",
            load.errors()
        ));
    }
    Ok(load)
}

/// The proxy's count of client connections (`status`: clients.connected).
fn connected(bin: &Path) -> Result<u64, String> {
    Ok(connected_of(&proxy_status(bin, &MEM)?))
}

fn connected_of(status: &Status) -> u64 {
    u64::try_from(status.clients.connected).unwrap_or(0)
}

/// Waits (at most 30 s) until the proxy's count of client connections is
/// `ok`.
fn wait_connected(bin: &Path, ok: impl Fn(u64) -> bool, after: &str) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let n = connected(bin)?;
        if ok(n) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "memory: the proxy still counts {n} client connections 30 s after {after}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
pub(crate) fn proxy_status(bin: &Path, inst: &Instance) -> Result<Status, String> {
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
