//! Transparent interception of port 111 with an nf_tables table that the
//! kernel removes by itself when this process dies.
//!
//! Owns one `NETLINK_NETFILTER` socket and, through it, the table
//! `inet <name>` created with `flags owner` (Linux >= 5.12): a `nat` chain on
//! the `output` hook (priority -100) holding `meta mark M return` (the proxy's
//! own upstream sockets carry that mark, see [`set_mark`]) and one
//! `counter redirect` rule per family and protocol, sending locally
//! originated traffic for 127.0.0.1:111 / [::1]:111 to the proxy's ports. The
//! whole table is created in one atomic nf_tables batch; the kernel deletes it
//! when the socket closes (exit, crash, SIGKILL), so a dead proxy never leaves
//! clients redirected to nothing. The nf_tables messages are built and
//! parsed here (`expr`, `socket`) on top of `host::netlink`, with `libc`
//! only; every length that comes from the kernel is bounded before use.
//!
//! The owner table's going takes the kernel's NAT and conntrack hooks with
//! it when nothing else uses them, and then the reset of a connection the
//! dead process held leaves without its reverse translation (from the
//! proxy's port, not 111), which the client ignores. [`keep_nat_hooks`]
//! makes a second table, not owned, whose one rule has no verdict and only
//! keeps those hooks registered; [`delete_table`] removes it.
//!
//! Files: this one is the public API; `expr` builds the install batch and
//! its expressions and parses dumped rules; `hosts` the rules for other
//! hosts' traffic (server mode's `prerouting` chain, the client side's
//! `output` rules); `socket` makes the batch,
//! request and dump messages, reads the kernel's answers (the exchanges run
//! in `host::netlink`) and maps its errno; `consts` is the uapi table.

mod consts;
mod expr;
mod hosts;
mod socket;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, RawFd};

use super::netlink::{AttrBuf, NetlinkError};
use consts::*;
use expr::*;
use hosts::*;
use socket::*;

// --- public API ---

/// Where the redirect rules of one address family send port-111 traffic: the
/// same loopback address, these ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    pub tcp_port: u16,
    pub udp_port: u16,
}

/// What [`InterceptTable::install`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptRules {
    /// Table name in family `inet`, e.g. "rpcbind_proxy".
    pub table: String,
    /// Packets carrying this mark (SO_MARK) are never redirected.
    pub mark: u32,
    /// 127.0.0.1:111 redirects; `None`: no IPv4 rules.
    pub ipv4: Option<Redirect>,
    /// [::1]:111 redirects; `None`: no IPv6 rules.
    pub ipv6: Option<Redirect>,
    /// Server mode: other hosts' traffic to port 111; `None`: not caught.
    pub remote: Option<RemoteRedirect>,
    /// Client side: this host's TCP connections to other hosts' port 111;
    /// `None`: not caught.
    pub outbound: Option<OutboundRedirect>,
}

/// The client side's redirect: locally made TCP connections to port 111 of
/// an address not this host's (and, for IPv6, not link-local: a scope the
/// redirect would lose) go to this port on the loopback address of their
/// family, where the proxy reads the server they asked for from conntrack
/// (SO_ORIGINAL_DST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundRedirect {
    /// IPv4 connections are redirected to 127.0.0.1:port.
    pub ipv4: bool,
    /// IPv6 connections are redirected to [::1]:port.
    pub ipv6: bool,
    pub port: u16,
}

/// Server mode's redirect: TCP and UDP to port 111 on one of this host's
/// own addresses, arriving on `interfaces`, go to these ports at the same
/// address (only the port changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRedirect {
    pub interfaces: Vec<String>,
    pub ipv4: Option<Redirect>,
    pub ipv6: Option<Redirect>,
    /// The daemon's own listening port for them, when it bound one: other
    /// hosts' new flows straight to it (not redirected from 111) are
    /// dropped, on every interface but `lo`, so that it answers only what
    /// the redirect sends it.
    pub guard: Option<u16>,
}

/// The label server mode's rules start with (the rest: interface, family,
/// protocol).
pub const REMOTE_LABEL: &str = "remote ";

/// The label the client side's rules start with (the rest: family, `tcp`).
pub const OUTBOUND_LABEL: &str = "outbound ";

impl InterceptRules {
    /// The port whose traffic is intercepted (rpcbind's).
    pub const RPCBIND_PORT: u16 = 111;
}

