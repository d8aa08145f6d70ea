//! Counters the `status` command shows that belong to no single module:
//! latency histograms and requests per procedure (who the clients are is
//! `clients`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use serde::Serialize;

use crate::protocol::rpcb::Procedure;

/// A latency histogram with power-of-two microsecond buckets: lock-free to
/// record, good enough for p50/p99 (each within a factor of two).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 32],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let i = (63 - us.leading_zeros() as usize).min(31);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound, in microseconds, of the bucket holding quantile `q`.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(1u64 << (i + 1));
            }
        }
        None
    }
}

/// Calls per procedure of program 100000, versions 2 to 4.
#[derive(Debug)]
pub struct ProcCounters {
    by_version: [[AtomicU64; 13]; 3],
}

impl Default for ProcCounters {
    fn default() -> Self {
        ProcCounters {
            by_version: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl ProcCounters {
    pub fn count(&self, vers: u32, procedure: u32) {
        if let Some(c) = self
            .by_version
            .get(vers.wrapping_sub(2) as usize)
            .and_then(|v| v.get(procedure as usize))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (version, procedure name, count) for every procedure called at least once.
    pub fn snapshot(&self) -> Vec<(u32, &'static str, u64)> {
        let mut out = Vec::new();
        for (i, v) in self.by_version.iter().enumerate() {
            let vers = i as u32 + 2;
            for (p, c) in v.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if let (true, Some(proc_)) = (n > 0, Procedure::lookup(vers, p as u32)) {
                    out.push((vers, proc_.name(), n));
                }
            }
        }
        out
    }
}

/// The span the recent hit ratio is judged over.
pub const RECENT_WINDOW: Duration = Duration::from_secs(300);
/// How often the cumulative lookup counters are noted for it.
pub const RECENT_BUCKET: Duration = Duration::from_secs(10);

/// Lookups answered without rpcbind, and misses, as cumulative counts at
/// one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    at: tokio::time::Instant,
    answered: u64,
    misses: u64,
}

/// The hit ratio over the last [`RECENT_WINDOW`]: the cumulative counters
/// noted every [`RECENT_BUCKET`] (by a loop that runs anyway, nothing on
/// the lookup path), 31 notes at most.
#[derive(Debug)]
pub struct Recent {
    notes: Mutex<std::collections::VecDeque<Snapshot>>,
}

/// Lookups over a recent span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentLookups {
    /// How long the span is: the window, or less on a young daemon.
    pub seconds: u64,
    pub answered: u64,
    pub misses: u64,
    /// (answered, misses) per bucket, oldest first; the last one is the
    /// bucket in progress.
    pub buckets: Vec<(u64, u64)>,
}

impl Recent {
    /// Starts with a note of zero lookups at `now` (the daemon's start).
    pub fn new(now: tokio::time::Instant) -> Recent {
        Recent {
            notes: Mutex::new(
                [Snapshot {
                    at: now,
                    answered: 0,
                    misses: 0,
                }]
                .into(),
            ),
        }
    }

    /// Notes the cumulative counts if a bucket has passed since the last
    /// note; forgets notes no longer needed to cover the window.
    pub fn tick(&self, now: tokio::time::Instant, answered: u64, misses: u64) {
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        if notes
            .back()
            .is_some_and(|last| now.duration_since(last.at) < RECENT_BUCKET)
        {
            return;
        }
        notes.push_back(Snapshot {
            at: now,
            answered,
            misses,
        });
        while notes.len() > 1 && now.duration_since(notes[1].at) >= RECENT_WINDOW {
            notes.pop_front();
        }
    }

    /// The lookups since the newest note at least a window old (or the
    /// oldest note), given the cumulative counts now.
    pub fn over(&self, now: tokio::time::Instant, answered: u64, misses: u64) -> RecentLookups {
        let notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        let start = notes
            .iter()
            .rposition(|n| now.duration_since(n.at) >= RECENT_WINDOW)
            .unwrap_or(0);
        let base = notes[start];
        let mut buckets = Vec::with_capacity(notes.len() - start);
        let mut prev = base;
        for n in notes
            .iter()
            .skip(start + 1)
            .chain(std::iter::once(&Snapshot {
                at: now,
                answered,
                misses,
            }))
        {
            buckets.push((
                n.answered.saturating_sub(prev.answered),
                n.misses.saturating_sub(prev.misses),
            ));
            prev = *n;
        }
        RecentLookups {
            seconds: now.duration_since(base.at).as_secs(),
            answered: answered.saturating_sub(base.answered),
            misses: misses.saturating_sub(base.misses),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_land_in_the_right_bucket() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(20));
        }
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(3));
        assert_eq!(h.quantile_us(0.5), Some(32));
        assert_eq!(h.quantile_us(0.99), Some(4096));
    }

    #[tokio::test(start_paused = true)]
    async fn the_recent_ratio_covers_the_last_five_minutes_only() {
        let t0 = tokio::time::Instant::now();
        let r = Recent::new(t0);
        // A young daemon: the span is its life so far.
        let young = r.over(t0 + Duration::from_secs(25), 1, 3);
        assert_eq!((young.seconds, young.answered, young.misses), (25, 1, 3));
        // Ten minutes: 100 misses in the first five, then 900 hits, with the
        // counters noted every second (the refresh loop).
        let (mut answered, mut misses) = (0, 0);
        for s in 1..=600u64 {
            if s <= 300 {
                misses += 1;
            } else {
                answered += 3;
            }
            r.tick(t0 + Duration::from_secs(s), answered, misses);
        }
        let now = t0 + Duration::from_secs(605);
        let v = r.over(now, answered, misses);
        assert!((300..=310).contains(&v.seconds), "{v:?}");
        assert_eq!(v.misses, 0, "the misses are older than the window: {v:?}");
        assert!(v.answered >= 900, "{v:?}");
        assert_eq!(
            v.buckets.iter().map(|b| b.0).sum::<u64>(),
            v.answered,
            "the buckets add up"
        );
        assert!(v.buckets.len() <= 32, "{}", v.buckets.len());
        assert!(
            r.notes.lock().unwrap_or_else(PoisonError::into_inner).len() <= 32,
            "bounded"
        );
    }

    #[test]
    fn proc_counters_name_what_was_called() {
        let p = ProcCounters::default();
        p.count(2, 3);
        p.count(2, 3);
        p.count(4, 11);
        p.count(9, 1); // not a version of ours: ignored
        assert_eq!(p.snapshot(), vec![(2, "GETPORT", 2), (4, "GETADDRLIST", 1)]);
    }
}
