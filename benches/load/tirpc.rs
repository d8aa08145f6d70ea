//! Rows driven by stock libtirpc clients: what a real client sees.
//!
//! `tirpc_bench.c` (beside this file) is compiled with the system compiler
//! against libtirpc; each row runs it with the plan's client count as
//! threads: per lookup a `clnt_call(RPCBPROC_GETADDR)` (rpcbind v4, what
//! `rpcb_getaddr` asks first) on a `clnt_vc_create` handle, either kept for
//! the row ("persistent") or made on a fresh connection and destroyed after
//! one call, the client closing first ("conn/lookup", what `rpcb_getaddr`
//! does for every lookup). The raw rows of the main table stay: they are the
//! ones compared with the floor.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::clients::{settle_tcp, time_wait_sockets, Mode, Target, Transport};
use crate::table::print_markdown;
use crate::table::{find, Row};
use crate::{MAIN, RPCBIND_PORT, RPCBIND_SOCK, TEST_PROG, TEST_VERS};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/load/tirpc_bench.c");

pub(crate) struct TirpcRow {
    pub(crate) transport: Transport,
    pub(crate) mode: Mode,
    pub(crate) target: Target,
    pub(crate) clients: usize,
    errors: u64,
    pub(crate) rate: f64,
    p50: f64,
    p99: f64,
    pub(crate) time_wait: usize,
}

/// Builds the client; None (and says why) when there is no compiler or no
/// libtirpc headers.
fn build(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("tirpc_bench");
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libtirpc"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(flags) = flags else {
        say("pkg-config finds no libtirpc (libtirpc-dev)");
        return None;
    };
    let built = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-pthread", "-o"])
        .arg(&out)
        .arg(SRC)
        .args(flags.split_whitespace())
        .output();
    match built {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            say(&format!(
                "cc failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
            None
        }
        Err(e) => {
            say(&format!("cannot run cc: {e}"));
            None
        }
    }
}

/// Why there are no libtirpc rows (unless the smoke run keeps quiet).
fn say(why: &str) {
    if !crate::quiet() {
        println!("load: no libtirpc rows: {why}");
    }
}

fn field(out: &str, name: &str) -> Option<f64> {
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The libtirpc rows: unix and TCP, persistent and one connection per
/// lookup, the proxy (cache warm) and rpcbind.
pub(crate) fn tirpc_rows(
    dir: &Path,
    clients: usize,
    dur: Duration,
) -> Result<Vec<TirpcRow>, String> {
    let Some(bin) = build(dir) else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    // The answer each target gave on each path: the proxy's must be rpcbind's.
    let mut answers: Vec<(Transport, Mode, Target, String)> = Vec::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        for mode in [Mode::Persistent, Mode::OneShot] {
            // rpcbind last: its one-shot TCP row leaves TIME_WAIT behind.
            for target in [Target::Proxy, Target::Rpcbind] {
                let addr = match (transport, target) {
                    (Transport::Unix, Target::Proxy) => format!("unix:{}", MAIN.sock().display()),
                    (Transport::Unix, _) => format!("unix:{RPCBIND_SOCK}"),
                    (_, Target::Proxy) => format!("tcp:127.0.0.1:{}", MAIN.port),
                    (_, _) => format!("tcp:127.0.0.1:{RPCBIND_PORT}"),
                };
                let mode_arg = match mode {
                    Mode::Persistent => "persistent",
                    Mode::OneShot => "oneshot",
                };
                let before_tw = time_wait_sockets();
                let out = Command::new(&bin)
                    .args([
                        mode_arg,
                        &addr,
                        &TEST_PROG.to_string(),
                        &TEST_VERS.to_string(),
                        &clients.to_string(),
                        &format!("{:.3}", dur.as_secs_f64()),
                    ])
                    .output()
                    .map_err(|e| format!("running {}: {e}", bin.display()))?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if !out.status.success() {
                    return Err(format!(
                        "tirpc_bench {mode_arg} {addr}: {} {text}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                settle_tcp();
                let time_wait = time_wait_sockets().difference(&before_tw).count();
                let get = |name| {
                    field(&text, name).ok_or_else(|| format!("tirpc_bench printed {text:?}"))
                };
                let lookups = get("lookups")? as u64;
                let row = TirpcRow {
                    transport,
                    mode,
                    target,
                    clients,
                    errors: get("errors")? as u64,
                    rate: lookups as f64 / get("seconds")?.max(1e-9),
                    p50: get("p50_us")?,
                    p99: get("p99_us")?,
                    time_wait,
                };
                if !crate::quiet() {
                    eprintln!(
                    "load: libtirpc {} {} {:<8} {:>9.0}/s p50 {:>7.1} µs p99 {:>7.1} µs, {} errors, {} TIME_WAIT",
                    transport.name(),
                    mode_arg,
                    target.name(),
                    row.rate,
                    row.p50,
                    row.p99,
                    row.errors,
                    row.time_wait
                );
                }
                if lookups == 0 {
                    return Err(format!("libtirpc {mode_arg} {addr}: no lookup answered"));
                }
                let answer = text
                    .split_whitespace()
                    .skip_while(|w| *w != "answer")
                    .nth(1)
                    .unwrap_or("none")
                    .to_string();
                if let Some((.., other)) = answers
                    .iter()
                    .find(|(t, m, _, _)| *t == transport && *m == mode)
                {
                    if *other != answer {
                        return Err(format!(
                            "libtirpc {mode_arg} {}: the proxy answered {:?}, rpcbind {:?}",
                            transport.name(),
                            if target == Target::Proxy {
                                &answer
                            } else {
                                other
                            },
                            if target == Target::Proxy {
                                other
                            } else {
                                &answer
                            },
                        ));
                    }
                }
                answers.push((transport, mode, target, answer));
                rows.push(row);
            }
        }
    }
    let _ = fs::remove_file(&bin);
    Ok(rows)
}

/// The libtirpc table, with the raw client's rate on the same path beside
/// each row (what the client library itself costs).
pub(crate) fn print_tirpc_table(rows: &[TirpcRow], raw: &[Row]) {
    if rows.is_empty() {
        return;
    }
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
        "proxy/rpcbind",
        "raw client lookups/s",
    ];
    let mut table = Vec::new();
    for r in rows {
        let ratio = if r.target == Target::Proxy {
            rows.iter()
                .find(|o| {
                    o.target == Target::Rpcbind && o.transport == r.transport && o.mode == r.mode
                })
                .map_or(String::new(), |o| format!("{:.2}", r.rate / o.rate))
        } else {
            String::new()
        };
        let raw_rate = find(raw, r.transport, r.mode, r.target, r.clients)
            .map_or(String::new(), |o| format!("{:.0}", o.rate));
        let mode = match r.mode {
            Mode::Persistent => "persistent",
            Mode::OneShot => "conn/lookup",
        };
        table.push(vec![
            r.transport.name().to_string(),
            mode.to_string(),
            r.target.name().to_string(),
            r.clients.to_string(),
            format!("{:.0}", r.rate),
            format!("{:.1}", r.p50),
            format!("{:.1}", r.p99),
            r.errors.to_string(),
            r.time_wait.to_string(),
            ratio,
            raw_rate,
        ]);
    }
    println!();
    println!(
        "libtirpc clients (clnt_vc_create + clnt_call RPCBPROC_GETADDR v4; {} threads):",
        rows[0].clients
    );
    println!();
    print_markdown(&header, table);
}
