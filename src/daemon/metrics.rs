//! `/metrics` over HTTP (opt-in: `metrics = "tcp:127.0.0.1:9111"`, or a
//! socket systemd passes named `metrics`): the status in Prometheus text
//! exposition format 0.0.4, as `status --prometheus` prints it, with
//! rpcbind's own counters read at the scrape.
//!
//! Served off the request path, on a thread of its own (`metrics`) with its
//! own small runtime: a slow or hostile scraper costs that thread, never a
//! stream loop or the runtime that answers misses. Bounds: at most
//! [`MAX_CONNECTIONS`] connections (a newcomer beyond is reset at once), a
//! request's headers within [`HEADER_TIMEOUT`] and [`MAX_REQUEST`] bytes
//! (hyper's limits), and a connection's whole life within
//! [`CONNECTION_LIFETIME`]. HTTP is hyper's (HTTP/1.1 only): the
//! de-facto HTTP implementation on tokio, fuzzed and bounded, instead of a
//! parser of our own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::control::{self, Context};
use crate::proxy::status::prometheus::prometheus;

/// Scrapers connected at once (Prometheus keeps one connection a target).
pub(super) const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send a request's headers.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives, however busy.
pub(super) const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// A request's headers are read into a buffer of at most this many bytes
/// (hyper's smallest allowed).
pub(super) const MAX_REQUEST: usize = 8192;
/// Prometheus' text format.
const CONTENT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Starts serving `listener` on the `metrics` thread until `shutdown`;
/// `main` is the daemon's runtime (where rpcbind is asked for its
/// counters). The returned receiver completes when the thread is done.
pub(super) fn spawn(
    listener: std::net::TcpListener,
    ctx: Arc<Context>,
    main: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, ctx, main, shutdown).await,
                    Err(e) => warn!(error = %e, "cannot serve /metrics"),
                }
            });
            let _ = done_tx.send(());
        })?;
    info!(address = %addr, "serving Prometheus metrics at http://{addr}/metrics");
    Ok(done_rx)
}

async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    main: tokio::runtime::Handle,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        // Closed by reset (no TIME_WAIT on either side), like every
        // connection the proxy ends.
        let _ = crate::host::sys::set_zero_linger(std::os::fd::AsFd::as_fd(&stream));
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; refused");
            continue;
        };
        let (ctx, main) = (ctx.clone(), main.clone());
        connections.spawn(async move {
            let service = service_fn(move |req| respond(req, ctx.clone(), main.clone()));
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // Past its lifetime a connection is simply dropped (reset).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                debug!(%peer, error = %e, "metrics connection");
            }
            drop(slot);
        });
    }
    connections.shutdown().await;
}

/// One request: `GET /metrics` (or `HEAD`); `/` says where the metrics are.
async fn respond(
    req: Request<Incoming>,
    ctx: Arc<Context>,
    main: tokio::runtime::Handle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // HEAD: hyper sends the headers of the GET answer without its body.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let response = match req.uri().path() {
        "/metrics" => {
            // rpcbind is asked on the daemon's runtime, where its
            // connection lives.
            let status = main
                .spawn(async move { control::full_status(&ctx).await })
                .await;
            match status {
                Ok(status) => {
                    let mut r = text(StatusCode::OK, prometheus(&status));
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT));
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the status: {e}\n"),
                ),
            }
        }
        "/" => text(
            StatusCode::OK,
            "rpcbind-proxy: Prometheus metrics at /metrics\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n".into()),
    };
    Ok(response)
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
