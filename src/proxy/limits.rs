//! Resource limits on clients, each a flag and a config key, each counted
//! when it bites (`status` shows them), all reloadable with SIGHUP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hashbrown::HashMap;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::host::sockdiag::{Proto, SockDiag};
use crate::proxy::logs::{human, Throttle};
use crate::proxy::policy::Peer;

/// The limits as configured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Stream clients connected at once. A client that comes when they are
    /// all taken is admitted by closing the longest-idle connection of the
    /// user holding the most (its own, once it holds its share): see
    /// [`Limits::admit`].
    pub max_connections: usize,
    /// Calls one stream client may have in flight before the proxy stops
    /// reading from it (backpressure, not an error).
    pub max_in_flight: usize,
    /// A stream client that sends nothing, with nothing in flight, for this
    /// long is closed (rpcbind has no such limit; libtirpc's CVE-2021-46828
    /// was idle connections exhausting the service).
    pub idle_timeout: Duration,
    /// A client that has started a record must finish it within this time:
    /// a slow sender cannot hold a slot for ever.
    pub record_timeout: Duration,
    /// The largest reply sent as one datagram; a bigger one gets what
    /// rpcbind sends then (v2: nothing, v3/v4: SYSTEM_ERR). rpcbind's own
    /// limit is 9000 bytes (RPC_MAXDATASIZE), the default.
    pub max_udp_reply: usize,
    /// Server mode's amplification bound: a reply to another host's UDP
    /// call is at most this many times the call's size; a bigger one gets
    /// what a reply too large for a datagram gets (`max_udp_reply`). The
    /// classic portmapper reflection is a small DUMP answered with a list
    /// many times its size.
    pub remote_udp_amplification: usize,
    /// Server mode: calls a second each other host may make (a burst of
    /// twice that); 0: no limit. See `proxy::shield`.
    pub remote_rate: u32,
    /// Server mode: calls each other host may have past the cache at once
    /// (waiting for rpcbind), over all its connections and datagrams; 0:
    /// no limit. See `proxy::shield`.
    pub remote_in_flight: usize,
}

impl LimitsConfig {
    /// The defaults, which the settings' help and the example config state.
    pub const DEFAULT: LimitsConfig = LimitsConfig {
        max_connections: 4096,
        max_in_flight: 64,
        idle_timeout: Duration::from_secs(120),
        record_timeout: Duration::from_secs(10),
        max_udp_reply: 9000,
        remote_udp_amplification: 1,
        remote_rate: 500,
        remote_in_flight: 64,
    };
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig::DEFAULT
    }
}

/// The live limits and how often each was hit.
#[derive(Debug)]
pub struct Limits {
    max_connections: Arc<AtomicUsize>,
    max_in_flight: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    record_timeout_ms: AtomicU64,
    max_udp_reply: AtomicUsize,
    remote_udp_amplification: AtomicUsize,
    remote_rate: std::sync::atomic::AtomicU32,
    remote_in_flight: AtomicUsize,
    /// Clients turned away at the connection limit: nothing could be
    /// evicted for them (a limit of 0, or every connection they could take
    /// has calls in flight).
    pub connections_refused: AtomicU64,
    /// Connections closed at the connection limit to admit a newer client.
    pub connections_evicted: AtomicU64,
    /// UDP calls dropped because their listener had as many in flight to
    /// rpcbind as it may (as a full socket buffer would drop them).
    pub udp_dropped: AtomicU64,
    pub in_flight_reached: AtomicU64,
    pub idle_closed: AtomicU64,
    pub record_timeouts: AtomicU64,
    pub udp_too_large: AtomicU64,
    /// Replies to other hosts' UDP calls held back by the amplification
    /// bound.
    pub amplification_refused: AtomicU64,
    conns: Arc<Mutex<Conns>>,
    /// Says refused connections: the first at once, then one line per
    /// window with how many.
    refused_log: Arc<Throttle>,
    /// Says evicted connections the same way, with whose they were.
    evicted_log: Arc<Throttle>,
    /// Whose connections were evicted since the last line said so.
    evicted_owners: Arc<Mutex<EvictedOwners>>,
}

