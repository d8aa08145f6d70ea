//! The NETLINK_NETFILTER socket of one table and its exchanges: an atomic
//! nf_tables batch with every message ACKed, a single request, a bounded dump;
//! and the mapping of a batch's errno to [`NetfilterError`].

use std::sync::Mutex;

use super::netlink::{
    align4, parse_error, NlMsg, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTI,
    NLM_F_REQUEST, SOL_NETLINK,
};
use super::*;

/// Appends one netlink message (nlmsghdr + nfgenmsg + attrs).
pub(super) fn put_msg(
    out: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let len32 = u32::try_from(len).expect("netlink message over 4 GiB");
    netlink::put_header(out, len32, msg_type, flags, seq);
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize(align4(out.len()), 0);
}

pub(super) const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

// --- error mapping ---

/// The first failure the kernel reported for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BatchFailure {
    op: Op,
    errno: i32,
    message: Option<String>,
}

impl BatchFailure {
    fn into_error(self, table: &str) -> NetfilterError {
        map_batch_error(&self.op, self.errno, self.message, table)
    }
}

/// Maps the errno the kernel reported for `op` to an error.
pub(super) fn map_batch_error(
    op: &Op,
    errno: i32,
    message: Option<String>,
    table: &str,
) -> NetfilterError {
    match (op, errno) {
        // nfnetlink checks CAP_NET_ADMIN before it looks at the batch.
        (Op::Begin, libc::EPERM) => NetfilterError::PermissionDenied,
        (Op::Begin, libc::EOPNOTSUPP | libc::EPROTONOSUPPORT) => NetfilterError::Unavailable {
            detail: "the nfnetlink nf_tables subsystem is missing (module nf_tables not loadable)"
                .into(),
        },
        // Another socket owns the table (nft_table_lookup returns EPERM).
        (Op::NewTable, libc::EPERM) => NetfilterError::TableExists {
            table: table.into(),
        },
        (Op::NewTable, libc::EEXIST) => NetfilterError::TableLeftOver {
            table: table.into(),
        },
        // Kernels before 5.12 reject unknown table flags.
        (Op::NewTable, libc::EOPNOTSUPP | libc::EINVAL) => {
            NetfilterError::OwnerUnsupported { errno }
        }
        (Op::NewChain, libc::ENOENT | libc::EOPNOTSUPP) => NetfilterError::Unavailable {
            detail: format!(
                "chain type nat: {} (module nft_chain_nat missing?)",
                errno_text(errno)
            ),
        },
        (Op::NewRule(_) | Op::NewMarkRule, libc::ENOENT | libc::EOPNOTSUPP) => {
            NetfilterError::Unavailable {
                detail: format!(
                    "{op}: {} (module nft_redir / nft_counter missing?)",
                    errno_text(errno)
                ),
            }
        }
        (_, libc::EPERM) => NetfilterError::PermissionDenied,
        _ => NetfilterError::Kernel {
            op: format!("{op} on table inet {table}"),
            errno,
            message,
        },
    }
}

// --- the socket ---

#[derive(Debug)]
pub(super) struct NlSocket {
    sock: netlink::Socket,
    /// Next sequence number; the lock also serialises request/response
    /// exchanges on the socket.
    seq: Mutex<u32>,
}

/// Splits a datagram from the kernel into messages; stops with an error on
/// a length that does not fit.
pub(super) fn split_msgs(buf: &[u8]) -> Result<Vec<NlMsg<'_>>, NetfilterError> {
    Ok(netlink::msgs(buf).collect::<Result<_, _>>()?)
}

