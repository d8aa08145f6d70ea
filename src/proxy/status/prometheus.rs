//! The status in Prometheus text exposition format, written from one table
//! of metrics: name, type, help, and the samples each takes from the
//! status, in the order they are written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::proxy::status::{LimitsStatus, ProcedureCount, Status};

/// A metric's samples: labels (`{k="v",...}` or empty) and value.
type Samples = Vec<(String, f64)>;

/// (name without the `rpcbind_proxy_` prefix, type, help, samples).
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Status) -> Samples,
);

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// Every metric, in the order written.
#[rustfmt::skip]
const METRICS: &[Metric] = &[
    ("build_info", GAUGE, "The daemon's version, as a label; the value is always 1.", |s| vec![(format!("{{version=\"{}\"}}", escape(&s.version)), 1.0)]),
    ("uptime_seconds", GAUGE, "Seconds since the daemon started.", |s| one(s.uptime_seconds)),
    ("requests_total", COUNTER, "Calls received.", |s| one(s.requests.total)),
    ("procedure_requests_total", COUNTER, "Calls per procedure.", by_procedure),
    ("cache_hits_total", COUNTER, "Lookups answered from the cache.", |s| one(s.cache.hits)),
    ("cache_negative_hits_total", COUNTER, "Lookups answered 'not registered' from the cache.", |s| one(s.cache.negative_hits)),
    ("cache_misses_total", COUNTER, "Lookups sent to rpcbind.", |s| one(s.cache.misses)),
    ("cache_coalesced_total", COUNTER, "Lookups that waited for another client's identical miss.", |s| one(s.cache.coalesced)),
    ("cache_evictions_total", COUNTER, "Entries evicted beyond max-entries.", |s| one(s.cache.evictions)),
    ("cache_expirations_total", COUNTER, "Entries expired.", |s| one(s.cache.expirations)),
    ("cache_stale_served_total", COUNTER, "Expired entries served while rpcbind was unreachable.", |s| one(s.cache.stale_served)),
    ("upstream_calls_total", COUNTER, "Calls sent to rpcbind.", |s| one(s.upstream.calls)),
    ("upstream_connects_total", COUNTER, "Connections opened to rpcbind.", |s| one(s.upstream.connects)),
    ("upstream_timeouts_total", COUNTER, "Calls rpcbind did not answer in time.", |s| one(s.upstream.timeouts)),
    ("upstream_errors_total", COUNTER, "Calls that failed for a lost or refused connection.", |s| one(s.upstream.errors)),
    ("clients_total", COUNTER, "Stream clients accepted.", |s| one(s.clients.total)),
    ("cache_hit_ratio", GAUGE, "Lookups answered without asking rpcbind, of all lookups.", |s| one(s.cache.hit_ratio)),
    ("cache_entries", GAUGE, "Entries in the cache.", |s| one(s.cache.entries)),
    ("cache_max_entries", GAUGE, "The cache's size limit.", |s| one(s.cache.max_entries)),
    ("upstream_in_flight", GAUGE, "Calls sent to rpcbind and not yet answered.", |s| one(s.upstream.in_flight)),
    ("clients_connected", GAUGE, "Stream clients connected now.", |s| one(s.clients.connected)),
    ("cache_invalidations_total", COUNTER, "Entries dropped because registrations changed or on request.", invalidations),
    ("upstream_connected", GAUGE, "Whether the connection of each transport class is open.", upstream_connected),
    ("upstream_latency_seconds", GAUGE, "Upper bound of the latency percentile of calls to rpcbind.", latency),
    ("lookups_total", COUNTER, "Lookups per program, version and netid.", lookups),
    ("time_wait_sockets", GAUGE, "TCP sockets in TIME_WAIT involving rpcbind's port or the proxy's.", time_wait),
    ("client_requests_total", COUNTER, "Calls by the systemd unit, command and uid behind them (the busiest; the rest as other).", client_requests),
    ("limit_hits_total", COUNTER, "Times each client limit bit: connections refused (max_connections), reads paused (max_in_flight), clients closed (idle_timeout, record_timeout), UDP replies too large (max_udp_reply), UDP replies to other hosts held back (remote_udp_amplification), other hosts' calls over their rate (remote_rate), other hosts' calls over their calls in flight (remote_in_flight), UDP misses dropped (udp_in_flight).", limit_hits),
    ("connections_evicted_total", COUNTER, "Idle connections closed at max_connections to admit a newer client.", |s| one(s.limits.max_connections.evicted)),
    ("limit", GAUGE, "Each client limit's setting (timeouts in seconds, max_udp_reply in bytes, remote_udp_amplification in times the call's size, remote_rate in calls a second per host, remote_in_flight in calls per host, 0 for none).", |s| limits(&s.limits, |(_, _, setting)| setting)),
    ("attribution_mode", GAUGE, "1 for the way clients are named now: ebpf (the kernel recorded who opened each socket), search (their cgroup's processes searched), off.", attribution_mode),
    ("attribution_named_ratio", GAUGE, "Share of this host's lookups in the last minute whose command was named.", |s| s.clients.attribution.named_60s.map_or_else(Vec::new, one)),
    ("intercept_enabled", GAUGE, "1 when transparent mode is configured on.", |s| one(s.intercept.enabled)),
    ("intercept_active", GAUGE, "1 when port 111 is redirected to the proxy now (the redirect table is in place with its rules).", |s| one(s.intercept.active())),
    ("intercepted_flows_total", COUNTER, "Connections and UDP flows to port 111 redirected to the proxy, per rule.", intercepted_flows),
    ("pings_answered_total", COUNTER, "NULL calls (pings) answered by the proxy while rpcbind was known to answer.", |s| one(s.requests.pings_answered)),
    ("rpcbind_up", GAUGE, "1 when rpcbind answered the proxy's last refresh round and its unix connection is open.", |s| one(s.rpcbind.up)),
    ("rpcbind_calls_total", COUNTER, "Calls rpcbind itself received, by version and procedure (its GETSTAT; the proxy's own GETSTATs included).", rpcbind_calls),
    ("rpcbind_registrations_total", COUNTER, "SET and UNSET calls rpcbind itself received, by outcome.", rpcbind_registrations),
    ("rpcbind_address_lookups_total", COUNTER, "Address lookups (GETPORT, GETADDR) rpcbind itself answered, by what was asked and whether an address was found (the busiest; the rest as other).", rpcbind_lookups),
    ("outbound_calls_total", COUNTER, "Client side: calls of this host's clients sent to other hosts' rpcbind over the proxy's connections.", |s| one(s.outbound.calls)),
    ("outbound_failures_total", COUNTER, "Client side: calls no server answered (their clients were reset).", |s| one(s.outbound.failures)),
    ("outbound_clients_total", COUNTER, "Client side: connections to other hosts' port 111 redirected to the proxy.", |s| one(s.outbound.clients)),
    ("outbound_servers_connected", GAUGE, "Client side: servers with a connection open now.", |s| one(s.outbound.servers_connected)),
    ("rpcbind_remote_calls_total", COUNTER, "Remote calls (CALLIT, BCAST, INDIRECT) rpcbind itself handled, by outcome.", rpcbind_remote_calls),
];