/// The owners whose connections were evicted in one log window, with how
/// many each; at most [`EvictedOwners::MAX`] named, the rest summed.
#[derive(Debug, Default)]
struct EvictedOwners {
    named: Vec<(String, u64)>,
    others: u64,
}

impl EvictedOwners {
    const MAX: usize = 8;

    fn add(&mut self, owner: Owner) {
        let who = owner.to_string();
        if let Some((_, n)) = self.named.iter_mut().find(|(w, _)| *w == who) {
            *n += 1;
        } else if self.named.len() < Self::MAX {
            self.named.push((who, 1));
        } else {
            self.others += 1;
        }
    }

    /// `uid 1000` for one; `uid 1000 (5), uid 0 (2), others (3)` for more.
    fn take(&mut self) -> String {
        let EvictedOwners { named, others } = std::mem::take(self);
        if let ([(who, 1)], 0) = (named.as_slice(), others) {
            return who.clone();
        }
        let mut parts: Vec<String> = named.iter().map(|(w, n)| format!("{w} ({n})")).collect();
        if others > 0 {
            parts.push(format!("others ({others})"));
        }
        parts.join(", ")
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Uid(uid) => write!(f, "uid {uid}"),
            Owner::LocalTcp { client, .. } => write!(f, "the local TCP client {client}"),
            Owner::Remote(ip) => write!(f, "host {ip}"),
            Owner::OtherIp => f.write_str("an unidentified local TCP client"),
        }
    }
}

/// Refused connections are logged at most once per this window.
pub const REFUSED_LOG_WINDOW: Duration = Duration::from_secs(10);

impl Limits {
    pub fn new(c: LimitsConfig) -> Limits {
        let max_connections = Arc::new(AtomicUsize::new(0));
        let limit = max_connections.clone();
        let refused_log = Arc::new(Throttle::new(REFUSED_LOG_WINDOW, move |n, over| {
            let limit = limit.load(Ordering::Relaxed);
            if over.is_zero() {
                warn!("max-connections {limit} reached: refused a new client (further refusals are counted and logged at most every {})", human(REFUSED_LOG_WINDOW));
            } else {
                warn!(
                    "max-connections {limit} reached: refused {n} new clients in the last {}",
                    human(over)
                );
            }
        }));
        let limit = max_connections.clone();
        let evicted_owners = Arc::new(Mutex::new(EvictedOwners::default()));
        let owners = evicted_owners.clone();
        let evicted_log = Arc::new(Throttle::new(REFUSED_LOG_WINDOW, move |n, over| {
            let limit = limit.load(Ordering::Relaxed);
            let whose = owners.lock().unwrap_or_else(PoisonError::into_inner).take();
            if over.is_zero() {
                warn!("max-connections {limit} reached: evicted the longest-idle connection of {whose} to admit a new client (further evictions are counted and logged at most every {})", human(REFUSED_LOG_WINDOW));
            } else {
                warn!(
                    "max-connections {limit} reached: evicted {n} idle connections in the last {} to admit new clients; theirs: {whose}",
                    human(over)
                );
            }
        }));
        let l = Limits {
            evicted_log,
            evicted_owners,
            max_connections,
            max_in_flight: AtomicUsize::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            record_timeout_ms: AtomicU64::new(0),
            max_udp_reply: AtomicUsize::new(0),
            remote_udp_amplification: AtomicUsize::new(1),
            remote_rate: std::sync::atomic::AtomicU32::new(0),
            remote_in_flight: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
            connections_evicted: AtomicU64::new(0),
            udp_dropped: AtomicU64::new(0),
            in_flight_reached: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            record_timeouts: AtomicU64::new(0),
            udp_too_large: AtomicU64::new(0),
            amplification_refused: AtomicU64::new(0),
            conns: Arc::new(Mutex::new(Conns::new())),
            refused_log,
        };
        l.set(c);
        l
    }

