//! The NETLINK_SOCK_DIAG socket's exchanges: one request, the answer to an
//! exact lookup, a dump read to its end; a socket whose exchange ended
//! early is replaced before the next request.

use std::io;

use super::msg::{protocol, SOCK_DIAG_BY_FAMILY};
use super::netlink::{
    self, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_DUMP_INTR,
    NLM_F_MULTI, NLM_F_REQUEST,
};
use super::{Inner, DUMP_MAX_MSGS, RECV_TIMEOUT};

// --- the socket ---

impl Inner {
    /// Sends one request (nlmsghdr + `payload`); returns its sequence number.
    pub(super) fn send(&mut self, payload: &[u8], extra_flags: u16) -> io::Result<u32> {
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
    pub(super) fn recv_exact(&mut self, seq: u32) -> io::Result<Option<Vec<u8>>> {
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
    pub(super) fn recv_dump(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
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
pub(super) fn open_socket() -> io::Result<netlink::Socket> {
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
