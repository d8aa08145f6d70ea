//! Datagrams in batches: `recvmmsg` and `sendmmsg` on a UDP socket.
//!
//! Why batches: a thread blocked in `recvmmsg` (MSG_WAITFORONE) wakes for
//! the first datagram and takes whatever else has come by then in the same
//! call, and the replies to the whole batch leave in one `sendmmsg`: two
//! system calls per wake-up, however many datagrams it serves. Sending
//! never blocks (MSG_DONTWAIT). Every length here is bounded by the batch's
//! own buffers.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// The most datagrams one call takes or sends (the headers live on the
/// stack).
pub const MAX_BATCH: usize = 64;

/// What a received address may take: a sockaddr_storage.
const ADDR_LEN: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// Control space per datagram, in u64 words (cmsghdr alignment): room for
/// an IP_PKTINFO and an IPV6_PKTINFO message (an IPv6 socket's IPv4
/// datagram gets both: 32 + 40 bytes), with room to spare.
const CTRL_WORDS: usize = 16;
const CTRL_LEN: usize = CTRL_WORDS * size_of::<u64>();
// Either pktinfo message fits a reply's control space (checked at build).
// SAFETY: CMSG_SPACE only computes with its argument.
const _: () = assert!(
    unsafe { libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) } as usize <= CTRL_LEN
        && unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize <= CTRL_LEN
);

/// Where a datagram arrived: the local address its reply must come from
/// (IP_PKTINFO's `ipi_spec_dst`, IPV6_PKTINFO's address) and the interface.
/// A socket bound to a wildcard address on a host with several addresses
/// otherwise answers from whichever address the route to the client
/// prefers, and a reply to a redirected datagram from another address
/// than the one it was redirected at does not match its conntrack entry:
/// it leaves untranslated and the client drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub ip: IpAddr,
    pub ifindex: u32,
}

/// Asks the kernel to say where each datagram on `fd` arrived (see
/// [`RecvBatch::arrival`]): IP_PKTINFO for IPv4 (an IPv6 socket's IPv4
/// datagrams included) and, on an IPv6 socket, IPV6_RECVPKTINFO.
pub fn report_arrivals(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    use super::sys::setsockopt;
    setsockopt(fd.as_raw_fd(), libc::SOL_IP, libc::IP_PKTINFO, &1)?;
    if ipv6 {
        setsockopt(fd.as_raw_fd(), libc::SOL_IPV6, libc::IPV6_RECVPKTINFO, &1)?;
    }
    Ok(())
}

