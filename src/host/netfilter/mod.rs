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
//! clients redirected to nothing. The netlink messages are built and parsed
//! here with `libc` only; every length that comes from the kernel is bounded
//! before use.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

// --- kernel uapi constants (linux/netlink.h, nfnetlink.h, nf_tables.h) ---

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_MULTI: u16 = 0x02;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
// Flags of an NLMSG_ERROR message.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_CAP_ACK: libc::c_int = 10;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFT_TABLE_F_OWNER: u32 = 0x2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFT_RETURN: i32 = -5;

const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_FLAGS: u16 = 3;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

/// libnftnl's rule userdata TLV type for the comment (`NFTNL_UDATA_RULE_COMMENT`).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// nf_tables' limit for table, chain names and comments (NFT_NAME_MAXLEN - 1,
/// and the userdata TLV length is a u8).
const NAME_MAX: usize = 255;
const COMMENT_MAX: usize = 200;

/// The chain this module creates in its table.
const CHAIN: &str = "output";
/// `priority -100` (dstnat), as nft's `type nat hook output priority -100`.
const CHAIN_PRIORITY: i32 = -100;

/// Receive buffer for one `recv`: the kernel builds dump skbs of at most
/// 32 KiB, acks are tiny.
const RECV_BUF: usize = 64 * 1024;
/// Upper bound on what one dump may accumulate (messages and bytes).
const DUMP_MAX_MSGS: usize = 4096;
const DUMP_MAX_BYTES: usize = 4 * 1024 * 1024;
/// How long one receive may block before the call fails with `TimedOut`.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a dump that the kernel flagged as interrupted (ruleset changed).
const DUMP_RETRIES: usize = 3;

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
}

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
    pub fn install(rules: &InterceptRules) -> Result<Self, NetfilterError> {
        let batch = build_install_batch(rules)?;
        let sock = NlSocket::open()?;
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
                let mut a = AttrBuf::new();
                a.put_str(NFTA_RULE_TABLE, &self.table);
                a.put_str(NFTA_RULE_CHAIN, CHAIN);
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

    fn dump_rules(&self) -> Result<Vec<DumpedRule>, NetfilterError> {
        let mut a = AttrBuf::new();
        a.put_str(NFTA_RULE_TABLE, &self.table);
        a.put_str(NFTA_RULE_CHAIN, CHAIN);
        let msgs = self
            .sock
            .dump(NFT_MSG_GETRULE, NFPROTO_INET, &a.into_bytes(), "GETRULE")?;
        let mut out = Vec::with_capacity(msgs.len());
        for (ty, payload) in msgs {
            if ty != nft_type(NFT_MSG_NEWRULE) {
                continue;
            }
            out.push(parse_rule(&payload)?);
        }
        Ok(out)
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

/// SO_MARK on a socket before it connects (needs CAP_NET_ADMIN): its packets
/// then skip the redirect (`meta mark M return`).
pub fn set_mark(fd: BorrowedFd<'_>, mark: u32) -> io::Result<()> {
    setsockopt_raw(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, &mark)
}

// --- batch construction ---

/// What one message of a batch does, for error messages and mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Begin,
    NewTable,
    NewChain,
    NewMarkRule,
    NewRule(String),
    DelRule(String),
    DelTable,
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
            Op::NewChain => write!(f, "NEWCHAIN {CHAIN}"),
            Op::NewMarkRule => f.write_str("NEWRULE (meta mark return)"),
            Op::NewRule(l) => write!(f, "NEWRULE ({l})"),
            Op::DelRule(l) => write!(f, "DELRULE ({l})"),
            Op::DelTable => f.write_str("DELTABLE"),
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

fn build_install_batch(rules: &InterceptRules) -> Result<Vec<BatchMsg>, NetfilterError> {
    check_name(&rules.table, "table name")?;
    if rules.mark == 0 {
        // `meta mark 0 return` would exempt every unmarked packet.
        return Err(NetfilterError::Invalid("mark must not be 0".into()));
    }
    for r in [rules.ipv4, rules.ipv6].into_iter().flatten() {
        if r.tcp_port == 0 || r.udp_port == 0 {
            return Err(NetfilterError::Invalid("redirect port 0".into()));
        }
    }
    let mut out = Vec::new();

    let mut a = AttrBuf::new();
    a.put_str(NFTA_TABLE_NAME, &rules.table);
    a.put_u32_be(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
    out.push(BatchMsg {
        msg_type: NFT_MSG_NEWTABLE,
        flags: NLM_F_CREATE | NLM_F_EXCL,
        attrs: a.into_bytes(),
        op: Op::NewTable,
    });

    let mut a = AttrBuf::new();
    a.put_str(NFTA_CHAIN_TABLE, &rules.table);
    a.put_str(NFTA_CHAIN_NAME, CHAIN);
    let hook = a.nest_start(NFTA_CHAIN_HOOK);
    a.put_u32_be(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
    a.put_u32_be(NFTA_HOOK_PRIORITY, CHAIN_PRIORITY as u32);
    a.nest_end(hook);
    a.put_u32_be(NFTA_CHAIN_POLICY, NF_ACCEPT);
    a.put_str(NFTA_CHAIN_TYPE, "nat");
    out.push(BatchMsg {
        msg_type: NFT_MSG_NEWCHAIN,
        flags: NLM_F_CREATE | NLM_F_EXCL,
        attrs: a.into_bytes(),
        op: Op::NewChain,
    });

    // meta mark M return
    let exprs = vec![
        Expr::Meta { key: NFT_META_MARK },
        Expr::CmpEq(rules.mark.to_ne_bytes().to_vec()),
        Expr::Return,
    ];
    out.push(rule_msg(&rules.table, &exprs, None, Op::NewMarkRule)?);

    if let Some(r) = rules.ipv4 {
        for (proto, port, name) in [
            (libc::IPPROTO_TCP, r.tcp_port, "tcp"),
            (libc::IPPROTO_UDP, r.udp_port, "udp"),
        ] {
            let label = format!("ipv4 {name}");
            let exprs = redirect_exprs(NFPROTO_IPV4, 16, &[127, 0, 0, 1], proto as u8, port);
            out.push(rule_msg(
                &rules.table,
                &exprs,
                Some(&label),
                Op::NewRule(label.clone()),
            )?);
        }
    }
    if let Some(r) = rules.ipv6 {
        let lo6 = std::net::Ipv6Addr::LOCALHOST.octets();
        for (proto, port, name) in [
            (libc::IPPROTO_TCP, r.tcp_port, "tcp"),
            (libc::IPPROTO_UDP, r.udp_port, "udp"),
        ] {
            let label = format!("ipv6 {name}");
            let exprs = redirect_exprs(NFPROTO_IPV6, 24, &lo6, proto as u8, port);
            out.push(rule_msg(
                &rules.table,
                &exprs,
                Some(&label),
                Op::NewRule(label.clone()),
            )?);
        }
    }
    Ok(out)
}

/// The expressions nft generates for
/// `ip[6] daddr A tcp|udp dport 111 counter redirect to :PORT`.
fn redirect_exprs(
    nfproto: u8,
    daddr_offset: u32,
    addr: &[u8],
    l4proto: u8,
    port: u16,
) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::CmpEq(vec![nfproto]),
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: daddr_offset,
            len: addr.len() as u32,
        },
        Expr::CmpEq(addr.to_vec()),
        Expr::Meta {
            key: NFT_META_L4PROTO,
        },
        Expr::CmpEq(vec![l4proto]),
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
        },
        Expr::CmpEq(InterceptRules::RPCBIND_PORT.to_be_bytes().to_vec()),
        Expr::Counter,
        Expr::ImmediateData(port.to_be_bytes().to_vec()),
        Expr::Redir,
    ]
}

