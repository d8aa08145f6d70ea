//! The status rendered for people: aligned columns, the hit ratio first.

use std::fmt::Write as _;
use std::time::Duration;

use crate::proxy::logs::human as duration;
use crate::proxy::status::{AttributionStatus, Intercept, LimitsStatus, Status, TableState};

/// The transport classes in the order people read them.
const CLASSES: [&str; 5] = ["unix", "tcp", "udp", "tcp6", "udp6"];

/// The status for people: aligned, the hit ratio first.
pub fn human(s: &Status) -> String {
    let mut o = String::new();
    let row = |o: &mut String, label: &str, text: String| {
        let _ = writeln!(o, "{label:<12} {text}");
    };
    let c = &s.cache;
    row(
        &mut o,
        "hit ratio",
        format!(
            "{:.1}%  (hits {}, negative hits {}, coalesced {}, misses {})",
            c.hit_ratio * 100.0,
            c.hits,
            c.negative_hits,
            c.coalesced,
            c.misses
        ),
    );
    row(
        &mut o,
        "cache",
        format!(
            "{} of {} entries; ttl {}s, negative {}s, refresh {}s; evictions {}, expirations {}, invalidations {}, stale served {}",
            c.entries,
            c.max_entries,
            c.ttl_seconds,
            c.negative_ttl_seconds,
            c.refresh_seconds,
            c.evictions,
            c.expirations,
            c.invalidations.total,
            c.stale_served
        ),
    );
    let up = &s.upstream;
    let classes = CLASSES
        .iter()
        .filter_map(|c| up.classes.get(*c).map(|x| (c, x)))
        .map(|(c, x)| format!("{c} {}", if x.connected { "up" } else { "-" }))
        .collect::<Vec<_>>()
        .join(", ");
    let us = |q: Option<u64>| q.map_or_else(|| "-".into(), |x| format!("<{x}us"));
    row(
        &mut o,
        "upstream",
        format!(
            "{classes}; calls {}, in flight {}, timeouts {}, errors {}, p50 {}, p99 {}",
            up.calls,
            up.in_flight,
            up.timeouts,
            up.errors,
            us(up.latency_p50_us),
            us(up.latency_p99_us)
        ),
    );
    row(&mut o, "rpcbind", rpcbind_line(s));
    let procs = s
        .requests
        .by_procedure
        .iter()
        .map(|p| format!("{} v{} {}", p.procedure, p.version, p.count))
        .collect::<Vec<_>>()
        .join(", ");
    // A daemon that has had no call yet has no procedure to list.
    let requests = if procs.is_empty() {
        format!("{} total", s.requests.total)
    } else {
        format!("{} total; {procs}", s.requests.total)
    };
    row(&mut o, "requests", requests);
    row(
        &mut o,
        "clients",
        format!(
            "{} connected, {} in all",
            s.clients.connected, s.clients.total
        ),
    );
    row(
        &mut o,
        "attribution",
        attribution_line(&s.clients.attribution),
    );
    row(
        &mut o,
        "time_wait",
        format!(
            "{} on port 111, {} on the proxy's ports",
            s.time_wait.port_111, s.time_wait.proxy_ports
        ),
    );
    row(&mut o, "limits", limits_line(&s.limits));
    if !s.limits.remote_rate.offenders.is_empty() {
        row(
            &mut o,
            "held back",
            offenders_line(&s.limits.remote_rate.offenders),
        );
    }
    row(&mut o, "intercept", intercept_line(&s.intercept));
    if s.outbound.enabled {
        let b = &s.outbound;
        row(
            &mut o,
            "outbound",
            format!(
                "{} clients, {} calls, {} unanswered; {} servers, {} connected",
                b.clients, b.calls, b.failures, b.servers, b.servers_connected
            ),
        );
    }
    row(
        &mut o,
        "daemon",
        format!("version {}, up {}s", s.version, s.uptime_seconds),
    );
    row(&mut o, "listeners", s.listeners.join(" "));
    if !s.lookups.is_empty() {
        let _ = writeln!(
            o,
            "\nlookups         program vers netid        hits     misses"
        );
        for l in s.lookups.iter().take(20) {
            let _ = writeln!(
                o,
                "             {:>10} {:>4} {:<6} {:>10} {:>10}",
                l.program, l.version, l.netid, l.hits, l.misses
            );
        }
    }
    let table = clients_table(s);
    if !table.is_empty() {
        let _ = write!(o, "\ntop clients\n{table}");
    }
    o
}

/// rpcbind's own state and counters: what reached it, beside what the
/// proxy absorbed.
fn rpcbind_line(s: &Status) -> String {
    let r = &s.rpcbind;
    let state = if r.up { "up" } else { "not answering" };
    let pings = s.requests.pings_answered;
    let pings = if pings > 0 {
        format!("; {pings} pings answered for it")
    } else {
        String::new()
    };
    let Some(c) = &r.counters else {
        return format!("{state}, counters unavailable{pings}");
    };
    let total: u64 = c.calls.iter().map(|p| p.count).sum();
    let mut busiest: Vec<_> = c.calls.iter().filter(|p| p.count > 0).collect();
    busiest.sort_by_key(|p| std::cmp::Reverse(p.count));
    let busiest = busiest
        .iter()
        .take(4)
        .map(|p| format!("{} v{} {}", p.procedure, p.version, p.count))
        .collect::<Vec<_>>()
        .join(", ");
    let sum = |procedure: &str| {
        c.registrations
            .iter()
            .filter(|g| g.procedure == procedure)
            .fold((0, 0), |(s, f), g| (s + g.success, f + g.failure))
    };
    let (sets, sets_failed) = sum("SET");
    let (unsets, unsets_failed) = sum("UNSET");
    let (found, not_found) = c.lookups.iter().fold(
        (c.other_lookups.success, c.other_lookups.failure),
        |(s, f), l| (s + l.success, f + l.failure),
    );
    let busiest = if busiest.is_empty() {
        String::new()
    } else {
        format!(" ({busiest})")
    };
    format!(
        "{state}; its own counters: calls {total}{busiest}, sets {sets} (failed {sets_failed}), unsets {unsets} (failed {unsets_failed}), lookups {} (not found {not_found}){pings}",
        found + not_found
    )
}

