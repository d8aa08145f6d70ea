//! UDP clients: hits answered in the receive loop, misses by the listener's
//! own task (at most UDP_MAX_IN_FLIGHT at a time), each source identified
//! once every few seconds.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::protocol::rpc::set_xid;
use crate::proxy::attribution::{Identity, Transport};
use crate::proxy::clients::Tally;
use crate::proxy::policy::Peer;
use crate::proxy::service::{Outcome, Proxy};

use super::{MAX_DATAGRAM, UDP_MAX_IN_FLIGHT};

/// Who sent a datagram: identified once per source address and kept for a
/// few seconds (a UDP client has no connection to hang its identity on; a
/// source port is reused by the next socket only after this one closed).
struct UdpSources {
    local: Option<SocketAddr>,
    seen: lru::LruCache<SocketAddr, (Instant, Arc<Tally>)>,
}

impl UdpSources {
    /// Sources remembered at once.
    const CAPACITY: usize = 4096;
    /// How long an identification holds.
    const FRESH: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(socket: &UdpSocket) -> UdpSources {
        UdpSources {
            local: socket.local_addr().ok(),
            seen: lru::LruCache::new(
                std::num::NonZeroUsize::new(Self::CAPACITY).expect("non-zero"),
            ),
        }
    }

    fn tally(&mut self, from: SocketAddr, proxy: &Proxy) -> Arc<Tally> {
        let now = Instant::now();
        if let Some((at, t)) = self.seen.get(&from) {
            if now.duration_since(*at) < Self::FRESH {
                return t.clone();
            }
        }
        let id = match self.local {
            Some(local) => proxy.attribution.udp(from, local, proxy.rpcbind_port()),
            None => Identity::unknown(Transport::Udp),
        };
        let t = proxy.clients.tally(&id);
        self.seen.put(from, (now, t.clone()));
        t
    }
}

pub(super) async fn serve_udp(
    socket: Arc<UdpSocket>,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = BytesMut::with_capacity(MAX_DATAGRAM);
    let mut sources = UdpSources::new(&socket);
    // Calls that went past the cache, answered by this task itself (no task
    // per datagram), at most UDP_MAX_IN_FLIGHT at a time.
    let mut pending: FuturesUnordered<UdpPending> = FuturesUnordered::new();
    loop {
        // In this order: answers that are done leave `pending` before a
        // datagram is turned away for its being full.
        let (n, from) = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                // The drain waits for these as for any client's task.
                if !pending.is_empty() {
                    proxy.tasks.spawn(async move { while pending.next().await.is_some() {} });
                }
                return;
            }
            Some(()) = pending.next(), if !pending.is_empty() => continue,
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => { debug!(error = %e, "udp receive failed"); continue; }
            },
        };
        sources.tally(from, &proxy).count(proxy.clients.now());
        // Cache hits are answered inline: no task, no copy of the request.
        if let Some(Outcome::Shared(reply, xid)) = proxy.answer_now(&buf[..n], Peer::Udp(from)) {
            out.clear();
            out.extend_from_slice(&reply);
            set_xid(&mut out, xid);
            if let Err(e) = socket.send_to(&out, from).await {
                debug!(%from, error = %e, "udp send failed");
            }
            continue;
        }
        if pending.len() >= UDP_MAX_IN_FLIGHT {
            // As a full socket buffer would: the client retries.
            proxy.limits.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let record = BytesMut::from(&buf[..n]);
        pending.push(Box::pin(answer_datagram(
            socket.clone(),
            proxy.clone(),
            record,
            from,
        )));
    }
}

type UdpPending = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Answers one datagram that missed the cache.
async fn answer_datagram(
    socket: Arc<UdpSocket>,
    proxy: Arc<Proxy>,
    record: BytesMut,
    from: SocketAddr,
) {
    let sent = match proxy.handle(record, Peer::Udp(from)).await {
        Outcome::Reply(reply) => socket.send_to(&reply, from).await,
        Outcome::Shared(reply, xid) => {
            let mut dg = BytesMut::from(&reply[..]);
            set_xid(&mut dg, xid);
            socket.send_to(&dg, from).await
        }
        Outcome::NoReply | Outcome::Close => return,
    };
    if let Err(e) = sent {
        debug!(%from, error = %e, "udp send failed");
    }
}