/// One nf_tables expression, always loading into / comparing NFT_REG_1.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Meta { key: u32 },
    Payload { base: u32, offset: u32, len: u32 },
    CmpEq(Vec<u8>),
    Counter,
    ImmediateData(Vec<u8>),
    Return,
    Redir,
}

impl Expr {
    fn encode(&self, a: &mut AttrBuf) {
        let elem = a.nest_start(NFTA_LIST_ELEM);
        let name = match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::CmpEq(_) => "cmp",
            Expr::Counter => "counter",
            Expr::ImmediateData(_) | Expr::Return => "immediate",
            Expr::Redir => "redir",
        };
        a.put_str(NFTA_EXPR_NAME, name);
        let data = a.nest_start(NFTA_EXPR_DATA);
        match self {
            Expr::Meta { key } => {
                a.put_u32_be(NFTA_META_KEY, *key);
                a.put_u32_be(NFTA_META_DREG, NFT_REG_1);
            }
            Expr::Payload { base, offset, len } => {
                a.put_u32_be(NFTA_PAYLOAD_DREG, NFT_REG_1);
                a.put_u32_be(NFTA_PAYLOAD_BASE, *base);
                a.put_u32_be(NFTA_PAYLOAD_OFFSET, *offset);
                a.put_u32_be(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::CmpEq(value) => {
                a.put_u32_be(NFTA_CMP_SREG, NFT_REG_1);
                a.put_u32_be(NFTA_CMP_OP, NFT_CMP_EQ);
                let d = a.nest_start(NFTA_CMP_DATA);
                a.put(NFTA_DATA_VALUE, value);
                a.nest_end(d);
            }
            Expr::Counter => {
                a.put_u64_be(NFTA_COUNTER_BYTES, 0);
                a.put_u64_be(NFTA_COUNTER_PACKETS, 0);
            }
            Expr::ImmediateData(value) => {
                a.put_u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_1);
                let d = a.nest_start(NFTA_IMMEDIATE_DATA);
                a.put(NFTA_DATA_VALUE, value);
                a.nest_end(d);
            }
            Expr::Return => {
                a.put_u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = a.nest_start(NFTA_IMMEDIATE_DATA);
                let v = a.nest_start(NFTA_DATA_VERDICT);
                a.put_u32_be(NFTA_VERDICT_CODE, NFT_RETURN as u32);
                a.nest_end(v);
                a.nest_end(d);
            }
            Expr::Redir => {
                a.put_u32_be(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
                a.put_u32_be(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
            }
        }
        a.nest_end(data);
        a.nest_end(elem);
    }
}

fn rule_msg(
    table: &str,
    exprs: &[Expr],
    comment: Option<&str>,
    op: Op,
) -> Result<BatchMsg, NetfilterError> {
    let mut a = AttrBuf::new();
    a.put_str(NFTA_RULE_TABLE, table);
    a.put_str(NFTA_RULE_CHAIN, CHAIN);
    let list = a.nest_start(NFTA_RULE_EXPRESSIONS);
    for e in exprs {
        e.encode(&mut a);
    }
    a.nest_end(list);
    if let Some(c) = comment {
        a.put(NFTA_RULE_USERDATA, &encode_comment(c)?);
    }
    Ok(BatchMsg {
        msg_type: NFT_MSG_NEWRULE,
        flags: NLM_F_CREATE | NLM_F_APPEND,
        attrs: a.into_bytes(),
        op,
    })
}

/// libnftnl's userdata TLV (u8 type, u8 length, value) holding the comment
/// with its NUL, as `nft add rule ... comment "x"` stores it.
fn encode_comment(comment: &str) -> Result<Vec<u8>, NetfilterError> {
    if comment.len() > COMMENT_MAX || comment.bytes().any(|b| b == 0) {
        return Err(NetfilterError::Invalid(format!(
            "comment {comment:?} too long or has NUL"
        )));
    }
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(NFTNL_UDATA_RULE_COMMENT);
    v.push((comment.len() + 1) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    Ok(v)
}

/// The comment in a rule's userdata TLVs, if any (malformed TLVs: `None`).
fn decode_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (ty, len) = (udata[0], usize::from(udata[1]));
        let value = udata.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return std::str::from_utf8(&value[..end]).ok().map(str::to_owned);
        }
        udata = &udata[2 + len..];
    }
    None
}

