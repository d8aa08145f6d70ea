//! The nf_tables exchanges on the owning NETLINK_NETFILTER socket: an
//! atomic batch with every message ACKed, a single request, a dump; what
//! the kernel's answers mean, and the mapping of a batch's errno to
//! [`NetfilterError`]. The exchanges themselves run in `host::netlink`.

use super::*;
use crate::host::netlink::{
    Answer, DumpLimits, Message, NetlinkError, NetlinkSocket, NlMsg, Step, NETLINK_CAP_ACK,
    NETLINK_EXT_ACK, NLM_F_ACK, SOL_NETLINK,
};
use crate::host::sys;

/// One nf_tables message: nfgenmsg (family, version, resource id) + attrs.
pub(super) fn nf_msg(msg_type: u16, flags: u16, family: u8, res_id: u16, attrs: &[u8]) -> Message {
    let mut payload = Vec::with_capacity(NFGENMSG_LEN + attrs.len());
    payload.push(family);
    payload.push(0); // NFNETLINK_V0
    payload.extend_from_slice(&res_id.to_be_bytes());
    payload.extend_from_slice(attrs);
    Message {
        msg_type,
        flags,
        payload,
    }
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
        (Op::NewChain(_), libc::ENOENT | libc::EOPNOTSUPP) => NetfilterError::Unavailable {
            detail: format!(
                "chain type nat: {} (module nft_chain_nat missing?)",
                errno_text(errno)
            ),
        },
        (Op::NewRule(_) | Op::NewMarkRule | Op::NewGuardRule, libc::ENOENT | libc::EOPNOTSUPP) => {
            NetfilterError::Unavailable {
                detail: format!(
                    "{op}: {} (module nft_redir / nft_counter missing?)",
                    errno_text(errno)
                ),
            }
        }
        (Op::NewKeeperRule, libc::ENOENT | libc::EOPNOTSUPP) => NetfilterError::Unavailable {
            detail: format!("{op}: {} (module nft_ct missing?)", errno_text(errno)),
        },
        (_, libc::EPERM) => NetfilterError::PermissionDenied,
        _ => NetfilterError::Kernel {
            op: format!("{op} on table inet {table}"),
            errno,
            message,
        },
    }
}

// --- the socket ---

/// The owning socket. Dropping it closes it, and the kernel deletes the
/// owner table with it.
#[derive(Debug)]
pub(super) struct NlSocket {
    sock: NetlinkSocket,
}

/// The [`NetfilterError`] of a failed exchange of `op`.
pub(super) fn exchange_error(e: NetlinkError, op: &str) -> NetfilterError {
    match e {
        NetlinkError::Io(e) => NetfilterError::Io(e),
        NetlinkError::Kernel { errno, message } => NetfilterError::Kernel {
            op: op.to_owned(),
            errno,
            message,
        },
        NetlinkError::Interrupted { .. } => NetfilterError::Kernel {
            op: op.to_owned(),
            errno: libc::EINTR,
            message: Some("interrupted by concurrent ruleset changes, retries exhausted".into()),
        },
        e @ (NetlinkError::Malformed(_) | NetlinkError::TooLarge { .. }) => {
            NetfilterError::Protocol(e.to_string())
        }
    }
}

