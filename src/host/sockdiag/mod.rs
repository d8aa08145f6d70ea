//! Who is behind a TCP/UDP client connection, and how many TIME_WAIT sockets
//! a port has, asked of the kernel over `NETLINK_SOCK_DIAG` (inet_diag).
//!
//! - [`peer_socket`]: one exact lookup (SOCK_DIAG_BY_FAMILY without
//!   NLM_F_DUMP) of the *client's* socket on this host: its uid, inode and,
//!   on Linux >= 5.7, its cgroup v2 id (INET_DIAG_CGROUP_ID, which the kernel
//!   adds to every full socket's reply unconditionally: no request flag).
//!   O(1) in the number of sockets on the host.
//! - [`count_time_wait`]: a dump restricted by the kernel to TIME_WAIT TCP
//!   sockets (`idiag_states`) whose local or remote port is one of a few
//!   ports (an inet_diag bytecode filter), so only the matching sockets
//!   cross into user space, instead of formatting and parsing every line of
//!   /proc/net/tcp{,6} (see `procnet`).
//! - [`original_destination`]: the pre-NAT destination of an accepted TCP
//!   connection (SO_ORIGINAL_DST), which is the remote address the client's
//!   own socket records in transparent mode (127.0.0.1:111, not the proxy's
//!   port).
//!
//! The inet_diag messages are built and parsed here, on the socket and
//! message codec of `host::netlink` (`libc` only); every length the kernel
//! sends is checked against the datagram it came in, and one receive is
//! bounded by a fixed buffer and a 2 s timeout.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::time::Duration;

use super::netlink::{
    self, NLA_HDRLEN, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_MULTI, NLM_F_REQUEST,
};

// --- kernel uapi (linux/netlink.h, sock_diag.h, inet_diag.h, tcp_states.h) ---

const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// struct inet_diag_sockid: sport, dport (be16), src[4], dst[4] (be32),
/// if (u32), cookie[2] (u32).
const SOCKID_LEN: usize = 4 + 16 + 16 + 4 + 8;
/// struct inet_diag_msg: family, state, timer, retrans, sockid, expires,
/// rqueue, wqueue, uid, inode (u32 each).
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// INET_DIAG_NOCOOKIE in both words: "do not check the socket cookie".
const NOCOOKIE: u32 = !0;

const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_CGROUP_ID: u16 = 21;

const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;

const TCP_ESTABLISHED: u8 = 1;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;

/// One receive: the kernel builds dump skbs of at most 32 KiB; an exact
/// reply is one message of well under 1 KiB.
const RECV_BUF: usize = 64 * 1024;
/// How long one receive may block before the call fails with `TimedOut`.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// A dump ends after this many messages at the latest (a bound on a kernel
/// that never sends NLMSG_DONE, far above any real TIME_WAIT count: the
/// ephemeral port range times the addresses in use).
const DUMP_MAX_MSGS: usize = 4_000_000;
/// Retries of a dump the kernel flagged as interrupted.
const DUMP_RETRIES: usize = 3;
/// [`count_time_wait`] accepts at most this many distinct ports (the
/// bytecode is 24 bytes per port and its jumps are 16-bit).
pub const MAX_PORTS: usize = 1024;

// --- public API ---

/// The transport of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn ipproto(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

/// The client's own socket, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSocket {
    /// The uid that created the socket (its fsuid at the time).
    pub uid: u32,
    /// The socket's inode: `socket:[INODE]` in /proc/PID/fd of its holders.
    pub inode: u64,
    /// The cgroup v2 id the socket was created in (the creating process's
    /// cgroup at that moment); `None` before Linux 5.7 or without
    /// CONFIG_SOCK_CGROUP_DATA. Resolve it with
    /// `host::cgroup::cgroup_path_by_id`.
    pub cgroup_id: Option<u64>,
    /// Its local and remote address as reported. For an unconnected UDP
    /// socket the remote is the unspecified address, port 0, and the local
    /// address may be the wildcard.
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// TIME_WAIT TCP sockets (IPv4 and IPv6) per port asked for: a socket whose
/// local or remote port is P counts for P (once, even if both are P).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeWaitCounts {
    per_port: Vec<(u16, u64)>,
    total: u64,
    received: u64,
}

