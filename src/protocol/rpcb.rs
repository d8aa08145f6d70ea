//! The portmapper (v2) and rpcbind (v3, v4) protocol: procedures and their
//! argument types (RFC 1833), decoded without allocation.

use bytes::BytesMut;

use crate::protocol::xdr::{Reader, XdrError, XdrWrite};

pub const PROGRAM: u32 = 100000;
pub const LOW_VERSION: u32 = 2;
pub const HIGH_VERSION: u32 = 4;
/// libtirpc's bound on a netbuf (RPC_MAXDATASIZE).
pub const MAX_NETBUF: u32 = 9000;
/// Strings in rpcbind's arguments are decoded with no maximum of their own
/// (`(u_int)~0`): the record size bounds them.
const MAX_STRING: u32 = u32::MAX;

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// Every procedure of program 100000, versions 2 to 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Procedure {
    Null,
    Set,
    Unset,
    /// v2 GETPORT.
    GetPort,
    /// v3/v4 GETADDR.
    GetAddr,
    Dump,
    /// v2/v3 CALLIT.
    CallIt,
    /// v4 BCAST (same number and arguments as CALLIT).
    Bcast,
    GetTime,
    Uaddr2Taddr,
    Taddr2Uaddr,
    GetVersAddr,
    Indirect,
    GetAddrList,
    GetStat,
}

impl Procedure {
    /// The procedure `number` of version `vers`, if it exists.
    #[inline]
    pub fn lookup(vers: u32, number: u32) -> Option<Procedure> {
        // Every call looks its procedure up: an index into the table that
        // `numbered` fills at compile time, not a chain of comparisons.
        const TABLE: [[Option<Procedure>; 13]; 3] = {
            let mut t = [[None; 13]; 3];
            let mut v = 0;
            while v < 3 {
                let mut n = 0;
                while n < 13 {
                    t[v][n] = Procedure::numbered(v as u32 + LOW_VERSION, n as u32);
                    n += 1;
                }
                v += 1;
            }
            t
        };
        let row = TABLE.get(vers.wrapping_sub(LOW_VERSION) as usize)?;
        *row.get(number as usize)?
    }

    /// The procedures of program 100000, by version and number.
    const fn numbered(vers: u32, number: u32) -> Option<Procedure> {
        use Procedure::*;
        Some(match (vers, number) {
            (2..=4, 0) => Null,
            (2..=4, 1) => Set,
            (2..=4, 2) => Unset,
            (2, 3) => GetPort,
            (3 | 4, 3) => GetAddr,
            (2..=4, 4) => Dump,
            (2 | 3, 5) => CallIt,
            (4, 5) => Bcast,
            (3 | 4, 6) => GetTime,
            (3 | 4, 7) => Uaddr2Taddr,
            (3 | 4, 8) => Taddr2Uaddr,
            (4, 9) => GetVersAddr,
            (4, 10) => Indirect,
            (4, 11) => GetAddrList,
            (4, 12) => GetStat,
            _ => return None,
        })
    }

    /// The name rpcbind's documentation uses (for logs and statistics).
    pub fn name(self) -> &'static str {
        use Procedure::*;
        match self {
            Null => "NULL",
            Set => "SET",
            Unset => "UNSET",
            GetPort => "GETPORT",
            GetAddr => "GETADDR",
            Dump => "DUMP",
            CallIt => "CALLIT",
            Bcast => "BCAST",
            GetTime => "GETTIME",
            Uaddr2Taddr => "UADDR2TADDR",
            Taddr2Uaddr => "TADDR2UADDR",
            GetVersAddr => "GETVERSADDR",
            Indirect => "INDIRECT",
            GetAddrList => "GETADDRLIST",
            GetStat => "GETSTAT",
        }
    }

    /// Whether rpcbind's answer depends on the transport the call arrives on
    /// and the caller's address (rpcbind picks the registration of the
    /// arrival netid and merges a wildcard address with the caller's): such
    /// calls must reach rpcbind over the client's own transport class.
    pub fn depends_on_transport(self) -> bool {
        use Procedure::*;
        matches!(
            self,
            GetAddr | GetVersAddr | GetAddrList | Uaddr2Taddr | Taddr2Uaddr
        )
    }

    /// Read-only calls that may be sent again after a lost connection.
    pub fn is_idempotent(self) -> bool {
        use Procedure::*;
        !matches!(self, Set | Unset | CallIt | Bcast | Indirect)
    }
}

/// PMAP v2 `mapping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub prog: u32,
    pub vers: u32,
    pub prot: u32,
    pub port: u32,
}

