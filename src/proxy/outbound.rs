//! The client side (`--intercept-outbound`): this host's TCP clients of
//! other hosts' rpcbind, redirected to the proxy by the owner table, have
//! their calls sent over one persistent connection per server and source
//! address, and are closed with a reset like every client (no TIME_WAIT,
//! no reserved port held on this host).
//!
//! Nothing is answered here and nothing is cached: every call goes to the
//! server the client asked (read from conntrack when it was accepted), with
//! its bytes unchanged but for the XID, and the reply comes back the same
//! way. The connection leaves from the client's own source address, so the
//! server sees the caller it would have seen (rpcbind answers a wildcard
//! registration's GETADDR with an address chosen for it), from an
//! unprivileged port (a registration the server would have accepted only
//! from a reserved port is refused: a client never gains privilege here).
//!
//! A server's connection is closed (with a reset) once idle for
//! [`IDLE_CLOSE`], before rpcbind's own idle cleaning (30 s) would close it
//! from the other side; at most [`MAX_SERVERS`] are kept, the least used
//! going first.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::rpc;
use crate::protocol::rpcb::{Procedure, PROGRAM as RPCB_PROG};
use crate::proxy::upstream::{Target, Upstream, UpstreamError};

/// Servers (by source address and server address) with a connection object
/// at most; the least recently used goes beyond.
pub const MAX_SERVERS: usize = 256;
/// A server's connection unused this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(20);

/// Where a redirected client's calls go: the server it connected to, from
/// the address it connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub source: IpAddr,
    pub server: SocketAddr,
}

/// The client side's counters.
#[derive(Debug, Default)]
pub struct OutboundStats {
    /// Clients redirected here (connections accepted).
    pub clients: AtomicU64,
    /// Calls forwarded.
    pub calls: AtomicU64,
    /// Calls that got no reply (the server unreachable, timed out, or the
    /// connection lost): their clients were closed.
    pub failures: AtomicU64,
    /// Connections accepted on the client side's port that were not
    /// redirected there (closed at once).
    pub strays: AtomicU64,
}

/// One server's connection and when it was last used.
#[derive(Debug)]
struct Server {
    upstream: Upstream,
    /// Milliseconds since [`Outbound::epoch`].
    last_used: AtomicU64,
}

/// The client side's servers and counters.
#[derive(Debug)]
pub struct Outbound {
    /// The port the redirect sends clients to and the mark of the
    /// connections to servers, once the daemon turned the client side on.
    on: OnceLock<(u16, u32)>,
    timeout_ms: AtomicU64,
    servers: Mutex<lru::LruCache<Destination, Arc<Server>>>,
    epoch: Instant,
    pub stats: OutboundStats,
}

