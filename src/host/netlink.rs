//! The one netlink exchange of the crate: a bounded, defensive socket to the
//! kernel over `libc`, shared by `netfilter` (NETLINK_NETFILTER) and
//! `sockdiag` (NETLINK_SOCK_DIAG), which keep only their messages and what
//! the answers mean.
//!
//! Two exchanges: [`NetlinkSocket::request`] sends one message or a batch and
//! hands each answer to the caller, which says when the answer is complete;
//! [`NetlinkSocket::dump`] sends a dump request and folds every reply up to
//! NLMSG_DONE. One receive is one datagram into a fixed buffer (a truncated
//! datagram is an error, never a short read) with a timeout; every length
//! the kernel gives is checked against the datagram it came in (`codec`).
//!
//! The rules both exchanges follow:
//! - Numbering: one counter per socket, from 1, never 0; a batch takes
//!   consecutive numbers. A message with a number outside the exchange's is
//!   the late answer to an earlier one and is skipped.
//! - One exchange at a time: the socket's lock is held from send to the end
//!   of the answer.
//! - Recovery: an exchange that ends before its answer was read to the end
//!   (timeout, malformed message, a dump over its bound, overrun) leaves the
//!   socket dirty; the next exchange first reads whatever is queued, without
//!   waiting, which also lets a dump the kernel is still running send the
//!   rest of it. The socket itself is kept, never replaced: the nf_tables
//!   one owns its table, which would go with it.
//! - Dumps: a dump the kernel flags as inconsistent (NLM_F_DUMP_INTR: the
//!   data changed while it ran) or reports messages lost in (NLMSG_OVERRUN)
//!   is restarted from nothing, at most [`DUMP_ATTEMPTS`] times in all, then
//!   [`NetlinkError::Interrupted`]. What a failed attempt folded is dropped.
#![allow(unsafe_code)]

mod codec;

pub(crate) use codec::*;

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::sys;

/// One receive: the kernel builds dump datagrams of at most 32 KiB; acks and
/// exact answers are far smaller.
const RECV_BUF: usize = 64 * 1024;
/// Attempts of a dump the kernel flagged as interrupted or overrun.
pub(crate) const DUMP_ATTEMPTS: usize = 3;
/// Datagrams read before an exchange on a dirty socket, at most. A dump
/// still running past that makes the next dump fail with EBUSY (an error,
/// never a wrong answer: its messages carry an older sequence number).
const DRAIN_MAX: usize = 1024;

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetlinkError {
    /// The socket failed; `TimedOut` when no answer came within its timeout.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A length or field from the kernel that does not fit.
    #[error("{0}")]
    Malformed(String),
    /// The kernel's NLMSG_ERROR: errno (positive) and its extended ACK
    /// message, if it sent one.
    #[error("{}{}", io::Error::from_raw_os_error(*errno), message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel { errno: i32, message: Option<String> },
    /// Every attempt of a dump was interrupted or overrun.
    #[error("{what} dump interrupted by concurrent changes, retries exhausted")]
    Interrupted { what: &'static str },
    /// A dump longer than the bound its caller set.
    #[error("{what} dump larger than {messages} messages / {bytes} bytes")]
    TooLarge {
        what: &'static str,
        messages: usize,
        bytes: usize,
    },
}

impl From<NetlinkError> for io::Error {
    fn from(e: NetlinkError) -> Self {
        match e {
            NetlinkError::Io(e) => e,
            NetlinkError::Kernel { errno, .. } => io::Error::from_raw_os_error(errno),
            NetlinkError::Interrupted { .. } => io::Error::new(io::ErrorKind::Interrupted, e),
            NetlinkError::Malformed(_) | NetlinkError::TooLarge { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, e)
            }
        }
    }
}