/// RPCB v3/v4 `rpcb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpcb<'a> {
    pub prog: u32,
    pub vers: u32,
    pub netid: &'a [u8],
    pub addr: &'a [u8],
    pub owner: &'a [u8],
}

/// The arguments of CALLIT, BCAST and INDIRECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCall<'a> {
    pub prog: u32,
    pub vers: u32,
    pub procedure: u32,
    pub args: &'a [u8],
}

/// Decoded arguments of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args<'a> {
    Void,
    Mapping(Mapping),
    Rpcb(Rpcb<'a>),
    /// UADDR2TADDR's universal address.
    Uaddr(&'a [u8]),
    /// TADDR2UADDR's netbuf.
    Netbuf {
        maxlen: u32,
        buf: &'a [u8],
    },
    RemoteCall(RemoteCall<'a>),
}

impl Mapping {
    #[inline]
    pub fn decode(r: &mut Reader<'_>) -> Result<Mapping, XdrError> {
        let [prog, vers, prot, port] = r.u32s()?;
        Ok(Mapping {
            prog,
            vers,
            prot,
            port,
        })
    }

    pub fn encode(&self, b: &mut BytesMut) {
        for v in [self.prog, self.vers, self.prot, self.port] {
            b.put_xdr_u32(v);
        }
    }
}

impl<'a> Rpcb<'a> {
    pub fn decode(r: &mut Reader<'a>) -> Result<Rpcb<'a>, XdrError> {
        Ok(Rpcb {
            prog: r.u32()?,
            vers: r.u32()?,
            netid: r.string(MAX_STRING)?,
            addr: r.string(MAX_STRING)?,
            owner: r.string(MAX_STRING)?,
        })
    }

    pub fn encode(&self, b: &mut BytesMut) {
        b.put_xdr_u32(self.prog);
        b.put_xdr_u32(self.vers);
        b.put_xdr_opaque(self.netid);
        b.put_xdr_opaque(self.addr);
        b.put_xdr_opaque(self.owner);
    }
}

/// Decodes the arguments of `procedure` the way rpcbind's `svc_getargs`
/// does: a failure here is rpcbind's GARBAGE_ARGS. Trailing bytes are
/// ignored, as XDR decoding ignores them.
#[inline]
pub fn decode_args(procedure: Procedure, vers: u32, args: &[u8]) -> Result<Args<'_>, XdrError> {
    use Procedure::*;
    let mut r = Reader::new(args);
    Ok(match procedure {
        Null | Dump | GetTime | GetStat => Args::Void,
        Set | Unset | GetPort if vers == 2 => Args::Mapping(Mapping::decode(&mut r)?),
        Set | Unset | GetAddr | GetVersAddr | GetAddrList => Args::Rpcb(Rpcb::decode(&mut r)?),
        GetPort => Args::Mapping(Mapping::decode(&mut r)?),
        Uaddr2Taddr => Args::Uaddr(r.string(MAX_STRING)?),
        Taddr2Uaddr => {
            let maxlen = r.u32()?;
            if maxlen > MAX_NETBUF {
                return Err(XdrError::TooLong {
                    len: maxlen,
                    max: MAX_NETBUF,
                });
            }
            Args::Netbuf {
                maxlen,
                buf: r.opaque(maxlen)?,
            }
        }
        CallIt | Bcast | Indirect => Args::RemoteCall(RemoteCall {
            prog: r.u32()?,
            vers: r.u32()?,
            procedure: r.u32()?,
            args: r.opaque(MAX_STRING)?,
        }),
    })
}

/// Reads a whole XDR string reply (GETADDR, GETVERSADDR, TADDR2UADDR).
pub fn decode_string_reply(body: &[u8]) -> Result<&[u8], XdrError> {
    Reader::new(body).string(MAX_STRING)
}

/// One entry of a v3/v4 DUMP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcbEntry {
    pub prog: u32,
    pub vers: u32,
    pub netid: Vec<u8>,
    pub addr: Vec<u8>,
    pub owner: Vec<u8>,
}

/// Decodes a v3/v4 DUMP reply body (`rpcblist_ptr`). The list's length is
/// bounded by the record it came in: each entry consumes at least 20 bytes.
pub fn decode_rpcblist(body: &[u8]) -> Result<Vec<RpcbEntry>, XdrError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while r.bool()? {
        let e = Rpcb::decode(&mut r)?;
        out.push(RpcbEntry {
            prog: e.prog,
            vers: e.vers,
            netid: e.netid.to_vec(),
            addr: e.addr.to_vec(),
            owner: e.owner.to_vec(),
        });
    }
    Ok(out)
}