    pub fn set(&self, c: LimitsConfig) {
        self.max_connections
            .store(c.max_connections, Ordering::Relaxed);
        self.max_in_flight
            .store(c.max_in_flight.max(1), Ordering::Relaxed);
        self.idle_timeout_ms
            .store(c.idle_timeout.as_millis() as u64, Ordering::Relaxed);
        self.record_timeout_ms
            .store(c.record_timeout.as_millis() as u64, Ordering::Relaxed);
        self.max_udp_reply.store(c.max_udp_reply, Ordering::Relaxed);
        self.remote_udp_amplification
            .store(c.remote_udp_amplification.max(1), Ordering::Relaxed);
        self.remote_rate.store(c.remote_rate, Ordering::Relaxed);
        self.remote_in_flight
            .store(c.remote_in_flight, Ordering::Relaxed);
    }

    pub fn get(&self) -> LimitsConfig {
        LimitsConfig {
            max_connections: self.max_connections.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight(),
            idle_timeout: self.idle_timeout(),
            record_timeout: self.record_timeout(),
            max_udp_reply: self.max_udp_reply(),
            remote_udp_amplification: self.remote_udp_amplification.load(Ordering::Relaxed),
            remote_rate: self.remote_rate(),
            remote_in_flight: self.remote_in_flight(),
        }
    }

    /// Whether a reply of `reply` bytes to a UDP call of `call` bytes from
    /// `peer` may be sent as a datagram: at most `max_udp_reply`, and to
    /// another host at most `remote_udp_amplification` times the call.
    #[inline]
    pub fn udp_reply_fits(&self, peer: &Peer, call: usize, reply: usize) -> bool {
        if reply > self.max_udp_reply() {
            return false;
        }
        match peer.ip() {
            Some(ip) if !ip.is_loopback() => {
                let factor = self.remote_udp_amplification.load(Ordering::Relaxed);
                reply <= call.saturating_mul(factor)
            }
            _ => true,
        }
    }

    /// Calls each other host may have past the cache at once (0: no limit).
    pub fn remote_in_flight(&self) -> usize {
        self.remote_in_flight.load(Ordering::Relaxed)
    }

    /// Calls a second each other host may make (0: no limit).
    pub fn remote_rate(&self) -> u32 {
        self.remote_rate.load(Ordering::Relaxed)
    }

