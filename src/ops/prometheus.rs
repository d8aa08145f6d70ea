//! The status in Prometheus text exposition format.

use std::fmt::Write as _;

use serde_json::Value;

use super::client::{f, u};

/// The status in Prometheus text exposition format.
pub fn prometheus(v: &Value) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(o, "# HELP rpcbind_proxy_{name} {help}");
        let _ = writeln!(o, "# TYPE rpcbind_proxy_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(o, "rpcbind_proxy_{name}{labels} {value}");
        }
    };
    let one = |p: &str| vec![(String::new(), f(v, p).max(u(v, p) as f64))];
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        one("/uptime_seconds"),
    );
    metric(
        "requests_total",
        "counter",
        "Calls received.",
        one("/requests/total"),
    );
    let by_proc = v
        .pointer("/requests/by_procedure")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        format!(
                            "{{version=\"{}\",procedure=\"{}\"}}",
                            p["version"],
                            p["procedure"].as_str().unwrap_or("")
                        ),
                        p["count"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "procedure_requests_total",
        "counter",
        "Calls per procedure.",
        by_proc,
    );
    for (name, path, help) in [
        (
            "cache_hits_total",
            "/cache/hits",
            "Lookups answered from the cache.",
        ),
        (
            "cache_negative_hits_total",
            "/cache/negative_hits",
            "Lookups answered 'not registered' from the cache.",
        ),
        (
            "cache_misses_total",
            "/cache/misses",
            "Lookups sent to rpcbind.",
        ),
        (
            "cache_coalesced_total",
            "/cache/coalesced",
            "Lookups that waited for another client's identical miss.",
        ),
        (
            "cache_evictions_total",
            "/cache/evictions",
            "Entries evicted beyond max-entries.",
        ),
        (
            "cache_expirations_total",
            "/cache/expirations",
            "Entries expired.",
        ),
        (
            "cache_stale_served_total",
            "/cache/stale_served",
            "Expired entries served while rpcbind was unreachable.",
        ),
        (
            "upstream_calls_total",
            "/upstream/calls",
            "Calls sent to rpcbind.",
        ),
        (
            "upstream_connects_total",
            "/upstream/connects",
            "Connections opened to rpcbind.",
        ),
        (
            "upstream_timeouts_total",
            "/upstream/timeouts",
            "Calls rpcbind did not answer in time.",
        ),
        (
            "upstream_errors_total",
            "/upstream/errors",
            "Calls that failed for a lost or refused connection.",
        ),
        (
            "clients_total",
            "/clients/total",
            "Stream clients accepted.",
        ),
    ] {
        metric(name, "counter", help, one(path));
    }
    for (name, path, help) in [
        (
            "cache_hit_ratio",
            "/cache/hit_ratio",
            "Lookups answered without asking rpcbind, of all lookups.",
        ),
        ("cache_entries", "/cache/entries", "Entries in the cache."),
        (
            "cache_max_entries",
            "/cache/max_entries",
            "The cache's size limit.",
        ),
        (
            "upstream_in_flight",
            "/upstream/in_flight",
            "Calls sent to rpcbind and not yet answered.",
        ),
        (
            "clients_connected",
            "/clients/connected",
            "Stream clients connected now.",
        ),
    ] {
        metric(name, "gauge", help, one(path));
    }
    let inv = ["refresh", "registration", "flush"]
        .iter()
        .map(|r| {
            (
                format!("{{reason=\"{r}\"}}"),
                u(v, &format!("/cache/invalidations/{r}")) as f64,
            )
        })
        .collect();
    metric(
        "cache_invalidations_total",
        "counter",
        "Entries dropped because registrations changed or on request.",
        inv,
    );
    let classes = v
        .pointer("/upstream/classes")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(c, x)| {
                    (
                        format!("{{class=\"{c}\"}}"),
                        if x["connected"].as_bool() == Some(true) {
                            1.0
                        } else {
                            0.0
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "upstream_connected",
        "gauge",
        "Whether the connection of each transport class is open.",
        classes,
    );
    let lat = ["p50", "p99"]
        .iter()
        .filter_map(|q| {
            v.pointer(&format!("/upstream/latency_{q}_us"))
                .and_then(Value::as_f64)
                .map(|x| (format!("{{quantile=\"0.{}\"}}", &q[1..]), x / 1e6))
        })
        .collect();
    metric(
        "upstream_latency_seconds",
        "gauge",
        "Upper bound of the latency quantile of calls to rpcbind.",
        lat,
    );
    let lookups = v["lookups"]
        .as_array()
        .map(|a| {
            a.iter()
                .flat_map(|l| {
                    ["hits", "misses"].into_iter().map(move |r| {
                        (
                            format!(
                                "{{program=\"{}\",version=\"{}\",netid=\"{}\",result=\"{}\"}}",
                                l["program"],
                                l["version"],
                                l["netid"].as_str().unwrap_or(""),
                                r.trim_end_matches('s')
                            ),
                            l[r].as_f64().unwrap_or(0.0),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "lookups_total",
        "counter",
        "Lookups per program, version and netid.",
        lookups,
    );
    let tw = vec![
        (
            "{port=\"111\"}".to_string(),
            u(v, "/time_wait/port_111") as f64,
        ),
        (
            "{port=\"proxy\"}".to_string(),
            u(v, "/time_wait/proxy_ports") as f64,
        ),
    ];
    metric(
        "time_wait_sockets",
        "gauge",
        "TCP sockets in TIME_WAIT involving rpcbind's port or the proxy's.",
        tw,
    );
    // Lookups by who asked: the top rows of `status` summed over their
    // transports, the rest in one `other` series (bounded cardinality).
    let mut by_who: std::collections::BTreeMap<(String, String, String), f64> =
        std::collections::BTreeMap::new();
    for c in v
        .pointer("/clients/top")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let label = |x: &Value| x.as_str().map_or("-".to_string(), str::to_owned);
        let key = if c["other"].as_bool() == Some(true) {
            ("other".into(), "other".into(), "other".into())
        } else {
            (
                c["address"]
                    .as_str()
                    .map_or_else(|| label(&c["unit"]), |a| format!("remote {a}")),
                label(&c["command"]),
                c["uid"].as_u64().map_or("-".to_string(), |u| u.to_string()),
            )
        };
        *by_who.entry(key).or_default() += c["requests"].as_f64().unwrap_or(0.0);
    }
    let rest = f(v, "/clients/rest/requests");
    if rest > 0.0 {
        *by_who
            .entry(("other".into(), "other".into(), "other".into()))
            .or_default() += rest;
    }
    metric(
        "client_requests_total",
        "counter",
        "Calls by the systemd unit, command and uid behind them (the busiest; the rest as other).",
        by_who
            .into_iter()
            .map(|((unit, command, uid), n)| {
                (
                    format!(
                        "{{unit=\"{}\",command=\"{}\",uid=\"{}\"}}",
                        escape(&unit),
                        escape(&command),
                        escape(&uid)
                    ),
                    n,
                )
            })
            .collect(),
    );
    // Every client limit: how often it bit, and its setting.
    const LIMITS: [(&str, &str, &str); 5] = [
        ("max_connections", "refused", "limit"),
        ("max_in_flight", "reached", "limit"),
        ("idle_timeout", "closed", "seconds"),
        ("record_timeout", "closed", "seconds"),
        ("max_udp_reply", "too_large", "limit"),
    ];
    let sample = |l: &str, what: &str| {
        (
            format!("{{limit=\"{l}\"}}"),
            f(v, &format!("/limits/{l}/{what}")).max(u(v, &format!("/limits/{l}/{what}")) as f64),
        )
    };
    metric(
        "limit_hits_total",
        "counter",
        "Times each client limit bit: connections refused (max_connections), reads paused (max_in_flight), clients closed (idle_timeout, record_timeout), UDP replies too large (max_udp_reply), UDP misses dropped (udp_in_flight).",
        LIMITS
            .iter()
            .map(|(l, hits, _)| sample(l, hits))
            .chain([sample("udp_in_flight", "dropped")])
            .collect(),
    );
    metric(
        "connections_evicted_total",
        "counter",
        "Idle connections closed at max_connections to admit a newer client.",
        vec![sample("max_connections", "evicted")]
            .into_iter()
            .map(|(_, n)| (String::new(), n))
            .collect(),
    );
    metric(
        "limit",
        "gauge",
        "Each client limit's setting (timeouts in seconds, max_udp_reply in bytes).",
        LIMITS.iter().map(|(l, _, set)| sample(l, set)).collect(),
    );
    let enabled = v.pointer("/intercept/enabled").and_then(Value::as_bool) == Some(true);
    metric(
        "intercept_enabled",
        "gauge",
        "1 when transparent mode is on (port 111 redirected to the proxy).",
        vec![(String::new(), f64::from(u8::from(enabled)))],
    );
    let redirected = v
        .pointer("/intercept/rules")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        format!("{{rule=\"{}\"}}", r["rule"].as_str().unwrap_or("")),
                        r["flows"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "intercepted_flows_total",
        "counter",
        "Connections and UDP flows to port 111 redirected to the proxy, per rule.",
        redirected,
    );
    o
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