/// Received datagrams: up to `slots` of up to `slot_len` bytes each.
///
/// The `recvmmsg` headers are built once, each pointing at its own slot of
/// `bufs` and its own address (boxed: they never move); a call restores
/// only what the kernel rewrote in the headers it filled last time.
pub struct RecvBatch {
    slot_len: usize,
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Each slot's control messages, [`CTRL_WORDS`] words each.
    _ctrls: Box<[u64]>,
    /// One per slot, over its part of `bufs`; `msgs` points at them.
    _iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    /// Datagrams held after the last [`RecvBatch::recv`].
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.capacity())
            .field("slot_len", &self.slot_len)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Room for `slots` datagrams (1 to [`MAX_BATCH`]) of `slot_len` bytes
    /// (a longer one is cut to `slot_len`, as `recvfrom` would cut it). The
    /// buffers are taken zeroed, so pages no datagram reached cost no memory.
    pub fn new(slots: usize, slot_len: usize) -> RecvBatch {
        let slots = slots.clamp(1, MAX_BATCH);
        let slot_len = slot_len.max(1);
        let mut bufs = vec![0u8; slots * slot_len].into_boxed_slice();
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a
        // valid (AF_UNSPEC) value.
        let mut addrs: Box<[libc::sockaddr_storage]> =
            (0..slots).map(|_| unsafe { zeroed() }).collect();
        let mut ctrls = vec![0u64; slots * CTRL_WORDS].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .chunks_exact_mut(slot_len)
            .map(|buf| libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .zip(addrs.iter_mut())
            .zip(ctrls.chunks_exact_mut(CTRL_WORDS))
            .map(|((iov, addr), ctrl)| {
                // SAFETY: mmsghdr is plain old data; all zeroes is valid
                // (null pointers, zero lengths).
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = ADDR_LEN;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = CTRL_LEN;
                m
            })
            .collect();
        RecvBatch {
            slot_len,
            bufs,
            addrs,
            _ctrls: ctrls,
            _iovs: iovs,
            msgs,
            count: 0,
        }
    }

    /// How many datagrams one call takes at most.
    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Takes the datagrams waiting on `fd`, at most [`Self::capacity`], and
    /// returns how many. With `wait`, blocks until the first comes (on a
    /// blocking socket; up to its SO_RCVTIMEO) and takes what else waits
    /// then; without, returns at once. Nothing to take is `Ok(0)`, not an
    /// error.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, wait: bool) -> io::Result<usize> {
        // The kernel wrote the address and control lengths of the headers
        // it filled.
        for m in &mut self.msgs[..std::mem::take(&mut self.count)] {
            m.msg_hdr.msg_namelen = ADDR_LEN;
            m.msg_hdr.msg_controllen = CTRL_LEN;
        }
        let slots = self.capacity();
        let n = loop {
            // SAFETY: the `slots` headers of `msgs` each point at their own
            // iovec (a slot of `bufs`, `slot_len` bytes), their own
            // sockaddr_storage with its true size and their own
            // CTRL_LEN bytes of `ctrls`; all are boxed parts of
            // `self`, alive and unmoved for the call, and the kernel writes
            // no more than those lengths.
            let rc = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    slots as libc::c_uint,
                    if wait {
                        libc::MSG_WAITFORONE
                    } else {
                        libc::MSG_DONTWAIT
                    },
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        };
        self.count = n.min(slots);
        Ok(self.count)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and who sent it (None:
    /// an address family other than IPv4 or IPv6, which a UDP socket never
    /// reports).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let at = i * self.slot_len;
        let len = (self.msgs[i].msg_len as usize).min(self.slot_len);
        let from = socket_addr(&self.addrs[i])?;
        Some((&self.bufs[at..at + len], from))
    }

    /// Where datagram `i` arrived, when the socket reports it
    /// ([`report_arrivals`]); None for an IPv6 multicast destination, which
    /// no reply may come from.
    pub fn arrival(&self, i: usize) -> Option<Arrival> {
        if i >= self.count {
            return None;
        }
        let hdr = &self.msgs[i].msg_hdr;
        if hdr.msg_controllen > CTRL_LEN || hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            return None;
        }
        // SAFETY: `hdr` is a header the kernel filled: msg_control points at
        // this slot's CTRL_LEN bytes of `ctrls` and msg_controllen (checked
        // above) says how many hold control messages; CMSG_FIRSTHDR and
        // CMSG_NXTHDR stay within that length, and each message's data is
        // read only when its length covers the struct read (unaligned
        // reads, so alignment does not matter).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(hdr);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize;
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_IP, libc::IP_PKTINFO)
                        if len >= libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize =>
                    {
                        let p = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                        return Some(Arrival {
                            ip: Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr)).into(),
                            ifindex: p.ipi_ifindex as u32,
                        });
                    }
                    (libc::SOL_IPV6, libc::IPV6_PKTINFO)
                        if len
                            >= libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize =>
                    {
                        let p = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                        let ip = Ipv6Addr::from(p.ipi6_addr.s6_addr);
                        if ip.is_multicast() {
                            return None;
                        }
                        return Some(Arrival {
                            ip: ip.into(),
                            ifindex: p.ipi6_ifindex,
                        });
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(hdr, c);
            }
        }
        None
    }
}

