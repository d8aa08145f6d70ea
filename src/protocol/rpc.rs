//! ONC RPC v2 (RFC 5531): record marking for streams, the call header, and
//! the replies the proxy builds itself.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::xdr::{Reader, XdrError, XdrWrite};

pub const RPC_VERSION: u32 = 2;
pub const MSG_CALL: u32 = 0;
pub const MSG_REPLY: u32 = 1;
/// libtirpc refuses credentials and verifiers longer than this.
pub const MAX_AUTH_BYTES: u32 = 400;
/// rpcbind's own cap on a client record (its stream buffer size); a bigger
/// one resets the connection.
pub const MAX_CLIENT_RECORD: usize = 9000;
/// The bound on a reply from rpcbind. A DUMP of every registration a busy host
/// has is tens of KiB; 4 MiB leaves room without letting a broken peer make
/// us buffer without limit.
pub const MAX_UPSTREAM_RECORD: usize = 4 << 20;
/// A record split into more fragments than this is refused: a peer sending
/// endless empty fragments must not keep a decoder busy for ever.
pub const MAX_FRAGMENTS: u32 = 1024;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Framing errors on a record-marked stream. Each one ends the connection.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("record of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("record split into more than {MAX_FRAGMENTS} fragments")]
    TooManyFragments,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Record marking (RFC 5531 section 11): reassembles fragments into one record
/// of at most `max` bytes; encodes every record as a single fragment.
#[derive(Debug)]
pub struct RecordCodec {
    max: usize,
    partial: BytesMut,
    fragments: u32,
}

impl RecordCodec {
    pub fn new(max: usize) -> Self {
        RecordCodec {
            max,
            partial: BytesMut::new(),
            fragments: 0,
        }
    }

    /// True while a record is half-received (some fragments, or part of one).
    pub fn is_mid_record(&self, buffered: &BytesMut) -> bool {
        self.fragments > 0 || !buffered.is_empty()
    }

    /// The common case, read in place: with no record part-received, the
    /// length of the one-fragment record at the start of `buf` (after its
    /// 4-byte mark) if it is all there and within the bound. None for
    /// anything else, which the decoder then takes (and refuses, if bad).
    pub fn whole(&self, buf: &[u8]) -> Option<usize> {
        if self.fragments > 0 {
            return None;
        }
        let mark = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
        let len = (mark & !LAST_FRAGMENT) as usize;
        (mark & LAST_FRAGMENT != 0 && len <= self.max && buf.len() - 4 >= len).then_some(len)
    }
}

impl Decoder for RecordCodec {
    type Item = BytesMut;
    type Error = RecordError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, RecordError> {
        loop {
            if src.len() < 4 {
                return Ok(None);
            }
            let mark = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
            let last = mark & LAST_FRAGMENT != 0;
            let len = (mark & !LAST_FRAGMENT) as usize;
            // Bound the whole record before buffering any of this fragment.
            let total = self.partial.len() + len;
            if total > self.max {
                return Err(RecordError::TooLarge {
                    len: total,
                    max: self.max,
                });
            }
            if src.len() < 4 + len {
                src.reserve(4 + len - src.len());
                return Ok(None);
            }
            src.advance(4);
            let fragment = src.split_to(len);
            if last && self.fragments == 0 {
                // The common case: one fragment, handed over without a copy.
                return Ok(Some(fragment));
            }
            self.fragments += 1;
            if self.fragments > MAX_FRAGMENTS {
                return Err(RecordError::TooManyFragments);
            }
            self.partial.extend_from_slice(&fragment);
            if last {
                self.fragments = 0;
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for RecordCodec {
    type Error = RecordError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), RecordError> {
        let item = item.as_ref();
        put_record(dst, item);
        Ok(())
    }
}

/// Appends `payload` as one last-fragment record.
pub fn put_record(dst: &mut BytesMut, payload: &[u8]) {
    dst.reserve(4 + payload.len());
    dst.put_u32(LAST_FRAGMENT | payload.len() as u32);
    dst.put_slice(payload);
}

/// An authentication field (credential or verifier), borrowed from the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaqueAuth<'a> {
    pub flavor: u32,
    pub body: &'a [u8],
}

impl OpaqueAuth<'_> {
    pub const NONE: OpaqueAuth<'static> = OpaqueAuth {
        flavor: AUTH_NONE,
        body: &[],
    };
}

/// A decoded call header; `args` borrows the rest of the record.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub procedure: u32,
    pub cred: OpaqueAuth<'a>,
    pub verf: OpaqueAuth<'a>,
    pub args: &'a [u8],
    /// The header bytes before `args` (XID to verifier).
    pub header: &'a [u8],
}

