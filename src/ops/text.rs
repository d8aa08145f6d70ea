//! The status rendered for people: aligned columns, the hit ratio first.

use std::fmt::Write as _;

use serde_json::Value;

use super::client::{f, u};

/// The status for people: aligned, the hit ratio first.
pub fn human(v: &Value) -> String {
    let mut o = String::new();
    let row = |o: &mut String, label: &str, text: String| {
        let _ = writeln!(o, "{label:<12} {text}");
    };
    row(
        &mut o,
        "hit ratio",
        format!(
            "{:.1}%  (hits {}, negative hits {}, coalesced {}, misses {})",
            f(v, "/cache/hit_ratio") * 100.0,
            u(v, "/cache/hits"),
            u(v, "/cache/negative_hits"),
            u(v, "/cache/coalesced"),
            u(v, "/cache/misses")
        ),
    );
    row(
        &mut o,
        "cache",
        format!(
            "{} of {} entries; ttl {}s, negative {}s, refresh {}s; evictions {}, expirations {}, invalidations {}, stale served {}",
            u(v, "/cache/entries"),
            u(v, "/cache/max_entries"),
            f(v, "/cache/ttl_seconds"),
            f(v, "/cache/negative_ttl_seconds"),
            f(v, "/cache/refresh_seconds"),
            u(v, "/cache/evictions"),
            u(v, "/cache/expirations"),
            u(v, "/cache/invalidations/total"),
            u(v, "/cache/stale_served")
        ),
    );
    let classes = v
        .pointer("/upstream/classes")
        .and_then(Value::as_object)
        .map(|m| {
            ["unix", "tcp", "udp", "tcp6", "udp6"]
                .iter()
                .filter_map(|c| m.get(*c).map(|x| (c, x)))
                .map(|(c, x)| {
                    let up = x.get("connected").and_then(Value::as_bool).unwrap_or(false);
                    format!("{c} {}", if up { "up" } else { "-" })
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let us = |p: &str| match v.pointer(p).and_then(Value::as_u64) {
        Some(x) => format!("<{x}us"),
        None => "-".into(),
    };
    row(
        &mut o,
        "upstream",
        format!(
            "{classes}; calls {}, in flight {}, timeouts {}, errors {}, p50 {}, p99 {}",
            u(v, "/upstream/calls"),
            u(v, "/upstream/in_flight"),
            u(v, "/upstream/timeouts"),
            u(v, "/upstream/errors"),
            us("/upstream/latency_p50_us"),
            us("/upstream/latency_p99_us")
        ),
    );
    let procs = v
        .pointer("/requests/by_procedure")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{} v{} {}",
                        p["procedure"].as_str().unwrap_or("?"),
                        p["version"],
                        p["count"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    row(
        &mut o,
        "requests",
        format!("{} total; {procs}", u(v, "/requests/total")),
    );
    row(
        &mut o,
        "clients",
        format!(
            "{} connected, {} in all",
            u(v, "/clients/connected"),
            u(v, "/clients/total")
        ),
    );
    row(
        &mut o,
        "time_wait",
        format!(
            "{} on port 111, {} on the proxy's ports",
            u(v, "/time_wait/port_111"),
            u(v, "/time_wait/proxy_ports")
        ),
    );
    row(&mut o, "limits", limits_line(v));
    if let Some(line) = intercept_line(v) {
        row(&mut o, "intercept", line);
    }
    row(
        &mut o,
        "daemon",
        format!(
            "version {}, up {}s",
            v["version"].as_str().unwrap_or("?"),
            u(v, "/uptime_seconds")
        ),
    );
    let listeners: Vec<&str> = v["listeners"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    row(&mut o, "listeners", listeners.join(" "));
    let n = |x: &Value| x.as_u64().map_or("-".to_string(), |v| v.to_string());
    if let Some(lookups) = v["lookups"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            o,
            "\nlookups         program vers netid        hits     misses"
        );
        for l in lookups.iter().take(20) {
            let _ = writeln!(
                o,
                "             {:>10} {:>4} {:<6} {:>10} {:>10}",
                n(&l["program"]),
                n(&l["version"]),
                l["netid"].as_str().unwrap_or("?"),
                n(&l["hits"]),
                n(&l["misses"])
            );
        }
    }
    let table = clients_table(v);
    if !table.is_empty() {
        let _ = write!(o, "\ntop clients\n{table}");
    }
    o
}

/// Each client limit, its setting and how often it bit.
fn limits_line(v: &Value) -> String {
    let secs =
        |p: &str| crate::proxy::logs::human(std::time::Duration::from_secs_f64(f(v, p).max(0.0)));
    format!(
        "max-connections {} (refused {}, evicted {}), max-in-flight {} (reached {}), idle-timeout {} (closed {}), record-timeout {} (closed {}), max-udp-reply {} (too large {}), udp misses in flight {} (dropped {})",
        u(v, "/limits/max_connections/limit"),
        u(v, "/limits/max_connections/refused"),
        u(v, "/limits/max_connections/evicted"),
        u(v, "/limits/max_in_flight/limit"),
        u(v, "/limits/max_in_flight/reached"),
        secs("/limits/idle_timeout/seconds"),
        u(v, "/limits/idle_timeout/closed"),
        secs("/limits/record_timeout/seconds"),
        u(v, "/limits/record_timeout/closed"),
        u(v, "/limits/max_udp_reply/limit"),
        u(v, "/limits/max_udp_reply/too_large"),
        u(v, "/limits/udp_in_flight/limit"),
        u(v, "/limits/udp_in_flight/dropped"),
    )
}

/// Transparent mode in one line: on with what it redirected, or why not.
fn intercept_line(v: &Value) -> Option<String> {
    let i = v.get("intercept")?;
    if !i["enabled"].as_bool().unwrap_or(false) {
        return Some("off".into());
    }
    if let Some(e) = i["error"].as_str() {
        return Some(format!("on, counters unreadable: {e}"));
    }
    if !i["active"].as_bool().unwrap_or(false) {
        return Some("on, not redirecting (stopping)".into());
    }
    let rules: Vec<String> = i["rules"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{} {}", r["rule"].as_str().unwrap_or("?"), r["flows"]))
                .collect()
        })
        .unwrap_or_default();
    Some(format!(
        "on ({}, mark {}): {} flows redirected ({})",
        i["table"].as_str().unwrap_or("?"),
        i["mark"].as_str().unwrap_or("?"),
        i["redirected_flows"],
        rules.join(", ")
    ))
}

/// The top-clients table (status and `top`): who asks, by rate. Unknown
/// values show as `-`, never a guess; a client on another host shows its
/// address as its unit.
pub fn clients_table(v: &Value) -> String {
    let Some(top) = v
        .pointer("/clients/top")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return String::new();
    };
    let text = |x: &Value| x.as_str().map_or("-".to_string(), str::to_owned);
    let num = |x: &Value| x.as_u64().map_or("-".to_string(), |v| v.to_string());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {:<28} {:<15} {:>6} {:<5} {:>9} {:>9} {:>10} {:>7}",
        "UNIT", "COMMAND", "UID", "PROTO", "LOOKUP/S", "/S 1MIN", "TOTAL", "PID"
    );
    for c in top {
        let unit = if c["other"].as_bool() == Some(true) {
            "(other clients)".to_string()
        } else {
            c["address"]
                .as_str()
                .map_or_else(|| text(&c["unit"]), |a| format!("{a} (remote)"))
        };
        let _ = writeln!(
            o,
            "  {:<28} {:<15} {:>6} {:<5} {:>9.1} {:>9.1} {:>10} {:>7}",
            unit,
            text(&c["command"]),
            num(&c["uid"]),
            text(&c["transport"]),
            c["per_second_10s"].as_f64().unwrap_or(0.0),
            c["per_second_60s"].as_f64().unwrap_or(0.0),
            num(&c["requests"]),
            num(&c["pid"]),
        );
    }
    if let Some(rows) = v
        .pointer("/clients/rest/rows")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
    {
        let _ = writeln!(
            o,
            "  ... {rows} more, {} lookups",
            num(&v["clients"]["rest"]["requests"])
        );
    }
    o
}