    pub fn max_udp_reply(&self) -> usize {
        self.max_udp_reply.load(Ordering::Relaxed)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn record_timeout(&self) -> Duration {
        Duration::from_millis(self.record_timeout_ms.load(Ordering::Relaxed))
    }

    /// Stream connections held now.
    pub fn connected(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
    }

    /// Admits a newly accepted stream client of `owner`, or says no (and
    /// counts it). At the connection limit a connection is evicted to make
    /// room, as libtirpc does since CVE-2021-46828 (it closes the least
    /// active one), with a share per user so that one user's idle
    /// connections cannot lock the others out:
    ///
    /// - the share is the limit divided by the users holding connections
    ///   (the newcomer's counted);
    /// - a newcomer whose user holds less than its share evicts the
    ///   longest-idle connection of the user holding the most;
    /// - one whose user holds its share or more evicts its own user's
    ///   longest-idle connection: it can never take another user's.
    ///
    /// A connection with calls in flight is not idle and is never evicted;
    /// when the chosen user has no other, the newcomer is refused. The
    /// evicted connection's task is told through its [`Admitted`] and
    /// closes (with an RST for TCP).
    pub fn admit(&self, owner: Owner) -> Option<Admitted> {
        let max = self.max_connections.load(Ordering::Relaxed);
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut owner = owner;
        // Whose connections were evicted (one, unless the limit was lowered).
        let mut evicted: Vec<Owner> = Vec::new();
        while conns.live >= max {
            if max == 0 {
                break;
            }
            conns.resolve_pending();
            owner = conns.resolve(owner);
            let Some(victim) = conns.victim(owner.key(), max) else {
                break;
            };
            conns.cursor = conns.cursor.wrapping_add(VICTIM_WINDOW);
            evicted.extend(conns.evict(victim));
            self.connections_evicted.fetch_add(1, Ordering::Relaxed);
        }
        if !evicted.is_empty() {
            let mut owners = self
                .evicted_owners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for o in &evicted {
                owners.add(*o);
            }
        }
        for _ in &evicted {
            self.evicted_log.event();
        }
        if conns.live >= max {
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(conns);
            self.refused_log.event();
            return None;
        }
        let slot = Arc::new(Slot {
            last_active_us: AtomicU64::new(conns.now_us(Instant::now())),
            busy: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let index = conns.insert(owner, slot.clone());
        Some(Admitted {
            conns: self.conns.clone(),
            epoch: conns.epoch,
            index,
            slot,
        })
    }
}

/// Who holds a stream connection, for the per-user share at the
/// connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A known uid: a unix client's (SO_PEERCRED), or a local TCP client's
    /// once looked up.
    Uid(u32),
    /// A TCP client on this host: its socket's uid is looked up
    /// (NETLINK_SOCK_DIAG, about 4 µs) only when the limit is reached, so
    /// that a connection costs nothing more below it.
    LocalTcp {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// A client of another host (server mode), by its address: each host
    /// has its share, as each user has, so one host's connections cannot
    /// lock the others out.
    Remote(std::net::IpAddr),
    /// Local TCP clients whose socket could not be found: one class, as if
    /// one user.
    OtherIp,
}

/// What the connection limit's share is counted by: a user, another host,
/// or the one class of unknown local clients. Ordered, so that among
/// owners holding as many the choice does not depend on a map's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ShareKey {
    Uid(u32),
    Remote(std::net::IpAddr),
    Other,
}

impl Owner {
    /// The owner of a unix client (its uid); for a loopback IP peer,
    /// [`Owner::OtherIp`], for another host's, [`Owner::Remote`] (TCP
    /// clients are classed by [`Owner::tcp`]).
    pub fn of(peer: &Peer) -> Owner {
        match *peer {
            Peer::Unix { uid, .. } => Owner::Uid(uid),
            Peer::Tcp(_) | Peer::Udp(_) => match peer.ip() {
                Some(ip) if !ip.is_loopback() => Owner::Remote(ip),
                _ => Owner::OtherIp,
            },
        }
    }

    /// The owner of a TCP connection from `client` to `server`.
    pub fn tcp(client: SocketAddr, server: SocketAddr) -> Owner {
        let ip = client.ip().to_canonical();
        if ip.is_loopback() {
            Owner::LocalTcp { client, server }
        } else {
            Owner::Remote(ip)
        }
    }

    /// What the share is counted by.
    fn key(self) -> ShareKey {
        match self {
            Owner::Uid(uid) => ShareKey::Uid(uid),
            Owner::Remote(ip) => ShareKey::Remote(ip),
            Owner::LocalTcp { .. } | Owner::OtherIp => ShareKey::Other,
        }
    }
}

/// What the connection's task and the registry share.
#[derive(Debug)]
struct Slot {
    /// Microseconds since the registry's epoch of the last read or write.
    last_active_us: AtomicU64,
    /// Calls in flight: not idle, never evicted.
    busy: AtomicBool,
    /// Set (under the registry's lock) when evicted: the slot is no longer
    /// the registry's.
    evicted: AtomicBool,
    /// Woken when evicted: the stream loop's signal for this connection.
    waker: AtomicWaker,
}

/// A stream client's place under the connection limit, for the life of its
/// connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Admitted {
    conns: Arc<Mutex<Conns>>,
    epoch: Instant,
    index: usize,
    slot: Arc<Slot>,
}

impl Admitted {
    /// The connection read or wrote at `now`.
    pub fn touch(&self, now: Instant) {
        let us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.slot.last_active_us.store(us, Ordering::Relaxed);
    }

    /// Whether the connection has calls in flight (only those without are
    /// idle, and may be evicted).
    pub fn set_busy(&self, busy: bool) {
        if self.slot.busy.load(Ordering::Relaxed) != busy {
            self.slot.busy.store(busy, Ordering::Relaxed);
        }
    }

