//! Server mode's shield: other hosts' calls are rate-limited per source
//! address (a token bucket each, `remote-rate` calls a second with a burst
//! of twice that), and the sources that were held back most are named in
//! `status`. Loopback and unix clients never pass through here.
//!
//! A call over the rate is dropped when it came as a datagram (the client
//! retries, as after a lost datagram) and closes its TCP connection (with
//! an RST: the client sees its error at once, and a reconnect costs it a
//! connection, which the connection limit shares per host). rpcbind has no
//! such limit: the default is far above what a mounting host asks (a mount
//! is two or three lookups).
//!
//! The buckets are a bounded LRU table under one lock, taken only for
//! other hosts' calls: a source forgotten (the table full of newer ones)
//! starts again with a full bucket, which is at most one burst more.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::host::sys::coarse_monotonic;
use crate::proxy::policy::Peer;

/// Sources whose buckets are kept at once.
const SOURCES: usize = 4096;
/// Offenders `status` names at most.
pub const NAMED_OFFENDERS: usize = 10;

/// One source's bucket and what it was refused.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// Tokens, in thousandths of a call.
    milli_tokens: u64,
    /// When the bucket was last filled (coarse monotonic time).
    at: Duration,
    rate_limited: u64,
    amplification: u64,
}

impl Source {
    /// A source first seen at `now`: a full bucket, nothing refused.
    fn full(milli_tokens: u64, now: Duration) -> Source {
        Source {
            milli_tokens,
            at: now,
            rate_limited: 0,
            amplification: 0,
        }
    }
}

/// A source that was held back, as `status` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    pub address: IpAddr,
    pub rate_limited: u64,
    pub amplification: u64,
}

/// The per-source limits of other hosts' calls. The rate is the caller's
/// to give (`Limits`, where a reload sets it).
#[derive(Debug)]
pub struct Shield {
    sources: Mutex<lru::LruCache<IpAddr, Source>>,
    /// Calls held back by the rate, in all.
    pub rate_limited: AtomicU64,
}

impl Default for Shield {
    fn default() -> Shield {
        Shield {
            sources: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(SOURCES).expect("non-zero"),
            )),
            rate_limited: AtomicU64::new(0),
        }
    }
}

impl Shield {
    /// Whether a call from `peer` may be served now under `rate` calls a
    /// second per host (0: no limit): always for a local client; for
    /// another host, while its bucket holds a token.
    #[inline]
    pub fn admit(&self, peer: &Peer, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        match peer.ip() {
            Some(ip) if !ip.is_loopback() => self.take(ip, rate, coarse_monotonic()),
            _ => true,
        }
    }

    /// Takes a token from `ip`'s bucket at time `now`.
    fn take(&self, ip: IpAddr, rate: u32, now: Duration) -> bool {
        let full = u64::from(rate) * 2 * 1000;
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let source = sources.get_or_insert_mut(ip, || Source::full(full, now));
        // A token per 1/rate s: rate thousandths per millisecond.
        let elapsed_ms = now.saturating_sub(source.at).as_millis() as u64;
        source.milli_tokens = source
            .milli_tokens
            .saturating_add(elapsed_ms.saturating_mul(u64::from(rate)))
            .min(full);
        source.at = now;
        if source.milli_tokens >= 1000 {
            source.milli_tokens -= 1000;
            return true;
        }
        source.rate_limited += 1;
        drop(sources);
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Notes that a UDP reply to `peer` was held back by the amplification
    /// bound (a new source gets the full bucket of `rate`); nothing for a
    /// local client.
    pub fn note_amplification(&self, peer: &Peer, rate: u32) {
        let Some(ip) = peer.ip().filter(|ip| !ip.is_loopback()) else {
            return;
        };
        let full = u64::from(rate) * 2 * 1000;
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources
            .get_or_insert_mut(ip, || Source::full(full, coarse_monotonic()))
            .amplification += 1;
    }

    /// The sources held back most, at most [`NAMED_OFFENDERS`], most first
    /// (among equals, by address).
    pub fn offenders(&self) -> Vec<Offender> {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Offender> = sources
            .iter()
            .filter(|(_, s)| s.rate_limited + s.amplification > 0)
            .map(|(ip, s)| Offender {
                address: *ip,
                rate_limited: s.rate_limited,
                amplification: s.amplification,
            })
            .collect();
        drop(sources);
        all.sort_by_key(|o| {
            (
                std::cmp::Reverse(o.rate_limited + o.amplification),
                o.address,
            )
        });
        all.truncate(NAMED_OFFENDERS);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        [169, 254, 1, last].into()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let s = Shield::default();
        let t0 = Duration::from_secs(50);
        let taken = (0..250).filter(|_| s.take(ip(9), 100, t0)).count();
        assert_eq!(taken, 200, "a burst of twice the rate");
        // Another host is not held back by the first one's bucket.
        assert!(s.take(ip(2), 100, t0));
        // 100 ms later: 10 more.
        let t1 = t0 + Duration::from_millis(100);
        let taken = (0..50).filter(|_| s.take(ip(9), 100, t1)).count();
        assert_eq!(taken, 10);
        assert_eq!(s.rate_limited.load(Ordering::Relaxed), 50 + 40);
        s.note_amplification(&Peer::Udp((ip(2), 700).into()), 100);
        assert_eq!(
            s.offenders(),
            [
                Offender {
                    address: ip(9),
                    rate_limited: 90,
                    amplification: 0
                },
                Offender {
                    address: ip(2),
                    rate_limited: 0,
                    amplification: 1
                },
            ]
        );
    }

    #[test]
    fn local_clients_and_a_rate_of_zero_are_never_held_back() {
        let s = Shield::default();
        let local = Peer::Tcp(([127, 0, 0, 1], 800).into());
        let mapped = Peer::Udp("[::ffff:127.0.0.1]:800".parse().unwrap());
        assert!((0..100).all(|_| s.admit(&local, 1) && s.admit(&mapped, 1)));
        let remote = Peer::Udp((ip(3), 800).into());
        assert!((0..100).all(|_| s.admit(&remote, 0)));
        s.note_amplification(&local, 1);
        assert!(s.offenders().is_empty());
    }
}
