//! Lookup answers kept locally, so rpcbind stops seeing the lookup storm.
//!
//! What makes a cached answer right is not its TTL: it is the key and the
//! coherence loop. The key holds everything rpcbind's answer depends on (see
//! `Key`), so two requests rpcbind could answer differently never share an
//! entry. Registrations change behind the proxy's back (services talk to
//! rpcbind directly), so a refresh loop compares rpcbind's registration list
//! every `--refresh` and drops the entries of every program that changed;
//! registrations that pass through the proxy drop theirs at once.
//!
//! Replies are stored encoded, exactly as rpcbind sent them; a hit shares the
//! bytes (a reference count, no copy) and the writer patches the XID.

use std::collections::{BTreeSet, HashMap as StdHashMap};
use std::sync::PoisonError;

use hashbrown::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::protocol::rpc::{self, AcceptStat};
use crate::protocol::rpcb::{self, Args, Procedure, RpcbEntry};
use crate::proxy::policy::{Class, Peer};
use crate::proxy::upstream::UpstreamError;

/// Whose address rpcbind merges a registered address with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A unix-socket caller: no address.
    Local,
    /// No hint: the caller's IP address (the port does not matter).
    Caller(IpAddr),
    /// The `r_addr` hint: a universal address in its canonical spelling
    /// (the one rpcbind and libtirpc write), IPv4 or IPv6, stored parsed so
    /// that keys stay small, fixed-size and allocation-free. A hint spelt
    /// any other way is forwarded uncached.
    Hint(IpAddr, u16),
}

/// Everything rpcbind's answer depends on besides its registrations, as
/// measured against rpcbind: the version and procedure, the arguments that
/// matter and, for the address lookups, the arrival transport class and the
/// caller's address or hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// PMAP v2 GETPORT: only the registrations of (prog, vers, prot); the
    /// transport does not matter, so unix, TCP and UDP callers share it.
    GetPort { prog: u32, vers: u32, prot: u32 },
    /// GETADDR, GETVERSADDR, GETADDRLIST: also the rpcbind version, the
    /// procedure, the arrival transport class and the caller or hint.
    /// (`r_netid` and `r_owner` are ignored by rpcbind, measured.)
    Addr {
        rpcb_vers: u32,
        procedure: Procedure,
        prog: u32,
        vers: u32,
        class: Class,
        origin: Origin,
    },
    /// DUMP of version 2, 3 or 4: only the registrations.
    Dump { rpcb_vers: u32 },
}

impl Key {
    /// The key of a call from `peer`, if its answer may be cached. (The
    /// caller's address is looked at only for the procedures whose answer
    /// depends on it.)
    #[inline]
    pub fn of(
        rpcb_vers: u32,
        procedure: Procedure,
        args: &Args<'_>,
        class: Class,
        peer: &Peer,
    ) -> Option<Key> {
        match (procedure, args) {
            (Procedure::GetPort, Args::Mapping(m)) => Some(Key::GetPort {
                prog: m.prog,
                vers: m.vers,
                prot: m.prot,
            }),
            (
                Procedure::GetAddr | Procedure::GetVersAddr | Procedure::GetAddrList,
                Args::Rpcb(r),
            ) => {
                let origin = if !r.addr.is_empty() {
                    let (ip, port) = rpcb::parse_universal_address(r.addr)?;
                    Origin::Hint(ip, port)
                } else {
                    match peer.ip() {
                        Some(ip) => Origin::Caller(ip),
                        None => Origin::Local,
                    }
                };
                Some(Key::Addr {
                    rpcb_vers,
                    procedure,
                    prog: r.prog,
                    vers: r.vers,
                    class,
                    origin,
                })
            }
            (Procedure::Dump, _) => Some(Key::Dump { rpcb_vers }),
            _ => None,
        }
    }

    /// The program whose registrations this answer reflects; None for DUMP,
    /// which reflects all of them.
    pub fn program(&self) -> Option<u32> {
        match self {
            Key::GetPort { prog, .. } | Key::Addr { prog, .. } => Some(*prog),
            Key::Dump { .. } => None,
        }
    }

    /// (prog, vers, netid) for the per-lookup counters, like `rpcinfo -m`.
    fn lookup_id(&self) -> Option<(u32, u32, &'static str)> {
        match *self {
            Key::GetPort { prog, vers, prot } => Some((
                prog,
                vers,
                match prot {
                    rpcb::IPPROTO_TCP => "tcp",
                    rpcb::IPPROTO_UDP => "udp",
                    _ => "other",
                },
            )),
            Key::Addr {
                prog, vers, class, ..
            } => Some((prog, vers, class.netid())),
            Key::Dump { .. } => None,
        }
    }
}

