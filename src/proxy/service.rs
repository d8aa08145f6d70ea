//! The request path shared by every listener: decode a call, answer what
//! rpcbind would answer without asking it (errors, refusals), and send the
//! rest to the right upstream.
//!
//! Every answer built here is the one Debian's rpcbind gives, byte for byte
//! after the XID; `tests/differential.rs` holds the proof. A call is decoded
//! once into a `Request` and passed down by reference; lookups go through
//! the cache (`cached`) before the upstream (`fetch`). Keeping the cache
//! coherent with rpcbind lives in `coherence`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::protocol::rpc::{self, AcceptStat, AuthStat, HeaderError, OpaqueAuth};
use crate::protocol::rpcb::{self, Args, Procedure, Rpcb};
use crate::proxy::attribution::Attributor;
use crate::proxy::cache::{Cache, CacheConfig, Invalidation, Key, Lookup};
use crate::proxy::clients::Clients;
use crate::proxy::coherence::Coherence;
use crate::proxy::limits::{Limits, LimitsConfig};
use crate::proxy::metrics::{ProcCounters, Recent};
use crate::proxy::policy::{
    self, callit_allowed, indirect_verdict, Class, LocalAnswer, Peer, Route,
};
use crate::proxy::request::{self, Rejected, Request};
use crate::proxy::upstream::{self, Target, Upstream, UpstreamError};

/// What a listener does with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send this reply.
    Reply(Bytes),
    /// Send these shared bytes (a cached reply) with this XID in place of
    /// theirs; the writer patches it while copying, so a hit allocates
    /// nothing.
    Shared(Bytes, u32),
    /// Send nothing; keep the connection.
    NoReply,
    /// Send nothing; close a stream connection (UDP: drop the datagram).
    Close,
}

/// Where rpcbind listens, and how the proxy reaches it.
#[derive(Debug, Clone)]
pub struct RpcbindAddr {
    pub socket: PathBuf,
    pub port: u16,
    /// SO_MARK of the proxy's TCP/UDP connections to rpcbind (transparent
    /// mode), so the redirect of port 111 lets them through.
    pub mark: Option<u32>,
    /// The path clients know rpcbind's unix socket by, when the proxy
    /// listens there in rpcbind's place (transparent mode) and rpcbind has
    /// moved to `socket`. rpcbind names `socket` in its own `local`
    /// registrations; every answer says this path instead, as rpcbind would
    /// on its usual path.
    pub public_socket: Option<PathBuf>,
}

/// The settings a reload may change, given in full at construction.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a call may wait for rpcbind (every class).
    pub upstream_timeout: Duration,
    pub cache: CacheConfig,
    /// How often the refresh loop compares rpcbind's registrations.
    pub refresh: Duration,
    pub limits: LimitsConfig,
    /// Whether clients are named (unit, command, user).
    pub attribution: bool,
}

/// Counters of the request path.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub local_errors: AtomicU64,
    pub refused: AtomicU64,
    pub forwarded: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// NULL calls answered without rpcbind (it was known to answer).
    pub pings_answered: AtomicU64,
}