/// Packet and byte counts of one redirect rule. NAT chains see only the first
/// packet of each flow, so `packets` counts new connections / UDP flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    /// "ipv4 tcp", "ipv4 udp", "ipv6 tcp" or "ipv6 udp" (also the rule's comment).
    pub label: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Why an nf_tables operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// No NETLINK_NETFILTER (EPROTONOSUPPORT), no nf_tables subsystem
    /// (EOPNOTSUPP on the batch), or no `nat` chain type / expression module
    /// (ENOENT, EOPNOTSUPP on NEWCHAIN / NEWRULE).
    #[error("nf_tables is not available in this kernel ({detail})")]
    Unavailable { detail: String },
    #[error("the kernel refused nf_tables owner tables (`flags owner` needs Linux >= 5.12): {}", errno_text(*errno))]
    /// NEWTABLE refused the owner flag (EOPNOTSUPP / EINVAL: Linux < 5.12).
    OwnerUnsupported { errno: i32 },
    #[error("not permitted to change nf_tables: needs CAP_NET_ADMIN in this network namespace")]
    /// EPERM: the caller (or the socket's opener) lacks CAP_NET_ADMIN.
    PermissionDenied,
    /// NEWTABLE got EPERM: another netlink socket owns the table.
    #[error("another rpcbind-proxy instance holds table inet {table}")]
    TableExists { table: String },
    #[error("table inet {table} already exists without an owner (left by nft?); remove it with `nft delete table inet {table}`")]
    /// NEWTABLE got EEXIST: a table of that name exists without an owner.
    TableLeftOver { table: String },
    /// Rejected before anything was sent.
    #[error("invalid interception rules: {0}")]
    Invalid(String),
    /// Any other errno, with the operation and the kernel's extended-ack
    /// message when it sent one.
    #[error("nf_tables {op} failed: {}{}", errno_text(*errno), extack_text(message))]
    Kernel {
        op: String,
        errno: i32,
        message: Option<String>,
    },
    /// A reply that does not parse, or is missing what it must contain.
    #[error("malformed netlink reply: {0}")]
    Protocol(String),
    /// The socket itself failed (also `TimedOut` after 5 s without a reply).
    #[error("netlink I/O: {0}")]
    Io(#[from] io::Error),
}

impl From<NetlinkError> for NetfilterError {
    fn from(e: NetlinkError) -> Self {
        exchange_error(e, "netlink exchange")
    }
}

fn errno_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

fn extack_text(message: &Option<String>) -> String {
    match message {
        Some(m) => format!(" ({m})"),
        None => String::new(),
    }
}

impl NetfilterError {
    /// The kernel's errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::OwnerUnsupported { errno } | Self::Kernel { errno, .. } => Some(*errno),
            Self::PermissionDenied => Some(libc::EPERM),
            Self::TableExists { .. } => Some(libc::EPERM),
            Self::TableLeftOver { .. } => Some(libc::EEXIST),
            Self::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// The installed table. Holds the owning netlink socket: dropping this value
/// closes it and the kernel deletes the table (and its rules) at once; no
/// `Drop` impl is needed. The socket is close-on-exec, but a `fork()`ed child
/// that keeps running holds the table alive with it. Methods need
/// CAP_NET_ADMIN still held by the calling thread.
#[derive(Debug)]
pub struct InterceptTable {
    sock: NlSocket,
    table: String,
    /// Redirect rules still installed: (label, kernel handle), install order.
    rules: Vec<(String, u64)>,
}

impl InterceptTable {
    /// One atomic batch: NEWTABLE (owner flag, NLM_F_EXCL) + NEWCHAIN + the
    /// mark rule + the redirect rules. Every message is ACKed; the first
    /// failing one decides the error. Then reads back the rule handles.
    ///
    /// `listeners_up_to`: the highest descriptor number of the listening
    /// sockets the rules redirect to (each one's lowest, if it has several);
    /// the owning socket is placed above it. Why: when the process dies
    /// (SIGKILL, a crash) the kernel releases its descriptors highest number
    /// first (close in ascending order, the deferred releases run last in,
    /// first out). So the client connections accepted later (above) close
    /// first, and their resets still reach the clients through the
    /// redirect; then the table goes; only then the listeners close, so a
    /// packet the table redirects never meets a closed port (measured: with
    /// the owner below the UDP listener, lookups sent as the daemon died got
    /// "connection refused").
    pub fn install(rules: &InterceptRules, listeners_up_to: RawFd) -> Result<Self, NetfilterError> {
        let batch = build_install_batch(rules)?;
        let mut sock = NlSocket::open()?;
        sock.move_above(listeners_up_to)?;
        sock.batch(&batch).map_err(|f| f.into_error(&rules.table))?;
        let mut table = InterceptTable {
            sock,
            table: rules.table.clone(),
            rules: Vec::new(),
        };
        let labels: Vec<String> = batch.iter().filter_map(|m| m.op.rule_label()).collect();
        let dumped = table.dump_rules()?;
        for label in labels {
            match dumped
                .iter()
                .find(|r| r.label.as_deref() == Some(label.as_str()))
            {
                Some(r) => table.rules.push((label, r.handle)),
                None => {
                    return Err(NetfilterError::Protocol(format!(
                        "rule {label:?} missing from the dump right after install"
                    )))
                }
            }
        }
        Ok(table)
    }