/// A record that is not a call rpcbind would dispatch. libtirpc's
/// `xdr_callmsg` fails on all of these, and rpcbind sends no reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("truncated call header: {0}")]
    Truncated(#[from] XdrError),
    #[error("message type {0} is not CALL")]
    NotACall(u32),
    #[error("RPC version {0} is not 2")]
    RpcVersion(u32),
}

fn opaque_auth<'a>(r: &mut Reader<'a>) -> Result<OpaqueAuth<'a>, XdrError> {
    let flavor = r.u32()?;
    let body = r.opaque(MAX_AUTH_BYTES)?;
    Ok(OpaqueAuth { flavor, body })
}

/// Decodes the call header in the order `xdr_callmsg` does.
#[inline]
pub fn parse_call(record: &[u8]) -> Result<Call<'_>, HeaderError> {
    match call_header(record) {
        Some(call) => Ok(call),
        None => refused_header(record),
    }
}

/// A well-formed call header (every call a client means to make), decoded
/// in one straight pass over fixed offsets; None for anything
/// `xdr_callmsg` refuses, which [`refused_header`] then names. The rules are
/// the Reader's: every length checked against what is left, padding
/// included, before anything is sliced.
#[inline]
fn call_header(record: &[u8]) -> Option<Call<'_>> {
    // XID, direction, RPC version, program, version, procedure, credential
    // flavor and length.
    let (fixed, rest) = record.split_first_chunk::<32>()?;
    let word = |i: usize| {
        u32::from_be_bytes([
            fixed[4 * i],
            fixed[4 * i + 1],
            fixed[4 * i + 2],
            fixed[4 * i + 3],
        ])
    };
    if word(1) != MSG_CALL || word(2) != RPC_VERSION {
        return None;
    }
    let (cred_body, rest) = auth_body(word(7), rest)?;
    let (verf_head, rest) = rest.split_first_chunk::<8>()?;
    let [f0, f1, f2, f3, l0, l1, l2, l3] = *verf_head;
    let (verf_body, args) = auth_body(u32::from_be_bytes([l0, l1, l2, l3]), rest)?;
    Some(Call {
        xid: word(0),
        prog: word(3),
        vers: word(4),
        procedure: word(5),
        cred: OpaqueAuth {
            flavor: word(6),
            body: cred_body,
        },
        verf: OpaqueAuth {
            flavor: u32::from_be_bytes([f0, f1, f2, f3]),
            body: verf_body,
        },
        header: &record[..record.len() - args.len()],
        args,
    })
}

/// An authentication body of `len` bytes at the start of `rest` (at most
/// MAX_AUTH_BYTES, padded to four), and what follows it.
#[inline(always)]
fn auth_body(len: u32, rest: &[u8]) -> Option<(&[u8], &[u8])> {
    if len > MAX_AUTH_BYTES {
        return None;
    }
    let len = len as usize;
    let (body, after) = rest.split_at_checked((len + 3) & !3)?;
    Some((&body[..len], after))
}

/// The header decoded value by value with the Reader, as `xdr_callmsg`
/// does: for the records [`call_header`] turns down, the first fault it
/// meets. (It decodes well-formed headers too, as the tests check.)
#[cold]
#[inline(never)]
fn refused_header(record: &[u8]) -> Result<Call<'_>, HeaderError> {
    let mut r = Reader::new(record);
    let xid = r.u32()?;
    let direction = r.u32()?;
    if direction != MSG_CALL {
        return Err(HeaderError::NotACall(direction));
    }
    let rpcvers = r.u32()?;
    if rpcvers != RPC_VERSION {
        return Err(HeaderError::RpcVersion(rpcvers));
    }
    let prog = r.u32()?;
    let vers = r.u32()?;
    let procedure = r.u32()?;
    let cred = opaque_auth(&mut r)?;
    let verf = opaque_auth(&mut r)?;
    Ok(Call {
        xid,
        prog,
        vers,
        procedure,
        cred,
        verf,
        header: &record[..r.position()],
        args: r.rest(),
    })
}

/// The accept_stat of an accepted reply (RFC 5531).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    Success,
    ProgUnavail,
    ProgMismatch { low: u32, high: u32 },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
}

/// auth_stat values used by libtirpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AuthStat {
    BadCred = 1,
    RejectedCred = 2,
    BadVerf = 3,
    RejectedVerf = 4,
    TooWeak = 5,
    Failed = 7,
}