impl NlSocket {
    pub(super) fn open() -> Result<Self, NetfilterError> {
        let sock = NetlinkSocket::open(libc::NETLINK_NETFILTER, "nf_tables", RECV_TIMEOUT)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => NetfilterError::Unavailable {
                    detail: format!("NETLINK_NETFILTER socket: {e}"),
                },
                _ => NetfilterError::Io(e),
            })?;
        let one: libc::c_int = 1;
        // Small acks (no copy of our request), extended ack messages: both
        // optional, older kernels may lack them.
        let _ = sys::setsockopt(sock.as_fd(), SOL_NETLINK, NETLINK_CAP_ACK, &one);
        let _ = sys::setsockopt(sock.as_fd(), SOL_NETLINK, NETLINK_EXT_ACK, &one);
        let rcvbuf: libc::c_int = 1 << 20;
        let _ = sys::setsockopt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
        Ok(NlSocket { sock })
    }

    /// To the lowest free descriptor number above `fd` (if not there).
    pub(super) fn move_above(&mut self, fd: RawFd) -> Result<(), NetfilterError> {
        Ok(self.sock.move_above(fd)?)
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
        let edge = |msg_type| {
            nf_msg(
                msg_type,
                0,
                libc::AF_UNSPEC as u8,
                NFNL_SUBSYS_NFTABLES,
                &[],
            )
        };
        let mut request = Vec::with_capacity(msgs.len() + 2);
        let mut ops = Vec::with_capacity(msgs.len() + 2);
        request.push(edge(NFNL_MSG_BATCH_BEGIN));
        ops.push(Op::Begin);
        for m in msgs {
            request.push(nf_msg(
                nft_type(m.msg_type),
                NLM_F_ACK | m.flags,
                NFPROTO_INET,
                0,
                &m.attrs,
            ));
            ops.push(m.op.clone());
        }
        request.push(edge(NFNL_MSG_BATCH_END));
        ops.push(Op::End);

        // answered[i]: Some(errno) once message i got its ACK or error.
        let mut answered: Vec<Option<(i32, Option<String>)>> = vec![None; ops.len()];
        let inner = 1..ops.len() - 1;
        let mut failed = false;
        self.sock
            .request(&request, |i, answer| {
                match answer {
                    Answer::Ack if answered[i].is_none() => answered[i] = Some((0, None)),
                    // The commit's own failure is reported on BATCH_BEGIN;
                    // keep the first error per message.
                    Answer::Error { errno, message } => {
                        failed = true;
                        if answered[i].as_ref().is_none_or(|(e, _)| *e == 0) {
                            answered[i] = Some((errno, message));
                        }
                    }
                    _ => {}
                }
                if failed || answered[inner.clone()].iter().all(Option::is_some) {
                    Step::Settled
                } else {
                    Step::Wait
                }
            })
            .map_err(|e| BatchFailureOrIo::Other(exchange_error(e, "batch")))?;
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
        let msg = nf_msg(nft_type(msg_type), NLM_F_ACK, family, 0, attrs);
        let mut result = Ok(());
        self.sock
            .request(&[msg], |_, answer| match answer {
                Answer::Ack => Step::Done,
                Answer::Error { errno, message } => {
                    result = Err(NetlinkError::Kernel { errno, message });
                    Step::Done
                }
                // The ACK follows the reply, already queued.
                Answer::Reply(_) => Step::Settled,
            })
            .and(result)
            .map_err(|e| exchange_error(e, what))
    }

    /// A dump request: every reply message folded into what `start` makes,
    /// up to NLMSG_DONE, bounded by DUMP_MAX_MSGS / DUMP_MAX_BYTES.
    pub(super) fn dump<T>(
        &self,
        msg_type: u16,
        family: u8,
        attrs: &[u8],
        what: &str,
        start: impl Fn() -> T,
        each: impl FnMut(&mut T, &NlMsg<'_>),
    ) -> Result<T, NetfilterError> {
        let msg = nf_msg(nft_type(msg_type), 0, family, 0, attrs);
        let limits = DumpLimits {
            messages: DUMP_MAX_MSGS,
            bytes: DUMP_MAX_BYTES,
        };
        self.sock
            .dump(&msg, limits, start, each)
            .map_err(|e| exchange_error(e, &format!("{what} dump")))
    }
}

/// A batch failed either in the kernel (mapped per operation) or locally.
#[derive(Debug)]
pub(super) enum BatchFailureOrIo {
    Failure(BatchFailure),
    Other(NetfilterError),
}

impl BatchFailureOrIo {
    pub(super) fn into_error(self, table: &str) -> NetfilterError {
        match self {
            BatchFailureOrIo::Failure(f) => f.into_error(table),
            BatchFailureOrIo::Other(e) => e,
        }
    }
}