// --- attribute encoding ---

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink attributes (struct nlattr + payload, padded to 4 bytes).
#[derive(Debug, Default)]
struct AttrBuf {
    buf: Vec<u8>,
}

impl AttrBuf {
    fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        // Attributes we build are small (names <= 255 bytes, a few rules).
        let len16 = u16::try_from(len).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    fn put_u32_be(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn put_u64_be(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Starts a nested attribute; returns its offset for [`Self::nest_end`].
    fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("nested netlink attribute over 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Appends one netlink message (nlmsghdr + nfgenmsg + attrs).
fn put_msg(
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
    out.extend_from_slice(&len32.to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize(align4(out.len()), 0);
}

const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

// --- parsing (everything here is bounded by the slice it is given) ---

/// Iterates over the attributes in `buf`: (type without flags, payload).
/// Stops with an error on a length that does not fit.
struct Attrs<'a> {
    buf: &'a [u8],
}

fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NetfilterError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            // Trailing padding shorter than a header is ignored, as the kernel does.
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.buf[0], self.buf[1]]));
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(NetfilterError::Protocol(format!(
                "attribute length {len} out of bounds"
            ))));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        self.buf = self.buf.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    }
}

fn be_u64(v: &[u8]) -> Result<u64, NetfilterError> {
    let a: [u8; 8] = v
        .try_into()
        .map_err(|_| NetfilterError::Protocol(format!("expected 8-byte value, got {}", v.len())))?;
    Ok(u64::from_be_bytes(a))
}

