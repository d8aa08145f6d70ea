//! The control socket: one request line, one JSON answer, then close.
//!
//! `status` is open to every local user (the socket is 0666, like the
//! listeners); `flush` changes state and needs uid 0, checked with
//! SO_PEERCRED, never with anything the client says.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::host::netfilter::InterceptTable;
use crate::host::procnet::{tcp_sockets, TCP_TIME_WAIT};
use crate::host::sockdiag;
use crate::proxy::cache::Invalidation;
use crate::proxy::policy::Class;
use crate::proxy::service::Proxy;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 256;
/// A control client must send its line within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows in the top-clients table.
const TOP_CLIENTS: usize = 10;

/// What the status needs besides the proxy itself.
#[derive(Debug, Clone)]
pub struct Context {
    pub proxy: Arc<Proxy>,
    pub listeners: Vec<String>,
    /// TCP ports the proxy listens on (for the TIME_WAIT count).
    pub tcp_ports: Vec<u16>,
    pub rpcbind_port: u16,
    pub refresh: Duration,
    /// Transparent mode: the redirect table (None once removed) and the
    /// mark of the daemon's own connections.
    pub intercept: Option<(SharedTable, u32)>,
}

/// The transparent-mode table, shared by the daemon (which installs and
/// removes it) and `status` (which reads its counters).
pub type SharedTable = Arc<std::sync::Mutex<Option<InterceptTable>>>;

/// Transparent mode as `status` shows it: on or off, and how many flows
/// each redirect rule caught (nat rules see a flow's first packet only).
fn intercept(ctx: &Context) -> Value {
    let Some((table, mark)) = &ctx.intercept else {
        return json!({"enabled": false});
    };
    let table = table.lock().unwrap();
    let Some(table) = table.as_ref() else {
        return json!({"enabled": true, "active": false, "mark": format!("{mark:#x}")});
    };
    let rules = match table.counters() {
        Ok(counters) => counters
            .into_iter()
            .map(|c| json!({"rule": c.label, "flows": c.packets, "bytes": c.bytes}))
            .collect::<Vec<_>>(),
        Err(e) => {
            return json!({"enabled": true, "active": true, "table": format!("inet {}", table.table()), "error": e.to_string()})
        }
    };
    json!({
        "enabled": true,
        "active": !rules.is_empty(),
        "table": format!("inet {}", table.table()),
        "mark": format!("{mark:#x}"),
        "redirected_flows": rules.iter().filter_map(|r| r["flows"].as_u64()).sum::<u64>(),
        "rules": rules,
    })
}

/// Serves the control socket until shutdown.
pub async fn serve(listener: UnixListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &ctx).await {
                            debug!(error = %e, "control client");
                        }
                    });
                }
                Err(e) => {
                    debug!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(stream: UnixStream, ctx: &Context) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let answer = answer(line.trim(), uid, ctx);
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

/// The answer to one request line from a client with `uid`.
pub fn answer(request: &str, uid: u32, ctx: &Context) -> Value {
    let mut words = request.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("status"), None, None) => status(ctx),
        (Some("flush"), program, None) => {
            if uid != 0 {
                return json!({"error": format!("flush changes the cache and needs root (uid 0); you are uid {uid}")});
            }
            let cache = &ctx.proxy.cache;
            match program.map(str::parse::<u32>) {
                None => {
                    let n = cache.flush(Invalidation::Flush);
                    info!(entries = n, "cache flushed");
                    json!({"flushed": n})
                }
                Some(Ok(p)) => {
                    let n = cache.invalidate_programs(&[p].into(), Invalidation::Flush);
                    info!(program = p, entries = n, "program flushed");
                    json!({"flushed": n, "program": p})
                }
                Some(Err(_)) => {
                    json!({"error": format!("bad program number {:?}", program.unwrap_or(""))})
                }
            }
        }
        _ => {
            json!({"error": format!("unknown request {request:?} (expected status or flush [PROGRAM])")})
        }
    }
}

/// Each limit with its setting and how often it bit.
fn limits(proxy: &Proxy) -> Value {
    let l = &proxy.limits;
    let c = l.get();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "max_connections": {"limit": c.max_connections, "connected": l.connected(), "refused": load(&l.connections_refused), "evicted": load(&l.connections_evicted)},
        "max_in_flight": {"limit": c.max_in_flight, "reached": load(&l.in_flight_reached)},
        "idle_timeout": {"seconds": c.idle_timeout.as_secs_f64(), "closed": load(&l.idle_closed)},
        "record_timeout": {"seconds": c.record_timeout.as_secs_f64(), "closed": load(&l.record_timeouts)},
        "max_udp_reply": {"limit": c.max_udp_reply, "too_large": load(&l.udp_too_large)},
        "udp_in_flight": {"limit": crate::proxy::listen::UDP_MAX_IN_FLIGHT, "dropped": load(&l.udp_dropped)},
    })
}