/// The status in Prometheus text exposition format.
pub fn prometheus(s: &Status) -> String {
    let mut o = String::new();
    for (name, kind, help, samples) in METRICS {
        let _ = writeln!(o, "# HELP rpcbind_proxy_{name} {help}");
        let _ = writeln!(o, "# TYPE rpcbind_proxy_{name} {kind}");
        for (labels, value) in samples(s) {
            let _ = writeln!(o, "rpcbind_proxy_{name}{labels} {value}");
        }
    }
    o
}

/// One unlabelled sample.
fn one(value: impl Sample) -> Samples {
    vec![(String::new(), value.value())]
}

/// A status field as a sample's value (the exposition's values are all
/// floats; true is 1).
trait Sample {
    fn value(self) -> f64;
}

impl Sample for u64 {
    fn value(self) -> f64 {
        self as f64
    }
}

impl Sample for i64 {
    fn value(self) -> f64 {
        self as f64
    }
}

impl Sample for f64 {
    fn value(self) -> f64 {
        self
    }
}

impl Sample for bool {
    fn value(self) -> f64 {
        f64::from(u8::from(self))
    }
}

fn by_procedure(s: &Status) -> Samples {
    procedure_counts(&s.requests.by_procedure)
}

/// Counts by version and procedure, the proxy's or rpcbind's.
fn procedure_counts(rows: &[ProcedureCount]) -> Samples {
    rows.iter()
        .map(|p| {
            let labels = format!(
                "{{version=\"{}\",procedure=\"{}\"}}",
                p.version, p.procedure
            );
            (labels, p.count.value())
        })
        .collect()
}

