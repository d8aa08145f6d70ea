//! The two-unit storm, smaller counts: every lookup counted under the
//! (unit, command, uid) of the process that made it while two units hammer
//! the proxy at once, in transparent mode.
//!
//! - unit A (`nfs-check-….service`, nobody): a loop of one-shot `rpcinfo
//!   -T tcp 127.0.0.1 100000` (a new process per lookup), and the sweep:
//!   one libtirpc process making its lookups over a fresh connection each,
//!   so from as many source ports;
//! - unit B (`cronjob-….service`, root), concurrently: an `rpcinfo -p`
//!   loop (unix), an `rpcinfo -T tcp` loop, an `rpcinfo -T udp` loop and one
//!   long-lived libtirpc client making many lookups.
//!
//! And a crowd: a one-shot loop and a long-lived client among 120 idle
//! processes of their user in one cgroup, as in the root cgroup of a host
//! without systemd.
//!
//! Each row's share is what it got over what its clients made (the
//! scenarios and the counting are in `support/storm.rs`, shared with
//! `cargo bench --bench attribution_storm`). The attribution mode is one
//! parameter of [`run`]: the search (the fallback, ≥ 95% per row) and eBPF
//! (exact).

#[path = "support/storm.rs"]
mod storm;
mod support;

use storm::{Mode, Scenario};
use support::run_with;

/// `which` in `mode` with the test's counts; prints the per-row table.
fn run(mode: Mode, which: Scenario) {
    run_with(storm::options(mode), move |sb| async move {
        let (table, failed) = storm::storm(&sb, mode, which, storm::TEST).await;
        println!("{table}");
        assert!(
            failed.is_empty(),
            "rows below {:.0}% (or wrongly credited): {failed:?}\n{table}",
            mode.required() * 100.0
        );
    });
}

#[test]
fn the_two_unit_storm_is_named_by_the_search() {
    run(Mode::Search, Scenario::TwoUnits);
}

#[test]
fn the_two_unit_storm_is_named_exactly_with_ebpf() {
    run(Mode::Ebpf, Scenario::TwoUnits);
}

#[test]
fn clients_in_a_crowded_cgroup_are_named_exactly_with_ebpf() {
    run(Mode::Ebpf, Scenario::Crowd);
}

#[test]
fn clients_in_a_crowded_cgroup_are_named_by_the_search() {
    run(Mode::Search, Scenario::Crowd);
}