    /// The table's name (family `inet`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Labels and kernel handles of the redirect rules still installed.
    pub fn rule_handles(&self) -> &[(String, u64)] {
        &self.rules
    }

    /// Per redirect rule still installed: label, packets, bytes (a GETRULE
    /// dump on the owning socket). Empty after [`Self::stop_redirecting`].
    pub fn counters(&self) -> Result<Vec<RuleCounter>, NetfilterError> {
        let dumped = self.dump_rules()?;
        let mut out = Vec::with_capacity(self.rules.len());
        for (label, handle) in &self.rules {
            let r = dumped.iter().find(|r| r.handle == *handle).ok_or_else(|| {
                NetfilterError::Protocol(format!(
                    "rule {label:?} (handle {handle}) not in the dump"
                ))
            })?;
            let (packets, bytes) = r.counter.unwrap_or((0, 0));
            out.push(RuleCounter {
                label: label.clone(),
                packets,
                bytes,
            });
        }
        Ok(out)
    }

    /// Graceful exit step 1: delete the redirect rules only (one batch; the
    /// table, chain and mark rule stay), so new flows go straight to port
    /// 111 while flows already redirected keep their conntrack NAT binding
    /// and still reach the proxy. Idempotent.
    pub fn stop_redirecting(&mut self) -> Result<(), NetfilterError> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let batch: Vec<BatchMsg> = self
            .rules
            .iter()
            .map(|(label, handle)| {
                let chain = if label.starts_with(REMOTE_LABEL) {
                    REMOTE_CHAIN
                } else {
                    CHAIN
                };
                let mut a = AttrBuf::new();
                a.put_str(NFTA_RULE_TABLE, &self.table);
                a.put_str(NFTA_RULE_CHAIN, chain);
                a.put_u64_be(NFTA_RULE_HANDLE, *handle);
                BatchMsg {
                    msg_type: NFT_MSG_DELRULE,
                    flags: 0,
                    attrs: a.into_bytes(),
                    op: Op::DelRule(label.clone()),
                }
            })
            .collect();
        self.sock
            .batch(&batch)
            .map_err(|f| f.into_error(&self.table))?;
        self.rules.clear();
        Ok(())
    }

    /// Graceful exit step 2: delete the table (DELTABLE), then close the
    /// socket. Takes effect at once, also for flows redirected earlier.
    pub fn remove(self) -> Result<(), NetfilterError> {
        let mut a = AttrBuf::new();
        a.put_str(NFTA_TABLE_NAME, &self.table);
        let batch = [BatchMsg {
            msg_type: NFT_MSG_DELTABLE,
            flags: 0,
            attrs: a.into_bytes(),
            op: Op::DelTable,
        }];
        let res = self
            .sock
            .batch(&batch)
            .map_err(|f| f.into_error(&self.table));
        drop(self); // closes the socket; the kernel would delete an owner table anyway
        res
    }

    /// Every rule of the table, both chains (handles are the table's).
    fn dump_rules(&self) -> Result<Vec<DumpedRule>, NetfilterError> {
        let mut a = AttrBuf::new();
        a.put_str(NFTA_RULE_TABLE, &self.table);
        let rules = self.sock.dump(
            NFT_MSG_GETRULE,
            NFPROTO_INET,
            &a.into_bytes(),
            "GETRULE",
            Vec::new,
            |rules, m| {
                if m.msg_type == nft_type(NFT_MSG_NEWRULE) {
                    rules.push(parse_rule(m.payload));
                }
            },
        )?;
        rules.into_iter().collect()
    }
}