/// The proxy's shared state: one `Upstream` per class, the cache, the
/// client limits and counters, and the coherence of the cache with rpcbind.
/// Its fields are read by the other proxy/ modules; everything outside goes
/// through its methods.
#[derive(Debug)]
pub struct Proxy {
    /// Indexed by `Class::index`.
    pub(super) upstreams: [Upstream; 5],
    pub(super) cache: Cache,
    pub(super) rpcbind: RpcbindAddr,
    /// At most one connection at a time opened under a caller's identity.
    pub(super) as_user: Semaphore,
    pub(super) stats: Stats,
    pub(super) procs: ProcCounters,
    pub(super) clients: Clients,
    /// Names the process, user and unit behind each client.
    pub(super) attribution: Attributor,
    pub(super) limits: Limits,
    /// Server mode's per-host rate limit and the hosts it held back.
    pub(super) shield: crate::proxy::shield::Shield,
    /// Server mode's connections for link-local clients.
    link_local: crate::proxy::link_local::LinkLocalUpstreams,
    /// The client side's connections to other hosts' rpcbind.
    pub(super) outbound: crate::proxy::outbound::Outbound,
    /// Lookups of the last few minutes, for a hit ratio that is not the
    /// whole life's.
    pub(super) recent: Recent,
    pub(super) started: std::time::Instant,
    /// Every task serving a client: shutdown waits for them (bounded).
    pub(super) tasks: TaskTracker,
    /// The refresh loop's period, heartbeat and registration list.
    pub(super) coherence: Coherence,
    /// rpcbind's own counters, as last read.
    pub(super) readings: crate::proxy::rpcbind_stats::Readings,
    /// The source address of the daemon's own watchdog probe: its calls
    /// are answered like anyone's but counted nowhere (not a client).
    own_probe: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Proxy {
    pub fn new(rpcbind: RpcbindAddr, settings: Settings) -> Arc<Proxy> {
        let (port, mark) = (rpcbind.port, rpcbind.mark);
        let upstreams = Class::ALL.map(|class| {
            let v4 = (std::net::Ipv4Addr::LOCALHOST, port).into();
            let v6 = (std::net::Ipv6Addr::LOCALHOST, port).into();
            let target = match class {
                Class::Unix => Target::Unix(rpcbind.socket.clone()),
                Class::Tcp4 => Target::Tcp(v4),
                Class::Udp4 => Target::Udp(v4),
                Class::Tcp6 => Target::Tcp(v6),
                Class::Udp6 => Target::Udp(v6),
            };
            Upstream::new(target, settings.upstream_timeout).with_mark(rpcbind.mark)
        });
        Arc::new(Proxy {
            upstreams,
            cache: Cache::new(settings.cache),
            rpcbind,
            as_user: Semaphore::new(1),
            stats: Stats::default(),
            procs: ProcCounters::default(),
            clients: Clients::default(),
            attribution: Attributor::new(settings.attribution),
            limits: Limits::new(settings.limits),
            shield: crate::proxy::shield::Shield::default(),
            link_local: crate::proxy::link_local::LinkLocalUpstreams::new(port, mark),
            outbound: crate::proxy::outbound::Outbound::new(settings.upstream_timeout),
            recent: Recent::new(tokio::time::Instant::now()),
            started: std::time::Instant::now(),
            tasks: TaskTracker::new(),
            coherence: Coherence::new(settings.refresh),
            readings: Default::default(),
            own_probe: std::sync::OnceLock::new(),
        })
    }

    /// Turns the client side on (see `outbound`): redirected clients
    /// arrive on loopback `port`, the connections to servers carry `mark`.
    pub fn enable_outbound(&self, port: u16, mark: u32) {
        self.outbound.enable(port, mark);
    }

    /// Whether a call from `peer` may be served now (server mode's rate
    /// limit per other host; local clients always).
    #[inline]
    pub fn admits_call(&self, peer: &Peer) -> bool {
        self.shield.admit(peer, self.limits.remote_rate())
    }

    /// Names the socket the daemon's watchdog probe sends from (bound for
    /// the daemon's life): its calls are served and never counted.
    pub fn set_own_probe(&self, from: std::net::SocketAddr) {
        let _ = self.own_probe.set(from);
    }

    /// Whether a datagram from `from` is the daemon's own watchdog probe.
    #[inline]
    pub fn is_own_probe(&self, from: std::net::SocketAddr) -> bool {
        self.own_probe.get() == Some(&from)
    }

    /// rpcbind's TCP/UDP port.
    pub fn rpcbind_port(&self) -> u16 {
        self.rpcbind.port
    }

    /// Lookups answered without asking rpcbind (hits, negative hits,
    /// coalesced) and misses, since start.
    pub fn lookup_counts(&self) -> (u64, u64) {
        let c = &self.cache.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            load(&c.hits) + load(&c.negative_hits) + load(&c.coalesced),
            load(&c.misses),
        )
    }

