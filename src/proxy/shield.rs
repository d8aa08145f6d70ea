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
//! Each host may also have at most `remote-in-flight` calls past the cache
//! at once (waiting for rpcbind, over all its connections and datagrams):
//! a host cannot take rpcbind's single thread for itself with misses. Over
//! it, the same as over the rate. A mounting host has one or two.
//!
//! The buckets are a bounded LRU table under one lock, taken only for
//! other hosts' calls: a source forgotten (the table full of newer ones)
//! starts again with a full bucket, which is at most one burst more, and
//! with nothing in flight (its calls then in flight end uncounted).

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
    /// Calls past the cache now.
    in_flight: usize,
    /// Calls refused because `in_flight` was at the limit.
    in_flight_refused: u64,
}

impl Source {
    /// A source first seen at `now`: a full bucket, nothing refused.
    fn full(milli_tokens: u64, now: Duration) -> Source {
        Source {
            milli_tokens,
            at: now,
            rate_limited: 0,
            amplification: 0,
            in_flight: 0,
            in_flight_refused: 0,
        }
    }
}

/// A source that was held back, as `status` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    pub address: IpAddr,
    pub rate_limited: u64,
    pub amplification: u64,
    pub in_flight: u64,
}

/// A host already has as many calls in flight as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverInFlight;

/// A call of another host past the cache, counted in its host's calls in
/// flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    shield: &'a Shield,
    ip: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut sources = self
            .shield
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = sources.peek_mut(&self.ip) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

/// The per-source limits of other hosts' calls. The rate is the caller's
/// to give (`Limits`, where a reload sets it).
#[derive(Debug)]
pub struct Shield {
    sources: Mutex<lru::LruCache<IpAddr, Source>>,
    /// Calls held back by the rate, in all.
    pub rate_limited: AtomicU64,
    /// Calls refused by the in-flight limit, in all.
    pub in_flight_refused: AtomicU64,
}

impl Default for Shield {
    fn default() -> Shield {
        Shield {
            sources: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(SOURCES).expect("non-zero"),
            )),
            rate_limited: AtomicU64::new(0),
            in_flight_refused: AtomicU64::new(0),
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
        match remote_ip(peer) {
            Some(ip) => self.take(ip, rate, coarse_monotonic()),
            None => true,
        }
    }

    /// Takes a token from `ip`'s bucket at time `now`.
    fn take(&self, ip: IpAddr, rate: u32, now: Duration) -> bool {
        let full = bucket_size(rate);
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let source = source(&mut sources, ip, rate, now);
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

    /// A call of `peer`'s going past the cache: `Ok` while its host has
    /// fewer than `max` in flight (0: no limit), with the guard that counts
    /// it until dropped (none for a local client); `Err` over it. `rate`
    /// fills a new source's bucket.
    pub fn enter(
        &self,
        peer: &Peer,
        max: usize,
        rate: u32,
    ) -> Result<Option<InFlight<'_>>, OverInFlight> {
        let Some(ip) = remote_ip(peer) else {
            return Ok(None);
        };
        if max == 0 {
            return Ok(None);
        }
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let source = source(&mut sources, ip, rate, coarse_monotonic());
        if source.in_flight >= max {
            source.in_flight_refused += 1;
            drop(sources);
            self.in_flight_refused.fetch_add(1, Ordering::Relaxed);
            return Err(OverInFlight);
        }
        source.in_flight += 1;
        Ok(Some(InFlight { shield: self, ip }))
    }

    /// Notes that a UDP reply to `peer` was held back by the amplification
    /// bound (a new source gets the full bucket of `rate`); nothing for a
    /// local client.
    pub fn note_amplification(&self, peer: &Peer, rate: u32) {
        let Some(ip) = remote_ip(peer) else {
            return;
        };
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        source(&mut sources, ip, rate, coarse_monotonic()).amplification += 1;
    }

    /// The sources held back most, at most [`NAMED_OFFENDERS`], most first
    /// (among equals, by address).
    pub fn offenders(&self) -> Vec<Offender> {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Offender> = sources
            .iter()
            .filter(|(_, s)| s.rate_limited + s.amplification + s.in_flight_refused > 0)
            .map(|(ip, s)| Offender {
                address: *ip,
                rate_limited: s.rate_limited,
                amplification: s.amplification,
                in_flight: s.in_flight_refused,
            })
            .collect();
        drop(sources);
        all.sort_by_key(|o| {
            (
                std::cmp::Reverse(o.rate_limited + o.amplification + o.in_flight),
                o.address,
            )
        });
        all.truncate(NAMED_OFFENDERS);
        all
    }
}

/// Another host's address, None for a local client.
fn remote_ip(peer: &Peer) -> Option<IpAddr> {
    peer.ip().filter(|ip| !ip.is_loopback())
}

/// A full bucket under `rate`, in thousandths of a call: a burst of twice
/// the rate.
fn bucket_size(rate: u32) -> u64 {
    u64::from(rate) * 2 * 1000
}

/// `ip`'s entry, made with a full bucket (at `now`) when first seen.
fn source(
    sources: &mut lru::LruCache<IpAddr, Source>,
    ip: IpAddr,
    rate: u32,
    now: Duration,
) -> &mut Source {
    sources.get_or_insert_mut(ip, || Source::full(bucket_size(rate), now))
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
                    amplification: 0,
                    in_flight: 0,
                },
                Offender {
                    address: ip(2),
                    rate_limited: 0,
                    amplification: 1,
                    in_flight: 0,
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

    #[test]
    fn a_host_has_at_most_its_calls_in_flight_and_gets_them_back() {
        let s = Shield::default();
        let a = Peer::Tcp((ip(4), 800).into());
        let b = Peer::Udp((ip(5), 800).into());
        let held: Vec<_> = (0..3).map(|_| s.enter(&a, 3, 10).unwrap()).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(s.enter(&a, 3, 10).is_err(), "a fourth");
        // Another host, a local client and no limit are not held back.
        assert!(s.enter(&b, 3, 10).unwrap().is_some());
        let local = Peer::Tcp(([127, 0, 0, 1], 800).into());
        assert!(s.enter(&local, 3, 10).unwrap().is_none());
        assert!(s.enter(&a, 0, 10).unwrap().is_none());
        drop(held);
        assert!(s.enter(&a, 3, 10).is_ok(), "the host's calls came back");
        assert_eq!(s.in_flight_refused.load(Ordering::Relaxed), 1);
        assert_eq!(s.offenders()[0].in_flight, 1);
    }
}
