//! The inet_diag messages: the uapi constants, a request (inet_diag_req_v2
//! and the port-filter bytecode) and the parsing of a reply
//! (inet_diag_msg and its cgroup id), every length checked.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::PeerSocket;
use super::Proto;
use crate::host::netlink::{self, NLA_HDRLEN};

// --- kernel uapi (linux/netlink.h, sock_diag.h, inet_diag.h, tcp_states.h) ---

pub(super) const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid.
pub(super) const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// struct inet_diag_sockid: sport, dport (be16), src[4], dst[4] (be32),
/// if (u32), cookie[2] (u32).
pub(super) const SOCKID_LEN: usize = 4 + 16 + 16 + 4 + 8;
/// struct inet_diag_msg: family, state, timer, retrans, sockid, expires,
/// rqueue, wqueue, uid, inode (u32 each).
pub(super) const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// INET_DIAG_NOCOOKIE in both words: "do not check the socket cookie".
pub(super) const NOCOOKIE: u32 = !0;

pub(super) const INET_DIAG_REQ_BYTECODE: u16 = 1;
pub(super) const INET_DIAG_CGROUP_ID: u16 = 21;

pub(super) const INET_DIAG_BC_JMP: u8 = 1;
pub(super) const INET_DIAG_BC_S_EQ: u8 = 11;
pub(super) const INET_DIAG_BC_D_EQ: u8 = 12;

pub(super) const TCP_ESTABLISHED: u8 = 1;
pub(super) const TCP_TIME_WAIT: u8 = 6;
pub(super) const TCP_CLOSE: u8 = 7;
pub(super) const TCP_LISTEN: u8 = 10;
pub(super) const TCP_NEW_SYN_RECV: u8 = 12;

// --- requests ---

/// The address pair of a lookup, as the kernel stores it: both IPv4 (an
/// IPv4-mapped IPv6 address counts as IPv4; the kernel's lookup finds
/// dual-stack sockets carrying IPv4 traffic too) or both IPv6.
pub(super) fn tuple(a: SocketAddr, b: SocketAddr) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (a, b) = (canonical(a), canonical(b));
    match (a.ip(), b.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some((libc::AF_INET as u8, a, b)),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some((libc::AF_INET6 as u8, a, b)),
        _ => None,
    }
}

pub(super) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// struct inet_diag_sockid, addresses and ports in network byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
}

impl SockId {
    pub(super) fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        SockId {
            sport: src.port(),
            dport: dst.port(),
            src: addr_bytes(src.ip()),
            dst: addr_bytes(dst.ip()),
        }
    }

    pub(super) fn any() -> Self {
        SockId {
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
        }
    }
}

/// An address in the 16 bytes of idiag_src/idiag_dst: IPv4 in the first 4.
pub(super) fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// nlmsghdr is filled by [`Inner::send`]; this is the payload: an
/// inet_diag_req_v2 and, for a dump, the bytecode attribute.
pub(super) fn build_request(
    family: u8,
    protocol: u8,
    states: u32,
    id: &SockId,
    bytecode: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQ_V2_LEN + bytecode.map_or(0, |b| NLA_HDRLEN + b.len()));
    out.push(family);
    out.push(protocol);
    out.push(0); // idiag_ext: no optional extensions; the cgroup id comes anyway
    out.push(0); // pad
    out.extend_from_slice(&states.to_ne_bytes());
    out.extend_from_slice(&id.sport.to_be_bytes());
    out.extend_from_slice(&id.dport.to_be_bytes());
    out.extend_from_slice(&id.src);
    out.extend_from_slice(&id.dst);
    out.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if: any
    out.extend_from_slice(&NOCOOKIE.to_ne_bytes());
    out.extend_from_slice(&NOCOOKIE.to_ne_bytes());
    debug_assert_eq!(out.len(), REQ_V2_LEN);
    if let Some(bc) = bytecode {
        // port_filter keeps this well under 64 KiB (MAX_PORTS).
        let len = u16::try_from(NLA_HDRLEN + bc.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        out.extend_from_slice(bc);
    }
    out
}