/// One rule from a GETRULE dump.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DumpedRule {
    handle: u64,
    label: Option<String>,
    /// (packets, bytes) of its counter expression, if it has one.
    counter: Option<(u64, u64)>,
}

/// Parses a NEWRULE message payload (nfgenmsg + attributes).
fn parse_rule(payload: &[u8]) -> Result<DumpedRule, NetfilterError> {
    let body = payload
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| NetfilterError::Protocol("rule message shorter than nfgenmsg".into()))?;
    let mut handle = None;
    let mut label = None;
    let mut counter = None;
    for attr in attrs(body) {
        let (ty, val) = attr?;
        match ty {
            NFTA_RULE_HANDLE => handle = Some(be_u64(val)?),
            NFTA_RULE_USERDATA => label = decode_comment(val),
            NFTA_RULE_EXPRESSIONS => {
                for elem in attrs(val) {
                    let (ety, eval) = elem?;
                    if ety != NFTA_LIST_ELEM {
                        continue;
                    }
                    let mut name: &[u8] = &[];
                    let mut data: &[u8] = &[];
                    for e in attrs(eval) {
                        match e? {
                            (NFTA_EXPR_NAME, n) => name = n,
                            (NFTA_EXPR_DATA, d) => data = d,
                            _ => {}
                        }
                    }
                    if name.split(|&b| b == 0).next() == Some(b"counter".as_slice()) {
                        let (mut packets, mut bytes) = (0, 0);
                        for c in attrs(data) {
                            match c? {
                                (NFTA_COUNTER_PACKETS, v) => packets = be_u64(v)?,
                                (NFTA_COUNTER_BYTES, v) => bytes = be_u64(v)?,
                                _ => {}
                            }
                        }
                        counter = Some((packets, bytes));
                    }
                }
            }
            _ => {}
        }
    }
    let handle = handle.ok_or_else(|| NetfilterError::Protocol("rule without handle".into()))?;
    Ok(DumpedRule {
        handle,
        label,
        counter,
    })
}

/// One netlink message header and its payload.
#[derive(Debug)]
struct NlMsg<'a> {
    msg_type: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Splits a datagram from the kernel into messages; stops with an error on