    pub fn upstream(&self, class: Class) -> &Upstream {
        &self.upstreams[class.index()]
    }

    /// How long a call may wait for rpcbind (the same for every class).
    pub fn timeout(&self) -> Duration {
        self.upstream(Class::Unix).timeout()
    }

    /// Applies reloadable settings (SIGHUP), keeping the cache's entries.
    pub fn reconfigure(&self, settings: Settings) {
        self.limits.set(settings.limits);
        for up in &self.upstreams {
            up.set_timeout(settings.upstream_timeout);
        }
        self.link_local.set_timeout(settings.upstream_timeout);
        self.outbound.set_timeout(settings.upstream_timeout);
        self.cache.reconfigure(settings.cache);
        self.coherence.set_period(settings.refresh);
        self.attribution.set_enabled(settings.attribution);
    }

    /// Hands attribution the eBPF recorder the daemon loaded, or why not.
    pub fn set_recorder(&self, recorder: Result<crate::host::bpf::Recorder, String>) {
        self.attribution.set_recorder(recorder);
    }

    /// How clients are named now.
    pub fn attribution_mode(&self) -> crate::proxy::attribution::Mode {
        self.attribution.mode()
    }

    /// Tells attribution whether transparent mode redirects port 111 here
    /// (a redirected client's original destination is then looked up).
    pub fn set_redirected(&self, redirected: bool) {
        self.attribution.set_redirected(redirected);
    }

    /// Drops the cached answers of `program`, or all of them; returns how
    /// many entries went (the operator's `flush`).
    pub fn flush(&self, program: Option<u32>) -> usize {
        match program {
            Some(p) => self
                .cache
                .invalidate_programs(&BTreeSet::from([p]), Invalidation::Flush),
            None => self.cache.flush(Invalidation::Flush),
        }
    }