/// inet_diag bytecode accepting a socket whose source (local) or destination
/// (remote) port is one of `ports` (1..=MAX_PORTS of them).
///
/// The machine runs instructions `{code, yes: u8, no: u16}`; it accepts when
/// a jump lands exactly on the end and rejects when one lands 4 bytes past
/// it. `yes` jumps are at most 255 bytes, so a match cannot jump to the end
/// directly; each test is a block of three 4-byte words:
///
/// ```text
///   S_EQ|D_EQ  yes=8 (to the JMP)  no=12 (next block; last block: 16 = reject)
///   port       (operand of the comparison)
///   JMP        yes=4 (never taken)  no=<to the end> (accept)
/// ```
///
/// The kernel's audit (inet_diag_bc_audit) follows the `yes` chain, which
/// visits every block, and checks every `no` target lies on it or at end+4.
pub(super) fn port_filter(ports: &[u16]) -> Vec<u8> {
    let tests: Vec<(u8, u16)> = ports
        .iter()
        .flat_map(|&p| [(INET_DIAG_BC_S_EQ, p), (INET_DIAG_BC_D_EQ, p)])
        .collect();
    let total = tests.len() * 12;
    let mut out = Vec::with_capacity(total);
    let op = |out: &mut Vec<u8>, code: u8, yes: u8, no: u16| {
        out.push(code);
        out.push(yes);
        out.extend_from_slice(&no.to_ne_bytes());
    };
    for (i, (code, port)) in tests.iter().enumerate() {
        let at = i * 12;
        let last = i + 1 == tests.len();
        op(&mut out, *code, 8, if last { 16 } else { 12 });
        op(&mut out, 0, 0, *port);
        // The JMP sits at `at + 8`; from there the end is total - at - 8 away.
        let to_end = u16::try_from(total - at - 8).unwrap_or(u16::MAX);
        op(&mut out, INET_DIAG_BC_JMP, 4, to_end);
    }
    out
}

// --- parsing (everything here is bounded by the slice it is given) ---

/// The fixed part of one inet_diag_msg and its cgroup id attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DiagMsg {
    pub(super) family: u8,
    pub(super) state: u8,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) src: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) uid: u32,
    pub(super) inode: u32,
    /// The socket's cookie (`bpf_get_socket_cookie` gives the same).
    pub(super) cookie: u64,
    pub(super) cgroup_id: Option<u64>,
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn be16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn ip_from(family: u8, b: &[u8]) -> Option<IpAddr> {
    let b: [u8; 16] = b.try_into().ok()?;
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(b)).to_canonical()),
        _ => None,
    }
}

/// Parses the payload of a SOCK_DIAG_BY_FAMILY message (after nlmsghdr).
/// `None` for anything shorter than an inet_diag_msg or of an unknown
/// family; attributes that do not fit end the attribute walk.
pub(super) fn parse_diag_msg(p: &[u8]) -> Option<DiagMsg> {
    if p.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = p[0];
    let state = p[1];
    let id = &p[4..4 + SOCKID_LEN];
    let src = ip_from(family, &id[4..20])?;
    let dst = ip_from(family, &id[20..36])?;
    let after_id = 4 + SOCKID_LEN;
    let uid = u32_at(p, after_id + 12)?;
    let inode = u32_at(p, after_id + 16)?;
    // cookie[0] is the low half, cookie[1] the high one.
    let cookie = u64::from(u32_at(id, 40)?) | (u64::from(u32_at(id, 44)?) << 32);
    let mut cgroup_id = None;
    for (ty, value) in netlink::attrs(&p[DIAG_MSG_LEN..]).map_while(Result::ok) {
        if ty == INET_DIAG_CGROUP_ID {
            if let Ok(v) = <[u8; 8]>::try_from(value) {
                cgroup_id = Some(u64::from_ne_bytes(v));
            }
        }
    }
    Some(DiagMsg {
        family,
        state,
        sport: be16_at(id, 0)?,
        dport: be16_at(id, 2)?,
        src,
        dst,
        uid,
        inode,
        cookie,
        cgroup_id,
    })
}

/// Accepts the kernel's answer only if it is the socket asked for and one a
/// process can still hold.
pub(super) fn match_peer(
    proto: Proto,
    payload: &[u8],
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<PeerSocket> {
    let m = parse_diag_msg(payload)?;
    let got_local = SocketAddr::new(m.src, m.sport);
    let got_remote = SocketAddr::new(m.dst, m.dport);
    let ok = match proto {
        // The exact 4-tuple, and not a listener the lookup fell back to, nor
        // a TIME_WAIT / request socket (no owner: uid and inode are 0).
        Proto::Tcp => {
            got_local == local
                && got_remote == remote
                && !matches!(m.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_NEW_SYN_RECV)
        }
        // Bound to the client's port on its address or the wildcard;
        // unconnected or connected to the server.
        Proto::Udp => {
            m.sport == local.port()
                && (m.src == local.ip() || m.src.is_unspecified())
                && ((m.dst.is_unspecified() && m.dport == 0) || got_remote == remote)
                && matches!(m.state, TCP_ESTABLISHED | TCP_CLOSE)
        }
    };
    // An inode of 0: no process holds the socket any more (it was closed
    // with data in flight: an orphan). Kept: its cookie still names who
    // opened it.
    ok.then_some(PeerSocket {
        uid: m.uid,
        inode: u64::from(m.inode),
        cookie: m.cookie,
        cgroup_id: m.cgroup_id,
        local: got_local,
        remote: got_remote,
    })
}

pub(super) fn protocol(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
