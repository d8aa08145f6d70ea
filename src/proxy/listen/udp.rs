//! UDP clients: threads of their own per socket, each blocked in
//! `recvmmsg` on it, answering cached hits in the same turn with one
//! `sendmmsg` for the batch; the calls past the cache go to the socket's
//! miss task on the runtime, which answers at most UDP_MAX_IN_FLIGHT of
//! them at a time (no task per datagram) and sends each reply itself. Each
//! source is identified once every few seconds.
//!
//! Why threads blocked in the socket and not an event loop: a datagram
//! wakes exactly one thread sleeping in `recvmmsg` (the kernel's wait is
//! exclusive), which takes it and whatever else came meanwhile; an epoll
//! set costs a third system call per wake-up, and a socket in several
//! loops' sets wakes them all for every datagram. This is rpcbind's own
//! pattern minus its cost: a lookup is two system calls per wake-up, however
//! many datagrams the wake-up serves.
//!
//! The sockets are blocking with a receive timeout of a second, so every
//! thread turns at least once a second (the watchdog's sign that it is not
//! stuck) and sees a stop in time even if the wake-up datagram is lost.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::host::datagrams::{report_arrivals, Arrival, RecvBatch, SendBatch};
use crate::proxy::clients::Tally;
use crate::proxy::policy::Peer;
use crate::proxy::service::{Outcome, Proxy};

use super::{MAX_DATAGRAM, UDP_MAX_IN_FLIGHT};

/// Datagrams one `recvmmsg` takes at most.
const BATCH: usize = 32;
/// The longest a UDP thread waits for a datagram before it turns anyway.
const TURN_AT_LEAST: Duration = Duration::from_secs(1);
/// How long a thread rests after a receive error other than a timeout
/// (none is expected; this keeps one from spinning).
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The UDP threads and miss tasks, as the daemon holds them.
pub struct DatagramThreads {
    stop: Arc<AtomicBool>,
    /// Per thread: its turn count.
    turns: Vec<Arc<AtomicU64>>,
    /// Where a datagram wakes each socket's threads (one entry per thread).
    wake_at: Vec<SocketAddr>,
    /// Per socket: the task answering its calls past the cache; it ends
    /// once the socket's threads have ended and the calls are answered.
    misses: JoinSet<()>,
}

impl std::fmt::Debug for DatagramThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramThreads")
            .field("threads", &self.turns.len())
            .field("sockets", &self.misses.len())
            .finish_non_exhaustive()
    }
}

impl DatagramThreads {
    /// Serves each of `sockets` with `per_socket` threads; calls past the
    /// cache run on `runtime`.
    pub fn start(
        sockets: Vec<tokio::net::UdpSocket>,
        per_socket: usize,
        proxy: Arc<Proxy>,
        runtime: &tokio::runtime::Handle,
    ) -> io::Result<DatagramThreads> {
        let mut all = DatagramThreads {
            stop: Arc::new(AtomicBool::new(false)),
            turns: Vec::new(),
            wake_at: Vec::new(),
            misses: JoinSet::new(),
        };
        for socket in sockets {
            let socket = socket.into_std()?;
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(TURN_AT_LEAST))?;
            let local = socket.local_addr()?;
            // A wildcard socket answers from the address each call came
            // to (see `Arrival`); a socket bound to one address needs not.
            if local.ip().is_unspecified() {
                report_arrivals(socket.as_fd(), local.is_ipv6())?;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let in_flight = Arc::new(AtomicUsize::new(0));
            all.misses.spawn_on(
                answer_misses(rx, socket.try_clone()?, proxy.clone(), in_flight.clone()),
                runtime,
            );
            // The last thread takes the socket itself: dropping it after
            // cloning would free a descriptor number below the ones opened
            // next, where the redirect table's owner could land (see
            // `InterceptTable::install` on why it must sit above the
            // listeners).
            let mut handles = Vec::with_capacity(per_socket.max(1));
            for _ in 1..per_socket.max(1) {
                handles.push(socket.try_clone()?);
            }
            handles.push(socket);
            for socket in handles {
                let turns = Arc::new(AtomicU64::new(0));
                let mut thread = UdpThread {
                    socket,
                    sources: UdpSources::new(local),
                    misses: Misses {
                        tx: tx.clone(),
                        in_flight: in_flight.clone(),
                    },
                    proxy: proxy.clone(),
                    stop: all.stop.clone(),
                    turns: turns.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("udp-{}", all.turns.len()))
                    .spawn(move || {
                        // A thread that died would leave its socket's other
                        // threads serving at a fraction of the rate, or none:
                        // better the whole daemon goes (systemd restarts it).
                        let ran =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| thread.run()));
                        if ran.is_err() {
                            error!("a UDP thread panicked; aborting");
                            std::process::abort();
                        }
                    })?;
                all.turns.push(turns);
                all.wake_at.push(wake_address(local));
            }
        }
        Ok(all)
    }

    /// How many times each thread has turned, for the watchdog (at least
    /// once a second each).
    pub fn turn_counter(&self) -> impl Fn() -> Vec<u64> + Send + 'static {
        let turns = self.turns.clone();
        move || turns.iter().map(|t| t.load(Ordering::Relaxed)).collect()
    }

    /// Stops the threads: each ends at its next turn, which a datagram to
    /// its socket brings at once (or the receive timeout, a second later).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for at in &self.wake_at {
            let waker = std::net::UdpSocket::bind((loopback(at.ip()), 0));
            if let Err(e) = waker.and_then(|s| s.send_to(&[], at)) {
                debug!(%at, error = %e, "cannot wake a UDP thread; it stops within {TURN_AT_LEAST:?}");
            }
        }
    }

    /// Completes once every call past the cache the UDP clients made is
    /// answered (after [`DatagramThreads::stop`]). A miss task that
    /// panicked is said here.
    pub async fn stopped(&mut self) {
        while let Some(joined) = self.misses.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "a UDP miss task failed");
            }
        }
    }
}