impl TimeWaitCounts {
    /// The count for `port` (0 for a port not asked for).
    pub fn get(&self, port: u16) -> u64 {
        self.per_port
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, n)| *n)
    }

    /// (port, count) for every distinct port asked for, ascending.
    pub fn per_port(&self) -> &[(u16, u64)] {
        &self.per_port
    }

    /// Distinct sockets matched (a socket whose two ports were both asked
    /// for counts once here, and once for each port in [`Self::get`]).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Sockets the kernel sent, after its own state and port filters; equal
    /// to [`Self::total`] unless a filter let something through (which is
    /// then not counted).
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// The client's socket on this host of a connection that reached us from
/// `client` (the peer address of the accepted socket or datagram), sent to
/// `server`: for TCP the socket whose local address is `client` and remote
/// address `server`, exactly. In transparent mode pass the *original*
/// destination ([`original_destination`], 127.0.0.1:111), not the proxy's
/// own address: NAT rewrote the packets, not the client's socket.
///
/// For UDP the kernel's lookup is the one a datagram from `server` to
/// `client` would take: it finds the client's socket whether it is
/// unconnected (the usual case: it matches any remote) or connected to
/// `server`, and also a socket bound to the wildcard address on the client's
/// port. (Clients in an SO_REUSEPORT group share a port: the kernel then
/// picks one of the group, as it would for a datagram.)
///
/// `Ok(None)`: no such socket (the client closed it, or the connection did
/// not come from this host), a TCP socket with no owner left (TIME_WAIT,
/// half-open), a kernel without NETLINK_SOCK_DIAG or without the TCP/UDP
/// diag module, or an answer that does not match the 4-tuple asked for.
/// Opens one netlink socket per call; a caller doing many lookups keeps a
/// [`SockDiag`].
pub fn peer_socket(
    proto: Proto,
    client: SocketAddr,
    server: SocketAddr,
) -> io::Result<Option<PeerSocket>> {
    match SockDiag::open() {
        Ok(d) => d.peer_socket(proto, client, server),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(None),
        Err(e) => Err(e),
    }
}

/// TIME_WAIT TCP sockets of this network namespace (IPv4 and IPv6) whose
/// local or remote port is in `ports`, counted per port (duplicates in
/// `ports` are ignored; at most [`MAX_PORTS`] distinct ports). Two filtered
/// dumps on one netlink socket; no socket outside the filter is sent to user
/// space. `Err` with kind `Unsupported` when the kernel has no
/// NETLINK_SOCK_DIAG (the caller may fall back to /proc/net/tcp).
pub fn count_time_wait(ports: &[u16]) -> io::Result<TimeWaitCounts> {
    SockDiag::open()?.count_time_wait(ports)
}