/// One answer to a message of a request.
#[derive(Debug)]
pub(crate) enum Answer<'a> {
    /// NLMSG_ERROR with errno 0.
    Ack,
    /// NLMSG_ERROR with an errno (positive) and the extended ACK message.
    Error { errno: i32, message: Option<String> },
    /// Any other message but NLMSG_NOOP.
    Reply(NlMsg<'a>),
}

/// What the caller of [`NetlinkSocket::request`] makes of the answers so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// More is to come: wait for it.
    Wait,
    /// Everything the kernel will say is queued already: read the rest
    /// without waiting, then stop.
    Settled,
    /// The answer is complete.
    Done,
}

/// What one dump may bring at most; past either bound it fails with
/// [`NetlinkError::TooLarge`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct DumpLimits {
    /// Messages other than NLMSG_DONE / ERROR / NOOP / OVERRUN.
    pub(crate) messages: usize,
    /// Their payload bytes.
    pub(crate) bytes: usize,
}

/// A netlink socket to the kernel, close-on-exec, bound to a port id the
/// kernel picks, with send and receive timeouts.
#[derive(Debug)]
pub(crate) struct NetlinkSocket {
    fd: OwnedFd,
    /// The protocol's name in errors ("no {what} reply").
    what: &'static str,
    timeout: Duration,
    state: Mutex<State>,
}

/// What one exchange holds, under the socket's lock.
#[derive(Debug)]
struct State {
    /// The next sequence number.
    seq: u32,
    buf: Vec<u8>,
    /// The last exchange ended before its answer was read to the end.
    dirty: bool,
}