impl Outbound {
    pub fn new(timeout: Duration) -> Outbound {
        Outbound {
            on: OnceLock::new(),
            timeout_ms: AtomicU64::new(millis(timeout)),
            servers: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_SERVERS).expect("non-zero"),
            )),
            epoch: Instant::now(),
            stats: OutboundStats::default(),
        }
    }

    /// Turns the client side on: redirected clients arrive on loopback
    /// `port`; connections to servers carry `mark` (the redirect lets them
    /// pass).
    pub fn enable(&self, port: u16, mark: u32) {
        let _ = self.on.set((port, mark));
    }

    /// Whether the daemon turned the client side on.
    pub fn is_enabled(&self) -> bool {
        self.on.get().is_some()
    }

    /// Whether a connection accepted on `local` came in by the client
    /// side's port.
    pub fn is_its_port(&self, local: SocketAddr) -> bool {
        self.on
            .get()
            .is_some_and(|&(port, _)| local.port() == port && local.ip().is_loopback())
    }

    /// The server a client accepted on the client side's port asked for:
    /// `original`, its destination before the redirect, when that is
    /// another host's port (not this socket's own address: a connection
    /// made to the port directly).
    pub fn destination(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
    ) -> Option<Destination> {
        match original {
            Some(server) if server != local && !server.ip().is_loopback() => {
                self.stats.clients.fetch_add(1, Ordering::Relaxed);
                Some(Destination {
                    source: client.ip().to_canonical(),
                    server,
                })
            }
            _ => {
                self.stats.strays.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Applies a reload's upstream timeout.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
        let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, s) in servers.iter() {
            s.upstream.set_timeout(timeout);
        }
    }

    /// Sends one call record to `to`'s server and returns its reply, the
    /// client's XID restored.
    pub async fn forward(&self, record: &[u8], to: Destination) -> Result<Bytes, UpstreamError> {
        let server = self.server(to);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = server.upstream.call(record, idempotent(record)).await;
        server.last_used.store(self.now_ms(), Ordering::Relaxed);
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Closes the connections idle for [`IDLE_CLOSE`] with nothing in
    /// flight (their objects stay, so the next call reconnects quietly).
    /// Returns how many it closed.
    pub fn close_idle(&self) -> usize {
        self.close_idle_after(IDLE_CLOSE)
    }

    fn close_idle_after(&self, idle: Duration) -> usize {
        let now = self.now_ms();
        let idle = millis(idle);
        let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        servers
            .iter()
            .filter(|(_, s)| {
                now.saturating_sub(s.last_used.load(Ordering::Relaxed)) >= idle
                    && s.upstream.in_flight() == 0
                    && s.upstream.disconnect()
            })
            .count()
    }

    /// Servers known, and of them those with a connection open.
    pub fn servers(&self) -> (usize, usize) {
        let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let open = servers
            .iter()
            .filter(|(_, s)| s.upstream.is_connected())
            .count();
        (servers.len(), open)
    }

    /// `to`'s server, made when first asked for.
    fn server(&self, to: Destination) -> Arc<Server> {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = servers.get(&to) {
            return s.clone();
        }
        let mark = self.on.get().map(|&(_, mark)| mark);
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let upstream = Upstream::new(Target::Tcp(to.server), timeout)
            .with_mark(mark)
            .from_source(to.source);
        let s = Arc::new(Server {
            upstream,
            last_used: AtomicU64::new(self.now_ms()),
        });
        // One pushed out (the least recently used) closes its connection
        // when its last call ends.
        servers.put(to, s.clone());
        s
    }

    fn now_ms(&self) -> u64 {
        millis(Instant::now().saturating_duration_since(self.epoch))
    }
}

/// Whether a call may be sent again after a lost connection: rpcbind's
/// read-only procedures; anything else (another program's call, a
/// registration, an undecodable header) goes once.
fn idempotent(record: &[u8]) -> bool {
    rpc::parse_call(record).is_ok_and(|c| {
        c.prog == RPCB_PROG
            && Procedure::lookup(c.vers, c.procedure).is_some_and(Procedure::is_idempotent)
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, vers: u32, procedure: u32) -> Vec<u8> {
        let mut c = Vec::new();
        for w in [7, 0, 2, prog, vers, procedure, 0, 0, 0, 0] {
            c.extend_from_slice(&u32::to_be_bytes(w));
        }
        c
    }

    #[test]
    fn only_rpcbinds_read_only_calls_are_sent_again() {
        assert!(idempotent(&call(RPCB_PROG, 2, 3))); // GETPORT
        assert!(idempotent(&call(RPCB_PROG, 3, 4))); // DUMP
        assert!(!idempotent(&call(RPCB_PROG, 2, 1))); // SET
        assert!(!idempotent(&call(RPCB_PROG, 2, 5))); // CALLIT
        assert!(!idempotent(&call(100_003, 3, 0)));
        assert!(!idempotent(&[0, 0, 0, 7]));
    }

    #[test]
    fn a_connection_to_the_port_itself_is_a_stray_and_a_redirect_is_a_destination() {
        let out = Outbound::new(Duration::from_secs(1));
        out.enable(1113, 0x5250);
        let local: SocketAddr = ([127, 0, 0, 1], 1113).into();
        let client: SocketAddr = ([169, 254, 1, 1], 800).into();
        assert!(out.is_its_port(local));
        assert!(!out.is_its_port(([127, 0, 0, 1], 1111).into()));
        assert!(!out.is_its_port(([169, 254, 1, 1], 1113).into()));
        let server: SocketAddr = ([169, 254, 1, 2], 111).into();
        assert_eq!(
            out.destination(client, local, Some(server)),
            Some(Destination {
                source: client.ip(),
                server
            })
        );
        assert_eq!(out.destination(client, local, Some(local)), None);
        assert_eq!(out.destination(client, local, None), None);
        let lo: SocketAddr = ([127, 0, 0, 1], 111).into();
        assert_eq!(out.destination(client, local, Some(lo)), None);
        assert_eq!(out.stats.clients.load(Ordering::Relaxed), 1);
        assert_eq!(out.stats.strays.load(Ordering::Relaxed), 3);
    }

    /// A server that answers each call record with a reply of the same XID
    /// and then reports how its connection ended.
    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<usize>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let at = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await?;
            // Record mark, XID, REPLY, MSG_ACCEPTED, AUTH_NONE, SUCCESS.
            let mut reply = vec![0x80, 0, 0, 24];
            reply.extend_from_slice(&buf[4..8]);
            reply.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            s.write_all(&reply).await?;
            assert!(n > 8);
            // What comes next: EOF (a FIN) is Ok(0), a reset an error.
            s.read(&mut buf).await
        });
        (at, task)
    }

    #[tokio::test]
    async fn a_server_is_called_from_the_source_and_an_idle_one_is_reset() {
        let out = Outbound::new(Duration::from_secs(5));
        let (server, ended) = echo_server().await;
        let to = Destination {
            source: [127, 0, 0, 1].into(),
            server,
        };
        let reply = out.forward(&call(RPCB_PROG, 2, 3), to).await.unwrap();
        assert_eq!(reply[..4], 7u32.to_be_bytes(), "the client's XID restored");
        assert_eq!(out.servers(), (1, 1));
        // Used just now: kept at the idle time, closed past none.
        assert_eq!(out.close_idle(), 0);
        assert_eq!(out.close_idle_after(Duration::ZERO), 1);
        assert_eq!(out.servers(), (1, 0));
        let ended = ended.await.unwrap();
        assert_eq!(
            ended.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "closed with a reset, not a FIN (which would leave a TIME_WAIT)"
        );
        assert_eq!(out.stats.calls.load(Ordering::Relaxed), 1);
        assert_eq!(out.stats.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_server_that_refuses_fails_the_call_at_once() {
        let out = Outbound::new(Duration::from_secs(5));
        // A port nothing listens on: bound, then closed.
        let closed = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let server = closed.local_addr().unwrap();
        drop(closed);
        let to = Destination {
            source: [127, 0, 0, 1].into(),
            server,
        };
        let started = std::time::Instant::now();
        let result = out.forward(&call(RPCB_PROG, 2, 3), to).await;
        assert_eq!(result, Err(UpstreamError::Unavailable));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused, the call waited {:?}",
            started.elapsed()
        );
        assert_eq!(out.stats.failures.load(Ordering::Relaxed), 1);
    }
}