    /// Whether the connection was evicted to admit another client.
    pub fn is_evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::Acquire)
    }

    /// Has `waker` woken when the connection is evicted to admit another
    /// client (the caller then sees [`Admitted::is_evicted`] and closes it).
    /// True if it already was.
    pub fn wake_on_evict(&self, waker: &std::task::Waker) -> bool {
        self.slot.waker.register(waker);
        self.is_evicted()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.slot.evicted.load(Ordering::Relaxed) {
            conns.remove(self.index);
        }
    }
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    slot: Arc<Slot>,
    /// Its place in its bucket's member list.
    pos: usize,
}

/// The connections of one owner key, or those whose local TCP owner is
/// not looked up yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    Pending,
    Key(ShareKey),
}

impl Bucket {
    fn of(owner: Owner) -> Bucket {
        match owner {
            Owner::LocalTcp { .. } => Bucket::Pending,
            other => Bucket::Key(other.key()),
        }
    }
}

/// At most this many of an owner's connections are looked at for the
/// longest idle one (a window that moves on at each eviction), so that an
/// admission at the limit costs the same with 4,096 connections from one
/// host as with 4: all were scanned, 22% of the CPU in a connection flood.
/// The whole list only when the window holds none without calls in
/// flight.
const VICTIM_WINDOW: usize = 64;