/// Builds an accepted reply with `body` (empty unless Success).
pub fn accepted_reply(xid: u32, verf: OpaqueAuth<'_>, stat: AcceptStat, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(24 + verf.body.len() + body.len() + 8);
    b.put_xdr_u32(xid);
    b.put_xdr_u32(MSG_REPLY);
    b.put_xdr_u32(0); // MSG_ACCEPTED
    b.put_xdr_u32(verf.flavor);
    b.put_xdr_opaque(verf.body);
    match stat {
        AcceptStat::Success => b.put_xdr_u32(0),
        AcceptStat::ProgUnavail => b.put_xdr_u32(1),
        AcceptStat::ProgMismatch { low, high } => {
            b.put_xdr_u32(2);
            b.put_xdr_u32(low);
            b.put_xdr_u32(high);
        }
        AcceptStat::ProcUnavail => b.put_xdr_u32(3),
        AcceptStat::GarbageArgs => b.put_xdr_u32(4),
        AcceptStat::SystemErr => b.put_xdr_u32(5),
    }
    b.put_slice(body);
    b.freeze()
}

/// Builds a MSG_DENIED / AUTH_ERROR reply.
pub fn auth_error_reply(xid: u32, why: AuthStat) -> Bytes {
    let mut b = BytesMut::with_capacity(20);
    b.put_xdr_u32(xid);
    b.put_xdr_u32(MSG_REPLY);
    b.put_xdr_u32(1); // MSG_DENIED
    b.put_xdr_u32(1); // AUTH_ERROR
    b.put_xdr_u32(why as u32);
    b.freeze()
}

/// libtirpc's limits on AUTH_SYS credentials.
const MAX_MACHINE_NAME: u32 = 255;
const MAX_SYS_GIDS: u32 = 16;
const AUTH_DES: u32 = 3;
const RPCSEC_GSS: u32 = 6;

/// Authenticates a call the way libtirpc's `_authenticate` does before any
/// dispatch, and returns the verifier its replies carry.
///
/// AUTH_NONE is always accepted (its body is not looked at). AUTH_SYS is
/// accepted when its body parses within libtirpc's limits; its reply then
/// echoes the call's verifier when that is non-empty (`_svcauth_unix`).
/// rpcbind has no AUTH_DES keys (FAILED) and no GSS contexts (BADCRED); every
/// other flavor is refused with REJECTEDCRED. Checked against rpcbind 1.2.6.
#[inline]
pub fn authenticate<'a>(call: &Call<'a>) -> Result<OpaqueAuth<'a>, AuthStat> {
    match call.cred.flavor {
        AUTH_NONE => Ok(OpaqueAuth::NONE),
        AUTH_SYS => {
            parse_auth_sys(call.cred.body).map_err(|_| AuthStat::BadCred)?;
            Ok(if call.verf.body.is_empty() {
                OpaqueAuth::NONE
            } else {
                call.verf
            })
        }
        AUTH_DES => Err(AuthStat::Failed),
        RPCSEC_GSS => Err(AuthStat::BadCred),
        _ => Err(AuthStat::RejectedCred),
    }
}

/// AUTH_SYS credentials (RFC 5531 appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSys {
    pub uid: u32,
    pub gid: u32,
}

fn parse_auth_sys(body: &[u8]) -> Result<AuthSys, XdrError> {
    let mut r = Reader::new(body);
    let _stamp = r.u32()?;
    let _machine = r.string(MAX_MACHINE_NAME)?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let ngids = r.u32()?;
    if ngids > MAX_SYS_GIDS {
        return Err(XdrError::TooLong {
            len: ngids,
            max: MAX_SYS_GIDS,
        });
    }
    for _ in 0..ngids {
        r.u32()?;
    }
    Ok(AuthSys { uid, gid })
}

/// The XID of a record, if it has one.
pub fn xid_of(record: &[u8]) -> Option<u32> {
    record
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Overwrites the XID of an encoded message in place.
pub fn set_xid(record: &mut [u8], xid: u32) {
    record[..4].copy_from_slice(&xid.to_be_bytes());
}

/// A decoded reply header; `body` is the procedure's result when accepted
/// with SUCCESS.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub xid: u32,
    /// None for a denied reply.
    pub accept: Option<AcceptStat>,
    pub body: &'a [u8],
}