impl AsFd for NetlinkSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NetlinkSocket {
    /// Opens and binds an AF_NETLINK socket of `protocol` with SO_RCVTIMEO
    /// and SO_SNDTIMEO of `timeout` (whole seconds). The socket() error is
    /// returned as is (EPROTONOSUPPORT / EAFNOSUPPORT: no such protocol).
    pub(crate) fn open(
        protocol: libc::c_int,
        what: &'static str,
        timeout: Duration,
    ) -> io::Result<Self> {
        // SAFETY: plain syscall with integer arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        sys::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        sys::setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
        let sa = kernel_addr();
        // SAFETY: `sa` is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetlinkSocket {
            fd,
            what,
            timeout,
            state: Mutex::new(State {
                seq: 1,
                buf: vec![0u8; RECV_BUF],
                dirty: false,
            }),
        })
    }

    /// Moves the socket to the lowest free descriptor number above `fd`,
    /// unless it is there already.
    pub(crate) fn move_above(&mut self, fd: RawFd) -> io::Result<()> {
        if self.fd.as_raw_fd() > fd {
            return Ok(());
        }
        // SAFETY: plain fcntl on a descriptor we own; the result is checked.
        let raw = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, fd + 1) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is the duplicate just made, owned by nobody else; the
        // original closes as it is replaced (the socket lives on in `raw`).
        self.fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(())
    }

    /// Sends `msgs` in one datagram and hands every answer to `each` with
    /// the index of the message it answers, until `each` says
    /// [`Step::Done`], or says [`Step::Settled`] and nothing more is queued.
    pub(crate) fn request(
        &self,
        msgs: &[Message],
        mut each: impl FnMut(usize, Answer<'_>) -> Step,
    ) -> Result<(), NetlinkError> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *guard;
        let first = self.begin(st, msgs, 0)?;
        let mut settled = false;
        while let Some(n) = self.recv(&mut st.buf, !settled)? {
            for m in codec::msgs(&st.buf[..n]) {
                let m = m?;
                let i = m.seq.wrapping_sub(first) as usize;
                if i >= msgs.len() || m.msg_type == NLMSG_NOOP {
                    continue; // a late answer to an earlier exchange, or nothing
                }
                let answer = match m.msg_type {
                    NLMSG_ERROR => match parse_error(&m)? {
                        (0, _) => Answer::Ack,
                        (errno, message) => Answer::Error { errno, message },
                    },
                    _ => Answer::Reply(m),
                };
                match each(i, answer) {
                    Step::Wait => {}
                    Step::Settled => settled = true,
                    Step::Done => {
                        st.dirty = false;
                        return Ok(());
                    }
                }
            }
        }
        st.dirty = false;
        Ok(())
    }

    /// Sends the dump request `msg` (NLM_F_DUMP added) and folds every reply
    /// message into a value `start` makes, up to NLMSG_DONE (or a reply
    /// without NLM_F_MULTI, which is the whole answer). Restarted when the
    /// kernel flags the dump as interrupted or overrun (see the module).
    pub(crate) fn dump<T>(
        &self,
        msg: &Message,
        limits: DumpLimits,
        start: impl Fn() -> T,
        mut each: impl FnMut(&mut T, &NlMsg<'_>),
    ) -> Result<T, NetlinkError> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..DUMP_ATTEMPTS {
            let mut folded = start();
            if self.dump_once(&mut guard, msg, limits, &mut folded, &mut each)? {
                return Ok(folded);
            }
        }
        Err(NetlinkError::Interrupted { what: self.what })
    }

    /// One attempt of [`Self::dump`]: `Ok(false)` when it must start over.
    fn dump_once<T>(
        &self,
        st: &mut State,
        msg: &Message,
        limits: DumpLimits,
        folded: &mut T,
        each: &mut impl FnMut(&mut T, &NlMsg<'_>),
    ) -> Result<bool, NetlinkError> {
        let seq = self.begin(st, std::slice::from_ref(msg), NLM_F_DUMP)?;
        let (mut count, mut bytes, mut interrupted) = (0usize, 0usize, false);
        loop {
            // A blocking receive brings a datagram or an error, never `None`.
            let n = self.recv(&mut st.buf, true)?.unwrap_or(0);
            for m in codec::msgs(&st.buf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue; // a late answer to an earlier exchange
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.msg_type {
                    NLMSG_NOOP => {}
                    NLMSG_DONE => {
                        st.dirty = false;
                        return Ok(!interrupted);
                    }
                    NLMSG_ERROR => match parse_error(&m)? {
                        (0, _) => {}
                        // An error ends the dump in the kernel too.
                        (errno, message) => {
                            st.dirty = false;
                            return Err(NetlinkError::Kernel { errno, message });
                        }
                    },
                    // Messages were lost; the rest is drained (still dirty).
                    NLMSG_OVERRUN => return Ok(false),
                    _ => {
                        count += 1;
                        bytes = bytes.saturating_add(m.payload.len());
                        if count > limits.messages || bytes > limits.bytes {
                            return Err(NetlinkError::TooLarge {
                                what: self.what,
                                messages: limits.messages,
                                bytes: limits.bytes,
                            });
                        }
                        each(folded, &m);
                        if m.flags & NLM_F_MULTI == 0 {
                            st.dirty = false;
                            return Ok(!interrupted);
                        }
                    }
                }
            }
        }
    }

    /// Starts an exchange: drains a dirty socket, numbers `msgs` (each
    /// with `flags` added) and sends them in one datagram. Returns the
    /// first message's sequence number; the socket is dirty until the
    /// exchange has read its answer to the end.
    fn begin(&self, st: &mut State, msgs: &[Message], flags: u16) -> Result<u32, NetlinkError> {
        if st.dirty {
            for _ in 0..DRAIN_MAX {
                if !matches!(self.recv(&mut st.buf, false), Ok(Some(_))) {
                    break;
                }
            }
        }
        st.dirty = true;
        let count = u32::try_from(msgs.len()).unwrap_or(u32::MAX);
        let first = st.seq;
        st.seq = st.seq.wrapping_add(count);
        if st.seq == 0 {
            st.seq = 1;
        }
        let mut out = Vec::with_capacity(msgs.iter().map(|m| m.payload.len() + 32).sum());
        for (i, m) in msgs.iter().enumerate() {
            m.encode(first.wrapping_add(i as u32), flags, &mut out);
        }
        self.send(&out)?;
        Ok(first)
    }

    /// Sends `buf` to the kernel in one datagram.
    fn send(&self, buf: &[u8]) -> io::Result<()> {
        let sa = kernel_addr();
        let (fd, data, len) = (self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len());
        let to = (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>();
        let to_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `data` is valid for reads of `len` bytes (it is `buf`), `to`
        // a valid sockaddr_nl of `to_len` bytes; both outlive the call.
        let n = retry_interrupted(|| unsafe { libc::sendto(fd, data, len, 0, to, to_len) })?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short netlink send",
            ));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`; returns its length, `Ok(None)` when
    /// not `wait` and nothing is queued. A waiting receive fails with
    /// `TimedOut` after the socket's timeout; a datagram larger than `buf`
    /// is an error.
    fn recv(&self, buf: &mut [u8], wait: bool) -> Result<Option<usize>, NetlinkError> {
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        let (fd, data, len) = (self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
        // SAFETY: `data` is valid for writes of `len` bytes (it is `buf`); the
        // kernel writes at most that many and returns the datagram's full
        // length (MSG_TRUNC), which is checked below before use.
        let got = retry_interrupted(|| unsafe { libc::recv(fd, data, len, flags) });
        match got {
            Ok(n) if n > buf.len() => Err(NetlinkError::Malformed(format!(
                "{} datagram of {n} bytes truncated",
                self.what
            ))),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && !wait => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                Err(NetlinkError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {} reply within {} s", self.what, self.timeout.as_secs()),
                )))
            }
            Err(e) => Err(NetlinkError::Io(e)),
        }
    }
}

/// Runs a send or receive syscall again while a signal interrupts it;
/// returns its count, or the error it set.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        if let Ok(n) = usize::try_from(call()) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The kernel's address: AF_NETLINK, pid 0, no groups.
fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all-zero (pid 0) is the kernel.
    let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;

    /// A sock_diag dump request for IPv4 TCP sockets in LISTEN.
    fn listeners() -> Message {
        let mut payload = vec![libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0];
        payload.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        payload.extend_from_slice(&[0; 48]); // inet_diag_sockid: any
        Message {
            msg_type: SOCK_DIAG_BY_FAMILY,
            flags: 0,
            payload,
        }
    }

    fn open() -> NetlinkSocket {
        NetlinkSocket::open(libc::NETLINK_SOCK_DIAG, "sock_diag", Duration::from_secs(2))
            .expect("NETLINK_SOCK_DIAG")
    }

    #[test]
    fn a_refused_request_is_an_error_answer() {
        let sock = open();
        let mut bad = listeners();
        bad.msg_type = 0x7ff; // no such sock_diag request
        let mut got = None;
        sock.request(&[bad], |i, answer| {
            if let Answer::Error { errno, .. } = answer {
                got = Some((i, errno));
            }
            Step::Done
        })
        .unwrap();
        assert_eq!(got, Some((0, libc::EINVAL)));
    }

    #[test]
    fn a_dump_cut_short_leaves_the_next_one_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sock = open();
        let none = DumpLimits {
            messages: 0,
            bytes: usize::MAX,
        };
        let e = sock.dump(&listeners(), none, || (), |_, _| {}).unwrap_err();
        assert!(matches!(e, NetlinkError::TooLarge { .. }), "{e:?}");
        // The rest of the first dump is drained; its messages carry an older
        // sequence number and never reach the second.
        let all = DumpLimits {
            messages: 100_000,
            bytes: usize::MAX,
        };
        let ports = sock
            .dump(&listeners(), all, Vec::new, |ports, m| {
                // inet_diag_msg: family, state, timer, retrans, sport (BE).
                ports.push(u16::from_be_bytes([m.payload[4], m.payload[5]]));
            })
            .unwrap();
        assert!(ports.contains(&port), "{port} not in {ports:?}");
    }
}
