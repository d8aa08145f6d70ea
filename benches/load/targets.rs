//! The targets the proxy is built to meet (throughput against the floor
//! and rpcbind, memory, instructions per hit; BENCHMARKS.md prints them
//! for each build), checked against the measured figures.

use crate::clients::{Mode, Target, Transport};
use crate::instructions::Instructions;
use crate::memory::Memory;
use crate::table::{find, Row};
use crate::tirpc::TirpcRow;

/// Instructions the proxy may spend per cached hit (unix and TCP).
const MAX_INSTRUCTIONS_PER_HIT: f64 = 2500.0;
/// RSS with the memory section's idle connections and cache entries.
const MAX_RSS_KIB: u64 = 48 * 1024;

pub(crate) fn print_targets(
    full: bool,
    rows: &[Row],
    tirpc: &[TirpcRow],
    mem: Option<&Memory>,
    cg: Option<&Instructions>,
) {
    println!();
    if full {
        println!("targets:");
    } else {
        println!("targets, from a smoke run of the debug build: not a measurement:");
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let check = |ok: bool, text: String| println!("- {}: {text}", verdict(ok));
    let mode_name = |t: Transport, mode: Mode| match (mode, t) {
        (Mode::Persistent, Transport::Udp) => "datagrams",
        (Mode::Persistent, _) => "persistent",
        (Mode::OneShot, _) => "one connection per lookup",
    };
    let c = rows.iter().map(|r| r.spec.clients).max().unwrap_or(1);

    // Every path at least as fast through the proxy as against rpcbind.
    let paths = Transport::ALL
        .iter()
        .map(|&t| (t, Mode::Persistent))
        .chain([Transport::Unix, Transport::Tcp].map(|t| (t, Mode::OneShot)));
    for (t, mode) in paths {
        if let (Some(p), Some(r)) = (
            find(rows, t, mode, Target::Proxy, c),
            find(rows, t, mode, Target::Rpcbind, c),
        ) {
            vs_rpcbind(
                &check,
                &format!("{} {} ({c} clients)", t.name(), mode_name(t, mode)),
                (p.rate, r.rate),
                ((t, mode) == (Transport::Tcp, Mode::OneShot))
                    .then_some((p.time_wait, r.time_wait)),
            );
        }
    }
    for p in tirpc.iter().filter(|r| r.target == Target::Proxy) {
        let twin = tirpc.iter().find(|r| {
            r.target == Target::Rpcbind && r.transport == p.transport && r.mode == p.mode
        });
        if let Some(r) = twin {
            let (t, mode) = (p.transport, p.mode);
            vs_rpcbind(
                &check,
                &format!(
                    "libtirpc {} {} ({} clients)",
                    t.name(),
                    mode_name(t, mode),
                    p.clients
                ),
                (p.rate, r.rate),
                ((t, mode) == (Transport::Tcp, Mode::OneShot))
                    .then_some((p.time_wait, r.time_wait)),
            );
        }
    }

    // Cached hits close to what the kernel and the clients allow: against
    // the floor in its own process, as the proxy is (the in-process floor,
    // which switching between threads of one process favours, is reported
    // beside). The floor moves as much as the proxy from one row to the
    // next (other work on the machine only ever lowers a row), so every
    // proxy and floor row of the run counts (they are interleaved): best
    // against best decides, the medians are printed beside.
    for (t, share) in [
        (Transport::Unix, 0.85),
        (Transport::Tcp, 0.85),
        (Transport::Udp, 0.95),
    ] {
        let p = rates(rows, t, Mode::Persistent, Target::Proxy, c);
        let path = format!(
            "cached hits over {} {}",
            t.name(),
            mode_name(t, Mode::Persistent)
        );
        let f = rates(rows, t, Mode::Persistent, Target::Floor, c);
        if let Some(figures) = vs_floor(&p, &f) {
            check(
                figures.met(share),
                format!("{path} at >= {share:.2} of the floor: {figures}"),
            );
        }
        let f = rates(rows, t, Mode::Persistent, Target::FloorInProcess, c);
        if let Some(figures) = vs_floor(&p, &f) {
            println!("- report: {path} against the in-process floor: {figures}");
        }
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
    // Attribution's cost: each proxy row measured right before its
    // no-attribution twin (the last proxy row of that kind).
    for mode in [Mode::OneShot, Mode::Persistent] {
        for t in [Transport::Unix, Transport::Tcp] {
            let twin = |target| {
                rows.iter().rev().find(|r| {
                    r.spec.transport == t
                        && r.spec.mode == mode
                        && r.spec.target == target
                        && r.spec.clients == c
                })
            };
            let off = twin(Target::NoAttribution);
            for (target, how) in [
                (Target::Proxy, "attribution on"),
                (Target::SearchAttribution, "attribution by search only"),
            ] {
                if let (Some(on), Some(off)) = (twin(target), off) {
                    check(
                        on.rate >= 0.9 * off.rate,
                        format!(
                            "{} {}, {how} at >= 0.9 of off: {:.0}/s vs {:.0}/s = {:.2}",
                            t.name(),
                            mode_name(t, mode),
                            on.rate,
                            off.rate,
                            on.rate / off.rate
                        ),
                    );
                }
            }
        }
    }
    let hit_rows = rows.iter().filter(|r| r.spec.target == Target::Proxy);
    let (served, answered) =
        hit_rows.fold((0, 0), |(s, a), r| (s + r.rpcbind_served, a + r.lookups));
    if answered > 0 {
        check(
            served * 1000 <= answered,
            format!(
                "rpcbind serves <= 1 per 1,000 in the hit rows: {served} of {answered} ({:.5} per 1,000)",
                served as f64 * 1000.0 / answered as f64
            ),
        );
    }

    match mem {
        Some(mem) => {
            check(
                mem.rss_kib <= MAX_RSS_KIB && mem.hwm_kib <= MAX_RSS_KIB,
                format!(
                    "RSS <= {} MiB with {} idle connections and {} cache entries: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                    MAX_RSS_KIB / 1024,
                    mem.idle,
                    mem.entries,
                    mem.rss_kib as f64 / 1024.0,
                    mem.hwm_kib as f64 / 1024.0
                ),
            );
            check(
                mem.active_ratio() >= 0.9,
                format!(
                    "an active client beside the {} idle connections at >= 0.9 of its rate without them: {:.0}/s vs {:.0}/s = {:.2}",
                    mem.idle,
                    mem.active_with,
                    mem.active_without,
                    mem.active_ratio()
                ),
            );
        }
        None => println!("- report: memory with idle connections: not measured in this run"),
    }

    match cg {
        Some(cg) => {
            for t in [Transport::Unix, Transport::Tcp] {
                let n = cg.per_hit(t).unwrap_or(f64::NAN);
                check(
                    n <= MAX_INSTRUCTIONS_PER_HIT,
                    format!(
                        "<= {MAX_INSTRUCTIONS_PER_HIT:.0} instructions per cached hit over {} (callgrind): {n:.0}",
                        t.name()
                    ),
                );
            }
            println!(
                "- report: instructions per cached hit over udp (callgrind): {:.0}",
                cg.per_hit(Transport::Udp).unwrap_or(f64::NAN)
            );
        }
        None => println!("- report: instructions per cached hit: not measured in this run"),
    }
}

/// "At least as fast as rpcbind on the same path" (and, for one TCP
/// connection per lookup, no TIME_WAIT left by the proxy).
fn vs_rpcbind(
    check: &impl Fn(bool, String),
    path: &str,
    (proxy, rpcbind): (f64, f64),
    time_wait: Option<(usize, usize)>,
) {
    let mut text = format!(
        "{path} through the proxy >= 1.0x rpcbind: {proxy:.0}/s vs {rpcbind:.0}/s = {:.2}x",
        proxy / rpcbind
    );
    let mut ok = proxy >= rpcbind;
    if let Some((p, r)) = time_wait {
        text += &format!(", {p} TIME_WAIT (rpcbind: {r}), 0 wanted");
        ok &= p == 0;
    }
    check(ok, text);
}

/// The proxy's rows of a kind against a floor's: best against best, and the
/// medians.
struct VsFloor<'a> {
    proxy: &'a [f64],
    floor: &'a [f64],
}

impl VsFloor<'_> {
    fn best(&self) -> (f64, f64) {
        (
            self.proxy.last().copied().unwrap_or(f64::NAN),
            self.floor.last().copied().unwrap_or(f64::NAN),
        )
    }

    fn met(&self, share: f64) -> bool {
        let (p, f) = self.best();
        p >= share * f
    }
}

impl std::fmt::Display for VsFloor<'_> {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (pb, fb) = self.best();
        let (pm, fm) = (median(self.proxy), median(self.floor));
        write!(
            out,
            "best {pb:.0}/s vs {fb:.0}/s = {:.2} ({} and {} rows; medians {pm:.0}/s vs {fm:.0}/s = {:.2})",
            pb / fb,
            self.proxy.len(),
            self.floor.len(),
            pm / fm,
        )
    }
}

/// Both sorted (lowest first); none when either has no row.
fn vs_floor<'a>(proxy: &'a [f64], floor: &'a [f64]) -> Option<VsFloor<'a>> {
    (!proxy.is_empty() && !floor.is_empty()).then_some(VsFloor { proxy, floor })
}

/// The rates of every row of this kind, lowest first.
fn rates(rows: &[Row], t: Transport, mode: Mode, target: Target, clients: usize) -> Vec<f64> {
    let mut v: Vec<f64> = rows
        .iter()
        .filter(|r| {
            r.spec.transport == t
                && r.spec.mode == mode
                && r.spec.target == target
                && r.spec.clients == clients
        })
        .map(|r| r.rate)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