/// Decodes a reply header (used for replies from rpcbind).
pub fn parse_reply(record: &[u8]) -> Result<Reply<'_>, XdrError> {
    let mut r = Reader::new(record);
    let xid = r.u32()?;
    let direction = r.u32()?;
    if direction != MSG_REPLY {
        return Err(XdrError::TooLong {
            len: direction,
            max: MSG_REPLY,
        });
    }
    let reply_stat = r.u32()?;
    if reply_stat != 0 {
        return Ok(Reply {
            xid,
            accept: None,
            body: r.rest(),
        });
    }
    opaque_auth(&mut r)?;
    let accept = match r.u32()? {
        0 => AcceptStat::Success,
        1 => AcceptStat::ProgUnavail,
        2 => AcceptStat::ProgMismatch {
            low: r.u32()?,
            high: r.u32()?,
        },
        3 => AcceptStat::ProcUnavail,
        4 => AcceptStat::GarbageArgs,
        _ => AcceptStat::SystemErr,
    };
    Ok(Reply {
        xid,
        accept: Some(accept),
        body: r.rest(),
    })
}

/// Encodes a call header with AUTH_NONE and the given arguments (the proxy's
/// own calls to rpcbind, and tests).
pub fn encode_call(xid: u32, prog: u32, vers: u32, procedure: u32, args: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(40 + args.len());
    for v in [
        xid,
        MSG_CALL,
        RPC_VERSION,
        prog,
        vers,
        procedure,
        AUTH_NONE,
        0,
        AUTH_NONE,
        0,
    ] {
        b.put_xdr_u32(v);
    }
    b.put_slice(args);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut RecordCodec, wire: &[u8]) -> Result<Vec<BytesMut>, RecordError> {
        let mut src = BytesMut::from(wire);
        let mut out = Vec::new();
        while let Some(r) = codec.decode(&mut src)? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn whole_takes_only_complete_one_fragment_records_within_the_bound() {
        let mut codec = RecordCodec::new(16);
        let mut wire = BytesMut::new();
        put_record(&mut wire, b"abcd");
        assert_eq!(codec.whole(&wire), Some(4));
        // Cut short, or only part of the mark: the decoder's job.
        assert_eq!(codec.whole(&wire[..7]), None);
        assert_eq!(codec.whole(&wire[..3]), None);
        // Not the last fragment.
        assert_eq!(codec.whole(&[0, 0, 0, 1, b'x']), None);
        // Over the bound: left to the decoder, which refuses it.
        let mut big = BytesMut::new();
        put_record(&mut big, &[0; 17]);
        assert_eq!(codec.whole(&big), None);
        assert!(codec.decode(&mut big).is_err());
        // After a first fragment, a last one is not a whole record.
        let mut first = BytesMut::from(&[0, 0, 0, 1, b'x'][..]);
        assert_eq!(codec.decode(&mut first).unwrap(), None);
        assert_eq!(codec.whole(&wire), None);
    }

    #[test]
    fn single_fragment_record() {
        let mut c = RecordCodec::new(100);
        let out = decode_all(&mut c, &[0x80, 0, 0, 3, 1, 2, 3]).unwrap();
        assert_eq!(out, vec![BytesMut::from(&[1u8, 2, 3][..])]);
    }

    #[test]
    fn reassembles_fragments_fed_byte_by_byte() {
        let wire = [
            0, 0, 0, 2, 1, 2, 0, 0, 0, 0, 0x80, 0, 0, 1, 3, 0x80, 0, 0, 1, 9,
        ];
        let mut c = RecordCodec::new(100);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for b in wire {
            src.put_u8(b);
            while let Some(r) = c.decode(&mut src).unwrap() {
                out.push(r);
            }
        }
        assert_eq!(
            out,
            vec![BytesMut::from(&[1u8, 2, 3][..]), BytesMut::from(&[9u8][..])]
        );
    }

    #[test]
    fn a_lying_mark_is_refused_before_buffering() {
        let mut c = RecordCodec::new(9000);
        let err = decode_all(&mut c, &[0xff, 0xff, 0xff, 0xff, 1]).unwrap_err();
        assert!(matches!(
            err,
            RecordError::TooLarge {
                len: 0x7fff_ffff,
                max: 9000
            }
        ));
        let mut src = BytesMut::from(&[0x80, 0, 0x23, 0x29][..]); // 9001
        assert!(c.decode(&mut src).is_err());
        assert!(
            src.capacity() < 9001,
            "nothing reserved for a refused record"
        );
    }

    #[test]
    fn the_limit_counts_every_fragment() {
        let mut c = RecordCodec::new(5);
        let wire = [0, 0, 0, 3, 1, 2, 3, 0x80, 0, 0, 3, 4, 5, 6];
        assert!(matches!(
            decode_all(&mut c, &wire),
            Err(RecordError::TooLarge { len: 6, max: 5 })
        ));
    }

    #[test]
    fn endless_empty_fragments_are_cut_off() {
        let mut c = RecordCodec::new(9000);
        let wire: Vec<u8> = std::iter::repeat_n([0u8, 0, 0, 0], 2000)
            .flatten()
            .collect();
        assert!(matches!(
            decode_all(&mut c, &wire),
            Err(RecordError::TooManyFragments)
        ));
    }

    #[test]
    fn encodes_one_last_fragment() {
        let mut c = RecordCodec::new(100);
        let mut dst = BytesMut::new();
        c.encode(&[7u8, 8][..], &mut dst).unwrap();
        assert_eq!(&dst[..], &[0x80, 0, 0, 2, 7, 8]);
    }

    #[test]
    fn parses_a_call_and_refuses_what_xdr_callmsg_refuses() {
        let call = encode_call(0x1234, 100000, 2, 3, &[0, 0, 0, 1]);
        let c = parse_call(&call).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.procedure), (0x1234, 100000, 2, 3));
        assert_eq!(c.args, &[0, 0, 0, 1]);
        assert_eq!(c.header.len(), 40);

        let mut bad = call.clone();
        bad[11] = 3;
        assert_eq!(parse_call(&bad).unwrap_err(), HeaderError::RpcVersion(3));
        let mut bad = call.clone();
        bad[7] = 1;
        assert_eq!(parse_call(&bad).unwrap_err(), HeaderError::NotACall(1));
        assert!(matches!(
            parse_call(&call[..39]),
            Err(HeaderError::Truncated(_))
        ));
        let mut bad = call.clone();
        bad[28..32].copy_from_slice(&401u32.to_be_bytes()); // cred length
        assert!(matches!(
            parse_call(&bad),
            Err(HeaderError::Truncated(XdrError::TooLong { .. }))
        ));
    }

    #[test]
    fn the_one_pass_header_decoder_agrees_with_the_reader() {
        // Credentials and verifiers of every padding, cut at every length and
        // with every length word bent: both decoders take or refuse alike,
        // and what they take is the same.
        let mut calls = Vec::new();
        for (cred, verf) in [(0, 0), (1, 3), (4, 0), (7, 400), (400, 5)] {
            let mut b = BytesMut::new();
            for v in [9, MSG_CALL, RPC_VERSION, 100000, 2, 3, AUTH_SYS] {
                b.put_xdr_u32(v);
            }
            b.put_xdr_opaque(&vec![0xa5; cred]);
            b.put_xdr_u32(AUTH_NONE);
            b.put_xdr_opaque(&vec![0x5a; verf]);
            b.put_slice(&[0, 0, 0, 1, 2]);
            calls.push(b.to_vec());
        }
        let mut records = Vec::new();
        for call in &calls {
            for cut in 0..=call.len() {
                records.push(call[..cut].to_vec());
            }
            let verf_len_at = 32 + call[28..32].iter().fold(0, |a, &b| a << 8 | b as usize);
            let verf_len_at = ((verf_len_at + 3) & !3) + 4;
            for at in [4, 8, 28, verf_len_at] {
                for v in [0u32, 1, 2, 3, 5, 400, 401, 0x7fff_ffff, u32::MAX] {
                    let mut bent = call.clone();
                    bent[at..at + 4].copy_from_slice(&v.to_be_bytes());
                    records.push(bent);
                }
            }
        }
        for r in &records {
            let fast = call_header(r);
            let reference = refused_header(r);
            assert_eq!(fast.is_some(), reference.is_ok(), "{r:?}");
            if let (Some(a), Ok(b)) = (fast, reference) {
                assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
        }
    }

    #[test]
    fn reply_round_trip() {
        let r = accepted_reply(
            9,
            OpaqueAuth::NONE,
            AcceptStat::ProgMismatch { low: 2, high: 4 },
            &[],
        );
        assert_eq!(
            &r[..],
            &[
                0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2,
                0, 0, 0, 4
            ]
        );
        let p = parse_reply(&r).unwrap();
        assert_eq!(p.accept, Some(AcceptStat::ProgMismatch { low: 2, high: 4 }));
        let ok = accepted_reply(1, OpaqueAuth::NONE, AcceptStat::Success, &[0, 0, 0, 111]);
        assert_eq!(parse_reply(&ok).unwrap().body, &[0, 0, 0, 111]);
    }
}
