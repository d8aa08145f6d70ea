//! The running proxy as an operator sees it: one typed snapshot of its
//! counters and settings ([`Status`]), the one-line summary systemd shows,
//! and the flush an operator asks for.
//!
//! The daemon's control socket sends [`Status`] as JSON; `status` (text,
//! JSON, Prometheus), `check`, `top` and the load benches read it back into
//! the same type, so a field renamed or dropped on one side fails to read
//! instead of showing as 0. The parts only the daemon knows (its listeners,
//! the transparent-mode table, TIME_WAIT on its ports, the refresh interval
//! it started with) are fields here too; [`Proxy::snapshot`] leaves them
//! empty and the control server fills them in.
//!
//! `prometheus` writes it in Prometheus' text format, for `status
//! --prometheus` and the daemon's `/metrics` alike.

pub mod prometheus;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::proxy::clients::TopRow;
use crate::proxy::listen::UDP_MAX_IN_FLIGHT;
use crate::proxy::metrics::{RECENT_BUCKET, RECENT_WINDOW};
use crate::proxy::policy::Class;
use crate::proxy::rpcbind_stats::RpcbindStatus;
use crate::proxy::service::Proxy;

/// Rows in the top-clients table; the others are summed in `rest`.
const TOP_CLIENTS: usize = 10;

/// Everything `status` shows, as the control socket sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    /// Filled in by the daemon.
    pub listeners: Vec<String>,
    pub requests: Requests,
    pub cache: CacheStatus,
    pub upstream: UpstreamStatus,
    /// Lookups by program, version and netid, the most asked first.
    pub lookups: Vec<LookupRow>,
    pub clients: ClientsStatus,
    /// Filled in by the daemon.
    pub time_wait: TimeWait,
    pub limits: LimitsStatus,
    /// Filled in by the daemon.
    pub intercept: Intercept,
    /// rpcbind's own state and counters (the counters filled in by the
    /// daemon, which reads them asynchronously).
    #[serde(default)]
    pub rpcbind: RpcbindStatus,
    /// The client side (`--intercept-outbound`): calls of this host's
    /// clients to other hosts' rpcbind.
    #[serde(default)]
    pub outbound: OutboundStatus,
}

/// The client side's counters (all 0 while it is off).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboundStatus {
    pub enabled: bool,
    /// Clients redirected to the proxy.
    pub clients: u64,
    /// Calls sent to their servers.
    pub calls: u64,
    /// Calls no server answered (their clients were reset).
    pub failures: u64,
    /// Connections to the client side's port not redirected there (closed).
    pub strays: u64,
    /// Servers with a connection object (at most 256), and of them those
    /// connected now.
    pub servers: u64,
    pub servers_connected: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    pub total: u64,
    pub errors_answered_locally: u64,
    pub refused: u64,
    pub forwarded: u64,
    pub upstream_failures: u64,
    /// NULL calls answered here while rpcbind was known to answer.
    #[serde(default)]
    pub pings_answered: u64,
    pub by_procedure: Vec<ProcedureCount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcedureCount {
    pub version: u32,
    pub procedure: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Lookups answered without asking rpcbind, of all lookups, since start.
    pub hit_ratio: f64,
    pub hits: u64,
    pub negative_hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub entries: u64,
    pub max_entries: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub invalidations: Invalidations,
    pub stale_served: u64,
    pub ttl_seconds: f64,
    pub negative_ttl_seconds: f64,
    pub serve_stale_seconds: f64,
    /// Filled in by the daemon.
    pub refresh_seconds: f64,
    pub recent: RecentStatus,
}

/// Entries dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Invalidations {
    pub refresh: u64,
    pub registration: u64,
    pub flush: u64,
    pub total: u64,
}

/// Lookups of the last few minutes (what `check` judges), per 10-s bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentStatus {
    pub window_seconds: u64,
    /// How much of the window the daemon has seen.
    pub seconds: u64,
    pub lookups: u64,
    pub answered: u64,
    pub misses: u64,
    pub hit_ratio: f64,
    pub bucket_seconds: u64,
    /// (answered, misses) per bucket, oldest first.
    pub buckets: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// By transport class name (`unix`, `tcp`, `udp`, `tcp6`, `udp6`).
    pub classes: BTreeMap<String, UpstreamClass>,
    pub connects: u64,
    pub calls: u64,
    pub in_flight: u64,
    pub timeouts: u64,
    /// Calls lost with their connection, and connections refused.
    pub errors: u64,
    pub retries: u64,
    pub bad_replies: u64,
    /// Upper bounds of the latency quantiles on the unix connection; None
    /// before its first call.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamClass {
    pub connected: bool,
    pub target: String,
    pub calls: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LookupRow {
    pub program: u32,
    pub version: u32,
    pub netid: String,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientsStatus {
    pub connected: i64,
    pub total: u64,
    /// The busiest identities, at most [`TOP_CLIENTS`].
    pub top: Vec<TopRow>,
    pub rest: RestOfClients,
    #[serde(default)]
    pub attribution: AttributionStatus,
}

/// How clients are named, and how many of them were.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributionStatus {
    /// `ebpf`, `search` or `off`.
    pub mode: String,
    /// Why the eBPF recorder is not used, in `search` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The share of this host's lookups in the last minute whose command
    /// was named (0 to 1); none when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_60s: Option<f64>,
}