fn invalidations(s: &Status) -> Samples {
    let i = &s.cache.invalidations;
    [
        ("refresh", i.refresh),
        ("registration", i.registration),
        ("flush", i.flush),
    ]
    .into_iter()
    .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), n.value()))
    .collect()
}

fn upstream_connected(s: &Status) -> Samples {
    s.upstream
        .classes
        .iter()
        .map(|(c, x)| (format!("{{class=\"{c}\"}}"), x.connected.value()))
        .collect()
}

/// The percentiles known (none before the first call), in seconds. The
/// label is not `quantile`, which the exposition format keeps for
/// summaries (with their `_sum` and `_count`, which this is not).
fn latency(s: &Status) -> Samples {
    let u = &s.upstream;
    [("50", u.latency_p50_us), ("99", u.latency_p99_us)]
        .into_iter()
        .filter_map(|(p, us)| Some((format!("{{percentile=\"{p}\"}}"), us? as f64 / 1e6)))
        .collect()
}

fn lookups(s: &Status) -> Samples {
    // `result` is "hit" or "miss" (an earlier build cut the s off
    // "misses" and said "misse").
    s.lookups
        .iter()
        .flat_map(|l| {
            [("hit", l.hits), ("miss", l.misses)].map(|(result, n)| {
                let labels = format!(
                    "{{program=\"{}\",version=\"{}\",netid=\"{}\",result=\"{result}\"}}",
                    l.program, l.version, l.netid
                );
                (labels, n.value())
            })
        })
        .collect()
}

fn time_wait(s: &Status) -> Samples {
    vec![
        ("{port=\"111\"}".into(), s.time_wait.port_111.value()),
        ("{port=\"proxy\"}".into(), s.time_wait.proxy_ports.value()),
    ]
}

fn attribution_mode(s: &Status) -> Samples {
    ["ebpf", "search", "off"]
        .iter()
        .map(|m| {
            let on = s.clients.attribution.mode == *m;
            (format!("{{mode=\"{m}\"}}"), if on { 1.0 } else { 0.0 })
        })
        .collect()
}

/// Lookups by who asked: the top rows of `status` summed over their
/// transports, the rest in one `other` series (bounded cardinality).
fn client_requests(s: &Status) -> Samples {
    let other = || {
        (
            "other".to_string(),
            "other".to_string(),
            "other".to_string(),
        )
    };
    let mut by_who: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for c in &s.clients.top {
        let label = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
        let key = if c.other {
            other()
        } else {
            (
                c.address
                    .as_ref()
                    .map_or_else(|| label(&c.unit), |a| format!("remote {a}")),
                label(&c.command),
                c.uid.map_or_else(|| "-".into(), |u| u.to_string()),
            )
        };
        *by_who.entry(key).or_default() += c.requests as f64;
    }
    let rest = s.clients.rest.requests as f64;
    if rest > 0.0 {
        *by_who.entry(other()).or_default() += rest;
    }
    by_who
        .into_iter()
        .map(|((unit, command, uid), n)| {
            let labels = format!(
                "{{unit=\"{}\",command=\"{}\",uid=\"{}\"}}",
                escape(&unit),
                escape(&command),
                escape(&uid)
            );
            (labels, n)
        })
        .collect()
}