/// Decodes a v2 DUMP reply body (`pmaplist`).
pub fn decode_pmaplist(body: &[u8]) -> Result<Vec<Mapping>, XdrError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while r.bool()? {
        out.push(Mapping::decode(&mut r)?);
    }
    Ok(out)
}

/// A universal address (RFC 5665): `h1.h2.h3.h4.p1.p2` or `IPV6.p1.p2`.
pub fn universal_address(ip: std::net::IpAddr, port: u16) -> String {
    format!("{ip}.{}.{}", port >> 8, port & 0xff)
}

/// The IP address and port of a universal address, only when `text` is
/// exactly the canonical spelling [`universal_address`] gives (so that the
/// parsed form stands for the text without loss).
pub fn parse_universal_address(text: &[u8]) -> Option<(std::net::IpAddr, u16)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.rsplitn(3, '.');
    let (p2, p1, host) = (parts.next()?, parts.next()?, parts.next()?);
    let port = u16::from(p1.parse::<u8>().ok()?) << 8 | u16::from(p2.parse::<u8>().ok()?);
    let ip: std::net::IpAddr = host.parse().ok()?;
    (universal_address(ip, port) == text).then_some((ip, port))
}

/// Rewrites the universal address `from` to `to` in a successful reply of
/// `procedure` (v3/v4 DUMP, GETADDR, GETVERSADDR), leaving every other byte
/// as rpcbind sent it. Returns None when the reply holds no such address
/// (the common case, found without decoding), or is not one of those
/// replies, or does not decode.
///
/// Why: in transparent mode rpcbind listens on another unix path and names
/// that path in its own `local` registrations, while clients know it (and
/// reach the proxy) by the usual one; the answers must say the usual one, as
/// rpcbind would there.
pub fn rewrite_address(
    reply: &[u8],
    vers: u32,
    procedure: Procedure,
    from: &[u8],
    to: &[u8],
) -> Option<BytesMut> {
    type Walk = fn(&mut Reader<'_>, &mut BytesMut, &[u8], &[u8]) -> Result<(), XdrError>;
    let walk: Walk = match (vers, procedure) {
        (3 | 4, Procedure::Dump) => |r, out, from, to| {
            while r.bool()? {
                out.put_xdr_u32(1);
                let e = Rpcb::decode(r)?;
                Rpcb {
                    addr: if e.addr == from { to } else { e.addr },
                    ..e
                }
                .encode(out);
            }
            out.put_xdr_u32(0);
            Ok(())
        },
        (3 | 4, Procedure::GetAddr) | (4, Procedure::GetVersAddr) => |r, out, from, to| {
            let addr = r.string(MAX_STRING)?;
            out.put_xdr_opaque(if addr == from { to } else { addr });
            Ok(())
        },
        _ => return None,
    };
    if from.is_empty() || !reply.windows(from.len()).any(|w| w == from) {
        return None;
    }
    let parsed = crate::protocol::rpc::parse_reply(reply).ok()?;
    if parsed.accept != Some(crate::protocol::rpc::AcceptStat::Success) {
        return None;
    }
    let header = &reply[..reply.len() - parsed.body.len()];
    let mut out = BytesMut::with_capacity(reply.len() + to.len());
    out.extend_from_slice(header);
    let mut r = Reader::new(parsed.body);
    walk(&mut r, &mut out, from, to).ok()?;
    out.extend_from_slice(r.rest());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universal_addresses_parse_only_in_their_canonical_spelling() {
        let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let v6: std::net::IpAddr = "fe80::1:2".parse().unwrap();
        assert_eq!(parse_universal_address(b"127.0.0.1.4.1"), Some((v4, 0x401)));
        assert_eq!(parse_universal_address(b"fe80::1:2.0.111"), Some((v6, 111)));
        // Longer than the 24 bytes the cache used to hold inline.
        let long = b"fe80:1234:5678:9abc:def0:1234:5678:9abc.255.255";
        assert!(parse_universal_address(long).is_some());
        for bad in [
            &b"127.0.0.1.4"[..],
            b"127.0.0.1.256.1",
            b"127.0.0.01.4.1",
            b"FE80::1.0.1",
            b"fe80:0::1.0.1",
            b"::1.00.1",
            b"",
            b"x.1.1",
        ] {
            assert_eq!(
                parse_universal_address(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(universal_address(v4, 0x401), "127.0.0.1.4.1");
    }

    #[test]
    fn rpcbinds_moved_socket_is_renamed_in_dumps_and_getaddr() {
        use crate::protocol::rpc::{accepted_reply, AcceptStat, OpaqueAuth};
        let entry = |netid: &'static [u8], addr: &'static [u8]| Rpcb {
            prog: PROGRAM,
            vers: 4,
            netid,
            addr,
            owner: b"superuser",
        };
        let mut body = BytesMut::new();
        for e in [
            entry(b"tcp", b"0.0.0.0.0.111"),
            entry(b"local", b"/run/rpcbind/upstream.sock"),
        ] {
            body.put_xdr_u32(1);
            e.encode(&mut body);
        }
        body.put_xdr_u32(0);
        let reply = accepted_reply(9, OpaqueAuth::NONE, AcceptStat::Success, &body);
        let from = b"/run/rpcbind/upstream.sock";
        let to = b"/run/rpcbind.sock";
        let out = rewrite_address(&reply, 4, Procedure::Dump, from, to).unwrap();
        let list = decode_rpcblist(crate::protocol::rpc::parse_reply(&out).unwrap().body).unwrap();
        assert_eq!(list[0].addr, b"0.0.0.0.0.111");
        assert_eq!(
            (&list[1].netid[..], &list[1].addr[..]),
            (&b"local"[..], &to[..])
        );
        assert_eq!(out[..4], reply[..4], "the header is kept");
        // Nothing to rename: no copy.
        assert!(rewrite_address(&reply, 4, Procedure::Dump, b"/elsewhere", to).is_none());
        // GETADDR's string, and a v2 DUMP (no addresses) left alone.
        let mut s = BytesMut::new();
        s.put_xdr_opaque(from);
        let reply = accepted_reply(9, OpaqueAuth::NONE, AcceptStat::Success, &s);
        let out = rewrite_address(&reply, 3, Procedure::GetAddr, from, to).unwrap();
        let parsed = crate::protocol::rpc::parse_reply(&out).unwrap();
        assert_eq!(decode_string_reply(parsed.body).unwrap(), to);
        assert!(rewrite_address(&reply, 2, Procedure::Dump, from, to).is_none());
        // A truncated reply is left as it is, not half rewritten.
        assert!(
            rewrite_address(&reply[..reply.len() - 4], 3, Procedure::GetAddr, from, to).is_none()
        );
    }

    #[test]
    fn every_procedure_of_every_version() {
        let counts = [(2u32, 6u32), (3, 9), (4, 13)];
        for (vers, n) in counts {
            for p in 0..n {
                assert!(Procedure::lookup(vers, p).is_some(), "v{vers} proc {p}");
            }
            assert_eq!(Procedure::lookup(vers, n), None);
        }
        assert_eq!(Procedure::lookup(1, 0), None);
        assert_eq!(Procedure::lookup(5, 0), None);
        assert_eq!(Procedure::lookup(2, 3), Some(Procedure::GetPort));
        assert_eq!(Procedure::lookup(4, 5), Some(Procedure::Bcast));
        for vers in (0..8).chain([u32::MAX - 1, u32::MAX]) {
            for p in (0..20).chain([u32::MAX]) {
                assert_eq!(Procedure::lookup(vers, p), Procedure::numbered(vers, p));
            }
        }
    }

    #[test]
    fn rpcb_round_trip_and_truncation() {
        let e = Rpcb {
            prog: 100003,
            vers: 3,
            netid: b"tcp",
            addr: b"0.0.0.0.8.1",
            owner: b"superuser",
        };
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(decode_args(Procedure::GetAddr, 3, &b), Ok(Args::Rpcb(e)));
        for cut in [0, 4, 8, 12, b.len() - 1] {
            assert!(
                decode_args(Procedure::GetAddr, 3, &b[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn mapping_ignores_trailing_bytes_like_xdr() {
        let m = Mapping {
            prog: 1,
            vers: 2,
            prot: IPPROTO_TCP,
            port: 0,
        };
        let mut b = BytesMut::new();
        m.encode(&mut b);
        b.extend_from_slice(&[9, 9, 9, 9]);
        assert_eq!(decode_args(Procedure::GetPort, 2, &b), Ok(Args::Mapping(m)));
        assert!(decode_args(Procedure::GetPort, 2, &b[..15]).is_err());
    }

    #[test]
    fn netbuf_is_bounded_by_its_maxlen() {
        let mut b = BytesMut::new();
        b.put_xdr_u32(4);
        b.put_xdr_opaque(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(decode_args(Procedure::Taddr2Uaddr, 3, &b).is_err());
        let mut b = BytesMut::new();
        b.put_xdr_u32(9001);
        b.put_xdr_opaque(&[1, 2]);
        assert!(decode_args(Procedure::Taddr2Uaddr, 3, &b).is_err());
    }
}