/// Whether a reply says "not registered": port 0, an empty address or an
/// empty list. Errors are never cached at all.
fn classify(key: &Key, reply: &[u8]) -> Option<bool> {
    let r = rpc::parse_reply(reply).ok()?;
    if r.accept != Some(AcceptStat::Success) {
        return None;
    }
    Some(match key {
        Key::GetPort { .. } => r.body.get(..4)? == [0, 0, 0, 0],
        Key::Addr {
            procedure: Procedure::GetAddrList,
            ..
        } => r.body.get(..4)? == [0, 0, 0, 0],
        Key::Addr { .. } => rpcb::decode_string_reply(r.body).ok()?.is_empty(),
        Key::Dump { .. } => false,
    })
}

/// Cache settings (reloadable).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CacheConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: usize,
    /// How long past expiry an entry may still be served while rpcbind is
    /// unreachable; zero turns it off.
    pub serve_stale: Duration,
}

impl CacheConfig {
    /// The defaults, which the settings' help and the example config state.
    pub const DEFAULT: CacheConfig = CacheConfig {
        ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(10),
        max_entries: 65536,
        serve_stale: Duration::from_secs(30),
    };
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::DEFAULT
    }
}

#[derive(Debug)]
struct Entry {
    reply: Bytes,
    expires: Instant,
    negative: bool,
    /// The per-lookup row its hits count on (None for DUMP), found once
    /// when it is stored rather than hashed again on every hit.
    row: Option<usize>,
}

/// Counters, read by `status`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub negative_hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub invalidations_refresh: AtomicU64,
    pub invalidations_registration: AtomicU64,
    pub invalidations_flush: AtomicU64,
    pub stale_served: AtomicU64,
}

/// Per (prog, vers, netid) hits and misses.
pub type LookupCounts = HashMap<(u32, u32, &'static str), (u64, u64)>;

/// Rows kept in the per-lookup table; lookups of further programs are
/// counted in one row (program 0, netid "other") so that a client asking
/// for ever new programs cannot grow the table without bound.
pub const MAX_LOOKUP_ROWS: usize = 4096;

/// The per-lookup counters: rows in a vector, found by (prog, vers, netid).
/// A row, once made, stays at its place for the cache's life (nothing is
/// ever removed), so an entry can keep the index of its own.
#[derive(Debug, Default)]
struct LookupTable {
    index: HashMap<(u32, u32, &'static str), usize>,
    rows: Vec<(u64, u64)>,
}

impl LookupTable {
    /// The row `key` counts on, made when it is new and there is room
    /// (past MAX_LOOKUP_ROWS, the shared "other" row); None for a key with
    /// no per-lookup row (DUMP).
    fn row(&mut self, key: &Key) -> Option<usize> {
        let mut id = key.lookup_id()?;
        if self.index.len() >= MAX_LOOKUP_ROWS && !self.index.contains_key(&id) {
            id = (0, 0, "other");
        }
        let rows = &mut self.rows;
        Some(*self.index.entry(id).or_insert_with(|| {
            rows.push((0, 0));
            rows.len() - 1
        }))
    }

    fn count(&mut self, row: Option<usize>, hit: bool) {
        if let Some(c) = row.and_then(|r| self.rows.get_mut(r)) {
            if hit {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }

    fn snapshot(&self) -> LookupCounts {
        self.index
            .iter()
            .map(|(id, &r)| (*id, self.rows[r]))
            .collect()
    }
}

#[derive(Debug)]
struct Inner {
    entries: LruCache<Key, Entry>,
    lookups: LookupTable,
    /// Bumped by every invalidation: an answer fetched before one must not
    /// be stored after it.
    generation: u64,
    /// Misses being fetched now, and who waits for them (single flight),
    /// with the id of the fetch. An invalidation detaches the fetches of the
    /// programs it drops: whoever asks after it starts a fetch of its own
    /// instead of waiting for an answer rpcbind may have given before the
    /// change (a registration through the proxy, then an immediate lookup,
    /// must see the new port).
    inflight: HashMap<Key, (u64, Fanout)>,
    /// The id of the next fetch.
    next_fetch: u64,
}

/// Hands a fetched answer to the clients that wait for it.
type Fanout = broadcast::Sender<Result<Bytes, UpstreamError>>;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A fresh entry: answer with it.
    Hit(Bytes),
    /// Not usable: fetch it, then `complete` (and `stale` is what may be
    /// served if rpcbind cannot be reached).
    Miss {
        ticket: Ticket<'a>,
        stale: Option<Bytes>,
    },
    /// Someone is fetching it already: wait for their answer (`stale` as
    /// for a miss).
    Wait {
        rx: broadcast::Receiver<Result<Bytes, UpstreamError>>,
        stale: Option<Bytes>,
    },
}

/// The right to fetch a key and store the answer. Dropped without
/// `complete` (the fetching client went away), it releases the waiters,
/// who see the channel closed, so no key is ever stuck in flight.
#[derive(Debug)]
pub struct Ticket<'a> {
    cache: &'a Cache,
    key: Key,
    generation: u64,
    /// This fetch's id and its own handle on the waiters, which it keeps
    /// when an invalidation detaches it from `inflight`.
    fetch: u64,
    fanout: Fanout,
    done: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cache
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .end_fetch(&self.key, self.fetch);
        }
    }
}