    /// At shutdown: lets the calls being served finish, for at most
    /// `within`. Err gives how many were still running then.
    pub async fn drain(&self, within: Duration) -> Result<(), usize> {
        self.tasks.close();
        match tokio::time::timeout(within, self.tasks.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.tasks.len()),
        }
    }

    /// The hot path: answers a lookup from the cache without allocating or
    /// waiting, when the cache holds a fresh answer. Returns None (having
    /// counted nothing) for everything else, which then goes through
    /// `handle`.
    ///
    /// It makes the checks `Request::decode` makes, step by step, without
    /// building a `Request`: on this path, taken by every cached hit,
    /// building and moving a whole `Request` cost about 100 instructions a
    /// hit (6% of a hit's whole cost, callgrind). Anything that fails a
    /// step goes on to `handle`, which decodes it again and answers as
    /// rpcbind would.
    pub fn answer_now(&self, record: &[u8], peer: Peer) -> Option<Outcome> {
        let call = rpc::parse_call(record).ok()?;
        let (procedure, verf) = request::check_header(&call).ok()?;
        let Route::Upstream(class) = policy::route(procedure, &peer) else {
            return None;
        };
        let args = rpcb::decode_args(procedure, call.vers, call.args).ok()?;
        let key = request::cache_key(call.vers, procedure, verf, &args, class, &peer)?;
        let reply = self.cache.hit(key)?;
        if peer.is_datagram() && !self.limits.udp_reply_fits(&peer, record.len(), reply.len()) {
            return None;
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.procs.count(call.vers, call.procedure);
        Some(Outcome::Shared(reply, call.xid))
    }

    /// Answers one call record from `peer`.
    pub async fn handle(&self, record: BytesMut, peer: Peer) -> Outcome {
        // The watchdog's own probe (an unknown program) is answered like
        // any call and counted nowhere.
        let own_probe = matches!(peer, Peer::Udp(from) if self.is_own_probe(from));
        if !own_probe {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        // Server mode: another host's calls past the cache, at most
        // remote-in-flight at once (dropped or closed beyond, as over the
        // rate).
        let limit = self.limits.remote_in_flight();
        let Ok(_in_flight) = self.shield.enter(&peer, limit, self.limits.remote_rate()) else {
            return if peer.is_datagram() {
                Outcome::NoReply
            } else {
                Outcome::Close
            };
        };
        let request = match Request::decode(&record, peer) {
            Ok(request) => request,
            Err(Rejected::Checks(reply)) if own_probe => return Outcome::Reply(reply),
            Err(rejected) => return self.rejected(rejected, peer),
        };
        let call = &request.call;
        self.procs.count(call.vers, call.procedure);
        // A ping need not reach rpcbind while rpcbind is known to answer
        // (its last refresh round was answered and its connection is open);
        // otherwise it goes on, so that it still tells the truth.
        if request.procedure == Procedure::Null && self.rpcbind_up() {
            self.stats.pings_answered.fetch_add(1, Ordering::Relaxed);
            return Outcome::Reply(request.reply(AcceptStat::Success, &[]));
        }
        let outcome = match request.route() {
            Route::Local(answer) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.local_answer(answer, &request).await
            }
            Route::Upstream(class) => match request.cache_key(class) {
                Some(key) => self.cached(key, class, &request).await,
                None => {
                    let result = self.fetch(class, &request).await;
                    self.reply_or_error(result, &request)
                }
            },
            Route::AsUser { uid, gid } => {
                let result = self.forward_as(uid, gid, request.record).await;
                self.reply_or_error(result, &request)
            }
        };
        if matches!(request.procedure, Procedure::Set | Procedure::Unset) {
            self.registration_passed(&request.args, &outcome);
        }
        match outcome {
            Outcome::Reply(ref r) | Outcome::Shared(ref r, _)
                if peer.is_datagram()
                    && !self.limits.udp_reply_fits(&peer, record.len(), r.len()) =>
            {
                if r.len() <= self.limits.max_udp_reply() {
                    self.limits
                        .amplification_refused
                        .fetch_add(1, Ordering::Relaxed);
                    self.shield
                        .note_amplification(&peer, self.limits.remote_rate());
                } else {
                    self.limits.udp_too_large.fetch_add(1, Ordering::Relaxed);
                }
                // rpcbind cannot send this as a datagram: PMAP v2 sends
                // nothing, v3/v4 answer SYSTEM_ERR. A reply to another
                // host beyond the amplification bound is held back the
                // same way.
                if call.vers == 2 {
                    Outcome::NoReply
                } else {
                    Outcome::Reply(request.reply(AcceptStat::SystemErr, &[]))
                }
            }
            other => other,
        }
    }

    /// What rpcbind does with a call that fails its checks.
    fn rejected(&self, rejected: Rejected<'_>, peer: Peer) -> Outcome {
        match rejected {
            Rejected::Header(e) => self.header_error(e, peer),
            Rejected::Checks(reply) => self.local_error(reply),
            Rejected::Args {
                call,
                procedure,
                verf,
            } => {
                self.procs.count(call.vers, call.procedure);
                // rpcbind answers undecodable remote calls only for INDIRECT
                // over UDP; everything else gets GARBAGE_ARGS.
                match policy::route(procedure, &peer) {
                    Route::Local(LocalAnswer::NoReply) => Outcome::NoReply,
                    Route::Local(LocalAnswer::RemoteCallUdp)
                        if procedure != Procedure::Indirect =>
                    {
                        Outcome::NoReply
                    }
                    _ => self.local_error(rpc::accepted_reply(
                        call.xid,
                        verf,
                        AcceptStat::GarbageArgs,
                        &[],
                    )),
                }
            }
        }
    }

    fn local_error(&self, reply: Bytes) -> Outcome {
        self.stats.local_errors.fetch_add(1, Ordering::Relaxed);
        Outcome::Reply(reply)
    }

    async fn local_answer(&self, answer: LocalAnswer, request: &Request<'_>) -> Outcome {
        let reply = |stat, body: &[u8]| Outcome::Reply(request.reply(stat, body));
        match (answer, request.args) {
            (LocalAnswer::NoReply, _) => Outcome::NoReply,
            (LocalAnswer::Declined, _) => {
                Outcome::Reply(rpc::auth_error_reply(request.call.xid, AuthStat::TooWeak))
            }
            (LocalAnswer::RemoteCallUdp, Args::RemoteCall(rc))
                if !callit_allowed(rc.prog, rc.procedure) =>
            {
                Outcome::Reply(rpc::auth_error_reply(request.call.xid, AuthStat::TooWeak))
            }
            (LocalAnswer::RemoteCallUdp, Args::RemoteCall(rc))
                if request.procedure == Procedure::Indirect =>
            {
                let netid: &[u8] = if Class::of(&request.peer) == Class::Udp6 {
                    b"udp6"
                } else {
                    b"udp"
                };
                match self.registrations().await {
                    Ok(entries) => reply(indirect_verdict(&entries, rc.prog, rc.vers, netid), &[]),
                    Err(e) => self.upstream_failed(e, request.call.xid, request.verf),
                }
            }
            (LocalAnswer::RemoteCallUdp, _) => Outcome::NoReply,
        }
    }

    fn header_error(&self, e: HeaderError, peer: Peer) -> Outcome {
        // libtirpc's xdr_callmsg fails on every one of these; rpcbind then
        // drops the datagram, or closes the stream connection.
        debug!(?peer, error = %e, "undecodable call header");
        self.stats.local_errors.fetch_add(1, Ordering::Relaxed);
        Outcome::Close
    }

    /// Answers a cacheable call from the cache, or fetches it once however
    /// many clients ask at the same time.
    async fn cached(&self, key: Key, class: Class, request: &Request<'_>) -> Outcome {
        let xid = request.call.xid;
        match self.cache.lookup(key) {
            Lookup::Hit(reply) => Outcome::Shared(reply, xid),
            Lookup::Wait { mut rx, stale } => {
                let result = match tokio::time::timeout(self.timeout(), rx.recv()).await {
                    Ok(Ok(result)) => result,
                    // The fetching client went away (or took too long): ask
                    // rpcbind ourselves.
                    _ => self.fetch(class, request).await,
                };
                self.answer_or_stale(result, stale, xid)
            }
            Lookup::Miss { ticket, stale } => {
                // rpcbind down (restarting): an answer within serve-stale
                // now rather than one after waiting for rpcbind to return.
                if let Some(old) = &stale {
                    if self.upstream(class).ensure_connected().await.is_err() {
                        self.cache
                            .complete(ticket, &Err(UpstreamError::Unavailable));
                        self.cache.served_stale();
                        return Outcome::Shared(old.clone(), xid);
                    }
                }
                let result = self.fetch(class, request).await;
                self.cache.complete(ticket, &result);
                self.answer_or_stale(result, stale, xid)
            }
        }
    }

    /// The fetched answer; or, when rpcbind could not be reached, the
    /// expired entry still within --serve-stale (whoever fetched it: the
    /// client that went to rpcbind and those that waited for it alike).
    fn answer_or_stale(
        &self,
        result: Result<Bytes, UpstreamError>,
        stale: Option<Bytes>,
        xid: u32,
    ) -> Outcome {
        match (result, stale) {
            (Ok(reply), _) => Outcome::Shared(reply, xid),
            (Err(UpstreamError::Unavailable | UpstreamError::Timeout), Some(stale)) => {
                self.cache.served_stale();
                Outcome::Shared(stale, xid)
            }
            (Err(e), _) => self.upstream_failed(e, xid, OpaqueAuth::NONE),
        }
    }

    /// Asks rpcbind over the connection of `class`.
    async fn fetch(&self, class: Class, request: &Request<'_>) -> Result<Bytes, UpstreamError> {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        // A link-local client of another host: over a connection from this
        // host's link-local address on its interface (`link_local`).
        let link = self
            .link_local
            .for_peer(class, &request.peer, self.timeout());
        let up = link.as_deref().unwrap_or_else(|| self.upstream(class));
        let rewritten = self.hint_for(up, request).await;
        let record = rewritten.as_deref().unwrap_or(request.record);
        let procedure = request.procedure;
        let reply = up.call(record, procedure.is_idempotent()).await?;
        Ok(self.public_addresses(reply, request.call.vers, procedure))
    }

    /// rpcbind's answer with its moved unix socket named by the public path
    /// (transparent mode; see `RpcbindAddr::public_socket`).
    fn public_addresses(&self, reply: Bytes, vers: u32, procedure: Procedure) -> Bytes {
        let Some(public) = &self.rpcbind.public_socket else {
            return reply;
        };
        use std::os::unix::ffi::OsStrExt;
        let from = self.rpcbind.socket.as_os_str().as_bytes();
        let to = public.as_os_str().as_bytes();
        match rpcb::rewrite_address(&reply, vers, procedure, from, to) {
            Some(renamed) => renamed.freeze(),
            None => reply,
        }
    }

    async fn forward_as(&self, uid: u32, gid: u32, record: &[u8]) -> Result<Bytes, UpstreamError> {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let _permit = self
            .as_user
            .acquire()
            .await
            .map_err(|_| UpstreamError::Unavailable)?;
        upstream::call_as_user(&self.rpcbind.socket, uid, gid, record, self.timeout()).await
    }

    fn reply_or_error(
        &self,
        result: Result<Bytes, UpstreamError>,
        request: &Request<'_>,
    ) -> Outcome {
        match result {
            Ok(reply) => Outcome::Reply(reply),
            Err(e) => self.upstream_failed(e, request.call.xid, request.verf),
        }
    }

    fn upstream_failed(&self, e: UpstreamError, xid: u32, verf: OpaqueAuth<'_>) -> Outcome {
        debug!(error = %e, "call to rpcbind failed");
        self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
        Outcome::Reply(rpc::accepted_reply(xid, verf, AcceptStat::SystemErr, &[]))
    }

    /// A SET or UNSET rpcbind accepted changes what the cache knows of that
    /// program: drop its entries now rather than at the next refresh.
    fn registration_passed(&self, args: &Args<'_>, outcome: &Outcome) {
        let prog = match args {
            Args::Mapping(m) => m.prog,
            Args::Rpcb(r) => r.prog,
            _ => return,
        };
        let Outcome::Reply(reply) = outcome else {
            return;
        };
        let accepted = rpc::parse_reply(reply).is_ok_and(|r| {
            r.accept == Some(AcceptStat::Success)
                && r.body.get(..4).is_some_and(|b| b != [0, 0, 0, 0])
        });
        if accepted {
            self.cache
                .invalidate_programs(&BTreeSet::from([prog]), Invalidation::Registration);
        }
    }

    /// rpcbind merges a registered address with the caller's (or the
    /// `r_addr` hint's) to pick the address it returns. When the client's
    /// address is not the one rpcbind sees on the proxy's connection, give
    /// rpcbind the client's address as the hint so the answer is the one the
    /// client would get directly. Returns the rewritten record, if any.
    async fn hint_for(&self, up: &Upstream, request: &Request<'_>) -> Option<BytesMut> {
        let Args::Rpcb(rpcb) = request.args else {
            return None;
        };
        if !matches!(
            request.procedure,
            Procedure::GetAddr | Procedure::GetVersAddr | Procedure::GetAddrList
        ) || !rpcb.addr.is_empty()
        {
            return None;
        }
        let (Peer::Tcp(client) | Peer::Udp(client)) = request.peer else {
            return None;
        };
        if up.ensure_connected().await.is_err() || up.local_ip() == Some(client.ip().to_canonical())
        {
            return None;
        }
        let uaddr = rpcb::universal_address(client.ip().to_canonical(), client.port());
        let header = request.call.header;
        let mut out = BytesMut::with_capacity(header.len() + 64);
        out.extend_from_slice(header);
        Rpcb {
            addr: uaddr.as_bytes(),
            ..rpcb
        }
        .encode(&mut out);
        Some(out)
    }
}
