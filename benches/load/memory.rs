//! Memory: idle connections and a full cache.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::clients::{framed, getport_call, proc_status_kib, success_body, Endpoint};
use crate::env::Env;
use crate::{Instance, Plan, FILL_PROG_BASE, MEM, TEST_PROG};

#[derive(Debug)]
pub(crate) struct Memory {
    pub(crate) idle: usize,
    pub(crate) entries: u64,
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

pub(crate) fn memory_section(env: &mut Env, plan: Plan, expected: &[u8]) -> Result<Memory, String> {
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
    if !crate::quiet() {
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
    }
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