impl NlSocket {
    pub(super) fn open() -> Result<Self, NetfilterError> {
        let sock = netlink::Socket::open(libc::NETLINK_NETFILTER, "nf_tables", RECV_TIMEOUT)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => NetfilterError::Unavailable {
                    detail: format!("NETLINK_NETFILTER socket: {e}"),
                },
                _ => NetfilterError::Io(e),
            })?;
        let one: libc::c_int = 1;
        // Small acks (no copy of our request), extended ack messages: both
        // optional, older kernels may lack them.
        let _ = sock.set_option(SOL_NETLINK, NETLINK_CAP_ACK, &one);
        let _ = sock.set_option(SOL_NETLINK, NETLINK_EXT_ACK, &one);
        let rcvbuf: libc::c_int = 1 << 20;
        let _ = sock.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
        sock.bind()?;
        Ok(NlSocket {
            sock,
            seq: Mutex::new(1),
        })
    }

    /// To the lowest free descriptor number above `fd` (if not there).
    pub(super) fn move_above(&mut self, fd: RawFd) -> Result<(), NetfilterError> {
        Ok(self.sock.move_above(fd)?)
    }

    fn next_seqs(seq: &mut u32, n: u32) -> u32 {
        let first = *seq;
        *seq = seq.wrapping_add(n);
        if *seq == 0 {
            *seq = 1;
        }
        first
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        self.sock.send(buf)
    }

    /// Receives one datagram into `buf`; `Ok(None)` when `nonblock` and
    /// nothing is queued. A blocking receive fails with `TimedOut` after
    /// RECV_TIMEOUT.
    fn recv<'b>(
        &self,
        buf: &'b mut [u8],
        nonblock: bool,
    ) -> Result<Option<&'b [u8]>, NetfilterError> {
        let got = self.sock.recv(buf, nonblock)?;
        let buf: &'b [u8] = buf;
        Ok(got.map(|n| &buf[..n]))
    }

    /// Drops whatever an earlier, failed exchange left queued.
    fn drain(&self, buf: &mut [u8]) {
        for _ in 0..64 {
            match self.recv(buf, true) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    /// Sends BATCH_BEGIN, `msgs` (each with NLM_F_ACK), BATCH_END and waits
    /// for the answers. `Err` is the first failure by position.
    ///
    /// BATCH_BEGIN/END carry no NLM_F_ACK: kernels before 6.10 never ack
    /// them. They may still draw an error (no CAP_NET_ADMIN, missing
    /// subsystem, failed commit: all reported on BATCH_BEGIN's sequence
    /// number). nfnetlink handles the whole batch inside sendmsg(), so once
    /// every inner message is answered, or an error came, everything the
    /// kernel will say is already queued: the rest is read without waiting.
    pub(super) fn batch(&self, msgs: &[BatchMsg]) -> Result<(), BatchFailureOrIo> {
        let mut seq_guard = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut rbuf = vec![0u8; RECV_BUF];
        self.drain(&mut rbuf);
        let count = msgs.len() as u32 + 2;
        let first = Self::next_seqs(&mut seq_guard, count);
        let mut out = Vec::with_capacity(256 * msgs.len() + 64);
        let mut ops = Vec::with_capacity(msgs.len() + 2);
        put_msg(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        ops.push(Op::Begin);
        for (i, m) in msgs.iter().enumerate() {
            put_msg(
                &mut out,
                nft_type(m.msg_type),
                NLM_F_REQUEST | NLM_F_ACK | m.flags,
                first.wrapping_add(1 + i as u32),
                NFPROTO_INET,
                0,
                &m.attrs,
            );
            ops.push(m.op.clone());
        }
        put_msg(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            first.wrapping_add(count - 1),
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        ops.push(Op::End);
        self.send(&out)?;

        // answered[i]: Some(errno) once message i got its ACK or error.
        let mut answered: Vec<Option<(i32, Option<String>)>> = vec![None; ops.len()];
        let mut failed = false;
        let inner = 1..ops.len() - 1;
        loop {
            let settled = failed || answered[inner.clone()].iter().all(Option::is_some);
            let Some(data) = self.recv(&mut rbuf, settled)? else {
                break;
            };
            for m in split_msgs(data)? {
                if m.msg_type != NLMSG_ERROR {
                    continue;
                }
                let idx = m.seq.wrapping_sub(first) as usize;
                if idx >= ops.len() {
                    continue; // stale answer to an earlier exchange
                }
                let (errno, text) = parse_error(&m)?;
                if errno != 0 {
                    failed = true;
                    // The commit's own failure is reported on BATCH_BEGIN; keep
                    // the first error per message.
                    if answered[idx].as_ref().is_none_or(|(e, _)| *e == 0) {
                        answered[idx] = Some((errno, text));
                    }
                } else if answered[idx].is_none() {
                    answered[idx] = Some((0, None));
                }
            }
        }
        // Prefer the first failing message other than BATCH_BEGIN (its error
        // names the operation); BATCH_BEGIN's error is the capability check or
        // the commit.
        let first_err = answered
            .iter()
            .enumerate()
            .skip(1)
            .chain(answered.iter().enumerate().take(1))
            .find_map(|(i, a)| match a {
                Some((e, t)) if *e != 0 => Some((i, *e, t.clone())),
                _ => None,
            });
        if let Some((i, errno, message)) = first_err {
            return Err(BatchFailureOrIo::Failure(BatchFailure {
                op: ops[i].clone(),
                errno,
                message,
            }));
        }
        if !answered[inner].iter().all(Option::is_some) {
            return Err(BatchFailureOrIo::Other(NetfilterError::Protocol(
                "batch failed without an error reply".into(),
            )));
        }
        Ok(())
    }

    /// A non-batch request with NLM_F_ACK; Ok on an ACK (or a reply).
    pub(super) fn request(
        &self,
        msg_type: u16,
        family: u8,
        attrs: &[u8],
        what: &str,
    ) -> Result<(), NetfilterError> {
        let mut seq_guard = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut rbuf = vec![0u8; RECV_BUF];
        self.drain(&mut rbuf);
        let seq = Self::next_seqs(&mut seq_guard, 1);
        let mut out = Vec::new();
        put_msg(
            &mut out,
            nft_type(msg_type),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            attrs,
        );
        self.send(&out)?;
        let mut got_reply = false;
        loop {
            let Some(data) = self.recv(&mut rbuf, got_reply)? else {
                return Ok(());
            };
            for m in split_msgs(data)? {
                if m.seq != seq {
                    continue;
                }
                if m.msg_type == NLMSG_ERROR {
                    let (errno, message) = parse_error(&m)?;
                    if errno == 0 {
                        return Ok(());
                    }
                    return Err(NetfilterError::Kernel {
                        op: what.to_owned(),
                        errno,
                        message,
                    });
                }
                got_reply = true;
            }
        }
    }

    /// A dump request: every reply message (type, payload) up to
    /// NLMSG_DONE, bounded by DUMP_MAX_MSGS / DUMP_MAX_BYTES. Retried when
    /// the kernel flags the dump as interrupted.
    pub(super) fn dump(
        &self,
        msg_type: u16,
        family: u8,
        attrs: &[u8],
        what: &str,
    ) -> Result<DumpMsgs, NetfilterError> {
        for _ in 0..DUMP_RETRIES {
            match self.dump_once(msg_type, family, attrs, what)? {
                Some(msgs) => return Ok(msgs),
                None => continue,
            }
        }
        Err(NetfilterError::Kernel {
            op: format!("{what} dump"),
            errno: libc::EINTR,
            message: Some("interrupted by concurrent ruleset changes, retries exhausted".into()),
        })
    }

    fn dump_once(
        &self,
        msg_type: u16,
        family: u8,
        attrs: &[u8],
        what: &str,
    ) -> Result<Option<DumpMsgs>, NetfilterError> {
        let mut seq_guard = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut rbuf = vec![0u8; RECV_BUF];
        self.drain(&mut rbuf);
        let seq = Self::next_seqs(&mut seq_guard, 1);
        let mut out = Vec::new();
        put_msg(
            &mut out,
            nft_type(msg_type),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
            attrs,
        );
        self.send(&out)?;
        let mut msgs = Vec::new();
        let mut total = 0usize;
        let mut interrupted = false;
        loop {
            let Some(data) = self.recv(&mut rbuf, false)? else {
                return Err(NetfilterError::Protocol("empty blocking receive".into()));
            };
            for m in split_msgs(data)? {
                if m.seq != seq {
                    continue;
                }
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.msg_type {
                    NLMSG_DONE => return Ok(if interrupted { None } else { Some(msgs) }),
                    NLMSG_ERROR => {
                        let (errno, message) = parse_error(&m)?;
                        if errno == 0 {
                            continue;
                        }
                        return Err(NetfilterError::Kernel {
                            op: format!("{what} dump"),
                            errno,
                            message,
                        });
                    }
                    NLMSG_NOOP => continue,
                    NLMSG_OVERRUN => {
                        return Err(NetfilterError::Protocol("netlink overrun".into()))
                    }
                    t => {
                        total = total.saturating_add(m.payload.len());
                        if msgs.len() >= DUMP_MAX_MSGS || total > DUMP_MAX_BYTES {
                            // Leave the rest queued; the next exchange drains it.
                            return Err(NetfilterError::Protocol(format!(
                                "{what} dump larger than {DUMP_MAX_MSGS} messages / {DUMP_MAX_BYTES} bytes"
                            )));
                        }
                        if m.flags & NLM_F_MULTI == 0 {
                            msgs.push((t, m.payload.to_vec()));
                            return Ok(Some(msgs));
                        }
                        msgs.push((t, m.payload.to_vec()));
                    }
                }
            }
        }
    }
}

/// The messages of one dump: (nlmsg_type, payload after the nlmsghdr).
pub(super) type DumpMsgs = Vec<(u16, Vec<u8>)>;

/// A batch failed either in the kernel (mapped per operation) or locally.
#[derive(Debug)]
pub(super) enum BatchFailureOrIo {
    Failure(BatchFailure),
    Other(NetfilterError),
}

impl From<io::Error> for BatchFailureOrIo {
    fn from(e: io::Error) -> Self {
        BatchFailureOrIo::Other(e.into())
    }
}

impl From<netlink::Error> for BatchFailureOrIo {
    fn from(e: netlink::Error) -> Self {
        BatchFailureOrIo::Other(e.into())
    }
}

impl From<NetfilterError> for BatchFailureOrIo {
    fn from(e: NetfilterError) -> Self {
        BatchFailureOrIo::Other(e)
    }
}

impl BatchFailureOrIo {
    pub(super) fn into_error(self, table: &str) -> NetfilterError {
        match self {
            BatchFailureOrIo::Failure(f) => f.into_error(table),
            BatchFailureOrIo::Other(e) => e,
        }
    }
}
