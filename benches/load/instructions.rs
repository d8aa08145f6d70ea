//! Instructions per cached hit (callgrind).

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::clients::{framed, getport_call, Conn, Endpoint, Transport};
use crate::env::Env;
use crate::{Plan, CG, TEST_PROG};

#[derive(Debug)]
pub(crate) struct Instructions {
    hits: u32,
    /// (transport, instructions in the hit window, instructions in an idle
    /// window as long).
    per_transport: Vec<(Transport, u64, u64)>,
}

impl Instructions {
    pub(crate) fn per_hit(&self, t: Transport) -> Option<f64> {
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
pub(crate) fn instructions_section(
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
