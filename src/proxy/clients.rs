//! Who asks, and how much: lookups counted by identity (unit, command,
//! user, transport), not by connection or port, with rates over the last
//! 10 s and minute.
//!
//! A connection (or a UDP source) looks its row up once, when it arrives,
//! and then counts on the row itself: a few relaxed atomic operations per
//! call, no lock. The ephemeral source port is not an identity: a cron job
//! is one row however many connections it makes. The table is bounded;
//! identities beyond it are counted in one `other` row per transport.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::sys::coarse_monotonic;
use crate::proxy::attribution::{Identity, Transport};

/// Rows kept; further identities are counted in the `other` rows.
pub const MAX_ROWS: usize = 4096;
/// Seconds of history per row (a power of two above the longest window).
const SLOTS: usize = 64;

/// What a row is counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub transport: Transport,
    pub unit: Option<Arc<str>>,
    pub command: Option<Arc<str>>,
    pub uid: Option<u32>,
    pub remote: Option<IpAddr>,
    /// The overflow row of its transport.
    pub other: bool,
}

impl RowKey {
    fn of(id: &Identity) -> RowKey {
        RowKey {
            transport: id.transport,
            unit: id.unit.clone(),
            command: id.command.clone(),
            uid: id.uid,
            remote: id.remote,
            other: false,
        }
    }
}

/// Calls made in one second.
#[derive(Debug, Default)]
struct Slot {
    second: AtomicU32,
    count: AtomicU32,
}

/// One row's counters.
#[derive(Debug)]
pub struct Tally {
    key: RowKey,
    total: AtomicU64,
    /// The pid last seen behind this row (0: none known).
    last_pid: AtomicU32,
    slots: [Slot; SLOTS],
}

impl Tally {
    fn new(key: RowKey) -> Tally {
        Tally {
            key,
            total: AtomicU64::new(0),
            last_pid: AtomicU32::new(0),
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }

    /// Counts one call in second `now` (from [`Clients::now`]). Two threads
    /// counting into a slot as it turns over may lose a count: a rate, not
    /// a ledger (the total is exact).
    pub fn count(&self, now: u32) {
        self.total.fetch_add(1, Relaxed);
        let slot = &self.slots[now as usize % SLOTS];
        if slot.second.load(Relaxed) != now {
            slot.count.store(0, Relaxed);
            slot.second.store(now, Relaxed);
        }
        slot.count.fetch_add(1, Relaxed);
    }

    /// Notes the process behind the row (for `pid`, "last seen").
    pub fn seen(&self, pid: Option<u32>) {
        if let Some(pid) = pid {
            self.last_pid.store(pid, Relaxed);
        }
    }

    /// Calls per second over the `window` seconds up to and including
    /// `now`.
    fn rate(&self, now: u32, window: u32) -> f64 {
        let since = now.saturating_sub(window - 1);
        let sum: u64 = self
            .slots
            .iter()
            .filter(|s| (since..=now).contains(&s.second.load(Relaxed)))
            .map(|s| u64::from(s.count.load(Relaxed)))
            .sum();
        sum as f64 / f64::from(window)
    }
}

/// One row of the top-clients table, as `status` shows it (part of
/// [`Status`](crate::proxy::status::Status), which the operator commands
/// read back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopRow {
    pub unit: Option<String>,
    pub command: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub transport: String,
    /// A client on another host (its address; unit, command, uid unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The row that counts identities beyond the table's bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub other: bool,
    pub per_second_10s: f64,
    pub per_second_60s: f64,
    pub requests: u64,
}

/// Clients: how many are connected, how many came, and who asks the most.
#[derive(Debug)]
pub struct Clients {
    pub connected: AtomicI64,
    pub total: AtomicU64,
    table: Mutex<HashMap<RowKey, Arc<Tally>>>,
    /// When the table started, on the coarse monotonic clock.
    epoch: Duration,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            connected: AtomicI64::new(0),
            total: AtomicU64::new(0),
            table: Mutex::new(HashMap::new()),
            epoch: coarse_monotonic(),
        }
    }
}

impl Clients {
    /// A stream client connected (until [`Clients::closed`]).
    pub fn opened(&self) {
        self.connected.fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
    }

