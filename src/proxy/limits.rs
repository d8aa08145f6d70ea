//! Resource limits on clients, each a flag and a config key, each counted
//! when it bites (`status` shows them), all reloadable with SIGHUP.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::proxy::clients::Clients;
use crate::proxy::logs::{human, Throttle};

/// Refused connections are logged at most once per this window.
pub const REFUSED_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The limits as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    /// Stream clients connected at once; beyond it new ones are closed at
    /// once while existing ones keep being served.
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_in_flight: 64,
            idle_timeout: Duration::from_secs(120),
            record_timeout: Duration::from_secs(10),
            max_udp_reply: 9000,
        }
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
    pub connections_refused: AtomicU64,
    pub in_flight_reached: AtomicU64,
    pub idle_closed: AtomicU64,
    pub record_timeouts: AtomicU64,
    pub udp_too_large: AtomicU64,
    /// Says refused connections: the first at once, then one line per
    /// window with how many.
    refused_log: Arc<Throttle>,
}

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
        let l = Limits {
            max_connections,
            max_in_flight: AtomicUsize::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            record_timeout_ms: AtomicU64::new(0),
            max_udp_reply: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
            in_flight_reached: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            record_timeouts: AtomicU64::new(0),
            udp_too_large: AtomicU64::new(0),
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
    }

    pub fn get(&self) -> LimitsConfig {
        LimitsConfig {
            max_connections: self.max_connections.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight(),
            idle_timeout: self.idle_timeout(),
            record_timeout: self.record_timeout(),
            max_udp_reply: self.max_udp_reply(),
        }
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

    /// Whether a newly accepted client must be turned away (and counts it).
    pub fn at_connection_limit(&self, clients: &Clients) -> bool {
        let connected = clients.connected.load(Ordering::Relaxed).max(0) as usize;
        if connected >= self.max_connections.load(Ordering::Relaxed) {
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
            self.refused_log.event();
            true
        } else {
            false
        }
    }
}