/// Where a datagram reaches a socket bound to `local` from this host.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        ip if ip.is_unspecified() => loopback(ip),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// The loopback address of `ip`'s family.
fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    }
}

/// One thread serving one UDP socket.
struct UdpThread {
    socket: std::net::UdpSocket,
    sources: UdpSources,
    misses: Misses,
    proxy: Arc<Proxy>,
    stop: Arc<AtomicBool>,
    turns: Arc<AtomicU64>,
}

impl UdpThread {
    fn run(&mut self) {
        let mut recv = RecvBatch::new(BATCH, MAX_DATAGRAM);
        let mut send = SendBatch::default();
        let mut warned = false;
        loop {
            let received = recv.recv(self.socket.as_fd(), true);
            self.turns.fetch_add(1, Ordering::Relaxed);
            if self.stop.load(Ordering::Relaxed) {
                debug!("udp thread: stopped");
                return;
            }
            let n = match received {
                Ok(n) => n,
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "udp receive failed (warned once per thread)");
                        warned = true;
                    }
                    std::thread::sleep(ERROR_PAUSE);
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            let (now, second) = (Instant::now(), self.proxy.clients.now());
            for i in 0..n {
                let Some((call, from)) = recv.get(i) else {
                    continue;
                };
                let arrival = recv.arrival(i);
                self.sources.count(from, now, second, &self.proxy);
                if !self.proxy.admits_call(&Peer::Udp(from)) {
                    // Over its host's rate: dropped, as a lost datagram.
                    continue;
                }
                // Cache hits are answered in this turn, with no copy of the
                // request.
                let answered = match self.proxy.answer_now(call, Peer::Udp(from)) {
                    Some(Outcome::Shared(reply, xid)) => {
                        push_shared(&mut send, &reply, xid, from, arrival)
                    }
                    _ => false,
                };
                if !answered {
                    self.misses.submit(call, from, arrival, &self.proxy);
                }
            }
            if !send.is_empty() {
                let (dropped, e) = send.send(self.socket.as_fd());
                if dropped > 0 {
                    debug!(dropped, error = ?e, "udp replies not sent");
                }
            }
        }
    }
}

/// Calls past the cache, on their way to the socket's miss task.
struct Misses {
    tx: mpsc::UnboundedSender<Miss>,
    /// Calls given to the task and not yet answered.
    in_flight: Arc<AtomicUsize>,
}

impl Misses {
    fn submit(&self, call: &[u8], from: SocketAddr, arrival: Option<Arrival>, proxy: &Proxy) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= UDP_MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            // As a full socket buffer would: the client retries.
            proxy.limits.udp_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send((BytesMut::from(call), from, arrival)).is_err() {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A call past the cache: the record, who sent it, where it arrived.
type Miss = (BytesMut, SocketAddr, Option<Arrival>);

type Pending = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Answers the calls the threads could not, as they come, until the threads
/// have ended and the calls are all answered.
async fn answer_misses(
    mut calls: mpsc::UnboundedReceiver<Miss>,
    socket: std::net::UdpSocket,
    proxy: Arc<Proxy>,
    in_flight: Arc<AtomicUsize>,
) {
    let socket = Arc::new(socket);
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = pending.next(), if !pending.is_empty() => {}
            call = calls.recv() => match call {
                Some((record, from, arrival)) => {
                    let (socket, proxy, in_flight) = (socket.clone(), proxy.clone(), in_flight.clone());
                    pending.push(Box::pin(async move {
                        answer_datagram(&socket, &proxy, record, from, arrival).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    }));
                }
                None => break,
            },
        }
    }
    while pending.next().await.is_some() {}
}

