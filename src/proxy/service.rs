//! The request path shared by every listener: decode a call, answer what
//! rpcbind would answer without asking it (errors, refusals), and send the
//! rest to the right upstream.
//!
//! Every answer built here is the one Debian's rpcbind gives, byte for byte
//! after the XID; `tests/differential.rs` holds the proof. The cache (a later
//! stage) slots in at `forward`, in front of the upstream.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::protocol::rpc::{self, AcceptStat, AuthStat, Call, HeaderError, OpaqueAuth};
use crate::protocol::rpcb::{self, Args, Procedure, Rpcb, RpcbEntry};
use crate::proxy::attribution::Attributor;
use crate::proxy::cache::{changed_programs, Cache, CacheConfig, Invalidation, Key, Lookup};
use crate::proxy::clients::Clients;
use crate::proxy::limits::{Limits, LimitsConfig};
use crate::proxy::metrics::{ProcCounters, Recent};
use crate::proxy::policy::{
    callit_allowed, indirect_verdict, route, Class, LocalAnswer, Peer, Route,
};
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

/// Counters of the request path.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub local_errors: AtomicU64,
    pub refused: AtomicU64,
    pub forwarded: AtomicU64,
    pub upstream_failures: AtomicU64,
}

/// The proxy's shared state: one `Upstream` per class, and the cache.
#[derive(Debug)]
pub struct Proxy {
    /// Indexed by `Class::index`.
    upstreams: [Upstream; 5],
    pub cache: Cache,
    rpcbind: RpcbindAddr,
    /// At most one connection at a time opened under a caller's identity.
    as_user: Semaphore,
    pub stats: Stats,
    pub procs: ProcCounters,
    pub clients: Clients,
    /// Names the process, user and unit behind each client.
    pub attribution: Attributor,
    pub limits: Limits,
    /// Lookups of the last few minutes, for a hit ratio that is not the
    /// whole life's.
    pub recent: Recent,
    pub started: std::time::Instant,
    /// Every task serving a client: shutdown waits for them (bounded).
    pub tasks: TaskTracker,
    /// Refresh period in milliseconds (reloadable).
    refresh_ms: AtomicU64,
    /// When the refresh loop last went round, in ms since `started`.
    heartbeat_ms: AtomicU64,
    /// rpcbind's registration list as the refresh loop last read it (the
    /// raw DUMP reply, to compare cheaply, and its entries).
    known: std::sync::Mutex<Option<(Bytes, Arc<Vec<RpcbEntry>>)>>,
}