/// Whether table `inet <name>` exists in this network namespace (GETTABLE on
/// a fresh socket). For diagnostics and tests.
pub fn table_exists(name: &str) -> Result<bool, NetfilterError> {
    check_name(name, "table name")?;
    let sock = NlSocket::open()?;
    let mut a = AttrBuf::new();
    a.put_str(NFTA_TABLE_NAME, name);
    match sock.request(NFT_MSG_GETTABLE, NFPROTO_INET, &a.into_bytes(), "GETTABLE") {
        Ok(()) => Ok(true),
        Err(NetfilterError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes table `inet <name>` the NAT keeper, creating it if missing: one
/// `nat` chain (hook output) holding one rule with no statement and no
/// verdict, `ct state new`, which keeps the kernel's NAT and conntrack
/// hooks registered for IPv4 and IPv6 while the table exists. So when the
/// owner table goes with its process, the flows it redirected keep their
/// translation both ways: a reset the kernel sends for the dead process's
/// connection reaches the client as coming from port 111, and the client
/// sees its connection reset at once. It redirects nothing itself and
/// outlives the process (it is not owned). One batch on a fresh socket;
/// calling it again leaves the table exactly as the first call made it.
pub fn keep_nat_hooks(name: &str) -> Result<(), NetfilterError> {
    let batch = build_keeper_batch(name)?;
    let sock = NlSocket::open()?;
    sock.batch(&batch).map_err(|f| f.into_error(name))
}

/// Deletes table `inet <name>`; `Ok(false)` when there was none. A table
/// another process owns cannot be deleted (`PermissionDenied`).
pub fn delete_table(name: &str) -> Result<bool, NetfilterError> {
    check_name(name, "table name")?;
    let mut a = AttrBuf::new();
    a.put_str(NFTA_TABLE_NAME, name);
    let batch = [BatchMsg {
        msg_type: NFT_MSG_DELTABLE,
        flags: 0,
        attrs: a.into_bytes(),
        op: Op::DelTable,
    }];
    let sock = NlSocket::open()?;
    match sock.batch(&batch).map_err(|f| f.into_error(name)) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// SO_MARK, which exempts a socket from the redirect, where callers of this
/// module look for it; it lives with the other socket options.
pub use super::sys::set_mark;

// --- batch construction ---

/// What one message of a batch does, for error messages and mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Begin,
    NewTable,
    NewChain(String),
    NewMarkRule,
    NewRule(String),
    /// A rule that redirects nothing and is not counted (server mode's
    /// guard of its own port); it goes with the table.
    NewGuardRule,
    DelRule(String),
    DelTable,
    NewKeeperTable,
    FlushChain,
    NewKeeperRule,
    End,
}

impl Op {
    fn rule_label(&self) -> Option<String> {
        match self {
            Op::NewRule(l) => Some(l.clone()),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Begin => f.write_str("batch"),
            Op::NewTable => f.write_str("NEWTABLE"),
            Op::NewChain(name) => write!(f, "NEWCHAIN {name}"),
            Op::NewMarkRule => f.write_str("NEWRULE (meta mark return)"),
            Op::NewRule(l) => write!(f, "NEWRULE ({l})"),
            Op::NewGuardRule => f.write_str("NEWRULE (guard)"),
            Op::DelRule(l) => write!(f, "DELRULE ({l})"),
            Op::DelTable => f.write_str("DELTABLE"),
            Op::NewKeeperTable => f.write_str("NEWTABLE (NAT keeper)"),
            Op::FlushChain => write!(f, "DELRULE (flush chain {KEEPER_CHAIN})"),
            Op::NewKeeperRule => f.write_str("NEWRULE (ct state new)"),
            Op::End => f.write_str("batch commit"),
        }
    }
}

#[derive(Debug)]
struct BatchMsg {
    msg_type: u16,
    flags: u16,
    attrs: Vec<u8>,
    op: Op,
}

fn check_name(name: &str, what: &str) -> Result<(), NetfilterError> {
    if name.is_empty() || name.len() > NAME_MAX || name.bytes().any(|b| b == 0) {
        return Err(NetfilterError::Invalid(format!(
            "{what} {name:?} must be 1-{NAME_MAX} bytes without NUL"
        )));
    }
    Ok(())
}
