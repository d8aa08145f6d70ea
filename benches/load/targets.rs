//! The targets, checked against the measured figures.

use crate::clients::{Mode, Target, Transport};
use crate::instructions::Instructions;
use crate::memory::Memory;
use crate::table::{find, Row};

pub(crate) fn print_targets(
    full: bool,
    rows: &[Row],
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
            if let (Some(on), Some(off)) = (twin(Target::Proxy), twin(Target::NoAttribution)) {
                check(
                    on.rate >= 0.9 * off.rate,
                    format!(
                        "{} {} lookups with attribution >= 0.9 of without: {:.0}/s vs {:.0}/s = {:.2}",
                        t.name(),
                        if mode == Mode::OneShot { "one-connection-per-lookup" } else { "persistent" },
                        on.rate,
                        off.rate,
                        on.rate / off.rate
                    ),
                );
            }
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