    /// A stream connection counted by [`Clients::opened`] closed.
    pub fn closed(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }

    /// The current second, for [`Tally::count`]: whole seconds since the
    /// table started. Read on every call a client makes, so from the coarse
    /// clock (a tick behind at most; no hardware counter read).
    pub fn now(&self) -> u32 {
        let since = coarse_monotonic().saturating_sub(self.epoch);
        u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
    }

    /// The row `id` counts on (taken once per connection or UDP source).
    pub fn tally(&self, id: &Identity) -> Arc<Tally> {
        let key = RowKey::of(id);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = table.get(&key) {
            t.seen(id.pid);
            return t.clone();
        }
        let key = if table.len() >= MAX_ROWS {
            RowKey {
                transport: id.transport,
                unit: None,
                command: None,
                uid: None,
                remote: None,
                other: true,
            }
        } else {
            key
        };
        let t = table
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Tally::new(key)))
            .clone();
        t.seen(id.pid);
        t
    }

    /// Every row, the busiest (last 10 s, then in all) first.
    pub fn rows(&self) -> Vec<TopRow> {
        let now = self.now();
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<TopRow> = table
            .values()
            .map(|t| {
                let k = &t.key;
                let pid = t.last_pid.load(Relaxed);
                TopRow {
                    unit: k.unit.as_deref().map(str::to_owned),
                    command: k.command.as_deref().map(str::to_owned),
                    pid: (pid != 0).then_some(pid),
                    uid: k.uid,
                    transport: k.transport.name().to_owned(),
                    address: k.remote.map(|ip| ip.to_string()),
                    other: k.other,
                    per_second_10s: t.rate(now, 10),
                    per_second_60s: t.rate(now, 60),
                    requests: t.total.load(Relaxed),
                }
            })
            .collect();
        drop(table);
        rows.sort_by(|a, b| {
            b.per_second_10s
                .total_cmp(&a.per_second_10s)
                .then(b.requests.cmp(&a.requests))
                .then(a.transport.cmp(&b.transport))
                .then(a.command.cmp(&b.command))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(command: &str, uid: u32, transport: Transport) -> Identity {
        Identity {
            transport,
            unit: Some(Arc::from("hammer.service")),
            command: Some(Arc::from(command)),
            uid: Some(uid),
            pid: Some(7),
            remote: None,
        }
    }

    #[test]
    fn rows_are_identities_not_connections() {
        let c = Clients::default();
        // The same command over many connections is one row.
        for _ in 0..100 {
            c.tally(&id("rpcinfo", 0, Transport::Tcp)).count(c.now());
        }
        c.tally(&id("showmount", 65534, Transport::Tcp))
            .count(c.now());
        let rows = c.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].command.as_deref(), Some("rpcinfo"));
        assert_eq!(
            (rows[0].requests, rows[0].uid, rows[0].pid),
            (100, Some(0), Some(7))
        );
        assert_eq!(rows[0].per_second_10s, 10.0);
        assert_eq!(rows[0].per_second_60s, 100.0 / 60.0);
        assert_eq!(rows[1].command.as_deref(), Some("showmount"));
    }

    #[test]
    fn rates_cover_their_window_and_fall_to_zero() {
        let t = Tally::new(RowKey::of(&id("x", 0, Transport::Udp)));
        for s in 0..20 {
            for _ in 0..3 {
                t.count(s);
            }
        }
        assert_eq!(t.rate(19, 10), 3.0);
        assert_eq!(t.rate(19, 60), 1.0);
        assert_eq!(t.rate(29, 10), 0.0, "nothing in the last 10 s");
        assert_eq!(t.total.load(Relaxed), 60);
        // A slot reused SLOTS seconds later starts from zero.
        t.count(64);
        assert_eq!(t.rate(64, 1), 1.0);
    }

    #[test]
    fn the_table_is_bounded_by_an_other_row() {
        let c = Clients::default();
        for uid in 0..(MAX_ROWS as u32 + 10) {
            c.tally(&id("flood", uid, Transport::Unix)).count(c.now());
        }
        let rows = c.rows();
        assert_eq!(rows.len(), MAX_ROWS + 1);
        let other = rows.iter().find(|r| r.other).expect("an other row");
        assert_eq!(other.requests, 10);
    }
}