impl Inner {
    /// Forgets fetch `id` of `key`, unless an invalidation already did (and
    /// a newer fetch of the same key may now be in its place).
    fn end_fetch(&mut self, key: &Key, id: u64) {
        if self.inflight.get(key).is_some_and(|(f, _)| *f == id) {
            self.inflight.remove(key);
        }
    }
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    config: Mutex<CacheConfig>,
    inner: Mutex<Inner>,
    pub stats: CacheStats,
}

impl Cache {
    pub fn new(config: CacheConfig) -> Cache {
        Cache {
            config: Mutex::new(config),
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                lookups: LookupTable::default(),
                generation: 0,
                inflight: HashMap::new(),
                next_fetch: 0,
            }),
            stats: CacheStats::default(),
        }
    }

    pub fn config(&self) -> CacheConfig {
        *self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies new settings, keeping the entries (evicting if the limit
    /// shrank).
    pub fn reconfigure(&self, config: CacheConfig) {
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = config;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.evict_to(&mut inner, config.max_entries);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the per-lookup counters.
    pub fn lookups(&self) -> LookupCounts {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lookups
            .snapshot()
    }

    /// A fresh entry for `key`, counted as a hit; None (counting nothing)
    /// when there is none, for the caller to `lookup` properly.
    pub fn hit(&self, key: Key) -> Option<Bytes> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner {
            entries, lookups, ..
        } = &mut *inner;
        let e = entries.get(&key).filter(|e| now < e.expires)?;
        self.count_hit(lookups, e);
        Some(e.reply.clone())
    }

    fn count_hit(&self, lookups: &mut LookupTable, e: &Entry) {
        let counter = if e.negative {
            &self.stats.negative_hits
        } else {
            &self.stats.hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        lookups.count(e.row, true);
    }

    /// Looks `key` up.
    pub fn lookup(&self, key: Key) -> Lookup<'_> {
        let now = Instant::now();
        let serve_stale = self.config().serve_stale;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stale = None;
        let mut expired = false;
        let Inner {
            entries, lookups, ..
        } = &mut *inner;
        if let Some(e) = entries.get(&key) {
            if now < e.expires {
                self.count_hit(lookups, e);
                return Lookup::Hit(e.reply.clone());
            }
            expired = true;
            if now < e.expires + serve_stale {
                stale = Some(e.reply.clone());
            }
        }
        if expired && stale.is_none() {
            inner.entries.pop(&key);
            self.stats.expirations.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((_, tx)) = inner.inflight.get(&key) {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            return Lookup::Wait {
                rx: tx.subscribe(),
                stale,
            };
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let row = inner.lookups.row(&key);
        inner.lookups.count(row, false);
        let (tx, _) = broadcast::channel(1);
        let fetch = inner.next_fetch;
        inner.next_fetch += 1;
        inner.inflight.insert(key, (fetch, tx.clone()));
        Lookup::Miss {
            ticket: Ticket {
                cache: self,
                key,
                generation: inner.generation,
                fetch,
                fanout: tx,
                done: false,
            },
            stale,
        }
    }

    /// Ends a fetch: stores a cacheable reply (unless an invalidation came
    /// in between) and wakes whoever waited for it.
    pub fn complete(&self, mut ticket: Ticket<'_>, result: &Result<Bytes, UpstreamError>) {
        ticket.done = true;
        let config = self.config();
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.end_fetch(&ticket.key, ticket.fetch);
        let _ = ticket.fanout.send(result.clone());
        let Ok(reply) = result else { return };
        if ticket.generation != inner.generation {
            return;
        }
        let Some(negative) = classify(&ticket.key, reply) else {
            return;
        };
        let ttl = if negative {
            config.negative_ttl
        } else {
            config.ttl
        };
        if ttl.is_zero() || config.max_entries == 0 {
            return;
        }
        // The row the miss counted on: made then, so only looked up here.
        let row = inner.lookups.row(&ticket.key);
        inner.entries.put(
            ticket.key,
            Entry {
                // A copy of exactly the reply: the received bytes may be a
                // view into a larger read buffer that must not stay pinned.
                reply: Bytes::copy_from_slice(reply),
                expires: now + ttl,
                negative,
                row,
            },
        );
        self.evict_to(&mut inner, config.max_entries);
    }

    /// Counts a stale answer served because rpcbind was unreachable.
    pub fn served_stale(&self) {
        self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
    }

    fn evict_to(&self, inner: &mut Inner, max: usize) {
        while inner.entries.len() > max {
            inner.entries.pop_lru();
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the entries of `programs` and every DUMP; returns how many.
    pub fn invalidate_programs(&self, programs: &BTreeSet<u32>, why: Invalidation) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        let affected = |k: &Key| k.program().is_none_or(|p| programs.contains(&p));
        inner.inflight.retain(|k, _| !affected(k));
        let doomed: Vec<Key> = inner
            .entries
            .iter()
            .filter(|(k, _)| affected(k))
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            inner.entries.pop(k);
        }
        self.count_invalidations(why, doomed.len());
        doomed.len()
    }

    /// Drops everything; returns how many entries there were.
    pub fn flush(&self, why: Invalidation) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        inner.inflight.clear();
        let n = inner.entries.len();
        inner.entries.clear();
        self.count_invalidations(why, n);
        n
    }

    fn count_invalidations(&self, why: Invalidation, n: usize) {
        let counter = match why {
            Invalidation::Refresh => &self.stats.invalidations_refresh,
            Invalidation::Registration => &self.stats.invalidations_registration,
            Invalidation::Flush => &self.stats.invalidations_flush,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Why entries were dropped (counted separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Refresh,
    Registration,
    Flush,
}

/// The programs whose registrations differ between two DUMPs.
pub fn changed_programs(old: &[RpcbEntry], new: &[RpcbEntry]) -> BTreeSet<u32> {
    type Registrations<'a> = BTreeSet<(u32, &'a [u8], &'a [u8], &'a [u8])>;
    fn by_prog(list: &[RpcbEntry]) -> StdHashMap<u32, Registrations<'_>> {
        let mut m: StdHashMap<u32, BTreeSet<_>> = StdHashMap::new();
        for e in list {
            m.entry(e.prog)
                .or_default()
                .insert((e.vers, &e.netid[..], &e.addr[..], &e.owner[..]));
        }
        m
    }
    let (a, b) = (by_prog(old), by_prog(new));
    a.keys()
        .chain(b.keys())
        .filter(|p| a.get(p) != b.get(p))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::rpc::{accepted_reply, OpaqueAuth};

    fn port_reply(port: u32) -> Bytes {
        accepted_reply(
            1,
            OpaqueAuth::NONE,
            AcceptStat::Success,
            &port.to_be_bytes(),
        )
    }

    fn getport(prog: u32) -> Key {
        Key::GetPort {
            prog,
            vers: 1,
            prot: 6,
        }
    }

    fn fill(cache: &Cache, key: Key, reply: Bytes) {
        match cache.lookup(key) {
            Lookup::Miss { ticket, .. } => cache.complete(ticket, &Ok(reply)),
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            max_entries: 3,
            serve_stale: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn positive_and_negative_entries_expire_on_their_own_ttl() {
        let c = Cache::new(config());
        fill(&c, getport(1), port_reply(2049));
        fill(&c, getport(2), port_reply(0));
        assert!(matches!(c.lookup(getport(1)), Lookup::Hit(_)));
        assert!(matches!(c.lookup(getport(2)), Lookup::Hit(_)));
        assert_eq!(c.stats.negative_hits.load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(c.lookup(getport(1)), Lookup::Hit(_)));
        let Lookup::Miss { ticket, stale } = c.lookup(getport(2)) else {
            panic!("negative entry must have expired")
        };
        assert!(stale.is_some(), "within the stale window");
        c.complete(ticket, &Err(UpstreamError::Unavailable));
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(matches!(c.lookup(getport(1)), Lookup::Miss { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_are_offered_only_within_the_window() {
        let c = Cache::new(config());
        fill(&c, getport(1), port_reply(2049));
        tokio::time::advance(Duration::from_secs(60 + 29)).await;
        let Lookup::Miss { ticket, stale } = c.lookup(getport(1)) else {
            panic!()
        };
        assert_eq!(stale, Some(port_reply(2049)));
        c.complete(ticket, &Err(UpstreamError::Timeout));
        tokio::time::advance(Duration::from_secs(2)).await;
        let Lookup::Miss { stale, .. } = c.lookup(getport(1)) else {
            panic!()
        };
        assert_eq!(stale, None, "past ttl + serve-stale");
        assert_eq!(c.stats.expirations.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn those_waiting_for_a_fetch_get_the_stale_answer_too() {
        let c = Cache::new(config());
        fill(&c, getport(1), port_reply(2049));
        tokio::time::advance(Duration::from_secs(61)).await;
        let Lookup::Miss { ticket, stale } = c.lookup(getport(1)) else {
            panic!()
        };
        assert!(stale.is_some());
        let Lookup::Wait { mut rx, stale } = c.lookup(getport(1)) else {
            panic!("a second client waits for the first one's fetch")
        };
        assert_eq!(
            stale,
            Some(port_reply(2049)),
            "and may serve the stale answer if it fails"
        );
        c.complete(ticket, &Err(UpstreamError::Unavailable));
        assert_eq!(rx.recv().await.unwrap(), Err(UpstreamError::Unavailable));
    }

    #[tokio::test(start_paused = true)]
    async fn serve_stale_zero_turns_it_off() {
        let c = Cache::new(CacheConfig {
            serve_stale: Duration::ZERO,
            ..config()
        });
        fill(&c, getport(1), port_reply(2049));
        tokio::time::advance(Duration::from_secs(61)).await;
        let Lookup::Miss { stale, .. } = c.lookup(getport(1)) else {
            panic!()
        };
        assert_eq!(stale, None);
    }

    #[tokio::test(start_paused = true)]
    async fn least_recently_used_is_evicted_beyond_the_limit() {
        let c = Cache::new(config());
        for p in 1..=3 {
            fill(&c, getport(p), port_reply(p));
        }
        assert!(matches!(c.lookup(getport(1)), Lookup::Hit(_)));
        fill(&c, getport(4), port_reply(4));
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats.evictions.load(Ordering::Relaxed), 1);
        assert!(
            matches!(c.lookup(getport(2)), Lookup::Miss { .. }),
            "2 was least recently used"
        );
        assert!(matches!(c.lookup(getport(1)), Lookup::Hit(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_wait_for_one_fetch() {
        let c = Cache::new(config());
        let Lookup::Miss { ticket, .. } = c.lookup(getport(1)) else {
            panic!()
        };
        let mut waiters: Vec<_> = (0..5)
            .map(|_| match c.lookup(getport(1)) {
                Lookup::Wait { rx, .. } => rx,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(c.stats.coalesced.load(Ordering::Relaxed), 5);
        assert_eq!(c.stats.misses.load(Ordering::Relaxed), 1);
        c.complete(ticket, &Ok(port_reply(7)));
        for w in &mut waiters {
            assert_eq!(w.recv().await.unwrap(), Ok(port_reply(7)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_fetched_across_an_invalidation_is_not_stored() {
        let c = Cache::new(config());
        let Lookup::Miss { ticket, .. } = c.lookup(getport(1)) else {
            panic!()
        };
        c.invalidate_programs(&BTreeSet::from([1]), Invalidation::Refresh);
        c.complete(ticket, &Ok(port_reply(7)));
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_after_an_invalidation_does_not_wait_for_a_fetch_from_before_it() {
        let c = Cache::new(config());
        let Lookup::Miss { ticket: old, .. } = c.lookup(getport(1)) else {
            panic!()
        };
        let Lookup::Wait { rx: mut before, .. } = c.lookup(getport(1)) else {
            panic!("a lookup before the invalidation joins the fetch in flight")
        };
        // A registration of program 1 passed through the proxy.
        c.invalidate_programs(&BTreeSet::from([1]), Invalidation::Registration);
        let Lookup::Miss { ticket: new, .. } = c.lookup(getport(1)) else {
            panic!("a lookup after the invalidation must fetch anew, not wait")
        };
        // The old fetch ends with the answer from before the change: its own
        // waiters get it, the new fetch stays in flight and its answer is
        // the one stored.
        c.complete(old, &Ok(port_reply(7)));
        assert_eq!(before.recv().await.unwrap().unwrap(), port_reply(7));
        assert!(c.is_empty());
        assert!(matches!(c.lookup(getport(1)), Lookup::Wait { .. }));
        c.complete(new, &Ok(port_reply(8)));
        let Lookup::Hit(reply) = c.lookup(getport(1)) else {
            panic!()
        };
        assert_eq!(reply, port_reply(8));
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_drops_exactly_the_changed_programs_and_dumps() {
        let c = Cache::new(CacheConfig {
            max_entries: 10,
            ..config()
        });
        fill(&c, getport(1), port_reply(1));
        fill(&c, getport(2), port_reply(2));
        let dump = accepted_reply(1, OpaqueAuth::NONE, AcceptStat::Success, &[0, 0, 0, 0]);
        fill(&c, Key::Dump { rpcb_vers: 2 }, dump);
        assert_eq!(
            c.invalidate_programs(&BTreeSet::from([1]), Invalidation::Refresh),
            2
        );
        assert!(matches!(c.lookup(getport(2)), Lookup::Hit(_)));
        assert_eq!(c.stats.invalidations_refresh.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_are_counted_per_program_up_to_the_bound() {
        let c = Cache::new(CacheConfig {
            max_entries: MAX_LOOKUP_ROWS + 10,
            ..config()
        });
        for p in 1..=MAX_LOOKUP_ROWS as u32 + 2 {
            fill(&c, getport(p), port_reply(p));
        }
        fill(&c, Key::Dump { rpcb_vers: 2 }, port_reply(0));
        for p in [1, 1, 2, MAX_LOOKUP_ROWS as u32 + 1] {
            assert!(c.hit(getport(p)).is_some());
        }
        assert!(matches!(c.lookup(getport(1)), Lookup::Hit(_)));
        assert!(matches!(
            c.lookup(getport(MAX_LOOKUP_ROWS as u32 + 2)),
            Lookup::Hit(_)
        ));
        assert!(c.hit(Key::Dump { rpcb_vers: 2 }).is_some());
        let l = c.lookups();
        assert_eq!(l.len(), MAX_LOOKUP_ROWS + 1);
        assert_eq!(l[&(1, 1, "tcp")], (3, 1));
        assert_eq!(l[&(2, 1, "tcp")], (1, 1));
        assert_eq!(l[&(3, 1, "tcp")], (0, 1));
        assert_eq!(l[&(0, 0, "other")], (2, 2), "the programs past the bound");
        assert!(!l.contains_key(&(MAX_LOOKUP_ROWS as u32 + 1, 1, "tcp")));
    }

    #[test]
    fn errors_are_never_cached() {
        let key = getport(1);
        let err = accepted_reply(1, OpaqueAuth::NONE, AcceptStat::SystemErr, &[]);
        assert_eq!(classify(&key, &err), None);
        assert_eq!(classify(&key, &port_reply(0)), Some(true));
        assert_eq!(classify(&key, &port_reply(111)), Some(false));
    }

    #[test]
    fn changed_programs_compares_per_program() {
        let e = |prog, addr: &str| RpcbEntry {
            prog,
            vers: 1,
            netid: b"tcp".to_vec(),
            addr: addr.into(),
            owner: b"superuser".to_vec(),
        };
        let old = [
            e(1, "0.0.0.0.4.1"),
            e(2, "0.0.0.0.4.2"),
            e(3, "0.0.0.0.4.3"),
        ];
        let new = [
            e(3, "0.0.0.0.4.3"),
            e(1, "0.0.0.0.4.9"),
            e(4, "0.0.0.0.4.4"),
        ];
        assert_eq!(changed_programs(&old, &new), BTreeSet::from([1, 2, 4]));
        assert!(changed_programs(&old, &old).is_empty());
    }
}
