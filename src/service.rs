//! The request path shared by every listener: decode a call, answer what
//! rpcbind would answer without asking it (errors, refusals), and send the
//! rest to the right upstream.
//!
//! Every answer built here is the one Debian's rpcbind gives, byte for byte
//! after the XID; `tests/differential.rs` holds the proof. The cache (a later
//! stage) slots in at `forward`, in front of the upstream.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::policy::{callit_allowed, indirect_verdict, route, Class, LocalAnswer, Peer, Route};
use crate::rpc::{self, AcceptStat, AuthStat, Call, HeaderError, OpaqueAuth};
use crate::rpcb::{self, Args, Procedure, Rpcb, RpcbEntry};
use crate::upstream::{self, Target, Upstream, UpstreamError};

/// What a listener does with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send this reply.
    Reply(Bytes),
    /// Send nothing; keep the connection.
    NoReply,
    /// Send nothing; close a stream connection (UDP: drop the datagram).
    Close,
}

/// The largest reply rpcbind sends as a datagram (its UDP buffer,
/// RPC_MAXDATASIZE); measured: a 8988-byte v2 DUMP went out, 9008 did not.
pub const MAX_UDP_REPLY: usize = 9000;

/// Where rpcbind listens.
#[derive(Debug, Clone)]
pub struct RpcbindAddr {
    pub socket: PathBuf,
    pub port: u16,
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

/// The proxy's shared state: one `Upstream` per class.
#[derive(Debug)]
pub struct Proxy {
    upstreams: HashMap<Class, Upstream>,
    rpcbind: RpcbindAddr,
    timeout: Duration,
    /// At most one connection at a time opened under a caller's identity.
    as_user: Semaphore,
    pub stats: Stats,
}

impl Proxy {
    pub fn new(rpcbind: RpcbindAddr, timeout: Duration) -> Arc<Proxy> {
        let port = rpcbind.port;
        let upstreams = Class::ALL
            .into_iter()
            .map(|class| {
                let v4 = (std::net::Ipv4Addr::LOCALHOST, port).into();
                let v6 = (std::net::Ipv6Addr::LOCALHOST, port).into();
                let target = match class {
                    Class::Unix => Target::Unix(rpcbind.socket.clone()),
                    Class::Tcp4 => Target::Tcp(v4),
                    Class::Udp4 => Target::Udp(v4),
                    Class::Tcp6 => Target::Tcp(v6),
                    Class::Udp6 => Target::Udp(v6),
                };
                (class, Upstream::new(target, timeout))
            })
            .collect();
        Arc::new(Proxy {
            upstreams,
            rpcbind,
            timeout,
            as_user: Semaphore::new(1),
            stats: Stats::default(),
        })
    }

    pub fn upstream(&self, class: Class) -> &Upstream {
        &self.upstreams[&class]
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
            Route::Upstream(class) => {
                let rewritten = self.hint_for(class, procedure, &args, &call, peer).await;
                let record = rewritten.as_deref().unwrap_or(&record);
                self.forward(class, record, procedure, call.xid, verf).await
            }
            Route::AsUser { uid, gid } => self.forward_as(uid, gid, &record, call.xid, verf).await,
        };
        match outcome {
            Outcome::Reply(r) if peer.is_datagram() && r.len() > MAX_UDP_REPLY => {
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

    /// rpcbind's registrations, read with a v4 DUMP over the unix upstream.
    pub async fn registrations(&self) -> Result<Vec<RpcbEntry>, UpstreamError> {
        let call = rpc::encode_call(0, rpcb::PROGRAM, 4, 4, &[]);
        let reply = self.upstream(Class::Unix).call(&call, true).await?;
        let parsed = rpc::parse_reply(&reply).map_err(|_| UpstreamError::BadReply)?;
        if parsed.accept != Some(AcceptStat::Success) {
            return Err(UpstreamError::BadReply);
        }
        rpcb::decode_rpcblist(parsed.body).map_err(|_| UpstreamError::BadReply)
    }

    fn header_error(&self, e: HeaderError, peer: Peer) -> Outcome {
        // libtirpc's xdr_callmsg fails on every one of these; rpcbind then
        // drops the datagram, or closes the stream connection.
        debug!(?peer, error = %e, "undecodable call header");
        self.stats.local_errors.fetch_add(1, Ordering::Relaxed);
        Outcome::Close
    }

    async fn forward(
        &self,
        class: Class,
        record: &[u8],
        procedure: Procedure,
        xid: u32,
        verf: OpaqueAuth<'_>,
    ) -> Outcome {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let up = self.upstream(class);
        match up.call(record, procedure.is_idempotent()).await {
            Ok(reply) => Outcome::Reply(reply),
            Err(e) => self.upstream_failed(e, xid, verf),
        }
    }

    async fn forward_as(
        &self,
        uid: u32,
        gid: u32,
        record: &[u8],
        xid: u32,
        verf: OpaqueAuth<'_>,
    ) -> Outcome {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let result = match self.as_user.acquire().await {
            Ok(_permit) => {
                upstream::call_as_user(&self.rpcbind.socket, uid, gid, record, self.timeout).await
            }
            Err(_) => Err(UpstreamError::Unavailable),
        };
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
        let uaddr = universal_address(client.ip().to_canonical(), client.port());
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

/// A universal address (RFC 5665): `h1.h2.h3.h4.p1.p2` or `ipv6.p1.p2`.
pub fn universal_address(ip: IpAddr, port: u16) -> String {
    format!("{ip}.{}.{}", port >> 8, port & 0xff)
}

/// The checks libtirpc makes before a procedure runs, in its order:
/// authentication, program, version, procedure. An error is the exact reply
/// rpcbind sends; success gives the procedure and the reply verifier.
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