/// Lookups of the last few minutes (what `check` judges), per 10-s bucket.
fn recent(proxy: &Proxy) -> Value {
    let (answered, misses) = proxy.lookup_counts();
    let r = proxy
        .recent
        .over(tokio::time::Instant::now(), answered, misses);
    json!({
        "window_seconds": crate::proxy::metrics::RECENT_WINDOW.as_secs(),
        "seconds": r.seconds,
        "lookups": r.answered + r.misses,
        "answered": r.answered,
        "misses": r.misses,
        "hit_ratio": ratio(r.answered, r.answered + r.misses),
        "bucket_seconds": crate::proxy::metrics::RECENT_BUCKET.as_secs(),
        "buckets": r.buckets,
    })
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// The whole status as one JSON object.
pub fn status(ctx: &Context) -> Value {
    let proxy = &ctx.proxy;
    let c = &proxy.cache.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let config = proxy.cache.config();
    let (hits, negative_hits, misses, coalesced) = (
        load(&c.hits),
        load(&c.negative_hits),
        load(&c.misses),
        load(&c.coalesced),
    );
    let answered = hits + negative_hits + coalesced;
    let invalidations = json!({
        "refresh": load(&c.invalidations_refresh),
        "registration": load(&c.invalidations_registration),
        "flush": load(&c.invalidations_flush),
        "total": load(&c.invalidations_refresh) + load(&c.invalidations_registration) + load(&c.invalidations_flush),
    });

    let mut classes = serde_json::Map::new();
    let (mut connects, mut calls, mut in_flight, mut timeouts, mut errors, mut retries) =
        (0, 0, 0, 0, 0, 0);
    let mut bad = 0;
    for class in Class::ALL {
        let up = proxy.upstream(class);
        let s = &up.stats;
        classes.insert(
            class.name().into(),
            json!({"connected": up.is_connected(), "target": up.target().to_string(), "calls": load(&s.calls)}),
        );
        connects += load(&s.connects);
        calls += load(&s.calls);
        in_flight += up.in_flight();
        timeouts += load(&s.timeouts);
        errors += load(&s.errors) + load(&s.connect_failures);
        retries += load(&s.retries);
        bad += load(&s.bad_replies);
    }
    // Latency is dominated by the unix connection that carries most calls.
    let latency = &proxy.upstream(Class::Unix).stats.latency;

    let mut lookups: Vec<_> = proxy.cache.lookups().into_iter().collect();
    lookups.sort_by(|a, b| {
        (b.1 .0 + b.1 .1)
            .cmp(&(a.1 .0 + a.1 .1))
            .then(a.0.cmp(&b.0))
    });
    let lookups: Vec<Value> = lookups
        .into_iter()
        .map(|((prog, vers, netid), (h, m))| json!({"program": prog, "version": vers, "netid": netid, "hits": h, "misses": m}))
        .collect();

    // TIME_WAIT on rpcbind's port and the proxy's: counted by the kernel
    // (sock_diag with a state and port filter), /proc/net/tcp{,6} only
    // where sock_diag is missing.
    let mut ports = ctx.tcp_ports.clone();
    ports.push(ctx.rpcbind_port);
    let counts = sockdiag::count_time_wait(&ports).ok();
    let sockets = if counts.is_none() {
        tcp_sockets()
    } else {
        Vec::new()
    };
    let time_wait_on = |port: u16| -> u64 {
        match &counts {
            Some(c) => c.get(port),
            None => sockets
                .iter()
                .filter(|s| {
                    s.state == TCP_TIME_WAIT && (s.local_port == port || s.remote_port == port)
                })
                .count() as u64,
        }
    };
    let tw_proxy: u64 = ctx.tcp_ports.iter().map(|p| time_wait_on(*p)).sum();
    let mut top = proxy.clients.rows();
    let rest = top.split_off(top.len().min(TOP_CLIENTS));
    let rest = json!({
        "rows": rest.len(),
        "requests": rest.iter().map(|r| r.requests).sum::<u64>(),
        "per_second_10s": rest.iter().map(|r| r.per_second_10s).sum::<f64>(),
    });

    let s = &proxy.stats;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": proxy.started.elapsed().as_secs(),
        "listeners": ctx.listeners,
        "requests": {
            "total": load(&s.requests),
            "errors_answered_locally": load(&s.local_errors),
            "refused": load(&s.refused),
            "forwarded": load(&s.forwarded),
            "upstream_failures": load(&s.upstream_failures),
            "by_procedure": proxy.procs.snapshot().into_iter()
                .map(|(v, p, n)| json!({"version": v, "procedure": p, "count": n}))
                .collect::<Vec<_>>(),
        },
        "cache": {
            "hit_ratio": ratio(answered, answered + misses),
            "hits": hits,
            "negative_hits": negative_hits,
            "misses": misses,
            "coalesced": coalesced,
            "entries": proxy.cache.len(),
            "max_entries": config.max_entries,
            "evictions": load(&c.evictions),
            "expirations": load(&c.expirations),
            "invalidations": invalidations,
            "stale_served": load(&c.stale_served),
            "ttl_seconds": config.ttl.as_secs_f64(),
            "negative_ttl_seconds": config.negative_ttl.as_secs_f64(),
            "serve_stale_seconds": config.serve_stale.as_secs_f64(),
            "refresh_seconds": ctx.refresh.as_secs_f64(),
            "recent": recent(proxy),
        },
        "upstream": {
            "classes": classes,
            "connects": connects,
            "calls": calls,
            "in_flight": in_flight,
            "timeouts": timeouts,
            "errors": errors,
            "retries": retries,
            "bad_replies": bad,
            "latency_p50_us": latency.quantile_us(0.5),
            "latency_p99_us": latency.quantile_us(0.99),
        },
        "lookups": lookups,
        "clients": {
            "connected": proxy.clients.connected.load(Ordering::Relaxed),
            "total": proxy.clients.total.load(Ordering::Relaxed),
            "top": top,
            "rest": rest,
        },
        "time_wait": {
            "port_111": time_wait_on(ctx.rpcbind_port),
            "proxy_ports": tw_proxy,
        },
        "limits": limits(proxy),
        "intercept": intercept(ctx),
    })
}