/// The stream connections held, for the connection limit. Only admission
/// and close take the lock; the connections' own activity is atomics.
#[derive(Debug)]
struct Conns {
    epoch: Instant,
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    /// The entries of each bucket (unresolved [`Owner::LocalTcp`] ones in
    /// [`Bucket::Pending`]); a list's length is how many its owner holds.
    members: HashMap<Bucket, Vec<usize>>,
    /// Where the next victim window starts in a long member list.
    cursor: usize,
    /// Opened the first time a local TCP owner is looked up; None after
    /// it failed to open (then such clients count as [`Owner::OtherIp`]).
    diag: Option<Option<SockDiag>>,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            epoch: Instant::now(),
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            members: HashMap::new(),
            cursor: 0,
            diag: None,
        }
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn insert(&mut self, owner: Owner, slot: Arc<Slot>) -> usize {
        self.live += 1;
        let index = self.free.pop().unwrap_or_else(|| {
            self.entries.push(None);
            self.entries.len() - 1
        });
        let pos = self.join(Bucket::of(owner), index);
        self.entries[index] = Some(Entry { owner, slot, pos });
        index
    }

    fn remove(&mut self, index: usize) {
        if let Some(e) = self.entries.get_mut(index).and_then(Option::take) {
            self.leave(Bucket::of(e.owner), e.pos);
            self.live -= 1;
            self.free.push(index);
        }
    }

    /// Adds entry `index` to `bucket`'s members; its place there.
    fn join(&mut self, bucket: Bucket, index: usize) -> usize {
        let list = self.members.entry(bucket).or_default();
        list.push(index);
        list.len() - 1
    }

    /// Takes the member at `pos` out of `bucket` (the last one moves there).
    fn leave(&mut self, bucket: Bucket, pos: usize) {
        let Some(list) = self.members.get_mut(&bucket) else {
            return;
        };
        if pos >= list.len() {
            return;
        }
        list.swap_remove(pos);
        let moved = list.get(pos).copied();
        if list.is_empty() {
            self.members.remove(&bucket);
        }
        if let Some(e) = moved.and_then(|i| self.entries.get_mut(i)?.as_mut()) {
            e.pos = pos;
        }
    }

    /// The uid behind a local TCP owner, if its socket can be found.
    fn resolve(&mut self, owner: Owner) -> Owner {
        let Owner::LocalTcp { client, server } = owner else {
            return owner;
        };
        let diag = self.diag.get_or_insert_with(|| match SockDiag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                debug!(error = %e, "no sock_diag: local TCP clients share one class");
                None
            }
        });
        match diag
            .as_ref()
            .and_then(|d| d.peer_socket(Proto::Tcp, client, server).ok().flatten())
        {
            Some(sock) => Owner::Uid(sock.uid),
            None => Owner::OtherIp,
        }
    }

    /// Looks up the owners of the local TCP connections admitted below the
    /// limit (once each).
    fn resolve_pending(&mut self) {
        let Some(pending) = self.members.remove(&Bucket::Pending) else {
            return;
        };
        for i in pending {
            let Some(owner) = self.entries[i].as_ref().map(|e| e.owner) else {
                continue;
            };
            let resolved = self.resolve(owner);
            let pos = self.join(Bucket::of(resolved), i);
            if let Some(e) = self.entries[i].as_mut() {
                e.owner = resolved;
                e.pos = pos;
            }
        }
    }

    /// The connection to close to admit a client of `key` (see
    /// [`Limits::admit`]): the longest-idle one, without calls in flight,
    /// of the owner the share points at.
    fn victim(&self, key: ShareKey, max: usize) -> Option<usize> {
        // Connections per resolved owner: their lists' lengths.
        let held = self.members.iter().filter_map(|(b, list)| match b {
            Bucket::Key(k) => Some((*k, list.len())),
            Bucket::Pending => None,
        });
        let own = self.members.get(&Bucket::Key(key)).map_or(0, Vec::len);
        let owners = held.clone().count() + usize::from(own == 0);
        let share = (max / owners).max(1);
        let from = if own >= share {
            key
        } else {
            // The owner holding the most (the lowest key among equals, so
            // the choice does not depend on the map's order).
            let (top, _) = held.max_by_key(|&(k, n)| (n, std::cmp::Reverse(k)))?;
            top
        };
        let list = self.members.get(&Bucket::Key(from))?;
        if list.len() <= VICTIM_WINDOW {
            return self.idlest(list);
        }
        let start = self.cursor % list.len();
        let end = (start + VICTIM_WINDOW).min(list.len());
        let wrapped = VICTIM_WINDOW - (end - start);
        let window = [&list[start..end], &list[..wrapped]];
        match window
            .iter()
            .filter_map(|part| self.idlest(part))
            .min_by_key(|&i| self.idle_since(i))
        {
            Some(i) => Some(i),
            None => self.idlest(list),
        }
    }

    /// The longest idle of `indices` without calls in flight.
    fn idlest(&self, indices: &[usize]) -> Option<usize> {
        indices
            .iter()
            .copied()
            .filter(|&i| {
                self.entries[i]
                    .as_ref()
                    .is_some_and(|e| !e.slot.busy.load(Ordering::Relaxed))
            })
            .min_by_key(|&i| self.idle_since(i))
    }

    /// When entry `i` was last active.
    fn idle_since(&self, i: usize) -> u64 {
        self.entries[i]
            .as_ref()
            .map_or(u64::MAX, |e| e.slot.last_active_us.load(Ordering::Relaxed))
    }

    /// Closes the connection at `index`; returns whose it was.
    fn evict(&mut self, index: usize) -> Option<Owner> {
        let owner = self.entries[index].as_ref().map(|e| {
            e.slot.evicted.store(true, Ordering::Release);
            e.slot.waker.wake();
            e.owner
        });
        self.remove(index);
        owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicted_owners_are_named_and_bounded() {
        let mut o = EvictedOwners::default();
        o.add(Owner::Uid(1000));
        assert_eq!(o.take(), "uid 1000");
        assert_eq!(o.take(), "");
        for uid in 0..20 {
            o.add(Owner::Uid(uid % 10));
        }
        o.add(Owner::OtherIp);
        let s = o.take();
        assert!(s.starts_with("uid 0 (2), uid 1 (2)"), "{s}");
        assert!(s.ends_with("uid 7 (2), others (5)"), "{s}");
    }

    fn limits(max: usize) -> Limits {
        Limits::new(LimitsConfig {
            max_connections: max,
            ..LimitsConfig::default()
        })
    }

    /// Admits one connection of `uid`, last active `ms` after the epoch.
    fn admit(l: &Limits, uid: u32, ms: u64) -> Option<Admitted> {
        let a = l.admit(Owner::Uid(uid))?;
        a.touch(a.epoch + Duration::from_millis(ms));
        Some(a)
    }

    fn evicted(conns: &[Admitted]) -> Vec<usize> {
        (0..conns.len())
            .filter(|&i| conns[i].is_evicted())
            .collect()
    }

    #[test]
    fn below_the_limit_everyone_is_admitted_and_counted_out_again() {
        let l = limits(3);
        let a = admit(&l, 1, 0).unwrap();
        let b = admit(&l, 2, 0).unwrap();
        assert_eq!(l.connected(), 2);
        drop(a);
        drop(b);
        assert_eq!(l.connected(), 0);
        assert_eq!(l.connections_evicted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_user_below_its_share_evicts_the_longest_idle_of_the_biggest_holder() {
        let l = limits(4);
        // uid 1 holds three (the idlest is the second), uid 2 one, older
        // than all of them.
        let held = vec![
            admit(&l, 2, 0).unwrap(),
            admit(&l, 1, 30).unwrap(),
            admit(&l, 1, 10).unwrap(),
            admit(&l, 1, 20).unwrap(),
        ];
        let new = admit(&l, 3, 40).unwrap();
        assert_eq!(evicted(&held), vec![2]);
        assert_eq!(l.connected(), 4);
        assert!(!new.is_evicted());
        assert_eq!(l.connections_evicted.load(Ordering::Relaxed), 1);
        assert_eq!(l.connections_refused.load(Ordering::Relaxed), 0);
    }

    /// A reply to another host's UDP call is bounded by the amplification
    /// factor; loopback and unix callers only by `max_udp_reply`.
    #[test]
    fn udp_replies_to_other_hosts_are_bounded_by_the_call() {
        let l = limits(8);
        let remote = Peer::Udp(([169, 254, 1, 2], 800).into());
        let mapped = Peer::Udp("[::ffff:169.254.1.2]:800".parse().unwrap());
        let local = Peer::Udp(([127, 0, 0, 1], 800).into());
        assert!(l.udp_reply_fits(&remote, 56, 56));
        assert!(!l.udp_reply_fits(&remote, 56, 57));
        assert!(!l.udp_reply_fits(&mapped, 56, 400));
        assert!(l.udp_reply_fits(&local, 56, 4000));
        assert!(!l.udp_reply_fits(&local, 56, 9001));
        l.set(LimitsConfig {
            remote_udp_amplification: 10,
            ..LimitsConfig::default()
        });
        assert!(l.udp_reply_fits(&remote, 56, 560));
        assert!(!l.udp_reply_fits(&remote, 56, 561));
        assert!(!l.udp_reply_fits(&remote, 1000, 9001));
    }

    /// Server mode: each other host has its share, as each user has. A
    /// host flooding the limit with idle connections evicts only its own
    /// once it holds its share, and a newcomer from another host takes
    /// the flooder's idlest, never a third host's.
    #[test]
    fn each_remote_host_has_its_share() {
        let l = limits(4);
        let host = |n: u8| {
            Owner::tcp(
                ([169, 254, 1, n], 700).into(),
                ([169, 254, 1, 1], 1112).into(),
            )
        };
        let at = |a: Admitted, ms| {
            a.touch(a.epoch + Duration::from_millis(ms));
            a
        };
        let quiet = at(l.admit(host(2)).unwrap(), 0);
        let mut flood: Vec<Admitted> = (1..4).map(|ms| at(l.admit(host(9)).unwrap(), ms)).collect();
        for ms in 10..20 {
            flood.push(at(l.admit(host(9)).unwrap(), ms));
        }
        assert!(
            !quiet.is_evicted(),
            "the flooder took another host's connection"
        );
        let newcomer = at(l.admit(host(3)).unwrap(), 30);
        assert!(!quiet.is_evicted() && !newcomer.is_evicted());
        assert_eq!(l.connected(), 4);
        assert_eq!(host(9).to_string(), "host 169.254.1.9");
    }

    #[test]
    fn a_user_at_its_share_only_ever_evicts_its_own() {
        let l = limits(4);
        // uid 1's two are the idlest, but uid 2 holds its share (2 of 4).
        let mut held = vec![
            admit(&l, 1, 0).unwrap(),
            admit(&l, 1, 1).unwrap(),
            admit(&l, 2, 10).unwrap(),
            admit(&l, 2, 20).unwrap(),
        ];
        for ms in 30..40 {
            held.push(admit(&l, 2, ms).unwrap());
        }
        assert!(!held[0].is_evicted() && !held[1].is_evicted());
        // Each newcomer took the place of uid 2's idlest.
        assert_eq!(evicted(&held), (2..12).collect::<Vec<_>>());
        assert_eq!(l.connected(), 4);
    }

    #[test]
    fn ten_thousand_from_one_user_leave_room_for_another() {
        let l = limits(64);
        let mut flood: Vec<Admitted> = (0..10_000).map(|i| admit(&l, 65534, i).unwrap()).collect();
        let mine = admit(&l, 0, 20_000).unwrap();
        assert!(!mine.is_evicted());
        flood.retain(|a| !a.is_evicted());
        assert_eq!(flood.len(), 63);
        assert_eq!(l.connected(), 64);
    }

    #[test]
    fn connections_with_calls_in_flight_are_not_idle() {
        let l = limits(2);
        let a = admit(&l, 1, 0).unwrap();
        let b = admit(&l, 1, 1).unwrap();
        a.set_busy(true);
        let c = admit(&l, 2, 2).unwrap();
        assert!(!a.is_evicted() && b.is_evicted() && !c.is_evicted());
        c.set_busy(true);
        // uid 1 (1 of 2) is at its share: only its own, which is busy.
        assert!(admit(&l, 1, 3).is_none());
        assert_eq!(l.connections_refused.load(Ordering::Relaxed), 1);
        assert_eq!(l.connected(), 2);
    }

    /// Every bucket's list and its entries' places agree, and every live
    /// entry is in its bucket once.
    fn consistent(l: &Limits) {
        let conns = l.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = 0;
        for (bucket, list) in &conns.members {
            for (pos, &i) in list.iter().enumerate() {
                let e = conns.entries[i].as_ref().expect("a member is live");
                assert_eq!((Bucket::of(e.owner), e.pos), (*bucket, pos));
                seen += 1;
            }
        }
        assert_eq!(seen, conns.live);
    }

    #[test]
    fn a_long_list_is_searched_by_window_and_whole_when_the_window_is_busy() {
        let l = limits(300);
        let mut held: Vec<Admitted> = (0..300).map(|i| admit(&l, 1, i).unwrap()).collect();
        // The first 250 (and so every window from the list's start) are
        // busy: the idlest of the other 50 goes.
        for a in &held[..250] {
            a.set_busy(true);
        }
        let newcomer = admit(&l, 1, 1000).unwrap();
        assert_eq!(evicted(&held), [250]);
        consistent(&l);
        // Closing some in the middle moves others into their places.
        held.drain(100..120);
        held.push(newcomer);
        consistent(&l);
        for a in &held {
            a.set_busy(false);
        }
        for n in 0..100 {
            held.push(admit(&l, 2, 2000 + n).unwrap());
        }
        consistent(&l);
        assert_eq!(l.connected(), 300);
        drop(held);
        consistent(&l);
        assert_eq!(l.connected(), 0);
    }

    #[test]
    fn a_limit_of_zero_refuses_everyone() {
        let l = limits(0);
        assert!(admit(&l, 0, 0).is_none());
        assert_eq!(l.connections_refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_lowered_limit_evicts_down_to_it_as_clients_come() {
        let l = limits(4);
        let held: Vec<Admitted> = (0..4).map(|i| admit(&l, 1, i).unwrap()).collect();
        l.set(LimitsConfig {
            max_connections: 2,
            ..LimitsConfig::default()
        });
        let _new = admit(&l, 1, 10).unwrap();
        assert_eq!(evicted(&held), vec![0, 1, 2]);
        assert_eq!(l.connected(), 2);
    }
}