/// The identities beyond the top rows, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestOfClients {
    pub rows: u64,
    pub requests: u64,
    pub per_second_10s: f64,
}

/// TCP sockets in TIME_WAIT on rpcbind's port and on the proxy's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeWait {
    pub port_111: u64,
    pub proxy_ports: u64,
}

/// Each client limit with its setting and how often it bit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsStatus {
    pub max_connections: MaxConnections,
    pub max_in_flight: MaxInFlight,
    pub idle_timeout: Timeout,
    pub record_timeout: Timeout,
    pub max_udp_reply: MaxUdpReply,
    pub remote_udp_amplification: Amplification,
    pub remote_rate: RemoteRate,
    #[serde(default)]
    pub remote_in_flight: RemoteInFlight,
    pub udp_in_flight: UdpInFlight,
}

/// Server mode's bound on each other host's calls past the cache at once,
/// and the calls it refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteInFlight {
    pub limit: u64,
    pub refused: u64,
}

/// Server mode's rate limit per other host, the calls it held back, and
/// the hosts held back most (by either server-mode limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteRate {
    pub limit: u64,
    pub limited: u64,
    pub offenders: Vec<OffenderStatus>,
}

/// One host held back, and how often by which limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffenderStatus {
    pub address: String,
    pub rate_limited: u64,
    pub amplification: u64,
    #[serde(default)]
    pub in_flight: u64,
}