/// The control message that makes a reply to `to` leave from `from`:
/// IPV6_PKTINFO on an IPv6 socket (an IPv4 address as v4-mapped, which
/// Linux takes for a v4-mapped destination), IP_PKTINFO on an IPv4 one.
/// Its length in bytes is returned with the words.
fn source_cmsg(to: SocketAddr, from: Arrival) -> ([u64; CTRL_WORDS], usize) {
    let mut words = [0u64; CTRL_WORDS];
    let buf = words.as_mut_ptr().cast::<u8>();
    // SAFETY: `words` is CTRL_LEN bytes, 8-byte aligned, more than
    // CMSG_SPACE of either pktinfo struct (checked at build, above);
    // the header and the data are written inside it.
    unsafe {
        let (level, kind, data_len) = match to {
            SocketAddr::V6(_) => (
                libc::SOL_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
            SocketAddr::V4(_) => (
                libc::SOL_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
        };
        let space = libc::CMSG_SPACE(data_len as u32) as usize;
        let c = buf.cast::<libc::cmsghdr>();
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        let data = buf.add(libc::CMSG_LEN(0) as usize);
        match to {
            SocketAddr::V6(_) => {
                let ip = match from.ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let p = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: from.ifindex,
                };
                std::ptr::write_unaligned(data.cast(), p);
            }
            SocketAddr::V4(_) => {
                let ip = match from.ip {
                    IpAddr::V4(v4) => v4,
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                let p = libc::in_pktinfo {
                    ipi_ifindex: from.ifindex as libc::c_int,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(data.cast(), p);
            }
        }
        (words, space)
    }
}

/// Replies gathered for one `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    /// (end of the datagram in `bytes`, destination, its source when it
    /// must be set).
    msgs: Vec<(
        usize,
        libc::sockaddr_storage,
        libc::socklen_t,
        Option<Arrival>,
    )>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("datagrams", &self.msgs.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl SendBatch {
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Adds a datagram to `to`, made of `parts` one after the other, sent
    /// from `from` (where the call arrived) when given, else from the
    /// address the kernel picks.
    pub fn push(&mut self, parts: &[&[u8]], to: SocketAddr, from: Option<Arrival>) {
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        let (addr, len) = raw_addr(to);
        self.msgs.push((self.bytes.len(), addr, len, from));
    }

    /// Sends every datagram gathered on `fd`, [`MAX_BATCH`] per call, then
    /// empties the batch. Returns how many could not be sent, and the last
    /// error (for the log): a full send buffer (EAGAIN) drops the rest, as
    /// a UDP socket may; any other error drops the one datagram it was
    /// about.
    pub fn send(&mut self, fd: BorrowedFd<'_>) -> (usize, Option<io::Error>) {
        let (mut dropped, mut last_error) = (0, None);
        let mut start = 0;
        let mut msgs = self.msgs.chunks_mut(MAX_BATCH);
        for chunk in msgs.by_ref() {
            let total = chunk.len();
            // Only the `total` headers used are written (and only those
            // reach the kernel).
            let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); MAX_BATCH];
            let mut hdrs = [MaybeUninit::<libc::mmsghdr>::uninit(); MAX_BATCH];
            let mut ctrls = [[0u64; CTRL_WORDS]; MAX_BATCH];
            for (((iov, m), ctrl), (end, addr, len, from)) in iovs
                .iter_mut()
                .zip(hdrs.iter_mut())
                .zip(ctrls.iter_mut())
                .zip(chunk)
            {
                let iov = iov.write(libc::iovec {
                    iov_base: self.bytes[start..*end].as_ptr().cast_mut().cast(),
                    iov_len: *end - start,
                });
                start = *end;
                // SAFETY: mmsghdr is plain old data; all zeroes is valid.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = *len;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                if let Some(to) = from.and_then(|_| socket_addr(addr)) {
                    let (words, used) = source_cmsg(to, from.expect("checked"));
                    *ctrl = words;
                    h.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
                    h.msg_hdr.msg_controllen = used;
                }
                m.write(h);
            }
            let hdrs = hdrs.as_mut_ptr().cast::<libc::mmsghdr>();
            let mut done = 0;
            while done < total {
                // SAFETY: `hdrs[done..total]` (done < total <= MAX_BATCH, within
                // the array) are written headers, each pointing at an iovec
                // over bytes of `self.bytes`, at a destination address with
                // its length and, where set, at its control message in
                // `ctrls`, all alive and unmoved for the call;
                // the kernel only reads them (and writes each msg_len).
                let rc = unsafe {
                    libc::sendmmsg(
                        fd.as_raw_fd(),
                        hdrs.add(done),
                        (total - done) as libc::c_uint,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if rc > 0 {
                    done += rc as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => {
                        dropped += total - done;
                        done = total;
                        last_error = Some(e);
                    }
                    _ => {
                        // The first datagram left failed: skip it.
                        dropped += 1;
                        done += 1;
                        last_error = Some(e);
                    }
                }
            }
            if matches!(&last_error, Some(e) if e.kind() == io::ErrorKind::WouldBlock) {
                break;
            }
        }
        dropped += msgs.map(|c| c.len()).sum::<usize>();
        self.bytes.clear();
        self.msgs.clear();
        (dropped, last_error)
    }
}

/// A sockaddr_storage the kernel filled in, as a SocketAddr.
pub(crate) fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A SocketAddr as a sockaddr_storage and the length of what it holds.
fn raw_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in; `s` is a local we own.
            let sin = unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn a_batch_takes_what_waits_and_the_replies_go_back_in_one_call() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut batch = RecvBatch::new(8, 64);
        // Nothing waiting: 0, not an error, and no blocking.
        assert_eq!(batch.recv(server.as_fd(), false).unwrap(), 0);
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 5], addr).unwrap();
        }
        // Over 64 bytes: cut to the slot, as recvfrom would.
        clients[0].send_to(&[9u8; 100], addr).unwrap();
        // A blocking socket: each call waits for a first datagram.
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = 0;
        let mut seen = Vec::new();
        while got < 4 {
            let n = batch.recv(server.as_fd(), true).unwrap();
            assert!(n > 0, "timed out");
            for i in 0..n {
                let (bytes, from) = batch.get(i).unwrap();
                seen.push((bytes.to_vec(), from));
            }
            got += n;
        }
        assert!(batch.get(8).is_none());
        assert_eq!(seen[3].0, vec![9u8; 64]);
        let mut out = SendBatch::default();
        for (bytes, from) in &seen[..3] {
            out.push(&[b"re:", bytes], *from, None);
        }
        assert_eq!(out.send(server.as_fd()).0, 0);
        assert!(out.is_empty());
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 16];
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], [&b"re:"[..], &[i as u8; 5]].concat());
        }
    }

    /// A wildcard socket answers from the address each datagram came to:
    /// 127.0.0.2 here, where without the arrival the kernel would pick
    /// 127.0.0.1 (the route to the client's). IPv4 sockets and IPv6 ones
    /// taking IPv4 (v4-mapped) alike.
    #[test]
    fn replies_leave_from_where_the_call_arrived() {
        let v4 = UdpSocket::bind("0.0.0.0:0").unwrap();
        let dual: UdpSocket = super::super::sys::bind_any_v6(false, 0, false)
            .unwrap()
            .into();
        for (server, ipv6) in [(v4, false), (dual, true)] {
            server.set_nonblocking(false).unwrap();
            let port = server.local_addr().unwrap().port();
            report_arrivals(server.as_fd(), ipv6).unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            server
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            for (to, with_arrival) in [("127.0.0.2", true), ("127.0.0.2", false)] {
                client.send_to(b"ping", (to, port)).unwrap();
                let mut batch = RecvBatch::new(4, 64);
                assert_eq!(batch.recv(server.as_fd(), true).unwrap(), 1);
                let (_, from) = batch.get(0).unwrap();
                let arrival = batch.arrival(0).expect("the kernel said where it arrived");
                assert_eq!(
                    arrival.ip.to_canonical(),
                    "127.0.0.2".parse::<IpAddr>().unwrap()
                );
                let mut out = SendBatch::default();
                out.push(&[b"pong"], from, with_arrival.then_some(arrival));
                assert_eq!(out.send(server.as_fd()).0, 0);
                let mut buf = [0u8; 8];
                let (_, replied_from) = client.recv_from(&mut buf).unwrap();
                let want = if with_arrival {
                    "127.0.0.2"
                } else {
                    "127.0.0.1"
                };
                assert_eq!(replied_from.ip().to_string(), want, "ipv6 socket: {ipv6}");
            }
        }
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["127.0.0.1:111", "[::1]:40000", "[fe80::1%2]:7"] {
            let a: SocketAddr = a.parse().unwrap();
            let (raw, _) = raw_addr(a);
            assert_eq!(socket_addr(&raw), Some(a));
        }
    }
}
