//! The attribution storms, shared by `tests/attribution_storm.rs` (small
//! counts, asserted) and `benches/attribution_storm.rs` (full speed,
//! printed): the units, their clients, and each row's share of the lookups
//! its clients made.
//!
//! How many calls one `rpcinfo` run makes on each transport is measured
//! first, each command alone in a unit of its own (named without a search:
//! the only process there); `tirpc_client getaddr` makes one call per
//! lookup.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::tirpc::tirpc_client;
use crate::support::units::Unit;
use crate::support::*;
use serde_json::Value;

const NOBODY: u32 = 65534;

/// How big a storm is.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Runs of unit A's one-shot loop.
    pub a_rpcinfo_runs: usize,
    /// Runs of each of unit B's one-shot loops (and of the crowd's).
    pub b_rpcinfo_runs: usize,
    /// Lookups of unit B's long-lived client (and of the crowd's).
    pub b_client_lookups: usize,
    /// Lookups (so source ports) of the sweep.
    pub sweep_lookups: usize,
    /// Idle processes of the crowd.
    pub crowd: usize,
    /// The whole storm, at most.
    pub timeout: Duration,
}

/// The test's storm: a few seconds on a debug build.
pub const TEST: Counts = Counts {
    a_rpcinfo_runs: 300,
    b_rpcinfo_runs: 200,
    b_client_lookups: 3000,
    sweep_lookups: 1000,
    crowd: 120,
    timeout: Duration::from_secs(120),
};

/// How clients are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The search of the cgroup's descriptor tables.
    Search,
    /// Recorded in the kernel when the client connects or sends.
    Ebpf,
}

impl Mode {
    /// Extra `serve` arguments that select this mode.
    pub fn proxy_args(self) -> Vec<String> {
        match self {
            Mode::Search => vec!["--no-attribution-ebpf".into()],
            // The default: the recorder where this kernel and machine allow.
            Mode::Ebpf => Vec::new(),
        }
    }

    /// The least share of its lookups each row must get.
    pub fn required(self) -> f64 {
        match self {
            Mode::Search => 0.95,
            Mode::Ebpf => 1.0,
        }
    }
}

