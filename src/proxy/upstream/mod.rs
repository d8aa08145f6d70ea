//! Persistent connections to rpcbind, one per transport class, shared by every
//! client: XIDs are rewritten so that calls from many clients can be in flight
//! on one connection at once, and replies are matched back by XID.
//!
//! Why one connection per class and not one per client: every TCP connection
//! a client opens to port 111 leaves a TIME_WAIT socket behind; the proxy's
//! whole point is that rpcbind sees a handful of long-lived connections.
//!
//! Why per class and not one in all: rpcbind answers GETADDR and friends
//! according to the transport the call arrives on (the address registered
//! for that transport's netid, merged with the caller's address), so each
//! must reach rpcbind over the client's own transport class.

mod once;
pub use once::{call_as_user, call_once};

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{UdpSocket, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::host::sys::{set_mark, set_zero_linger};
use crate::protocol::rpc::{put_record, set_xid, xid_of, RecordCodec, MAX_UPSTREAM_RECORD};
use crate::proxy::logs::{human, Outage, Said};
use crate::proxy::metrics::Histogram;

/// Where rpcbind is reached for one class of calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "tcp:{a}"),
            Target::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

/// Why a call to rpcbind got no answer. Each becomes SYSTEM_ERR for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UpstreamError {
    #[error("rpcbind is unreachable")]
    Unavailable,
    #[error("no reply from rpcbind in time")]
    Timeout,
    #[error("connection to rpcbind lost")]
    ConnectionLost,
    #[error("too many calls queued for rpcbind")]
    Busy,
    #[error("rpcbind sent a reply that could not be decoded")]
    BadReply,
}

/// Counters kept per upstream.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub calls: AtomicU64,
    pub timeouts: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    /// Replies (or records) from rpcbind that could not be matched or framed.
    pub bad_replies: AtomicU64,
    /// Time from sending a call to its reply.
    pub latency: Histogram,
}

type Waiter = oneshot::Sender<Result<BytesMut, UpstreamError>>;

/// Backoff between failed connection attempts. Short, because callers
/// wait for the connection (within their upstream timeout) rather than fail
/// at once: an rpcbind restart closes its socket for 0.1-1 s, and a caller
/// that arrives then is answered when it is back. An attempt on a closed
/// local port costs one refused connect.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// How long into an outage calls wait for rpcbind to come back rather than
/// fail at once: rpcbind's package upgrade closes its socket for about 3 s
/// (its units stopped, unpacked, started), a restart for 0.1-1 s, and
/// clients wait far longer for an answer (libtirpc: 25 s and more). Past
/// this, rpcbind is down rather than restarting, and a miss gets SYSTEM_ERR
/// at once. The watchdog window of transparent mode, which no restart may
/// exceed.
const RESTART_WAIT: Duration = Duration::from_secs(5);
/// How many times an idempotent call whose connection was lost is sent
/// again (on a new connection each time).
const LOST_RETRIES: u32 = 3;
/// Calls queued for the writer of one stream connection.
const WRITE_QUEUE: usize = 4096;

/// One live connection and its table of calls in flight.
#[derive(Debug)]
struct Conn {
    pending: Mutex<HashMap<u32, Waiter>>,
    alive: AtomicBool,
    next_xid: AtomicU32,
    sender: Sender,
    local_ip: Option<IpAddr>,
    /// Cancelled when the connection dies, to stop its reader and writer.
    dead: CancellationToken,
}

#[derive(Debug)]
enum Sender {
    Stream(mpsc::Sender<BytesMut>),
    Datagram(Arc<UdpSocket>),
}

impl Conn {
    fn new(sender: Sender, local_ip: Option<IpAddr>) -> Arc<Conn> {
        Arc::new(Conn {
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            // Start somewhere unpredictable so that a restarted proxy's XIDs
            // do not collide with replies still in flight from before.
            next_xid: AtomicU32::new(std::process::id().wrapping_mul(0x9e37_79b9)),
            sender,
            local_ip,
            dead: CancellationToken::new(),
        })
    }

    /// Completes the waiter of a reply; unmatched replies (late ones for
    /// calls that timed out) are dropped.
    fn complete(&self, reply: BytesMut) -> bool {
        let Some(xid) = xid_of(&reply) else {
            return false;
        };
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&xid);
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(reply));
                true
            }
            None => false,
        }
    }

    /// Marks the connection dead and fails every call in flight on it.
    fn fail_all(&self) {
        self.alive.store(false, Ordering::Release);
        self.dead.cancel();
        let drained: Vec<Waiter> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in drained {
            let _ = w.send(Err(UpstreamError::ConnectionLost));
        }
    }
}