/// How often each limit bit, `udp_in_flight` (a fixed limit) last.
fn limit_hits(s: &Status) -> Samples {
    let mut hits = limits(&s.limits, |(_, hits, _)| hits);
    hits.push(limit(
        "udp_in_flight",
        s.limits.udp_in_flight.dropped as f64,
    ));
    hits
}

/// One sample of a `limit`-labelled metric.
fn limit(name: &str, value: f64) -> (String, f64) {
    (format!("{{limit=\"{name}\"}}"), value)
}

/// A sample per limit with a setting (not `udp_in_flight`, which is fixed):
/// `pick` chooses from (name, times it bit, setting).
fn limits(l: &LimitsStatus, pick: fn((&str, f64, f64)) -> f64) -> Samples {
    #[rustfmt::skip]
    let rows = [
        ("max_connections", l.max_connections.refused as f64, l.max_connections.limit as f64),
        ("max_in_flight", l.max_in_flight.reached as f64, l.max_in_flight.limit as f64),
        ("idle_timeout", l.idle_timeout.closed as f64, l.idle_timeout.seconds),
        ("record_timeout", l.record_timeout.closed as f64, l.record_timeout.seconds),
        ("max_udp_reply", l.max_udp_reply.too_large as f64, l.max_udp_reply.limit as f64),
        ("remote_udp_amplification", l.remote_udp_amplification.refused as f64, l.remote_udp_amplification.limit as f64),
        ("remote_rate", l.remote_rate.limited as f64, l.remote_rate.limit as f64),
        ("remote_in_flight", l.remote_in_flight.refused as f64, l.remote_in_flight.limit as f64),
    ];
    rows.into_iter()
        .map(|row| limit(row.0, pick(row)))
        .collect()
}

fn intercepted_flows(s: &Status) -> Samples {
    s.intercept
        .rules()
        .iter()
        .map(|r| (format!("{{rule=\"{}\"}}", r.rule), r.flows as f64))
        .collect()
}

/// rpcbind's counters, none when it could not be read (rpcbind down): a
/// scrape then has no sample rather than a false 0.
fn rpcbind_calls(s: &Status) -> Samples {
    s.rpcbind
        .counters
        .as_ref()
        .map_or_else(Vec::new, |c| procedure_counts(&c.calls))
}

fn rpcbind_registrations(s: &Status) -> Samples {
    let Some(c) = &s.rpcbind.counters else {
        return Vec::new();
    };
    c.registrations
        .iter()
        .flat_map(|r| {
            [("success", r.success), ("failure", r.failure)].map(|(result, n)| {
                let labels = format!(
                    "{{version=\"{}\",procedure=\"{}\",result=\"{result}\"}}",
                    r.version, r.procedure
                );
                (labels, n.value())
            })
        })
        .collect()
}

fn rpcbind_lookups(s: &Status) -> Samples {
    let Some(c) = &s.rpcbind.counters else {
        return Vec::new();
    };
    let rows = c.lookups.iter().map(|l| {
        (
            l.version.to_string(),
            l.program.to_string(),
            l.program_version.to_string(),
            escape(&l.netid),
            l.success,
            l.failure,
        )
    });
    let other = c.other_lookups;
    let other = (other.success + other.failure > 0).then(|| {
        let o = || "other".to_string();
        (o(), o(), o(), o(), other.success, other.failure)
    });
    rows.chain(other)
        .flat_map(|(version, program, program_version, netid, success, failure)| {
            [("success", success), ("failure", failure)].map(|(result, n)| {
                let labels = format!(
                    "{{version=\"{version}\",program=\"{program}\",program_version=\"{program_version}\",netid=\"{netid}\",result=\"{result}\"}}"
                );
                (labels, n.value())
            })
        })
        .collect()
}

fn rpcbind_remote_calls(s: &Status) -> Samples {
    let Some(c) = &s.rpcbind.counters else {
        return Vec::new();
    };
    let r = c.remote_calls;
    vec![
        ("{result=\"success\"}".into(), r.success.value()),
        ("{result=\"failure\"}".into(), r.failure.value()),
    ]
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
