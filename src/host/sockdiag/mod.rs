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
//! The inet_diag messages are built and parsed here (`msg`); the exchanges
//! run on `host::netlink`'s socket (`libc` only), which checks every length
//! the kernel sends against the datagram it came in, and bounds one receive
//! by a fixed buffer and a 2 s timeout.
//!
//! Files: this one is the public API, what the answers mean, and
//! SO_ORIGINAL_DST; `msg` holds the inet_diag constants, request building
//! and reply parsing.

mod msg;
#[cfg(test)]
mod tests;
mod unix;

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::netlink::{Answer, DumpLimits, Message, NetlinkSocket, Step};
use super::{datagrams, sys};
use msg::*;
pub use unix::{unix_listeners, UnixListener, UnixName};

/// How long one receive may block before the call fails with `TimedOut`.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// A dump ends after this many messages at the latest (a bound on a kernel
/// that never sends NLMSG_DONE, far above any real TIME_WAIT count: the
/// ephemeral port range times the addresses in use). Nothing of a message
/// is kept, so its bytes are not bounded apart.
const DUMP_LIMITS: DumpLimits = DumpLimits {
    messages: 4_000_000,
    bytes: usize::MAX,
};
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
    /// The socket's inode: `socket:[INODE]` in /proc/PID/fd of its holders;
    /// 0 once no process holds it (closed, the kernel finishing it).
    pub inode: u64,
    /// The socket's cookie: what the eBPF recorder (`host::bpf`) keys its
    /// owners by.
    pub cookie: u64,
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
    let (domain, _) = sys::getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let (level, name) = match domain {
        libc::AF_INET => (libc::SOL_IP, libc::SO_ORIGINAL_DST),
        libc::AF_INET6 => (libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST),
        _ => return Ok(None),
    };
    match sys::getsockopt::<libc::sockaddr_storage>(fd, level, name) {
        // The address of the socket's own family (all zero, no family,
        // where the kernel wrote nothing); port and address only.
        Ok((sa, _)) => Ok(datagrams::socket_addr(&sa)
            .filter(|a| a.is_ipv4() == (domain == libc::AF_INET))
            .map(|a| SocketAddr::new(a.ip(), a.port()))),
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
    sock: NetlinkSocket,
}

impl SockDiag {
    /// Opens the socket (close-on-exec, 2 s receive timeout). `Err` with
    /// kind `Unsupported` when the kernel has no NETLINK_SOCK_DIAG.
    pub fn open() -> io::Result<Self> {
        let sock = NetlinkSocket::open(libc::NETLINK_SOCK_DIAG, "sock_diag", RECV_TIMEOUT)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("NETLINK_SOCK_DIAG socket: {e}"),
                ),
                _ => e,
            })?;
        Ok(SockDiag { sock })
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
        let req = Message {
            msg_type: SOCK_DIAG_BY_FAMILY,
            flags: 0,
            payload: build_request(
                family,
                proto.ipproto(),
                u32::MAX,
                &SockId::new(src, dst),
                None,
            ),
        };
        // An exact request draws exactly one message: the socket, or an
        // error (ENOENT: no such socket, or no diag handler for the
        // protocol).
        let mut found = Ok(None);
        self.sock.request(&[req], |_, answer| {
            found = match answer {
                Answer::Reply(m) if m.msg_type == SOCK_DIAG_BY_FAMILY => {
                    Ok(match_peer(proto, m.payload, local, remote))
                }
                Answer::Ack
                | Answer::Error {
                    errno: libc::ENOENT,
                    ..
                } => Ok(None),
                Answer::Error { errno, .. } => Err(io::Error::from_raw_os_error(errno)),
                Answer::Reply(m) => Err(protocol(format!(
                    "unexpected netlink message type {}",
                    m.msg_type
                ))),
            };
            Step::Done
        })?;
        found
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
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let req = Message {
                msg_type: SOCK_DIAG_BY_FAMILY,
                flags: 0,
                payload: build_request(
                    family,
                    libc::IPPROTO_TCP as u8,
                    1 << TCP_TIME_WAIT,
                    &SockId::any(),
                    Some(&bytecode),
                ),
            };
            counts = self.sock.dump(
                &req,
                DUMP_LIMITS,
                || counts.clone(),
                |part, m| {
                    if m.msg_type != SOCK_DIAG_BY_FAMILY {
                        return;
                    }
                    part.received += 1;
                    if let Some(s) = parse_diag_msg(m.payload) {
                        if s.state == TCP_TIME_WAIT {
                            part.add(s.sport, s.dport);
                        }
                    }
                },
            )?;
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