/// Removes a call's entry from the table however the call ends (reply,
/// timeout, or the client going away), so nothing leaks.
struct PendingGuard<'a> {
    conn: &'a Conn,
    xid: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.xid);
    }
}

#[derive(Debug)]
struct Reconnect {
    next_attempt: Option<Instant>,
    backoff: Duration,
    /// What the log has said about reaching rpcbind.
    outage: Outage,
}

/// A lazily opened, self-healing connection to rpcbind for one class.
#[derive(Debug)]
pub struct Upstream {
    target: Target,
    /// Milliseconds; reloadable (SIGHUP).
    timeout_ms: AtomicU64,
    current: Mutex<Option<Arc<Conn>>>,
    /// Serialises connection attempts: never more than one connection per
    /// class at a time.
    connecting: tokio::sync::Mutex<Reconnect>,
    /// Since when connection attempts fail (rpcbind down or restarting).
    down_since: Mutex<Option<Instant>>,
    pub stats: Arc<UpstreamStats>,
    /// SO_MARK for TCP/UDP connections (transparent mode: the redirect lets
    /// marked packets through to rpcbind).
    mark: Option<u32>,
    /// The address TCP connections are made from (the client side: the
    /// client's own), each closed with a reset (no TIME_WAIT here, none
    /// on the server).
    source: Option<IpAddr>,
}

