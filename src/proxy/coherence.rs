//! Keeping the cache true to rpcbind, and knowing the daemon is alive.
//!
//! A program may register or unregister at rpcbind directly, past the
//! proxy, so a cached answer can go stale behind its back. Every refresh
//! period the refresh loop DUMPs rpcbind over the unix connection and drops
//! the entries of exactly the programs whose registrations changed; the
//! first DUMP is the baseline start-up waits for. Each round is also the
//! heartbeat `Proxy::healthy` reads, and the note the recent hit ratio is
//! computed from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::protocol::rpc::{self, AcceptStat};
use crate::protocol::rpcb::{self, RpcbEntry};
use crate::proxy::cache::{changed_programs, Cache, Invalidation};
use crate::proxy::policy::Class;
use crate::proxy::service::Proxy;
use crate::proxy::upstream::UpstreamError;

/// The refresh loop's state: its period, its heartbeat and the last
/// registration list it read.
#[derive(Debug)]
pub(super) struct Coherence {
    /// Refresh period in milliseconds (reloadable).
    refresh_ms: AtomicU64,
    /// What `heartbeat_ms` counts from.
    born: Instant,
    /// When the refresh loop last went round, in ms since `born`.
    heartbeat_ms: AtomicU64,
    /// When rpcbind last answered a round's DUMP, in ms since `born` plus
    /// one (0: never); zeroed when a round's DUMP fails.
    answered_ms: AtomicU64,
    /// rpcbind's registration list as the refresh loop last read it (the
    /// raw DUMP reply, to compare cheaply, and its entries).
    known: Mutex<Option<(Bytes, Arc<Vec<RpcbEntry>>)>>,
}

impl Coherence {
    pub(super) fn new(refresh: Duration) -> Coherence {
        Coherence {
            refresh_ms: AtomicU64::new(refresh.as_millis() as u64),
            born: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            answered_ms: AtomicU64::new(0),
            known: Mutex::new(None),
        }
    }

    /// Takes effect at the next round (a reload).
    pub(super) fn set_period(&self, refresh: Duration) {
        self.refresh_ms
            .store(refresh.as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn period(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed))
    }

    fn beat(&self) {
        self.heartbeat_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Notes how this round's DUMP went.
    fn answered(&self, ok: bool) {
        let now = if ok {
            self.born.elapsed().as_millis() as u64 + 1
        } else {
            0
        };
        self.answered_ms.store(now, Ordering::Relaxed);
    }

    /// Whether rpcbind answered the last round and that round is recent
    /// (two periods and a second: a round that is waiting for rpcbind
    /// longer than that means it is not answering).
    fn rpcbind_answering(&self) -> bool {
        let at = self.answered_ms.load(Ordering::Relaxed);
        at != 0
            && self
                .born
                .elapsed()
                .saturating_sub(Duration::from_millis(at - 1))
                < self.period() * 2 + Duration::from_secs(1)
    }

    /// Whether the loop went round within three periods and one call's
    /// timeout (`timeout`), with 5 s to spare.
    fn alive(&self, timeout: Duration) -> bool {
        let since = self.born.elapsed().saturating_sub(Duration::from_millis(
            self.heartbeat_ms.load(Ordering::Relaxed),
        ));
        since < self.period() * 3 + timeout + Duration::from_secs(5)
    }

    fn known(&self) -> Option<Arc<Vec<RpcbEntry>>> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, e)| e.clone())
    }

    /// Drops the entries of `cache` for the programs whose registrations
    /// differ between the known list and this DUMP `reply`, and keeps the
    /// new list.
    fn compare(&self, reply: Bytes, cache: &Cache) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known
            .as_ref()
            .is_some_and(|(raw, _)| raw[4..] == reply[4..])
        {
            return;
        }
        let Ok(entries) = decode_dump(&reply) else {
            return;
        };
        match known.as_ref() {
            Some((_, old)) => {
                let changed = changed_programs(old, &entries);
                let n = cache.invalidate_programs(&changed, Invalidation::Refresh);
                debug!(programs = ?changed, entries = n, "registrations changed");
            }
            // Whatever was cached before there was a list to compare with
            // cannot be checked: start clean.
            None => {
                cache.flush(Invalidation::Refresh);
            }
        }
        *known = Some((reply, Arc::new(entries)));
    }
}

impl Proxy {
    /// Keeps the cache coherent with registrations made directly at rpcbind:
    /// every refresh period, one DUMP over the unix connection; when the
    /// list changed, the entries of exactly the programs that changed are
    /// dropped. While rpcbind is unreachable the last list is kept, so a
    /// restart is noticed (as a change of everything it forgot) on the first
    /// DUMP after. `first` is told when the first DUMP was tried, so
    /// start-up can wait for a baseline before clients come. The period is
    /// read every round, so a reload takes effect at the next one.
    pub async fn refresh_loop(
        self: Arc<Self>,
        first: oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let mut first = Some(first);
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                () = shutdown.cancelled() => return,
            }
            next = (next + self.coherence.period()).max(tokio::time::Instant::now());
            self.coherence.beat();
            self.outbound.close_idle();
            let (answered, misses) = self.lookup_counts();
            self.recent
                .tick(tokio::time::Instant::now(), answered, misses);
            match self.dump().await {
                Ok(reply) => {
                    self.coherence.answered(true);
                    self.coherence.compare(reply, &self.cache);
                }
                Err(_) => self.coherence.answered(false),
            }
            // Told only once the first list is in place, so that nothing a
            // client caches after start-up is dropped as unverified.
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Whether the refresh loop went round recently: the daemon's own loops
    /// are alive (rpcbind being down does not make the daemon unhealthy).
    pub fn healthy(&self) -> bool {
        self.coherence.alive(self.timeout())
    }

    /// Whether rpcbind is known to answer: the last refresh round's DUMP
    /// was answered, recently, and the unix connection is still open (it
    /// closes at once when rpcbind exits).
    pub fn rpcbind_up(&self) -> bool {
        self.coherence.rpcbind_answering() && self.upstream(Class::Unix).is_connected()
    }

    /// rpcbind's registrations: the list the refresh loop keeps (at most one
    /// refresh interval old, like every cached answer), or a DUMP before it
    /// has one. A flood of INDIRECT datagrams thus never turns into a flood
    /// of DUMPs at rpcbind.
    pub(super) async fn registrations(&self) -> Result<Arc<Vec<RpcbEntry>>, UpstreamError> {
        match self.coherence.known() {
            Some(entries) => Ok(entries),
            None => Ok(Arc::new(decode_dump(&self.dump().await?)?)),
        }
    }

    async fn dump(&self) -> Result<Bytes, UpstreamError> {
        let call = rpc::encode_call(0, rpcb::PROGRAM, 4, 4, &[]);
        self.upstream(Class::Unix).call(&call, true).await
    }
}

fn decode_dump(reply: &[u8]) -> Result<Vec<RpcbEntry>, UpstreamError> {
    let parsed = rpc::parse_reply(reply).map_err(|_| UpstreamError::BadReply)?;
    if parsed.accept != Some(AcceptStat::Success) {
        return Err(UpstreamError::BadReply);
    }
    rpcb::decode_rpcblist(parsed.body).map_err(|_| UpstreamError::BadReply)
}