/// a length that does not fit.
fn split_msgs(mut buf: &[u8]) -> Result<Vec<NlMsg<'_>>, NetfilterError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NetfilterError::Protocol(format!(
                "message length {len} out of bounds ({} bytes left)",
                buf.len()
            )));
        }
        out.push(NlMsg {
            msg_type: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = buf.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// An NLMSG_ERROR payload: errno (positive; 0 = ACK) and the extended ACK's
/// message, if the kernel sent one.
fn parse_error(msg: &NlMsg<'_>) -> Result<(i32, Option<String>), NetfilterError> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(NetfilterError::Protocol(format!(
            "NLMSG_ERROR of {} bytes",
            p.len()
        )));
    }
    let err = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let tlv_at = if msg.flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            let orig = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
            4usize.saturating_add(align4(orig.min(p.len())))
        };
        if let Some(tlvs) = p.get(tlv_at..) {
            for a in attrs(tlvs).flatten() {
                if a.0 == NLMSGERR_ATTR_MSG {
                    let end = a.1.iter().position(|&b| b == 0).unwrap_or(a.1.len());
                    text = Some(String::from_utf8_lossy(&a.1[..end]).into_owned());
                }
            }
        }
    }
    Ok((err.checked_neg().unwrap_or(i32::MAX), text))
}

// --- error mapping ---