/// A client of the storm: what it runs, and the row its calls belong to.
struct Client {
    label: &'static str,
    uid: u32,
    command: &'static str,
    /// Shell script (single quotes not allowed).
    script: String,
    /// Runs of a one-shot command (calls per run measured first), or
    /// `None` for a libtirpc client whose calls are its lookups.
    runs: Option<usize>,
    /// The one-shot command, measured alone; or the libtirpc client's
    /// lookups and transport.
    once: String,
    lookups: (usize, &'static str),
}

fn one_shot(label: &'static str, uid: u32, cmd: &str, runs: usize) -> Client {
    Client {
        label,
        uid,
        command: "rpcinfo",
        script: format!(
            "i=0; while [ $i -lt {runs} ]; do {cmd} >/dev/null || exit 1; i=$((i+1)); done"
        ),
        runs: Some(runs),
        once: cmd.to_owned(),
        lookups: (0, ""),
    }
}

fn tirpc(label: &'static str, uid: u32, lookups: usize) -> Client {
    let t = tirpc_client().to_str().expect("a UTF-8 path");
    Client {
        label,
        uid,
        command: "tirpc_client",
        script: format!("exec {t} getaddr 127.0.0.1 100000 4 tcp {lookups} >/dev/null"),
        runs: None,
        once: String::new(),
        lookups: (lookups, "tcp"),
    }
}

/// A row whose command is known: (unit, command, uid, transport).
type Key = (String, String, u64, String);

/// (unit, command, uid, transport) → requests, from `status --json`.
type Rows = BTreeMap<(String, Option<String>, u64, String), u64>;

fn rows(status: &Value) -> Rows {
    let mut out = Rows::new();
    for r in status["clients"]["top"].as_array().into_iter().flatten() {
        let key = (
            r["unit"].as_str().unwrap_or("-").to_owned(),
            r["command"].as_str().map(str::to_owned),
            r["uid"].as_u64().unwrap_or(u64::MAX),
            r["transport"].as_str().unwrap_or("-").to_owned(),
        );
        *out.entry(key).or_default() += r["requests"].as_u64().unwrap_or(0);
    }
    out
}

/// Calls per transport that one run of `cmd` makes, measured alone in a
/// unit of its own (named without a search: the only process there).
async fn calls_per_run(sb: &Sandbox, cmd: &str) -> BTreeMap<String, u64> {
    let unit = Unit::new("calibrate");
    let argv = unit.shell(0, &format!("{cmd} >/dev/null"));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = sb.run_in_ns(&argv).await;
    assert!(out.status.success(), "{cmd}: {out:?}");
    let mut per = BTreeMap::new();
    for ((u, command, _, transport), n) in rows(&sb.status().await) {
        if u == unit.name {
            assert_eq!(command.as_deref(), Some("rpcinfo"), "{cmd} alone in {u}");
            *per.entry(transport).or_default() += n;
        }
    }
    assert!(!per.is_empty(), "{cmd} made no call");
    per
}

/// Which storm.
#[derive(Debug, Clone, Copy)]
pub enum Scenario {
    /// The two units above.
    TwoUnits,
    /// One unit crowded with idle processes of the clients' user
    /// (as the root cgroup of a host without systemd is): a one-shot loop
    /// and a long-lived client among them.
    Crowd,
}

/// The units of `scenario` and their clients.
fn scenario(scenario: Scenario, n: Counts) -> Vec<(Unit, Vec<Client>)> {
    match scenario {
        Scenario::TwoUnits => vec![
            (
                Unit::new("nfs-check"),
                vec![
                    one_shot(
                        "A rpcinfo -T tcp (nobody)",
                        NOBODY,
                        "rpcinfo -T tcp 127.0.0.1 100000",
                        n.a_rpcinfo_runs,
                    ),
                    tirpc("A sweep (nobody)", NOBODY, n.sweep_lookups),
                ],
            ),
            (
                Unit::new("cronjob"),
                vec![
                    one_shot("B rpcinfo -p", 0, "rpcinfo -p", n.b_rpcinfo_runs),
                    one_shot(
                        "B rpcinfo -T tcp",
                        0,
                        "rpcinfo -T tcp 127.0.0.1 100000",
                        n.b_rpcinfo_runs,
                    ),
                    one_shot(
                        "B rpcinfo -T udp",
                        0,
                        "rpcinfo -T udp 127.0.0.1 100000",
                        n.b_rpcinfo_runs,
                    ),
                    tirpc("B libtirpc client", 0, n.b_client_lookups),
                ],
            ),
        ],
        Scenario::Crowd => {
            let mut loop_ = one_shot(
                "rpcinfo -T tcp in a crowd",
                0,
                "rpcinfo -T tcp 127.0.0.1 100000",
                n.b_rpcinfo_runs,
            );
            // The crowd first (idle, and older than every client), then
            // the loop; the crowd ends with it.
            loop_.script = format!(
                "i=0; idle=; while [ $i -lt {} ]; do sleep 60 & idle=\"$idle $!\"; i=$((i+1)); done; {}; s=$?; kill $idle; exit $s",
                n.crowd, loop_.script
            );
            vec![(
                Unit::new("crowd"),
                vec![
                    loop_,
                    tirpc("libtirpc client in a crowd", 0, n.b_client_lookups),
                ],
            )]
        }
    }
}

/// The sandbox options for `mode`: transparent mode, as the storm needs.
pub fn options(mode: Mode) -> Options {
    Options {
        transparent: true,
        proxy_args: mode.proxy_args(),
        ..Options::default()
    }
}

/// Runs `which` in `sb` (started with [`options`]); returns the per-row
/// table (clients, lookups made, named, share) and the rows below `mode`'s
/// share or credited with lookups that are not theirs.
pub async fn storm(sb: &Sandbox, mode: Mode, which: Scenario, n: Counts) -> (String, Vec<String>) {
    let status = sb.status().await;
    let named_by = &status["clients"]["attribution"];
    match (mode, named_by["mode"].as_str()) {
        (Mode::Ebpf, Some("ebpf")) | (Mode::Search, Some("search")) => {}
        (Mode::Ebpf, _) => {
            assert!(
                !ebpf_expected(),
                "the eBPF recorder should load on this machine: {}",
                named_by["why"]
            );
            return (
                format!(
                "{which:?} storm, Ebpf mode: skipped, the eBPF recorder is not loaded here ({})",
                named_by["why"]
            ),
                Vec::new(),
            );
        }
        (Mode::Search, m) => panic!("the search was asked for, the daemon says {m:?}"),
    }
    let units = scenario(which, n);
    // What each row should get.
    let mut expected: BTreeMap<Key, (u64, Vec<&str>)> = BTreeMap::new();
    for (unit, clients) in &units {
        for c in clients {
            let per: BTreeMap<String, u64> = match c.runs {
                Some(runs) => calls_per_run(sb, &c.once)
                    .await
                    .into_iter()
                    .map(|(t, n)| (t, n * runs as u64))
                    .collect(),
                None => [(c.lookups.1.to_owned(), c.lookups.0 as u64)].into(),
            };
            for (transport, n) in per {
                let key = (
                    unit.name.clone(),
                    c.command.to_owned(),
                    u64::from(c.uid),
                    transport,
                );
                let e = expected.entry(key).or_default();
                e.0 += n;
                e.1.push(c.label);
            }
        }
    }

    // All at once.
    let started = Instant::now();
    let runs = units.iter().flat_map(|(unit, clients)| {
        clients.iter().map(|c| {
            let argv = unit.shell(c.uid, &c.script);
            async move {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let out = sb.run_in_ns(&argv).await;
                assert!(
                    out.status.success(),
                    "{}: {}",
                    c.label,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    });
    tokio::time::timeout(n.timeout, futures_join_all(runs))
        .await
        .expect("the storm ended in time");
    let took = started.elapsed();

    let status = sb.status().await;
    let got = rows(&status);
    let mut table = format!(
        "{which:?} storm, {mode:?} mode, {:.1} s\n{:<28} {:>8} {:>8} {:>7}\n",
        took.as_secs_f64(),
        "row (clients)",
        "made",
        "named",
        "share"
    );
    let mut failed = Vec::new();
    for ((unit, command, uid, transport), (made, labels)) in &expected {
        let named = got
            .get(&(unit.clone(), Some(command.clone()), *uid, transport.clone()))
            .copied()
            .unwrap_or(0);
        let share = named.min(*made) as f64 / *made as f64;
        let row = format!("{} [{transport}]", labels.join(" + "));
        table.push_str(&format!(
            "{row:<28} {made:>8} {named:>8} {:>6.1}%\n",
            share * 100.0
        ));
        if share < mode.required() || named > *made {
            failed.push(row);
        }
    }
    for ((unit, command, uid, transport), n) in &got {
        // STORM_DEBUG=1: every row the status has, to see where a
        // failing run's lookups went.
        if std::env::var_os("STORM_DEBUG").is_some() {
            table.push_str(&format!(
                "  row: {unit} {command:?} {uid} {transport}: {n}\n"
            ));
        }
        if units.iter().any(|(u, _)| u.name == *unit) {
            let known = command.as_ref().is_some_and(|c| {
                expected.contains_key(&(unit.clone(), c.clone(), *uid, transport.clone()))
            });
            if !known {
                table.push_str(&format!(
                    "  also: {unit} {} uid {uid} {transport}: {n}\n",
                    command.as_deref().unwrap_or("-")
                ));
                if command.is_some() {
                    failed.push(format!("{command:?} in {unit}"));
                }
            }
        }
    }
    let rest = &status["clients"]["rest"];
    table.push_str(&format!(
        "  beyond the top rows: {} rows, {} requests\n",
        rest["rows"], rest["requests"]
    ));
    (table, failed)
}

/// Runs the futures concurrently (on this thread) until all are done.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