impl Upstream {
    pub fn new(target: Target, timeout: Duration) -> Upstream {
        Upstream {
            target,
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Reconnect {
                next_attempt: None,
                backoff: BACKOFF_MIN,
                outage: Outage::default(),
            }),
            down_since: Mutex::new(None),
            stats: Arc::default(),
            mark: None,
            source: None,
        }
    }

    /// The same, with its TCP connections made from `source` and closed
    /// with a reset.
    pub fn from_source(self, source: IpAddr) -> Upstream {
        Upstream {
            source: Some(source),
            ..self
        }
    }

    /// Closes the current connection, failing the calls in flight on it;
    /// the next call opens another. Whether one was open.
    pub fn disconnect(&self) -> bool {
        let conn = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        conn.is_some_and(|c| {
            let was = c.alive.load(Ordering::Acquire);
            c.fail_all();
            was
        })
    }

    /// The same, with its TCP/UDP sockets marked `mark` (None: unmarked).
    pub fn with_mark(self, mark: Option<u32>) -> Upstream {
        Upstream { mark, ..self }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    /// Calls sent on the current connection and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.live().map_or(0, |c| {
            c.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
    }

    /// The local address of the current connection (what rpcbind sees as the
    /// caller), if connected.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.live().and_then(|c| c.local_ip)
    }

    fn live(&self) -> Option<Arc<Conn>> {
        let cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        cur.as_ref()
            .filter(|c| c.alive.load(Ordering::Acquire))
            .cloned()
    }

    /// Opens the connection now if it is not open (used at start-up).
    pub async fn ensure_connected(&self) -> Result<(), UpstreamError> {
        self.connection().await.map(|_| ())
    }

    /// Whether connection attempts fail (since the last one; no connection
    /// open since).
    pub fn unreachable(&self) -> bool {
        self.down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
            && self.live().is_none()
    }

    /// The connection, waiting for rpcbind to come back until `deadline`
    /// while the outage is younger than RESTART_WAIT (a restart of rpcbind
    /// or of its socket unit closes it for a moment); `Unavailable` if it is
    /// still down then.
    async fn connection_by(&self, deadline: Instant) -> Result<Arc<Conn>, UpstreamError> {
        loop {
            match self.connection().await {
                Err(UpstreamError::Unavailable) => {
                    let since = *self
                        .down_since
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    // Another host's rpcbind (the client side) is not
                    // waited for: its client would see the refusal at once.
                    let patience = if self.source.is_some() {
                        Duration::ZERO
                    } else {
                        RESTART_WAIT
                    };
                    let until = since.map_or(deadline, |t| deadline.min(t + patience));
                    let retry = Instant::now() + BACKOFF_MIN;
                    if retry >= until {
                        return Err(UpstreamError::Unavailable);
                    }
                    tokio::time::sleep_until(retry).await;
                }
                other => return other,
            }
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, UpstreamError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let mut rc = self.connecting.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(c) = self.live() {
            return Ok(c);
        }
        if rc.next_attempt.is_some_and(|t| Instant::now() < t) {
            return Err(UpstreamError::Unavailable);
        }
        match tokio::time::timeout(self.timeout(), self.connect()).await {
            Ok(Ok(conn)) => {
                rc.next_attempt = None;
                rc.backoff = BACKOFF_MIN;
                *self
                    .down_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                match rc.outage.connected(Instant::now()) {
                    Said::First => info!("connected to rpcbind at {}", self.target),
                    Said::Back(down) => info!(
                        "rpcbind at {} reachable again after {} unreachable",
                        self.target,
                        human(down)
                    ),
                    _ => debug!(target = %self.target, "connected to rpcbind"),
                }
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
                Ok(conn)
            }
            outcome => {
                let err = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                // Said when the outage starts, then once a minute, not at
                // every attempt.
                match rc.outage.failed(Instant::now()) {
                    Said::Lost => warn!(
                        "cannot reach rpcbind at {}: {err}; retrying with a backoff of up to {}; {} meanwhile",
                        self.target,
                        human(BACKOFF_MAX),
                        if self.source.is_some() {
                            "its clients (the client side's) are reset"
                        } else {
                            "clients get SYSTEM_ERR (or a stale answer within serve-stale)"
                        }
                    ),
                    Said::StillDown(down, attempts) => warn!(
                        "rpcbind at {} still unreachable after {} ({attempts} attempts): {err}",
                        self.target,
                        human(down)
                    ),
                    _ => debug!(target = %self.target, error = %err, retry_in = ?rc.backoff, "cannot connect to rpcbind"),
                }
                self.down_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(Instant::now);
                rc.next_attempt = Some(Instant::now() + rc.backoff);
                rc.backoff = (rc.backoff * 2).min(BACKOFF_MAX);
                Err(UpstreamError::Unavailable)
            }
        }
    }

    async fn connect(&self) -> io::Result<Arc<Conn>> {
        match &self.target {
            Target::Unix(path) => {
                let s = UnixStream::connect(path).await?;
                let (rd, wr) = s.into_split();
                Ok(spawn_stream(
                    rd,
                    wr,
                    None,
                    self.target.clone(),
                    self.stats.clone(),
                ))
            }
            Target::Tcp(addr) => {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                if let Some(mark) = self.mark {
                    set_mark(socket.as_fd(), mark)?;
                }
                if let Some(source) = self.source {
                    socket.bind((source, 0).into())?;
                    set_zero_linger(socket.as_fd())?;
                }
                let s = socket.connect(*addr).await?;
                s.set_nodelay(true)?;
                let local = s.local_addr()?.ip();
                let (target, stats) = (self.target.clone(), self.stats.clone());
                if self.source.is_some() {
                    // Halves that do not shut the socket down when dropped
                    // (tokio's owned write half sends a FIN then): closed,
                    // it resets.
                    let (rd, wr) = tokio::io::split(s);
                    return Ok(spawn_stream(rd, wr, Some(local), target, stats));
                }
                let (rd, wr) = s.into_split();
                Ok(spawn_stream(rd, wr, Some(local), target, stats))
            }
            Target::Udp(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(bind).await?;
                if let Some(mark) = self.mark {
                    set_mark(s.as_fd(), mark)?;
                }
                s.connect(addr).await?;
                let local = s.local_addr()?.ip();
                let s = Arc::new(s);
                let conn = Conn::new(Sender::Datagram(s.clone()), Some(local));
                tokio::spawn(read_datagrams(s, Arc::downgrade(&conn)));
                Ok(conn)
            }
        }
    }

    /// Sends `call` (a whole call record, with the client's XID) to rpcbind
    /// and returns the reply with the client's XID restored. An idempotent
    /// call whose connection is lost is sent again on a new connection (up to
    /// `LOST_RETRIES` times, while rpcbind is waited for).
    pub async fn call(&self, call: &[u8], idempotent: bool) -> Result<Bytes, UpstreamError> {
        let client_xid = xid_of(call).ok_or(UpstreamError::Busy)?;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let wait = started + self.timeout().max(RESTART_WAIT);
        let mut attempt = 0;
        let result = loop {
            let outcome = self.attempt(call, wait).await;
            match outcome {
                // A connection lost while rpcbind stops may be followed by
                // one its closing socket accepted and dropped: idempotent
                // calls are sent again, a few times, within the wait.
                Err(UpstreamError::ConnectionLost)
                    if idempotent && attempt < LOST_RETRIES && Instant::now() < wait =>
                {
                    attempt += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                other => break other,
            }
        };
        match result {
            Ok(mut reply) => {
                self.stats.latency.record(started.elapsed());
                set_xid(&mut reply, client_xid);
                Ok(reply.freeze())
            }
            Err(e) => {
                if e == UpstreamError::Timeout {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// One exchange: the connection (waiting for rpcbind until `wait`),
    /// then the answer within the upstream timeout.
    async fn attempt(&self, call: &[u8], wait: Instant) -> Result<BytesMut, UpstreamError> {
        let conn = tokio::time::timeout_at(wait, self.connection_by(wait))
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        let deadline = Instant::now() + self.timeout();
        let (tx, rx) = oneshot::channel();
        let xid = {
            let mut pending = conn.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let mut xid = conn.next_xid.fetch_add(1, Ordering::Relaxed);
            while pending.contains_key(&xid) {
                xid = conn.next_xid.fetch_add(1, Ordering::Relaxed);
            }
            pending.insert(xid, tx);
            xid
        };
        let _guard = PendingGuard { conn: &conn, xid };
        match &conn.sender {
            Sender::Stream(q) => {
                let mut rec = BytesMut::with_capacity(4 + call.len());
                put_record(&mut rec, call);
                set_xid(&mut rec[4..], xid);
                q.try_send(rec).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => UpstreamError::Busy,
                    mpsc::error::TrySendError::Closed(_) => UpstreamError::ConnectionLost,
                })?;
            }
            Sender::Datagram(sock) => {
                let mut dg = BytesMut::from(call);
                set_xid(&mut dg, xid);
                // A refused send means rpcbind's port is closed (it is down).
                sock.send(&dg)
                    .await
                    .map_err(|_| UpstreamError::Unavailable)?;
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(UpstreamError::ConnectionLost),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

fn spawn_stream<R, W>(
    rd: R,
    wr: W,
    local_ip: Option<IpAddr>,
    target: Target,
    stats: Arc<UpstreamStats>,
) -> Arc<Conn>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let conn = Conn::new(Sender::Stream(tx), local_ip);
    // The reader holds the connection strongly: it must keep draining
    // replies (rpcbind drops slow readers) for as long as the socket is open.
    tokio::spawn(read_stream(rd, conn.clone(), target, stats));
    tokio::spawn(write_stream(wr, rx, Arc::downgrade(&conn)));
    conn
}

/// Writes queued calls, batching whatever is queued into one write.
async fn write_stream<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<BytesMut>,
    conn: std::sync::Weak<Conn>,
) {
    let mut buf = BytesMut::new();
    let dead = match conn.upgrade() {
        Some(c) => c.dead.clone(),
        None => return,
    };
    while let Some(first) = tokio::select! {
        m = rx.recv() => m,
        _ = dead.cancelled() => None,
    } {
        buf.extend_from_slice(&first);
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = wr.write_all(&buf) => r.is_ok(),
            _ = dead.cancelled() => false,
        };
        if !written {
            break;
        }
        buf.clear();
    }
    // Abandoned (closed by `disconnect`, or its reader saw it end): no
    // FIN, so that a socket closed with a reset leaves no TIME_WAIT.
    let abandoned = dead.is_cancelled();
    if let Some(c) = conn.upgrade() {
        c.fail_all();
    }
    if !abandoned {
        let _ = wr.shutdown().await;
    }
}

async fn read_stream<R: AsyncRead + Unpin>(
    rd: R,
    conn: Arc<Conn>,
    target: Target,
    stats: Arc<UpstreamStats>,
) {
    let mut frames = FramedRead::new(rd, RecordCodec::new(MAX_UPSTREAM_RECORD));
    loop {
        tokio::select! {
            frame = frames.next() => match frame {
                Some(Ok(reply)) => {
                    conn.complete(reply);
                }
                Some(Err(e)) => {
                    stats.bad_replies.fetch_add(1, Ordering::Relaxed);
                    warn!(target = %target, error = %e, "bad record from rpcbind; reconnecting");
                    break;
                }
                None => {
                    debug!(target = %target, "rpcbind closed the connection");
                    break;
                }
            },
            // The writer failed or the connection was abandoned.
            _ = conn.dead.cancelled() => break,
        }
    }
    conn.fail_all();
}

async fn read_datagrams(sock: Arc<UdpSocket>, conn: std::sync::Weak<Conn>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            // ECONNREFUSED from an ICMP error for an earlier datagram: rpcbind
            // is down; the call times out, later calls may succeed.
            Err(_) => {
                if conn.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let Some(c) = conn.upgrade() else { return };
        c.complete(BytesMut::from(&buf[..n]));
    }
}