/// The destination an accepted TCP connection had before NAT
/// (getsockopt SO_ORIGINAL_DST at SOL_IP, IP6T_SO_ORIGINAL_DST at
/// SOL_IPV6): 127.0.0.1:111 for a client the transparent-mode redirect sent
/// to the proxy.
///
/// `Ok(None)` when conntrack has no entry for the connection (conntrack is
/// not active in this network namespace, or the flow is untracked) or the
/// socket is not TCP. A tracked connection that was not redirected gives its
/// own local address. An IPv6 socket carrying an IPv4-mapped connection
/// gives `None` (its conntrack entry is IPv4, the lookup IPv6).
pub fn original_destination(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    let raw = fd.as_raw_fd();
    let domain = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let res = match domain {
        libc::AF_INET => {
            // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
            getsockopt_into(raw, libc::SOL_IP, libc::SO_ORIGINAL_DST, &mut sa).map(|len| {
                (len >= mem::size_of::<libc::sockaddr_in>()
                    && i32::from(sa.sin_family) == libc::AF_INET)
                    .then(|| {
                        SocketAddr::new(
                            IpAddr::V4(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes())),
                            u16::from_be(sa.sin_port),
                        )
                    })
            })
        }
        libc::AF_INET6 => {
            // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            getsockopt_into(raw, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST, &mut sa).map(|len| {
                (len >= mem::size_of::<libc::sockaddr_in6>()
                    && i32::from(sa.sin6_family) == libc::AF_INET6)
                    .then(|| {
                        SocketAddr::new(
                            IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
                            u16::from_be(sa.sin6_port),
                        )
                    })
            })
        }
        _ => return Ok(None),
    };
    match res {
        Ok(addr) => Ok(addr),
        // ENOENT: no conntrack entry; ENOPROTOOPT: not TCP, or conntrack for
        // this family not loaded. Neither is a redirect we could name.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOPROTOOPT)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A NETLINK_SOCK_DIAG socket kept for many requests (one request at a
/// time; the lock serialises callers). Dropping it closes the socket. It
/// answers for the network namespace it was opened in. Keeping one saves the
/// socket's setup: about 4 µs per exact lookup instead of 13-15 µs (10,000
/// other sockets open; the lookup itself does not depend on their number).
#[derive(Debug)]
pub struct SockDiag {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    sock: netlink::Socket,
    seq: u32,
    buf: Vec<u8>,
    /// An exchange ended early (timeout, malformed reply, dump cut short):
    /// the socket is replaced before the next request.
    dirty: bool,
}

impl SockDiag {
    /// Opens the socket (close-on-exec, 2 s receive timeout). `Err` with
    /// kind `Unsupported` when the kernel has no NETLINK_SOCK_DIAG.
    pub fn open() -> io::Result<Self> {
        Ok(SockDiag {
            inner: Mutex::new(Inner {
                sock: open_socket()?,
                seq: 0,
                buf: vec![0u8; RECV_BUF],
                dirty: false,
            }),
        })
    }

    /// [`peer_socket`] on this socket.
    pub fn peer_socket(
        &self,
        proto: Proto,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<Option<PeerSocket>> {
        let Some((family, local, remote)) = tuple(client, server) else {
            return Ok(None); // an IPv4 client cannot talk to an IPv6 server
        };
        let (src, dst) = match proto {
            Proto::Tcp => (local, remote),
            // udp_diag swaps them ("for historical reasons"): idiag_src is
            // the datagram's source (the socket's remote), idiag_dst its
            // destination (the socket's local address).
            Proto::Udp => (remote, local),
        };
        let req = build_request(
            family,
            proto.ipproto(),
            u32::MAX,
            &SockId::new(src, dst),
            None,
        );
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = inner.send(&req, 0)?;
        let Some(msg) = inner.recv_exact(seq)? else {
            return Ok(None);
        };
        Ok(match_peer(proto, &msg, local, remote))
    }

    /// [`count_time_wait`] on this socket.
    pub fn count_time_wait(&self, ports: &[u16]) -> io::Result<TimeWaitCounts> {
        let mut want: Vec<u16> = ports.to_vec();
        want.sort_unstable();
        want.dedup();
        if want.len() > MAX_PORTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("count_time_wait: {} ports, at most {MAX_PORTS}", want.len()),
            ));
        }
        let mut counts = TimeWaitCounts {
            per_port: want.iter().map(|&p| (p, 0)).collect(),
            total: 0,
            received: 0,
        };
        if want.is_empty() {
            return Ok(counts);
        }
        let bytecode = port_filter(&want);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let req = build_request(
                family,
                libc::IPPROTO_TCP as u8,
                1 << TCP_TIME_WAIT,
                &SockId::any(),
                Some(&bytecode),
            );
            let mut attempt = 0;
            loop {
                let mut part = counts.clone();
                let seq = inner.send(&req, NLM_F_DUMP)?;
                let complete = inner.recv_dump(seq, |m| {
                    part.received += 1;
                    if let Some(s) = parse_diag_msg(m) {
                        if s.state == TCP_TIME_WAIT {
                            part.add(s.sport, s.dport);
                        }
                    }
                })?;
                attempt += 1;
                if complete || attempt >= DUMP_RETRIES {
                    if !complete {
                        return Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "TIME_WAIT dump interrupted by concurrent changes, retries exhausted",
                        ));
                    }
                    counts = part;
                    break;
                }
            }
        }
        Ok(counts)
    }
}

