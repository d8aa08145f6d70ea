//! Attribution in a storm, at full speed: the share of each client's
//! lookups counted under its own (unit, command, uid), and what naming
//! costs one-shot lookups.
//!
//!   sudo cargo bench --bench attribution_storm
//!
//! As root, in a private network and mount namespace with the real rpcbind
//! and the proxy in transparent mode (the test sandbox of tests/support),
//! clients in cgroups of their own under the machine's cgroup2 mount
//! (removed afterwards):
//! - the two-unit storm (tests/support/storm.rs) at full size: unit A
//!   (nobody) 1,000 one-shot `rpcinfo -T tcp` and a 10,000-port sweep by
//!   one libtirpc process; unit B (root) at once `rpcinfo -p`, `-T tcp` and
//!   `-T udp` loops of 500 runs and a long-lived libtirpc client of 6,000
//!   lookups; then the crowd (a loop and a long-lived client among 120 idle
//!   processes of their user);
//! - one-shot GETPORT lookups over TCP and over the unix socket, 8 at a
//!   time from this process (in the cgroup it was started in, among its
//!   neighbours: where the search is needed), for
//!   5 s each with attribution by eBPF, by the search only
//!   (`--no-attribution-ebpf`) and off (`--no-attribution`), in 3
//!   interleaved rounds: the medians' ratios.
//!
//! Both storms run in both modes: eBPF (where this kernel and machine
//! allow; else the eBPF tables say skipped) and the search. STORM_TOP=1
//! also prints `top`'s frame after the two-unit storm; STORM_RATES_ONLY=1
//! runs the throughput rows alone.
//!
//! Prints the tables; asserts nothing. Under `cargo test --all-targets` (no
//! `--bench` argument) it runs the test's counts and 0.3 s of each
//! throughput row, as a smoke run; without root it says so and exits 0.

#[path = "../tests/support/storm.rs"]
mod storm;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use storm::{Counts, Mode, Scenario};
use support::*;

/// The storm, full size.
const FULL: Counts = Counts {
    a_rpcinfo_runs: 1_000,
    b_rpcinfo_runs: 500,
    b_client_lookups: 6_000,
    sweep_lookups: 10_000,
    crowd: 120,
    timeout: Duration::from_secs(600),
};

/// Rounds of the three throughput rows, interleaved.
const ROUNDS: usize = 3;

/// The middle value (of an odd count; the upper middle otherwise).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Lookups in flight at once in the throughput rows.
const CONCURRENT: usize = 8;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !nix::unistd::Uid::effective().is_root() {
        println!("attribution_storm: needs root (namespaces, cgroups); not run");
        return;
    }
    let (counts, row) = if full {
        (FULL, Duration::from_secs(5))
    } else {
        (storm::TEST, Duration::from_millis(300))
    };
    // STORM_RATES_ONLY=1: the throughput rows alone.
    let storms = std::env::var_os("STORM_RATES_ONLY").is_none();
    for mode in [Mode::Ebpf, Mode::Search].into_iter().filter(|_| storms) {
        for which in [Scenario::TwoUnits, Scenario::Crowd] {
            run_with(storm::options(mode), move |sb| async move {
                let (table, failed) = storm::storm(&sb, mode, which, counts).await;
                println!("{table}");
                if !failed.is_empty() {
                    println!("below {:.0}%: {failed:?}\n", mode.required() * 100.0);
                }
                if matches!(which, Scenario::TwoUnits) && std::env::var_os("STORM_TOP").is_some() {
                    // STORM_TOP=1: the storm as `top` shows it (README).
                    let top = sb
                        .run_in_ns(&[PROXY_BIN, "top", "-n", "1", "--control", CONTROL_SOCK])
                        .await;
                    println!("{}", String::from_utf8_lossy(&top.stdout));
                }
            });
        }
    }
    println!(
        "one-shot lookups, {CONCURRENT} at a time, {row:?} per row, median of {ROUNDS} interleaved rounds"
    );
    println!(
        "{:<6} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "", "ebpf /s", "search /s", "off /s", "ebpf/off", "search/off"
    );
    for transport in [Transport::Tcp, Transport::Unix] {
        // Interleaved rounds, each mode's median: the machine's noise
        // moves whole rows by 20%.
        let mut rounds = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (i, args) in [&[][..], &["--no-attribution-ebpf"], &["--no-attribution"]]
                .into_iter()
                .enumerate()
            {
                rounds[i].push(rate(transport, args, row));
            }
        }
        let [ebpf, search, off] = rounds.map(median);
        println!(
            "{:<6} {ebpf:>12.0} {search:>12.0} {off:>12.0} {:>10.2} {:>10.2}",
            format!("{transport:?}").to_lowercase(),
            ebpf / off,
            search / off
        );
    }
}

/// One-shot GETPORT lookups per second at the proxy started with `args`,
/// over `transport`.
fn rate(transport: Transport, args: &[&str], row: Duration) -> f64 {
    let opts = Options {
        proxy_args: args.iter().map(|a| a.to_string()).collect(),
        ..Options::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    run_with(opts, move |sb| async move {
        let call = getport_call(PMAP_PROG);
        // Warm the cache: every timed lookup is a hit.
        let _ = sb.call(Target::Proxy, transport, &call).await;
        let started = Instant::now();
        let mut done = 0u64;
        let mut failed = 0u64;
        let mut flight = Vec::new();
        for _ in 0..CONCURRENT {
            flight.push(Box::pin(sb.call(Target::Proxy, transport, &call)));
        }
        while started.elapsed() < row {
            let (outcome, i) = first_of(&mut flight).await;
            if matches!(outcome, Outcome::Reply(_)) {
                done += 1;
            } else {
                failed += 1;
            }
            flight[i] = Box::pin(sb.call(Target::Proxy, transport, &call));
        }
        if failed > 0 {
            eprintln!("{transport:?}: {failed} lookups failed");
        }
        let _ = tx.send(done as f64 / started.elapsed().as_secs_f64());
    });
    rx.recv().unwrap_or(0.0)
}

/// The first of `futs` to finish: its output and index.
async fn first_of<F: std::future::Future + Unpin>(futs: &mut [F]) -> (F::Output, usize) {
    std::future::poll_fn(|cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((v, i));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
