//! The control socket the daemon serves: one request line, one JSON
//! answer, then close.
//!
//! `status` is open to every local user (the socket is 0666, like the
//! listeners); `flush` changes state and needs uid 0, checked with
//! SO_PEERCRED, never with anything the client says. The status is the
//! proxy's [`snapshot`](Proxy::snapshot) with the parts only the daemon
//! knows filled in here.

use std::sync::Arc;
use std::sync::PoisonError;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::host::netfilter::InterceptTable;
use crate::host::procnet::{tcp_sockets, TCP_TIME_WAIT};
use crate::host::sockdiag;
use crate::proxy::service::Proxy;
use crate::proxy::status::{Intercept, RedirectRule, Status, TableState, TimeWait};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 256;
/// A control client must send its line within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the status needs besides the proxy itself.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub proxy: Arc<Proxy>,
    pub listeners: Vec<String>,
    /// TCP ports the proxy listens on (for the TIME_WAIT count).
    pub tcp_ports: Vec<u16>,
    pub rpcbind_port: u16,
    /// Transparent mode: the redirect table (None once removed) and the
    /// mark of the daemon's own connections.
    pub intercept: Option<(SharedTable, u32)>,
}

/// The transparent-mode table, shared by the daemon (which installs and
/// removes it) and `status` (which reads its counters).
pub(crate) type SharedTable = Arc<std::sync::Mutex<Option<InterceptTable>>>;

/// Serves the control socket until shutdown.
pub(crate) async fn serve(listener: UnixListener, ctx: Arc<Context>, shutdown: CancellationToken) {
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
            () = shutdown.cancelled() => return,
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
    let answer = answer(line.trim(), uid, ctx).await;
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

/// The answer to one request line from a client with `uid`.
async fn answer(request: &str, uid: u32, ctx: &Context) -> Value {
    let mut words = request.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        // Through a Value, whose keys are sorted: the bytes the operator
        // commands and scripts have always read.
        (Some("status"), None, None) => serde_json::to_value(full_status(ctx).await)
            .unwrap_or_else(|e| json!({"error": format!("cannot write the status: {e}")})),
        (Some("flush"), program, None) => {
            if uid != 0 {
                return json!({"error": format!("flush changes the cache and needs root (uid 0); you are uid {uid}")});
            }
            match program.map(str::parse::<u32>) {
                None => {
                    let n = ctx.proxy.flush(None);
                    info!(entries = n, "cache flushed");
                    json!({"flushed": n})
                }
                Some(Ok(p)) => {
                    let n = ctx.proxy.flush(Some(p));
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

/// The whole status with rpcbind's own counters, read from rpcbind (or the
/// reading of the last second).
pub(crate) async fn full_status(ctx: &Context) -> Status {
    let mut status = status(ctx);
    status.rpcbind.counters = ctx
        .proxy
        .rpcbind_counters()
        .await
        .map(|c| c.as_ref().clone());
    status
}

/// The whole status but rpcbind's counters: the proxy's snapshot and the
/// daemon's own parts.
fn status(ctx: &Context) -> Status {
    let mut status = ctx.proxy.snapshot();
    status.listeners.clone_from(&ctx.listeners);
    status.time_wait = time_wait(ctx);
    status.intercept = intercept(ctx);
    status
}

/// TIME_WAIT on rpcbind's port and the proxy's: counted by the kernel
/// (sock_diag with a state and port filter), /proc/net/tcp{,6} only where
/// sock_diag is missing.
fn time_wait(ctx: &Context) -> TimeWait {
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
    TimeWait {
        port_111: time_wait_on(ctx.rpcbind_port),
        proxy_ports: ctx.tcp_ports.iter().map(|p| time_wait_on(*p)).sum(),
    }
}

/// Transparent mode as `status` shows it: on or off, and how many flows
/// each redirect rule caught (nat rules see a flow's first packet only).
fn intercept(ctx: &Context) -> Intercept {
    let Some((table, mark)) = &ctx.intercept else {
        return Intercept::default();
    };
    let mark = format!("{mark:#x}");
    let table = table.lock().unwrap_or_else(PoisonError::into_inner);
    let state = match table.as_ref() {
        None => TableState::Removed {
            active: false,
            mark,
        },
        Some(t) => match t.counters() {
            Ok(counters) => {
                let rules: Vec<RedirectRule> = counters
                    .into_iter()
                    .map(|c| RedirectRule {
                        rule: c.label,
                        flows: c.packets,
                        bytes: c.bytes,
                    })
                    .collect();
                TableState::Counted {
                    active: !rules.is_empty(),
                    table: format!("inet {}", t.table()),
                    mark,
                    redirected_flows: rules.iter().map(|r| r.flows).sum(),
                    rules,
                }
            }
            Err(e) => TableState::Unreadable {
                active: true,
                table: format!("inet {}", t.table()),
                error: e.to_string(),
            },
        },
    };
    Intercept {
        enabled: true,
        state: Some(state),
    }
}