impl TimeWaitCounts {
    fn add(&mut self, sport: u16, dport: u16) {
        let mut matched = false;
        for (p, n) in &mut self.per_port {
            if *p == sport || *p == dport {
                *n += 1;
                matched = true;
            }
        }
        if matched {
            self.total += 1;
        }
    }
}

// --- requests ---

/// The address pair of a lookup, as the kernel stores it: both IPv4 (an
/// IPv4-mapped IPv6 address counts as IPv4; the kernel's lookup finds
/// dual-stack sockets carrying IPv4 traffic too) or both IPv6.
fn tuple(a: SocketAddr, b: SocketAddr) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (a, b) = (canonical(a), canonical(b));
    match (a.ip(), b.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some((libc::AF_INET as u8, a, b)),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some((libc::AF_INET6 as u8, a, b)),
        _ => None,
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// struct inet_diag_sockid, addresses and ports in network byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
}

impl SockId {
    fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        SockId {
            sport: src.port(),
            dport: dst.port(),
            src: addr_bytes(src.ip()),
            dst: addr_bytes(dst.ip()),
        }
    }

    fn any() -> Self {
        SockId {
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
        }
    }
}

/// An address in the 16 bytes of idiag_src/idiag_dst: IPv4 in the first 4.
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// nlmsghdr is filled by [`Inner::send`]; this is the payload: an
/// inet_diag_req_v2 and, for a dump, the bytecode attribute.
fn build_request(
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
fn port_filter(ports: &[u16]) -> Vec<u8> {
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
struct DiagMsg {
    family: u8,
    state: u8,
    sport: u16,
    dport: u16,
    src: IpAddr,
    dst: IpAddr,
    uid: u32,
    inode: u32,
    cgroup_id: Option<u64>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ip_from(family: u8, b: &[u8]) -> Option<IpAddr> {
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
fn parse_diag_msg(p: &[u8]) -> Option<DiagMsg> {
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
        cgroup_id,
    })
}

/// Accepts the kernel's answer only if it is the socket asked for and one a
/// process can still hold.
fn match_peer(
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
    (ok && m.inode != 0).then_some(PeerSocket {
        uid: m.uid,
        inode: u64::from(m.inode),
        cgroup_id: m.cgroup_id,
        local: got_local,
        remote: got_remote,
    })
}

fn protocol(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

// --- the socket ---

impl Inner {
    /// Sends one request (nlmsghdr + `payload`); returns its sequence number.
    fn send(&mut self, payload: &[u8], extra_flags: u16) -> io::Result<u32> {
        if self.dirty {
            // The rest of an exchange that ended early may be queued, or a
            // dump still running (a new dump would get EBUSY): start over on
            // a fresh socket.
            self.sock = open_socket()?;
        }
        self.dirty = true; // until the answer has been read to its end
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let len = u32::try_from(NLMSG_HDRLEN + payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "request too large"))?;
        let mut out = Vec::with_capacity(len as usize);
        netlink::put_header(
            &mut out,
            len,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | extra_flags,
            seq,
        );
        out.extend_from_slice(payload);
        self.sock.send(&out)?;
        Ok(seq)
    }

    /// Receives one datagram into the buffer; returns its length. Fails with
    /// `TimedOut` after RECV_TIMEOUT.
    fn recv(&mut self) -> io::Result<usize> {
        // A blocking receive returns a datagram or an error, never `None`.
        Ok(self.sock.recv(&mut self.buf, false)?.unwrap_or(0))
    }

    /// The answer to an exact request: the message's payload, or `None` when
    /// the kernel answered ENOENT (no such socket, or no diag handler for
    /// the protocol).
    fn recv_exact(&mut self, seq: u32) -> io::Result<Option<Vec<u8>>> {
        loop {
            let n = self.recv()?;
            let mut answer: Option<io::Result<Option<Vec<u8>>>> = None;
            for m in netlink::msgs(&self.buf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue; // stale answer to an earlier exchange
                }
                answer = Some(match m.msg_type {
                    SOCK_DIAG_BY_FAMILY => Ok(Some(m.payload.to_vec())),
                    NLMSG_ERROR => match netlink::error_code(m.payload) {
                        Ok(0) => Ok(None),
                        Ok(libc::ENOENT) => Ok(None),
                        Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
                        Err(e) => Err(e.into()),
                    },
                    NLMSG_NOOP => continue,
                    other => Err(protocol(format!("unexpected netlink message type {other}"))),
                });
                break;
            }
            if let Some(a) = answer {
                // An exact request draws exactly one message.
                self.dirty = false;
                return a;
            }
        }
    }

    /// Reads a dump to its NLMSG_DONE, handing each socket message's payload
    /// to `each`. `Ok(false)`: the kernel flagged the dump as interrupted.
    fn recv_dump(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
        let mut seen = 0usize;
        let mut interrupted = false;
        loop {
            let n = self.recv()?;
            let mut end: Option<io::Result<()>> = None;
            for m in netlink::msgs(&self.buf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.msg_type {
                    NLMSG_DONE => {
                        end = Some(Ok(()));
                        break;
                    }
                    NLMSG_ERROR => {
                        end = Some(match netlink::error_code(m.payload) {
                            Ok(0) => continue,
                            Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
                            Err(e) => Err(e.into()),
                        });
                        break;
                    }
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => {
                        end = Some(Err(protocol("netlink overrun".into())));
                        break;
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        seen += 1;
                        if seen > DUMP_MAX_MSGS {
                            end = Some(Err(protocol(format!(
                                "sock_diag dump longer than {DUMP_MAX_MSGS} messages"
                            ))));
                            break;
                        }
                        each(m.payload);
                        if m.flags & NLM_F_MULTI == 0 {
                            end = Some(Ok(()));
                            break;
                        }
                    }
                    _ => {}
                }
            }
            match end {
                Some(Ok(())) => {
                    self.dirty = false;
                    return Ok(!interrupted);
                }
                // An error message ends a dump; anything else (overrun, too
                // long) leaves it dirty.
                Some(Err(e)) => {
                    self.dirty = e.raw_os_error().is_none();
                    return Err(e);
                }
                None => {}
            }
        }
    }
}

/// A NETLINK_SOCK_DIAG socket, close-on-exec, with send and receive
/// timeouts. `Err` with kind `Unsupported` when the kernel has none.
fn open_socket() -> io::Result<netlink::Socket> {
    netlink::Socket::open(libc::NETLINK_SOCK_DIAG, "sock_diag", RECV_TIMEOUT).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => io::Error::new(
                io::ErrorKind::Unsupported,
                format!("NETLINK_SOCK_DIAG socket: {e}"),
            ),
            _ => e,
        }
    })
}