/// Answers one datagram that missed the cache. Sending never blocks: a
/// full send buffer drops the reply, as it would any datagram.
async fn answer_datagram(
    socket: &std::net::UdpSocket,
    proxy: &Proxy,
    record: BytesMut,
    from: SocketAddr,
    arrival: Option<Arrival>,
) {
    let mut out = SendBatch::default();
    match proxy.handle(record, Peer::Udp(from)).await {
        Outcome::Reply(reply) => out.push(&[&reply], from, arrival),
        Outcome::Shared(reply, xid) => {
            if !push_shared(&mut out, &reply, xid, from, arrival) {
                return;
            }
        }
        Outcome::NoReply | Outcome::Close => return,
    }
    if let (1, e) = out.send(socket.as_fd()) {
        debug!(%from, error = ?e, "udp send failed");
    }
}

/// A reply shared with other callers (a cached answer), sent under this
/// caller's XID without a copy. False: too short to carry an XID (no
/// cached reply is).
fn push_shared(
    out: &mut SendBatch,
    reply: &[u8],
    xid: u32,
    to: SocketAddr,
    from: Option<Arrival>,
) -> bool {
    let Some(rest) = reply.get(4..) else {
        return false;
    };
    out.push(&[&xid.to_be_bytes(), rest], to, from);
    true
}

/// Who sent a datagram: identified once per source address and kept while
/// the same socket sends from it (a UDP client has no connection to hang its
/// identity on). With the eBPF recorder, "the same socket" is known: the
/// kernel noted the cookie of the last socket to send from that port, which
/// a socket reusing the port changes before its first datagram arrives.
/// Without it (or for a connected socket, whose sends carry no address for
/// the kernel to show it), an identification holds a few seconds (a port
/// is reused only after its socket closed, but then a new client within
/// that time would be counted on the old row).
struct UdpSources {
    local: SocketAddr,
    /// Each source's row (none for the daemon's own watchdog probe, which
    /// is no client), when it was identified and its socket's cookie.
    seen: lru::LruCache<SocketAddr, Seen>,
}

/// When a source was identified, its socket's cookie, and its row.
type Seen = (Instant, Option<u64>, Option<Arc<Tally>>);

impl UdpSources {
    /// Sources remembered at once.
    const CAPACITY: usize = 4096;
    /// How long an identification holds.
    const FRESH: Duration = Duration::from_secs(2);

    fn new(local: SocketAddr) -> UdpSources {
        UdpSources {
            local,
            seen: lru::LruCache::new(
                std::num::NonZeroUsize::new(Self::CAPACITY).expect("non-zero"),
            ),
        }
    }

    /// Counts a call from `from` in `second` on its row.
    fn count(&mut self, from: SocketAddr, now: Instant, second: u32, proxy: &Proxy) {
        if let Some((at, cookie, t)) = self.seen.get(&from) {
            let same = match proxy.attribution.udp_sender(from) {
                Some(sender) => *cookie == Some(sender),
                // No recorder, or a socket whose sends the kernel does not
                // show it (a connected one sends without an address): a
                // while.
                None => now.saturating_duration_since(*at) < Self::FRESH,
            };
            if same {
                if let Some(t) = t {
                    t.count(second);
                }
                return;
            }
        }
        let (t, cookie) = if proxy.is_own_probe(from) {
            (None, None)
        } else {
            let (id, cookie) = proxy
                .attribution
                .udp_socket(from, self.local, proxy.rpcbind_port());
            (Some(proxy.clients.tally(&id)), cookie)
        };
        if let Some(t) = &t {
            t.count(second);
        }
        self.seen.put(from, (now, cookie, t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_socket_is_woken_on_loopback() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(wake_address(at("0.0.0.0:111")), at("127.0.0.1:111"));
        assert_eq!(wake_address(at("[::]:111")), at("[::1]:111"));
        assert_eq!(wake_address(at("10.1.2.3:7")), at("10.1.2.3:7"));
    }
}