/// Server mode's bound on UDP replies to other hosts, and how many it held
/// back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Amplification {
    pub limit: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaxConnections {
    pub limit: u64,
    pub connected: u64,
    pub refused: u64,
    pub evicted: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaxInFlight {
    pub limit: u64,
    pub reached: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeout {
    pub seconds: f64,
    pub closed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaxUdpReply {
    pub limit: u64,
    pub too_large: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpInFlight {
    pub limit: u64,
    pub dropped: u64,
}

/// Transparent mode: whether it is on and, when it is, the table's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Intercept {
    pub enabled: bool,
    /// None when off. Its keys sit beside `enabled`.
    #[serde(flatten)]
    pub state: Option<TableState>,
}

/// The redirect table of transparent mode, as far as the daemon can read
/// it. `table` is `inet <name>`, `mark` the mark of the daemon's own
/// connections in hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TableState {
    /// In place, with how many flows each redirect rule caught (nat rules
    /// see a flow's first packet only); `active` while it has rules.
    Counted {
        active: bool,
        table: String,
        mark: String,
        redirected_flows: u64,
        rules: Vec<RedirectRule>,
    },
    /// In place, its counters unreadable.
    Unreadable {
        active: bool,
        table: String,
        error: String,
    },
    /// Removed (the daemon is stopping); `active` is false.
    Removed { active: bool, mark: String },
}

impl Intercept {
    /// Whether port 111 is redirected to the proxy now.
    pub fn active(&self) -> bool {
        match &self.state {
            Some(
                TableState::Counted { active, .. }
                | TableState::Unreadable { active, .. }
                | TableState::Removed { active, .. },
            ) => *active,
            None => false,
        }
    }

    /// Flows redirected so far, by every rule (0 unless counted).
    pub fn redirected_flows(&self) -> u64 {
        match &self.state {
            Some(TableState::Counted {
                redirected_flows, ..
            }) => *redirected_flows,
            _ => 0,
        }
    }

    /// Each redirect rule's counts (none unless counted).
    pub fn rules(&self) -> &[RedirectRule] {
        match &self.state {
            Some(TableState::Counted { rules, .. }) => rules,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedirectRule {
    pub rule: String,
    pub flows: u64,
    pub bytes: u64,
}

/// The share of lookups answered without asking rpcbind (0 before the
/// first): the one definition `status`, `check` and systemd's status line
/// show.
pub fn hit_ratio(answered: u64, misses: u64) -> f64 {
    let lookups = answered + misses;
    if lookups == 0 {
        0.0
    } else {
        answered as f64 / lookups as f64
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

impl Proxy {
    /// The status of the request path now. The daemon's parts
    /// (`listeners`, `time_wait`, `intercept`) are left empty for the
    /// control server to fill in.
    pub fn snapshot(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            listeners: Vec::new(),
            requests: self.requests_status(),
            cache: self.cache_status(),
            upstream: self.upstream_status(),
            lookups: self.lookup_rows(),
            clients: self.clients_status(),
            time_wait: TimeWait::default(),
            limits: self.limits_status(),
            intercept: Intercept::default(),
            rpcbind: RpcbindStatus {
                up: self.rpcbind_up(),
                counters: None,
            },
            outbound: self.outbound_status(),
        }
    }

    fn outbound_status(&self) -> OutboundStatus {
        let o = &self.outbound;
        let (servers, connected) = o.servers();
        OutboundStatus {
            enabled: o.is_enabled(),
            clients: load(&o.stats.clients),
            calls: load(&o.stats.calls),
            failures: load(&o.stats.failures),
            strays: load(&o.stats.strays),
            servers: servers as u64,
            servers_connected: connected as u64,
        }
    }

    /// systemd's one-line status (`STATUS=`), refreshed with each watchdog
    /// ping.
    pub fn status_line(&self) -> String {
        let (answered, misses) = self.lookup_counts();
        let up = if self.upstream(Class::Unix).is_connected() {
            "connected"
        } else {
            "unreachable"
        };
        format!(
            "hit ratio {:.1}% of {} lookups, {} entries, rpcbind {up}",
            hit_ratio(answered, misses) * 100.0,
            answered + misses,
            self.cache.len()
        )
    }

    fn requests_status(&self) -> Requests {
        let s = &self.stats;
        Requests {
            total: load(&s.requests),
            errors_answered_locally: load(&s.local_errors),
            refused: load(&s.refused),
            forwarded: load(&s.forwarded),
            upstream_failures: load(&s.upstream_failures),
            pings_answered: load(&s.pings_answered),
            by_procedure: self
                .procs
                .snapshot()
                .into_iter()
                .map(|(version, procedure, count)| ProcedureCount {
                    version,
                    procedure: procedure.into(),
                    count,
                })
                .collect(),
        }
    }

    fn cache_status(&self) -> CacheStatus {
        let c = &self.cache.stats;
        let config = self.cache.config();
        // Each counter read once: the ratio is made of the numbers shown
        // beside it, even while lookups go on.
        let (hits, negative_hits, coalesced, misses) = (
            load(&c.hits),
            load(&c.negative_hits),
            load(&c.coalesced),
            load(&c.misses),
        );
        let (refresh, registration, flush) = (
            load(&c.invalidations_refresh),
            load(&c.invalidations_registration),
            load(&c.invalidations_flush),
        );
        let answered = hits + negative_hits + coalesced;
        CacheStatus {
            hit_ratio: hit_ratio(answered, misses),
            hits,
            negative_hits,
            misses,
            coalesced,
            entries: self.cache.len() as u64,
            max_entries: config.max_entries as u64,
            evictions: load(&c.evictions),
            expirations: load(&c.expirations),
            invalidations: Invalidations {
                refresh,
                registration,
                flush,
                total: refresh + registration + flush,
            },
            stale_served: load(&c.stale_served),
            ttl_seconds: config.ttl.as_secs_f64(),
            negative_ttl_seconds: config.negative_ttl.as_secs_f64(),
            serve_stale_seconds: config.serve_stale.as_secs_f64(),
            // The period in force (a reload changes it).
            refresh_seconds: self.coherence.period().as_secs_f64(),
            recent: self.recent_status(answered, misses),
        }
    }

    /// The last few minutes, up to the lookup counts read for the rest of
    /// the snapshot.
    fn recent_status(&self, answered: u64, misses: u64) -> RecentStatus {
        let r = self
            .recent
            .over(tokio::time::Instant::now(), answered, misses);
        RecentStatus {
            window_seconds: RECENT_WINDOW.as_secs(),
            seconds: r.seconds,
            lookups: r.answered + r.misses,
            answered: r.answered,
            misses: r.misses,
            hit_ratio: hit_ratio(r.answered, r.misses),
            bucket_seconds: RECENT_BUCKET.as_secs(),
            buckets: r.buckets,
        }
    }

    fn upstream_status(&self) -> UpstreamStatus {
        // Latency is dominated by the unix connection that carries most calls.
        let latency = &self.upstream(Class::Unix).stats.latency;
        let mut u = UpstreamStatus {
            latency_p50_us: latency.quantile_us(0.5),
            latency_p99_us: latency.quantile_us(0.99),
            ..UpstreamStatus::default()
        };
        for class in Class::ALL {
            let up = self.upstream(class);
            let s = &up.stats;
            u.classes.insert(
                class.name().into(),
                UpstreamClass {
                    connected: up.is_connected(),
                    target: up.target().to_string(),
                    calls: load(&s.calls),
                },
            );
            u.connects += load(&s.connects);
            u.calls += load(&s.calls);
            u.in_flight += up.in_flight() as u64;
            u.timeouts += load(&s.timeouts);
            u.errors += load(&s.errors) + load(&s.connect_failures);
            u.retries += load(&s.retries);
            u.bad_replies += load(&s.bad_replies);
        }
        u
    }

    /// The per-lookup rows, the most asked first.
    fn lookup_rows(&self) -> Vec<LookupRow> {
        let mut rows: Vec<LookupRow> = self
            .cache
            .lookups()
            .into_iter()
            .map(|((program, version, netid), (hits, misses))| LookupRow {
                program,
                version,
                netid: netid.into(),
                hits,
                misses,
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.hits + b.misses)
                .cmp(&(a.hits + a.misses))
                .then((a.program, a.version, &a.netid).cmp(&(b.program, b.version, &b.netid)))
        });
        rows
    }

    fn clients_status(&self) -> ClientsStatus {
        let mut top = self.clients.rows();
        let attribution = self.attribution_status(&top);
        let rest = top.split_off(top.len().min(TOP_CLIENTS));
        ClientsStatus {
            attribution,
            connected: self.clients.connected.load(Relaxed),
            total: self.clients.total.load(Relaxed),
            top,
            rest: RestOfClients {
                rows: rest.len() as u64,
                requests: rest.iter().map(|r| r.requests).sum(),
                per_second_10s: rest.iter().fold(0.0, |a, r| a + r.per_second_10s),
            },
        }
    }

    /// The mode, and the share of local lookups over the last minute (of
    /// every row: the table's own, not only the top) that were named.
    /// Remote clients (named by address) and the overflow rows (whose
    /// identities were not kept) are left out.
    fn attribution_status(&self, rows: &[TopRow]) -> AttributionStatus {
        let mode = self.attribution_mode();
        let local = rows.iter().filter(|r| r.address.is_none() && !r.other);
        let (named, all) = local.fold((0.0, 0.0), |(named, all), r| {
            let n = r.per_second_60s;
            (named + if r.command.is_some() { n } else { 0.0 }, all + n)
        });
        AttributionStatus {
            mode: mode.name().to_owned(),
            why: mode.why().map(str::to_owned),
            named_60s: (all > 0.0).then(|| named / all),
        }
    }

    fn limits_status(&self) -> LimitsStatus {
        let l = &self.limits;
        let c = l.get();
        LimitsStatus {
            max_connections: MaxConnections {
                limit: c.max_connections as u64,
                connected: l.connected() as u64,
                refused: load(&l.connections_refused),
                evicted: load(&l.connections_evicted),
            },
            max_in_flight: MaxInFlight {
                limit: c.max_in_flight as u64,
                reached: load(&l.in_flight_reached),
            },
            idle_timeout: Timeout {
                seconds: c.idle_timeout.as_secs_f64(),
                closed: load(&l.idle_closed),
            },
            record_timeout: Timeout {
                seconds: c.record_timeout.as_secs_f64(),
                closed: load(&l.record_timeouts),
            },
            max_udp_reply: MaxUdpReply {
                limit: c.max_udp_reply as u64,
                too_large: load(&l.udp_too_large),
            },
            remote_udp_amplification: Amplification {
                limit: c.remote_udp_amplification as u64,
                refused: load(&l.amplification_refused),
            },
            remote_rate: RemoteRate {
                limit: u64::from(c.remote_rate),
                limited: load(&self.shield.rate_limited),
                offenders: self
                    .shield
                    .offenders()
                    .into_iter()
                    .map(|o| OffenderStatus {
                        address: o.address.to_string(),
                        rate_limited: o.rate_limited,
                        amplification: o.amplification,
                        in_flight: o.in_flight,
                    })
                    .collect(),
            },
            remote_in_flight: RemoteInFlight {
                limit: c.remote_in_flight as u64,
                refused: load(&self.shield.in_flight_refused),
            },
            udp_in_flight: UdpInFlight {
                limit: UDP_MAX_IN_FLIGHT as u64,
                dropped: load(&l.udp_dropped),
            },
        }
    }
}