/// getsockopt into a plain-data `T`; returns the length the kernel wrote.
fn getsockopt_into<T: Copy>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is valid for writes of size_of::<T>() bytes and `len`
    // says so; T is plain data (sockaddr_in/in6, c_int) for which any bytes
    // the kernel writes are a valid value.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (value as *mut T).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((len as usize).min(mem::size_of::<T>()))
}

fn getsockopt_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    getsockopt_into(fd, level, name, &mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the kernel's bytecode interpreter (inet_diag_bc_run) for ports.
    fn run_bc(bc: &[u8], sport: u16, dport: u16) -> bool {
        let mut at = 0usize;
        let mut len = bc.len() as isize;
        while len > 0 {
            let code = bc[at];
            let yes_off = bc[at + 1] as isize;
            let no_off = u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as isize;
            let operand = || u16::from_ne_bytes([bc[at + 6], bc[at + 7]]);
            let yes = match code {
                INET_DIAG_BC_JMP => false,
                INET_DIAG_BC_S_EQ => sport == operand(),
                INET_DIAG_BC_D_EQ => dport == operand(),
                0 => true,
                _ => panic!("unexpected op {code}"),
            };
            let off = if yes { yes_off } else { no_off };
            len -= off;
            at = at.wrapping_add(off as usize);
        }
        len == 0
    }

    /// The kernel's audit (inet_diag_bc_audit + valid_cc) for the ops used.
    fn audit(bc: &[u8]) -> bool {
        let valid_cc = |cc: isize| {
            let (mut at, mut len) = (0usize, bc.len() as isize);
            while len >= 0 {
                if cc > len {
                    return false;
                }
                if cc == len {
                    return true;
                }
                let yes = bc[at + 1] as isize;
                if yes < 4 || yes & 3 != 0 {
                    return false;
                }
                len -= yes;
                at += yes as usize;
            }
            false
        };
        let (mut at, mut len) = (0usize, bc.len() as isize);
        while len > 0 {
            let code = bc[at];
            let mut min_len = 4isize;
            match code {
                INET_DIAG_BC_S_EQ | INET_DIAG_BC_D_EQ => {
                    min_len += 4;
                    if len < min_len {
                        return false;
                    }
                }
                INET_DIAG_BC_JMP => {}
                _ => return false,
            }
            let yes = bc[at + 1] as isize;
            let no = u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as isize;
            if no < min_len || no > len + 4 || no & 3 != 0 {
                return false;
            }
            if no < len && !valid_cc(len - no) {
                return false;
            }
            if yes < min_len || yes > len + 4 || yes & 3 != 0 {
                return false;
            }
            at += yes as usize;
            len -= yes;
        }
        len == 0
    }

    #[test]
    fn port_filter_matches_local_or_remote_port() {
        for ports in [&[111u16][..], &[111, 1111], &[1, 2, 3, 111, 65535]] {
            let bc = port_filter(ports);
            assert!(audit(&bc), "{ports:?}: kernel audit would reject");
            for &p in ports {
                assert!(run_bc(&bc, p, 40000), "{ports:?}: sport {p}");
                assert!(run_bc(&bc, 40000, p), "{ports:?}: dport {p}");
            }
            assert!(!run_bc(&bc, 40000, 40001), "{ports:?}: other ports");
            assert!(!run_bc(&bc, 0, 0), "{ports:?}: zero ports");
        }
        let many: Vec<u16> = (1..=MAX_PORTS as u16).collect();
        let bc = port_filter(&many);
        assert!(audit(&bc));
        assert!(run_bc(&bc, 5000, MAX_PORTS as u16));
        assert!(!run_bc(&bc, 5000, 5001));
        assert!(NLA_HDRLEN + bc.len() <= usize::from(u16::MAX));
    }

    fn diag_msg(family: u8, state: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut m = vec![family, state, 0, 0];
        m.extend_from_slice(&sport.to_be_bytes());
        m.extend_from_slice(&dport.to_be_bytes());
        let mut a = [0u8; 16];
        a[..src.len()].copy_from_slice(src);
        m.extend_from_slice(&a);
        let mut a = [0u8; 16];
        a[..dst.len()].copy_from_slice(dst);
        m.extend_from_slice(&a);
        m.extend_from_slice(&[0u8; 12]); // if, cookie
        m.extend_from_slice(&[0u8; 12]); // expires, rqueue, wqueue
        m.extend_from_slice(&65534u32.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m
    }

    #[test]
    fn diag_messages_parse_and_bound_attributes() {
        let mut m = diag_msg(2, 1, &[127, 0, 0, 1], 40000, &[127, 0, 0, 1], 111);
        assert_eq!(m.len(), DIAG_MSG_LEN);
        // An unrelated attribute, then the cgroup id.
        m.extend_from_slice(&[5, 0, 8, 0, 1, 0, 0, 0]);
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        m.extend_from_slice(&77u64.to_ne_bytes());
        let d = parse_diag_msg(&m).unwrap();
        assert_eq!(
            (d.sport, d.dport, d.uid, d.inode),
            (40000, 111, 65534, 4242)
        );
        assert_eq!(d.cgroup_id, Some(77));
        // Every truncation parses or is refused; none panics.
        for cut in 0..m.len() {
            let _ = parse_diag_msg(&m[..cut]);
        }
        assert!(parse_diag_msg(&m[..DIAG_MSG_LEN - 1]).is_none());
        // An attribute claiming more than is there ends the walk.
        let mut bad = diag_msg(2, 1, &[127, 0, 0, 1], 1, &[127, 0, 0, 1], 2);
        bad.extend_from_slice(&[200, 0, 21, 0, 1, 2, 3, 4]);
        assert_eq!(parse_diag_msg(&bad).unwrap().cgroup_id, None);
        // Unknown family: refused.
        assert!(parse_diag_msg(&diag_msg(99, 1, &[], 1, &[], 2)).is_none());
    }

    #[test]
    fn answers_must_match_the_tuple_asked_for() {
        let c: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let s: SocketAddr = "127.0.0.1:111".parse().unwrap();
        let lo = [127, 0, 0, 1];
        let est = diag_msg(2, TCP_ESTABLISHED, &lo, 40000, &lo, 111);
        assert!(match_peer(Proto::Tcp, &est, c, s).is_some());
        // A listener the kernel fell back to, or a TIME_WAIT socket: no owner.
        let listen = diag_msg(2, TCP_LISTEN, &lo, 40000, &[0; 4], 0);
        assert!(match_peer(Proto::Tcp, &listen, c, s).is_none());
        let tw = diag_msg(2, TCP_TIME_WAIT, &lo, 40000, &lo, 111);
        assert!(match_peer(Proto::Tcp, &tw, c, s).is_none());
        let other = diag_msg(2, TCP_ESTABLISHED, &lo, 40000, &lo, 1111);
        assert!(match_peer(Proto::Tcp, &other, c, s).is_none());
        // UDP: unconnected on the wildcard address, or connected to `s`.
        let unconnected = diag_msg(2, TCP_CLOSE, &[0; 4], 40000, &[0; 4], 0);
        assert!(match_peer(Proto::Udp, &unconnected, c, s).is_some());
        let connected = diag_msg(2, TCP_ESTABLISHED, &lo, 40000, &lo, 111);
        assert!(match_peer(Proto::Udp, &connected, c, s).is_some());
        let elsewhere = diag_msg(2, TCP_ESTABLISHED, &lo, 40000, &lo, 2049);
        assert!(match_peer(Proto::Udp, &elsewhere, c, s).is_none());
        let other_port = diag_msg(2, TCP_CLOSE, &[0; 4], 40001, &[0; 4], 0);
        assert!(match_peer(Proto::Udp, &other_port, c, s).is_none());
    }

    #[test]
    fn mapped_addresses_are_looked_up_as_ipv4() {
        let c: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let s: SocketAddr = "127.0.0.1:111".parse().unwrap();
        let (family, l, r) = tuple(c, s).unwrap();
        assert_eq!(i32::from(family), libc::AF_INET);
        assert_eq!(l, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(r, s);
        assert!(tuple("[::1]:1".parse().unwrap(), s).is_none());
    }

    #[test]
    fn exact_request_layout() {
        let id = SockId::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:111".parse().unwrap(),
        );
        let r = build_request(2, 6, u32::MAX, &id, None);
        assert_eq!(r.len(), 56);
        assert_eq!(&r[8..12], &[0x9c, 0x40, 0, 111]);
        assert_eq!(&r[12..16], &[127, 0, 0, 1]);
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(&r[48..56], &[0xff; 8]);
    }
}