/// The first failure the kernel reported for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchFailure {
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
fn map_batch_error(op: &Op, errno: i32, message: Option<String>, table: &str) -> NetfilterError {
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
struct NlSocket {
    fd: OwnedFd,
    /// Next sequence number; the lock also serialises request/response
    /// exchanges on the socket.
    seq: Mutex<u32>,
}

fn setsockopt_raw<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised T of size_of::<T>() bytes
    // that the kernel only reads; `fd` is a descriptor the caller holds open.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl NlSocket {
    fn open() -> Result<Self, NetfilterError> {
        // SAFETY: plain syscall with integer arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => NetfilterError::Unavailable {
                    detail: format!("NETLINK_NETFILTER socket: {e}"),
                },
                _ => NetfilterError::Io(e),
            });
        }
        // SAFETY: `raw` is a descriptor we just created and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // Small acks (no copy of our request), extended ack messages: both
        // optional, older kernels may lack them.
        let _ = setsockopt_raw(raw, SOL_NETLINK, NETLINK_CAP_ACK, &one);
        let _ = setsockopt_raw(raw, SOL_NETLINK, NETLINK_EXT_ACK, &one);
        let rcvbuf: libc::c_int = 1 << 20;
        let _ = setsockopt_raw(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        setsockopt_raw(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        setsockopt_raw(raw, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(NlSocket {
            fd,
            seq: Mutex::new(1),
        })
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
        // SAFETY: sockaddr_nl is plain data; all-zero (pid 0) is the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `buf` is valid for reads of buf.len() bytes, `sa` is a
            // valid sockaddr_nl with a matching length.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short netlink send",
                ));
            }
            return Ok(());
        }
    }

    /// Receives one datagram into `buf`; `Ok(None)` when `nonblock` and
    /// nothing is queued. A blocking receive fails with `TimedOut` after
    /// RECV_TIMEOUT.
    fn recv<'b>(
        &self,
        buf: &'b mut [u8],
        nonblock: bool,
    ) -> Result<Option<&'b [u8]>, NetfilterError> {
        let flags = libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: `buf` is valid for writes of buf.len() bytes; the kernel
            // writes at most that many and returns the datagram's full length
            // (MSG_TRUNC), which is checked below before slicing.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if nonblock => return Ok(None),
                    Some(libc::EAGAIN) => {
                        return Err(NetfilterError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no reply from nf_tables within 5 s",
                        )))
                    }
                    _ => return Err(e.into()),
                }
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(NetfilterError::Protocol(format!(
                    "datagram of {n} bytes truncated"
                )));
            }
            return Ok(Some(&buf[..n]));
        }
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
    fn batch(&self, msgs: &[BatchMsg]) -> Result<(), BatchFailureOrIo> {
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
    fn request(
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
    fn dump(
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
type DumpMsgs = Vec<(u16, Vec<u8>)>;

/// A batch failed either in the kernel (mapped per operation) or locally.
#[derive(Debug)]
enum BatchFailureOrIo {
    Failure(BatchFailure),
    Other(NetfilterError),
}

impl From<io::Error> for BatchFailureOrIo {
    fn from(e: io::Error) -> Self {
        BatchFailureOrIo::Other(e.into())
    }
}

impl From<NetfilterError> for BatchFailureOrIo {
    fn from(e: NetfilterError) -> Self {
        BatchFailureOrIo::Other(e)
    }
}

impl BatchFailureOrIo {
    fn into_error(self, table: &str) -> NetfilterError {
        match self {
            BatchFailureOrIo::Failure(f) => f.into_error(table),
            BatchFailureOrIo::Other(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> InterceptRules {
        InterceptRules {
            table: "rpcbind_proxy".into(),
            mark: 0x5250,
            ipv4: Some(Redirect {
                tcp_port: 1111,
                udp_port: 1112,
            }),
            ipv6: Some(Redirect {
                tcp_port: 1111,
                udp_port: 1111,
            }),
        }
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut a = AttrBuf::new();
        a.put_str(1, "nat"); // 4 + 4 = 8, no padding
        a.put(2, &[0xaa]); // 4 + 1 -> 8
        a.put_u32_be(3, 0x0102_0304);
        let b = a.into_bytes();
        assert_eq!(b.len(), 8 + 8 + 8);
        assert_eq!(&b[0..8], &[8, 0, 1, 0, b'n', b'a', b't', 0]);
        assert_eq!(&b[8..16], &[5, 0, 2, 0, 0xaa, 0, 0, 0]);
        assert_eq!(&b[16..24], &[8, 0, 3, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn nested_attributes_carry_their_length_and_flag() {
        let mut a = AttrBuf::new();
        let n = a.nest_start(4);
        a.put_u32_be(1, 3);
        a.put_u32_be(2, (-100i32) as u32);
        a.nest_end(n);
        let b = a.into_bytes();
        assert_eq!(b.len(), 20);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 20);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 4 | NLA_F_NESTED);
        let parsed: Vec<_> = attrs(&b).map(Result::unwrap).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, 4, "NLA_F_NESTED masked");
        let inner: Vec<_> = attrs(parsed[0].1).map(Result::unwrap).collect();
        assert_eq!(
            inner,
            vec![(1, &[0, 0, 0, 3][..]), (2, &[0xff, 0xff, 0xff, 0x9c][..])]
        );
    }

    #[test]
    fn comment_userdata_matches_nft() {
        // nft --debug=netlink: userdata = { \x00\x09ipv4 tcp\x00 }
        assert_eq!(
            encode_comment("ipv4 tcp").unwrap(),
            b"\x00\x09ipv4 tcp\x00".to_vec()
        );
        assert_eq!(
            decode_comment(b"\x00\x09ipv4 tcp\x00").as_deref(),
            Some("ipv4 tcp")
        );
        assert_eq!(
            decode_comment(b"\x05\x01x\x00\x03ab\x00").as_deref(),
            Some("ab")
        );
        assert_eq!(decode_comment(b"\x00\x20short"), None);
        assert_eq!(decode_comment(b""), None);
        assert!(encode_comment(&"x".repeat(300)).is_err());
    }

    #[test]
    fn install_batch_shape() {
        let b = build_install_batch(&rules()).unwrap();
        let ops: Vec<String> = b.iter().map(|m| m.op.to_string()).collect();
        assert_eq!(
            ops,
            [
                "NEWTABLE",
                "NEWCHAIN output",
                "NEWRULE (meta mark return)",
                "NEWRULE (ipv4 tcp)",
                "NEWRULE (ipv4 udp)",
                "NEWRULE (ipv6 tcp)",
                "NEWRULE (ipv6 udp)"
            ]
        );
        assert_eq!(b[0].flags & NLM_F_EXCL, NLM_F_EXCL);
        // NEWTABLE: name, flags = owner (big endian)
        let t: Vec<_> = attrs(&b[0].attrs).map(Result::unwrap).collect();
        assert_eq!(t[0], (NFTA_TABLE_NAME, &b"rpcbind_proxy\0"[..]));
        assert_eq!(t[1], (NFTA_TABLE_FLAGS, &[0, 0, 0, 2][..]));
        let mut no_v6 = rules();
        no_v6.ipv6 = None;
        assert_eq!(build_install_batch(&no_v6).unwrap().len(), 5);
        let mut bad = rules();
        bad.table = String::new();
        assert!(matches!(
            build_install_batch(&bad),
            Err(NetfilterError::Invalid(_))
        ));
        let mut bad = rules();
        bad.mark = 0;
        assert!(build_install_batch(&bad).is_err());
        let mut bad = rules();
        bad.ipv6 = Some(Redirect {
            tcp_port: 0,
            udp_port: 1,
        });
        assert!(build_install_batch(&bad).is_err());
        // The daemon keeps the table in an Arc<Mutex<..>> across tasks.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<InterceptTable>();
    }

    /// Parses our own NEWRULE back: the redirect port and the UDP proto.
    #[test]
    fn redirect_rule_encodes_nft_expressions() {
        let b = build_install_batch(&rules()).unwrap();
        let m = &b[4]; // ipv4 udp
        let mut names = Vec::new();
        let mut values = Vec::new();
        for a in attrs(&m.attrs) {
            let (ty, v) = a.unwrap();
            if ty == NFTA_RULE_EXPRESSIONS {
                for e in attrs(v) {
                    let (_, ev) = e.unwrap();
                    for x in attrs(ev) {
                        let (xt, xv) = x.unwrap();
                        if xt == NFTA_EXPR_NAME {
                            names.push(String::from_utf8(xv[..xv.len() - 1].to_vec()).unwrap());
                        } else {
                            let name = names.last().unwrap().as_str();
                            for d in attrs(xv) {
                                let (dt, dv) = d.unwrap();
                                if (name == "cmp" && dt == NFTA_CMP_DATA)
                                    || (name == "immediate" && dt == NFTA_IMMEDIATE_DATA)
                                {
                                    values.push(attrs(dv).next().unwrap().unwrap().1.to_vec());
                                }
                            }
                        }
                    }
                }
            }
            if ty == NFTA_RULE_USERDATA {
                assert_eq!(decode_comment(v).as_deref(), Some("ipv4 udp"));
            }
        }
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "payload",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "counter",
                "immediate",
                "redir"
            ]
        );
        assert_eq!(
            values,
            vec![
                vec![2],
                vec![127, 0, 0, 1],
                vec![17],
                vec![0, 111],
                1112u16.to_be_bytes().to_vec()
            ]
        );
    }

    /// A NEWRULE message as the kernel sends it in a GETRULE dump (built
    /// from a capture of `nft --debug=mnl list table`, counter 3 pkts / 180 bytes).
    fn captured_rule() -> Vec<u8> {
        let mut a = AttrBuf::new();
        a.put_str(NFTA_RULE_TABLE, "rpcbind_proxy");
        a.put_str(NFTA_RULE_CHAIN, "output");
        a.put_u64_be(NFTA_RULE_HANDLE, 4);
        let l = a.nest_start(NFTA_RULE_EXPRESSIONS);
        Expr::Meta {
            key: NFT_META_NFPROTO,
        }
        .encode(&mut a);
        let e = a.nest_start(NFTA_LIST_ELEM);
        a.put_str(NFTA_EXPR_NAME, "counter");
        let d = a.nest_start(NFTA_EXPR_DATA);
        a.put_u64_be(NFTA_COUNTER_BYTES, 180);
        a.put_u64_be(NFTA_COUNTER_PACKETS, 3);
        a.nest_end(d);
        a.nest_end(e);
        a.nest_end(l);
        a.put(NFTA_RULE_USERDATA, b"\x00\x09ipv4 tcp\x00");
        let mut payload = vec![NFPROTO_INET, 0, 0, 5];
        payload.extend_from_slice(&a.into_bytes());
        payload
    }

    #[test]
    fn counter_parsed_from_rule_dump() {
        let r = parse_rule(&captured_rule()).unwrap();
        assert_eq!(
            r,
            DumpedRule {
                handle: 4,
                label: Some("ipv4 tcp".into()),
                counter: Some((3, 180)),
            }
        );
        // Inside a full netlink datagram, followed by NLMSG_DONE.
        let mut dgram = Vec::new();
        put_msg(
            &mut dgram,
            nft_type(NFT_MSG_NEWRULE),
            NLM_F_MULTI,
            7,
            NFPROTO_INET,
            5,
            &captured_rule()[4..],
        );
        put_msg(&mut dgram, NLMSG_DONE, NLM_F_MULTI, 7, 0, 0, &[]);
        let msgs = split_msgs(&dgram).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(parse_rule(msgs[0].payload).unwrap().counter, Some((3, 180)));
        assert_eq!(msgs[1].msg_type, NLMSG_DONE);
    }

    #[test]
    fn short_and_odd_input_never_panics() {
        let full = captured_rule();
        for cut in 0..full.len() {
            let _ = parse_rule(&full[..cut]);
        }
        let mut bad = full.clone();
        bad[4] = 0xff; // first attribute length beyond the buffer
        bad[5] = 0xff;
        assert!(parse_rule(&bad).is_err());
        let mut zero = full;
        zero[4] = 1; // attribute length below the header size
        zero[5] = 0;
        assert!(parse_rule(&zero).is_err());
        assert!(split_msgs(&[0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(split_msgs(&[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(split_msgs(&[1, 2, 3]).unwrap().is_empty());
        let m = NlMsg {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS,
            seq: 0,
            payload: &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        };
        assert_eq!(parse_error(&m).unwrap(), (1, None));
        let m = NlMsg {
            msg_type: NLMSG_ERROR,
            flags: 0,
            seq: 0,
            payload: &[0; 3],
        };
        assert!(parse_error(&m).is_err());
        let m = NlMsg {
            msg_type: NLMSG_ERROR,
            flags: 0,
            seq: 0,
            payload: &[
                0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        };
        assert_eq!(
            parse_error(&m).unwrap().0,
            i32::MAX,
            "i32::MIN errno does not overflow"
        );
    }

    #[test]
    fn extended_ack_message_is_read() {
        // errno -EINVAL, capped request header, NLMSGERR_ATTR_MSG "bad".
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let mut a = AttrBuf::new();
        a.put_str(NLMSGERR_ATTR_MSG, "bad");
        p.extend_from_slice(&a.into_bytes());
        let m = NlMsg {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS | NLM_F_CAPPED,
            seq: 0,
            payload: &p,
        };
        assert_eq!(parse_error(&m).unwrap(), (libc::EINVAL, Some("bad".into())));
    }

    #[test]
    fn errno_mapping() {
        let t = "rpcbind_proxy";
        assert!(matches!(
            map_batch_error(&Op::Begin, libc::EPERM, None, t),
            NetfilterError::PermissionDenied
        ));
        assert!(matches!(
            map_batch_error(&Op::Begin, libc::EOPNOTSUPP, None, t),
            NetfilterError::Unavailable { .. }
        ));
        let e = map_batch_error(&Op::NewTable, libc::EPERM, None, t);
        assert_eq!(
            e.to_string(),
            "another rpcbind-proxy instance holds table inet rpcbind_proxy"
        );
        assert!(matches!(
            map_batch_error(&Op::NewTable, libc::EEXIST, None, t),
            NetfilterError::TableLeftOver { .. }
        ));
        assert!(matches!(
            map_batch_error(&Op::NewTable, libc::EOPNOTSUPP, None, t),
            NetfilterError::OwnerUnsupported { .. }
        ));
        assert!(matches!(
            map_batch_error(&Op::NewChain, libc::ENOENT, None, t),
            NetfilterError::Unavailable { .. }
        ));
        let e = map_batch_error(&Op::DelTable, libc::EBUSY, Some("x".into()), t);
        assert!(matches!(
            e,
            NetfilterError::Kernel {
                errno: libc::EBUSY,
                ..
            }
        ));
        assert!(
            e.to_string()
                .starts_with("nf_tables DELTABLE on table inet rpcbind_proxy failed: "),
            "{e}"
        );
        assert!(e.to_string().ends_with(" (x)"), "{e}");
        assert_eq!(
            NetfilterError::PermissionDenied.to_string(),
            "not permitted to change nf_tables: needs CAP_NET_ADMIN in this network namespace"
        );
    }
}
