//! Counters the `status` command shows that belong to no single module:
//! latency histograms and requests per procedure (who the clients are is
//! `clients`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
