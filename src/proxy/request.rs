//! One call on its way through the request path: the record as the client
//! sent it, its decoded header and arguments, the procedure and reply
//! verifier the checks gave, and who sent it.
//!
//! A `Request` is decoded once per call and handed down by reference, so no
//! step takes the call apart again or needs a long argument list. It
//! borrows the record and copies nothing: building one on the cached-hit
//! path allocates nothing (only a refusal allocates, for its reply).

use bytes::Bytes;

use crate::protocol::rpc::{self, AcceptStat, Call, HeaderError, OpaqueAuth};
use crate::protocol::rpcb::{self, Args, Procedure};
use crate::proxy::cache::Key;
use crate::proxy::policy::{self, Class, Peer, Route};

/// A call that passed libtirpc's checks and whose arguments decoded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request<'a> {
    /// The whole call as received; forwarded as it is unless a hint is
    /// added (`Proxy::hint_for`).
    pub(super) record: &'a [u8],
    pub(super) call: Call<'a>,
    pub(super) procedure: Procedure,
    /// The verifier every reply to this call carries.
    pub(super) verf: OpaqueAuth<'a>,
    pub(super) args: Args<'a>,
    pub(super) peer: Peer,
}

/// Why a record did not become a `Request`, each with what rpcbind does.
#[derive(Debug)]
pub(super) enum Rejected<'a> {
    /// libtirpc cannot decode the header: rpcbind sends nothing and drops
    /// the datagram or closes the stream.
    Header(HeaderError),
    /// Authentication, program, version or procedure failed: rpcbind's
    /// exact reply.
    Checks(Bytes),
    /// The header passed but the arguments do not decode; what rpcbind
    /// answers then depends on the route.
    Args {
        call: Call<'a>,
        procedure: Procedure,
        verf: OpaqueAuth<'a>,
    },
}

impl<'a> Request<'a> {
    /// Decodes `record` from `peer` and makes libtirpc's checks in
    /// libtirpc's order: header, authentication, program, version,
    /// procedure, arguments.
    #[inline]
    pub(super) fn decode(record: &'a [u8], peer: Peer) -> Result<Request<'a>, Rejected<'a>> {
        let call = rpc::parse_call(record).map_err(Rejected::Header)?;
        let (procedure, verf) = check_header(&call).map_err(Rejected::Checks)?;
        match rpcb::decode_args(procedure, call.vers, call.args) {
            Ok(args) => Ok(Request {
                record,
                call,
                procedure,
                verf,
                args,
                peer,
            }),
            Err(_) => Err(Rejected::Args {
                call,
                procedure,
                verf,
            }),
        }
    }

    /// Where this call goes (`policy::route`).
    #[inline]
    pub(super) fn route(&self) -> Route {
        policy::route(self.procedure, &self.peer)
    }

    /// The cache key of this call bound for the upstream of `class`, if its
    /// answer may be shared: one rule for the inline hit path and the full
    /// path alike. Only replies whose verifier is AUTH_NONE are shared (an
    /// AUTH_SYS call with a verifier gets it echoed back).
    #[inline]
    pub(super) fn cache_key(&self, class: Class) -> Option<Key> {
        cache_key(
            self.call.vers,
            self.procedure,
            self.verf,
            &self.args,
            class,
            &self.peer,
        )
    }

    /// An accepted reply to this call with `stat` and `body`.
    pub(super) fn reply(&self, stat: AcceptStat, body: &[u8]) -> Bytes {
        rpc::accepted_reply(self.call.xid, self.verf, stat, body)
    }
}

/// The cache key of a call of rpcbind version `vers` bound for the upstream
/// of `class`, if its answer may be shared: the one rule for the inline hit
/// path (`Proxy::answer_now`, which decodes step by step) and for a
/// `Request`. Only replies whose verifier is AUTH_NONE are shared.
#[inline]
pub(super) fn cache_key(
    vers: u32,
    procedure: Procedure,
    verf: OpaqueAuth<'_>,
    args: &Args<'_>,
    class: Class,
    peer: &Peer,
) -> Option<Key> {
    if verf != OpaqueAuth::NONE {
        return None;
    }
    // A link-local address names a host only with its interface, which
    // the key does not hold: such a client's own answers are not shared.
    if procedure.depends_on_transport() && is_link_local_peer(peer) {
        return None;
    }
    Key::of(vers, procedure, args, class, peer)
}

/// Another host on an IPv6 link-local address.
#[inline]
fn is_link_local_peer(peer: &Peer) -> bool {
    match peer {
        Peer::Tcp(std::net::SocketAddr::V6(a)) | Peer::Udp(std::net::SocketAddr::V6(a)) => {
            crate::proxy::link_local::is_link_local(a.ip())
        }
        _ => false,
    }
}

/// The checks libtirpc makes before a procedure runs, in its order:
/// authentication, program, version, procedure. An error is the exact reply
/// rpcbind sends; success gives the procedure and the reply verifier.
#[inline(always)]
pub(super) fn check_header<'a>(call: &Call<'a>) -> Result<(Procedure, OpaqueAuth<'a>), Bytes> {
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