impl Proxy {
    pub fn new(
        rpcbind: RpcbindAddr,
        timeout: Duration,
        cache: CacheConfig,
        refresh: Duration,
    ) -> Arc<Proxy> {
        let port = rpcbind.port;
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
            Upstream::new(target, timeout).with_mark(rpcbind.mark)
        });
        Arc::new(Proxy {
            upstreams,
            cache: Cache::new(cache),
            rpcbind,
            as_user: Semaphore::new(1),
            stats: Stats::default(),
            procs: ProcCounters::default(),
            clients: Clients::default(),
            attribution: Attributor::new(true),
            limits: Limits::new(LimitsConfig::default()),
            recent: Recent::new(tokio::time::Instant::now()),
            started: std::time::Instant::now(),
            tasks: TaskTracker::new(),
            refresh_ms: AtomicU64::new(refresh.as_millis() as u64),
            heartbeat_ms: AtomicU64::new(0),
            known: std::sync::Mutex::new(None),
        })
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
    pub fn reconfigure(
        &self,
        timeout: Duration,
        cache: CacheConfig,
        refresh: Duration,
        limits: LimitsConfig,
    ) {
        self.limits.set(limits);
        for up in &self.upstreams {
            up.set_timeout(timeout);
        }
        self.cache.reconfigure(cache);
        self.refresh_ms
            .store(refresh.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the refresh loop went round recently: the daemon's own loops
    /// are alive (rpcbind being down does not make the daemon unhealthy).
    pub fn healthy(&self) -> bool {
        let refresh = Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(Duration::from_millis(
            self.heartbeat_ms.load(Ordering::Relaxed),
        ));
        since < refresh * 3 + self.timeout() + Duration::from_secs(5)
    }

    /// The hot path: answers a lookup from the cache without allocating or
    /// waiting, when the cache holds a fresh answer. Returns None (having
    /// counted nothing) for everything else, which then goes through
    /// `handle`.
    pub fn answer_now(&self, record: &[u8], peer: Peer) -> Option<Outcome> {
        let call = rpc::parse_call(record).ok()?;
        let (procedure, verf) = check_header(&call).ok()?;
        let Route::Upstream(class) = route(procedure, &peer) else {
            return None;
        };
        let args = rpcb::decode_args(procedure, call.vers, call.args).ok()?;
        let key = cache_key(&call, procedure, verf, &args, class, peer)?;
        let reply = self.cache.hit(key)?;
        if peer.is_datagram() && reply.len() > self.limits.max_udp_reply() {
            return None;
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.procs.count(call.vers, call.procedure);
        Some(Outcome::Shared(reply, call.xid))
    }

    /// Answers one call record from `peer`.
    pub async fn handle(&self, record: BytesMut, peer: Peer) -> Outcome {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let call = match rpc::parse_call(&record) {
            Ok(call) => call,
            Err(e) => return self.header_error(e, peer),
        };
        let (procedure, verf) = match check_header(&call) {
            Ok(ok) => ok,
            Err(reply) => return self.local_error(reply),
        };
        self.procs.count(call.vers, call.procedure);
        let route = route(procedure, &peer);
        let args = match rpcb::decode_args(procedure, call.vers, call.args) {
            Ok(args) => args,
            // rpcbind answers undecodable remote calls only for INDIRECT over
            // UDP; everything else gets GARBAGE_ARGS.
            Err(_) => match route {
                Route::Local(LocalAnswer::NoReply) => return Outcome::NoReply,
                Route::Local(LocalAnswer::RemoteCallUdp) if procedure != Procedure::Indirect => {
                    return Outcome::NoReply
                }
                _ => {
                    return self.local_error(rpc::accepted_reply(
                        call.xid,
                        verf,
                        AcceptStat::GarbageArgs,
                        &[],
                    ))
                }
            },
        };
        let outcome = match route {
            Route::Local(answer) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.local_answer(answer, procedure, &args, &call, verf, peer)
                    .await
            }
            Route::Upstream(class) => match cache_key(&call, procedure, verf, &args, class, peer) {
                Some(key) => {
                    self.cached(key, class, &record, procedure, &args, &call, peer)
                        .await
                }
                None => {
                    let result = self
                        .fetch(class, &record, procedure, &args, &call, peer)
                        .await;
                    self.reply_or_error(result, call.xid, verf)
                }
            },
            Route::AsUser { uid, gid } => {
                let result = self.forward_as(uid, gid, &record).await;
                self.reply_or_error(result, call.xid, verf)
            }
        };
        if matches!(procedure, Procedure::Set | Procedure::Unset) {
            self.registration_passed(&args, &outcome);
        }
        match outcome {
            Outcome::Reply(ref r) | Outcome::Shared(ref r, _)
                if peer.is_datagram() && r.len() > self.limits.max_udp_reply() =>
            {
                // rpcbind cannot send this as a datagram: PMAP v2 sends
                // nothing, v3/v4 answer SYSTEM_ERR.
                if call.vers == 2 {
                    Outcome::NoReply
                } else {
                    Outcome::Reply(rpc::accepted_reply(
                        call.xid,
                        verf,
                        AcceptStat::SystemErr,
                        &[],
                    ))
                }
            }
            other => other,
        }
    }

    fn local_error(&self, reply: Bytes) -> Outcome {
        self.stats.local_errors.fetch_add(1, Ordering::Relaxed);
        Outcome::Reply(reply)
    }

    async fn local_answer(
        &self,
        answer: LocalAnswer,
        procedure: Procedure,
        args: &Args<'_>,
        call: &Call<'_>,
        verf: OpaqueAuth<'_>,
        peer: Peer,
    ) -> Outcome {
        let reply =
            |stat, body: &[u8]| Outcome::Reply(rpc::accepted_reply(call.xid, verf, stat, body));
        match (answer, args) {
            (LocalAnswer::NoReply, _) => Outcome::NoReply,
            (LocalAnswer::False, _) => reply(AcceptStat::Success, &[0, 0, 0, 0]),
            (LocalAnswer::RemoteCallUdp, Args::RemoteCall(rc))
                if !callit_allowed(rc.prog, rc.procedure) =>
            {
                Outcome::Reply(rpc::auth_error_reply(call.xid, AuthStat::TooWeak))
            }
            (LocalAnswer::RemoteCallUdp, Args::RemoteCall(rc))
                if procedure == Procedure::Indirect =>
            {
                let netid: &[u8] = if Class::of(&peer) == Class::Udp6 {
                    b"udp6"
                } else {
                    b"udp"
                };
                match self.registrations().await {
                    Ok(entries) => reply(indirect_verdict(&entries, rc.prog, rc.vers, netid), &[]),
                    Err(e) => self.upstream_failed(e, call.xid, verf),
                }
            }
            (LocalAnswer::RemoteCallUdp, _) => Outcome::NoReply,
        }
    }

    /// rpcbind's registrations: the list the refresh loop keeps (at most one
    /// refresh interval old, like every cached answer), or a DUMP before it
    /// has one. A flood of INDIRECT datagrams thus never turns into a flood
    /// of DUMPs at rpcbind.
    pub async fn registrations(&self) -> Result<Arc<Vec<RpcbEntry>>, UpstreamError> {
        let known = self.known.lock().unwrap().as_ref().map(|(_, e)| e.clone());
        match known {
            Some(entries) => Ok(entries),
            None => Ok(Arc::new(decode_dump(&self.dump().await?)?)),
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
    #[allow(clippy::too_many_arguments)]
    async fn cached(
        &self,
        key: Key,
        class: Class,
        record: &[u8],
        procedure: Procedure,
        args: &Args<'_>,
        call: &Call<'_>,
        peer: Peer,
    ) -> Outcome {
        match self.cache.lookup(key) {
            Lookup::Hit(reply) => Outcome::Shared(reply, call.xid),
            Lookup::Wait { mut rx, stale } => {
                let result = match tokio::time::timeout(self.timeout(), rx.recv()).await {
                    Ok(Ok(result)) => result,
                    // The fetching client went away (or took too long): ask
                    // rpcbind ourselves.
                    _ => self.fetch(class, record, procedure, args, call, peer).await,
                };
                self.answer_or_stale(result, stale, call.xid)
            }
            Lookup::Miss { ticket, stale } => {
                let result = self.fetch(class, record, procedure, args, call, peer).await;
                self.cache.complete(ticket, &result);
                self.answer_or_stale(result, stale, call.xid)
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
    async fn fetch(
        &self,
        class: Class,
        record: &[u8],
        procedure: Procedure,
        args: &Args<'_>,
        call: &Call<'_>,
        peer: Peer,
    ) -> Result<Bytes, UpstreamError> {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let rewritten = self.hint_for(class, procedure, args, call, peer).await;
        let record = rewritten.as_deref().unwrap_or(record);
        let reply = self
            .upstream(class)
            .call(record, procedure.is_idempotent())
            .await?;
        Ok(self.public_addresses(reply, call.vers, procedure))
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
        xid: u32,
        verf: OpaqueAuth<'_>,
    ) -> Outcome {
        match result {
            Ok(reply) => Outcome::Reply(reply),
            Err(e) => self.upstream_failed(e, xid, verf),
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

    /// Keeps the cache coherent with registrations made directly at rpcbind:
    /// every `every`, one DUMP over the unix connection; when the list
    /// changed, the entries of exactly the programs that changed are dropped.
    /// While rpcbind is unreachable the last list is kept, so a restart is
    /// noticed (as a change of everything it forgot) on the first DUMP after.
    /// `first` is told when the first DUMP was tried, so start-up can wait for
    /// a baseline before clients come. The period is read every round, so a
    /// reload takes effect at the next one.
    pub async fn refresh_loop(
        self: Arc<Self>,
        first: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let mut first = Some(first);
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                () = shutdown.cancelled() => return,
            }
            let period = Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed));
            next = (next + period).max(tokio::time::Instant::now());
            self.heartbeat_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let (answered, misses) = self.lookup_counts();
            self.recent
                .tick(tokio::time::Instant::now(), answered, misses);
            if let Ok(reply) = self.dump().await {
                self.compare_registrations(reply);
            }
            // Told only once the first list is in place, so that nothing a
            // client caches after start-up is dropped as unverified.
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Drops the cache entries of the programs whose registrations differ
    /// between the known list and this DUMP `reply`, and keeps the new list.
    fn compare_registrations(&self, reply: Bytes) {
        let mut known = self.known.lock().unwrap();
        if known
            .as_ref()
            .is_some_and(|(raw, _)| raw[4..] == reply[4..])
        {
            return;
        }
        let Ok(entries) = decode_dump(&reply) else {
            return;
        };
        match known.as_ref() {
            Some((_, old)) => {
                let changed = changed_programs(old, &entries);
                let n = self
                    .cache
                    .invalidate_programs(&changed, Invalidation::Refresh);
                debug!(programs = ?changed, entries = n, "registrations changed");
            }
            // Whatever was cached before there was a list to compare with
            // cannot be checked: start clean.
            None => {
                self.cache.flush(Invalidation::Refresh);
            }
        }
        *known = Some((reply, Arc::new(entries)));
    }

    async fn dump(&self) -> Result<Bytes, UpstreamError> {
        let call = rpc::encode_call(0, rpcb::PROGRAM, 4, 4, &[]);
        self.upstream(Class::Unix).call(&call, true).await
    }

    /// rpcbind merges a registered address with the caller's (or the
    /// `r_addr` hint's) to pick the address it returns. When the client's
    /// address is not the one rpcbind sees on the proxy's connection, give
    /// rpcbind the client's address as the hint so the answer is the one the
    /// client would get directly. Returns the rewritten record, if any.
    async fn hint_for(
        &self,
        class: Class,
        procedure: Procedure,
        args: &Args<'_>,
        call: &Call<'_>,
        peer: Peer,
    ) -> Option<BytesMut> {
        let Args::Rpcb(rpcb) = args else { return None };
        if !matches!(
            procedure,
            Procedure::GetAddr | Procedure::GetVersAddr | Procedure::GetAddrList
        ) || !rpcb.addr.is_empty()
        {
            return None;
        }
        let (Peer::Tcp(client) | Peer::Udp(client)) = peer else {
            return None;
        };
        let up = self.upstream(class);
        if up.ensure_connected().await.is_err() || up.local_ip() == Some(client.ip().to_canonical())
        {
            return None;
        }
        let uaddr = rpcb::universal_address(client.ip().to_canonical(), client.port());
        let mut out = BytesMut::with_capacity(call.header.len() + 64);
        out.extend_from_slice(call.header);
        Rpcb {
            addr: uaddr.as_bytes(),
            ..*rpcb
        }
        .encode(&mut out);
        Some(out)
    }
}

/// The cache key of a call bound for the upstream of `class`, if its answer
/// may be shared: one rule for the inline hit path and the full path alike.
/// Only replies whose verifier is AUTH_NONE are shared (an AUTH_SYS call
/// with a verifier gets it echoed back).
#[inline]
fn cache_key(
    call: &Call<'_>,
    procedure: Procedure,
    verf: OpaqueAuth<'_>,
    args: &Args<'_>,
    class: Class,
    peer: Peer,
) -> Option<Key> {
    if verf != OpaqueAuth::NONE {
        return None;
    }
    Key::of(call.vers, procedure, args, class, &peer)
}

fn decode_dump(reply: &[u8]) -> Result<Vec<RpcbEntry>, UpstreamError> {
    let parsed = rpc::parse_reply(reply).map_err(|_| UpstreamError::BadReply)?;
    if parsed.accept != Some(AcceptStat::Success) {
        return Err(UpstreamError::BadReply);
    }
    rpcb::decode_rpcblist(parsed.body).map_err(|_| UpstreamError::BadReply)
}

/// The checks libtirpc makes before a procedure runs, in its order:
/// authentication, program, version, procedure. An error is the exact reply
/// rpcbind sends; success gives the procedure and the reply verifier.
#[inline(always)]
fn check_header<'a>(call: &Call<'a>) -> Result<(Procedure, OpaqueAuth<'a>), Bytes> {
    let verf = rpc::authenticate(call).map_err(|why| rpc::auth_error_reply(call.xid, why))?;
    let reply = |stat| rpc::accepted_reply(call.xid, verf, stat, &[]);
    if call.prog != rpcb::PROGRAM {
        return Err(reply(AcceptStat::ProgUnavail));
    }
    if !(rpcb::LOW_VERSION..=rpcb::HIGH_VERSION).contains(&call.vers) {
        return Err(reply(AcceptStat::ProgMismatch {
            low: rpcb::LOW_VERSION,
            high: rpcb::HIGH_VERSION,
        }));
    }
    let procedure = Procedure::lookup(call.vers, call.procedure)
        .ok_or_else(|| reply(AcceptStat::ProcUnavail))?;
    Ok((procedure, verf))
}