/// Each client limit, its setting and how often it bit.
/// Server mode's hosts held back most: `169.254.1.9 (rate 120,
/// amplification 3, in flight 0), ...`.
fn offenders_line(offenders: &[crate::proxy::status::OffenderStatus]) -> String {
    offenders
        .iter()
        .map(|o| {
            format!(
                "{} (rate {}, amplification {}, in flight {})",
                o.address, o.rate_limited, o.amplification, o.in_flight
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn limits_line(l: &LimitsStatus) -> String {
    let secs = |s: f64| duration(Duration::from_secs_f64(s.max(0.0)));
    format!(
        "max-connections {} (refused {}, evicted {}), max-in-flight {} (reached {}), idle-timeout {} (closed {}), record-timeout {} (closed {}), max-udp-reply {} (too large {}), remote-udp-amplification {} (refused {}), remote-rate {} (limited {}), remote-in-flight {} (refused {}), udp misses in flight {} (dropped {})",
        l.max_connections.limit,
        l.max_connections.refused,
        l.max_connections.evicted,
        l.max_in_flight.limit,
        l.max_in_flight.reached,
        secs(l.idle_timeout.seconds),
        l.idle_timeout.closed,
        secs(l.record_timeout.seconds),
        l.record_timeout.closed,
        l.max_udp_reply.limit,
        l.max_udp_reply.too_large,
        l.remote_udp_amplification.limit,
        l.remote_udp_amplification.refused,
        match l.remote_rate.limit {
            0 => "off".to_owned(),
            n => format!("{n}/s"),
        },
        l.remote_rate.limited,
        match l.remote_in_flight.limit {
            0 => "off".to_owned(),
            n => n.to_string(),
        },
        l.remote_in_flight.refused,
        l.udp_in_flight.limit,
        l.udp_in_flight.dropped,
    )
}

/// Transparent mode in one line: on with what it redirected, or why not.
fn intercept_line(i: &Intercept) -> String {
    match &i.state {
        _ if !i.enabled => "off".into(),
        Some(TableState::Unreadable { error, .. }) => {
            format!("on, counters unreadable: {error}")
        }
        Some(TableState::Counted {
            active: true,
            table,
            mark,
            redirected_flows,
            rules,
        }) => {
            let rules: Vec<String> = rules
                .iter()
                .map(|r| format!("{} {}", r.rule, r.flows))
                .collect();
            format!(
                "on ({table}, mark {mark}): {redirected_flows} flows redirected ({})",
                rules.join(", ")
            )
        }
        _ => "on, not redirecting (stopping)".into(),
    }
}

/// `ebpf, named 99.8% of lookups in the last minute`, or
/// `search (no CAP_BPF), ...`.
pub fn attribution_line(a: &AttributionStatus) -> String {
    let mut line = a.mode.clone();
    if let Some(why) = &a.why {
        line.push_str(&format!(" ({why})"));
    }
    if let Some(named) = a.named_60s {
        line.push_str(&format!(
            ", named {:.1}% of lookups in the last minute",
            named * 100.0
        ));
    }
    line
}

/// The top-clients table (status and `top`): who asks, by rate. Unknown
/// values show as `-`, never a guess; a client on another host shows its
/// address as its unit.
pub fn clients_table(s: &Status) -> String {
    let top = &s.clients.top;
    if top.is_empty() {
        return String::new();
    }
    let text = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
    let num = |x: Option<u32>| x.map_or_else(|| "-".into(), |v| v.to_string());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {:<28} {:<15} {:>6} {:<5} {:>9} {:>9} {:>10} {:>7}",
        "UNIT", "COMMAND", "UID", "PROTO", "LOOKUP/S", "/S 1MIN", "TOTAL", "PID"
    );
    for c in top {
        let unit = if c.other {
            "(other clients)".to_string()
        } else {
            c.address
                .as_ref()
                .map_or_else(|| text(&c.unit), |a| format!("{a} (remote)"))
        };
        let _ = writeln!(
            o,
            "  {:<28} {:<15} {:>6} {:<5} {:>9.1} {:>9.1} {:>10} {:>7}",
            unit,
            text(&c.command),
            num(c.uid),
            c.transport,
            c.per_second_10s,
            c.per_second_60s,
            c.requests,
            num(c.pid),
        );
    }
    let rest = &s.clients.rest;
    if rest.rows > 0 {
        let _ = writeln!(o, "  ... {} more, {} lookups", rest.rows, rest.requests);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh daemon's status: no call yet, no client.
    #[test]
    fn a_fresh_daemon_has_no_dangling_separator_and_no_negative_zero() {
        let mut s = Status::default();
        s.clients.rest.per_second_10s = -0.0;
        let text = human(&s);
        let line = text.lines().find(|l| l.starts_with("requests")).unwrap();
        assert_eq!(line, "requests     0 total");
        assert!(!text.contains("-0"), "{text}");
        let top = super::super::top::frame(&s);
        assert!(!top.contains("-0"), "{top}");
    }
}
