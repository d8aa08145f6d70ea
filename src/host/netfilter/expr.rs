//! nf_tables expressions and messages: the install batch (table, chain, mark
//! rule, one `counter redirect` rule per family and protocol), the rule
//! comment in libnftnl's userdata TLVs, and parsing a dumped rule back
//! (handle, comment, counter).

use super::*;
use crate::host::netlink::{attrs, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};

pub(super) fn build_install_batch(rules: &InterceptRules) -> Result<Vec<BatchMsg>, NetfilterError> {
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

    out.push(nat_output_chain(
        &rules.table,
        CHAIN,
        CHAIN_PRIORITY,
        NLM_F_CREATE | NLM_F_EXCL,
    ));

    // meta mark M return
    let exprs = vec![
        Expr::Meta { key: NFT_META_MARK },
        Expr::CmpEq(rules.mark.to_ne_bytes().to_vec()),
        Expr::Return,
    ];
    out.push(rule_msg(&rules.table, &exprs, None, Op::NewMarkRule)?);

    let lo6 = std::net::Ipv6Addr::LOCALHOST.octets();
    // Per family: its redirect, label, nfproto, daddr offset, loopback.
    let families = [
        (rules.ipv4, "ipv4", NFPROTO_IPV4, 16, &[127, 0, 0, 1][..]),
        (rules.ipv6, "ipv6", NFPROTO_IPV6, 24, &lo6[..]),
    ];
    for (redirect, family, nfproto, daddr_offset, addr) in families {
        let Some(r) = redirect else { continue };
        for (proto, port, name) in [
            (libc::IPPROTO_TCP, r.tcp_port, "tcp"),
            (libc::IPPROTO_UDP, r.udp_port, "udp"),
        ] {
            let label = format!("{family} {name}");
            let exprs = redirect_exprs(nfproto, daddr_offset, addr, proto as u8, port);
            out.push(rule_msg(
                &rules.table,
                &exprs,
                Some(&label),
                Op::NewRule(label.clone()),
            )?);
        }
    }
    if let Some(outbound) = &rules.outbound {
        out.extend(outbound_rules(&rules.table, outbound)?);
    }
    if let Some(remote) = &rules.remote {
        out.extend(remote_rules(&rules.table, remote)?);
    }
    Ok(out)
}

/// `meta nfproto F`.
pub(super) fn nfproto_is(nfproto: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::CmpEq(vec![nfproto]),
    ]
}

/// `meta l4proto P th dport 111`, and for TCP the SYN-only test (see
/// `redirect_exprs`).
pub(super) fn port_111_exprs(l4proto: u8) -> Vec<Expr> {
    port_exprs(l4proto, InterceptRules::RPCBIND_PORT)
}

/// `meta l4proto P th dport PORT`, and for TCP the SYN-only test.
pub(super) fn port_exprs(l4proto: u8, port: u16) -> Vec<Expr> {
    let mut exprs = vec![
        Expr::Meta {
            key: NFT_META_L4PROTO,
        },
        Expr::CmpEq(vec![l4proto]),
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
        },
        Expr::CmpEq(port.to_be_bytes().to_vec()),
    ];
    if l4proto == libc::IPPROTO_TCP as u8 {
        exprs.extend(syn_only());
    }
    exprs
}

/// `tcp flags & (fin|syn|rst|ack) == syn`.
pub(super) fn syn_only() -> [Expr; 3] {
    [
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: TCP_FLAGS_OFFSET,
            len: 1,
        },
        Expr::Bitwise {
            mask: vec![TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK],
            xor: vec![0],
        },
        Expr::CmpEq(vec![TCP_SYN]),
    ]
}

/// The NAT keeper: table `inet <table>` (no owner, created if missing), a
/// `nat` chain on the `output` hook, and in it exactly one rule,
/// `ct state new`, with no statement and no verdict. Any rules the chain
/// held are flushed in the same batch, so a start that finds the table
/// (every start after the first) leaves it as the first one made it.
///
/// Why both: the kernel registers its NAT hooks for a family while any
/// `nat` chain of it exists (`nf_nat_register_fn`), and conntrack's hooks
/// while any expression holds a reference to it (`nf_ct_netns_get`: the
/// redirect and `ct` expressions, not a chain). Measured with the owner
/// table's holder SIGKILLed: an empty nat chain alone kept nothing (the
/// reset still left untranslated); the chain with this rule kept both, and
/// the client saw its reset.
pub(super) fn build_keeper_batch(table: &str) -> Result<Vec<BatchMsg>, NetfilterError> {
    check_name(table, "table name")?;
    let mut out = Vec::new();
    let mut a = AttrBuf::new();
    a.put_str(NFTA_TABLE_NAME, table);
    out.push(BatchMsg {
        msg_type: NFT_MSG_NEWTABLE,
        flags: NLM_F_CREATE,
        attrs: a.into_bytes(),
        op: Op::NewKeeperTable,
    });
    out.push(nat_output_chain(
        table,
        KEEPER_CHAIN,
        KEEPER_PRIORITY,
        NLM_F_CREATE,
    ));
    // DELRULE naming only the chain deletes every rule in it.
    let mut a = AttrBuf::new();
    a.put_str(NFTA_RULE_TABLE, table);
    a.put_str(NFTA_RULE_CHAIN, KEEPER_CHAIN);
    out.push(BatchMsg {
        msg_type: NFT_MSG_DELRULE,
        flags: 0,
        attrs: a.into_bytes(),
        op: Op::FlushChain,
    });
    // As nft encodes `ct state new`: (state & NEW) != 0.
    let exprs = [
        Expr::CtState,
        Expr::Bitwise {
            mask: CT_STATE_NEW.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::CmpNeq(vec![0; 4]),
    ];
    out.push(rule_msg_in(
        table,
        KEEPER_CHAIN,
        &exprs,
        Some(KEEPER_COMMENT),
        Op::NewKeeperRule,
    )?);
    Ok(out)
}

/// The expressions nft generates for
/// `ip[6] daddr A tcp|udp dport 111 counter redirect to :PORT`, with
/// `tcp flags & (fin|syn|rst|ack) == syn` after the dport for TCP.
///
/// Only a connection's SYN may be redirected: when conntrack was not
/// tracking in the namespace before the table appeared, a connection
/// already open to :111 is picked up mid-stream (loose TCP pickup makes its
/// next segment NEW), and redirecting that segment would make the proxy
/// port answer it with a reset. A UDP flow has no such state to tell.
pub(super) fn redirect_exprs(
    nfproto: u8,
    daddr_offset: u32,
    addr: &[u8],
    l4proto: u8,
    port: u16,
) -> Vec<Expr> {
    let mut exprs = nfproto_is(nfproto).to_vec();
    exprs.extend([
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: daddr_offset,
            len: addr.len() as u32,
        },
        Expr::CmpEq(addr.to_vec()),
    ]);
    exprs.extend(port_111_exprs(l4proto));
    exprs.extend([
        Expr::Counter,
        Expr::ImmediateData(port.to_be_bytes().to_vec()),
        Expr::Redir,
    ]);
    exprs
}

/// One nf_tables expression, loading into / comparing NFT_REG_1 unless it
/// says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expr {
    Meta {
        key: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    /// `ct state`: the packet's conntrack state bits.
    CtState,
    CmpEq(Vec<u8>),
    CmpNeq(Vec<u8>),
    /// `reg = (reg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Counter,
    ImmediateData(Vec<u8>),
    /// The same, into NFT_REG_2 (the port beside an address in NFT_REG_1).
    ImmediateReg2(Vec<u8>),
    Return,
    /// The verdict `drop`.
    Drop,
    Redir,
    /// `fib daddr type`: the route type of the destination address.
    FibDaddrType,
    /// `dnat to <NFT_REG_1>:<NFT_REG_2>` for `family`.
    DnatToReg {
        family: u8,
    },
}

impl Expr {
    pub(super) fn encode(&self, a: &mut AttrBuf) {
        let elem = a.nest_start(NFTA_LIST_ELEM);
        let name = match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::CtState => "ct",
            Expr::CmpEq(_) | Expr::CmpNeq(_) => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Counter => "counter",
            Expr::ImmediateData(_) | Expr::ImmediateReg2(_) | Expr::Return | Expr::Drop => {
                "immediate"
            }
            Expr::Redir => "redir",
            Expr::FibDaddrType => "fib",
            Expr::DnatToReg { .. } => "nat",
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
            Expr::CtState => {
                a.put_u32_be(NFTA_CT_DREG, NFT_REG_1);
                a.put_u32_be(NFTA_CT_KEY, NFT_CT_STATE);
            }
            Expr::CmpEq(value) | Expr::CmpNeq(value) => {
                let op = match self {
                    Expr::CmpEq(_) => NFT_CMP_EQ,
                    _ => NFT_CMP_NEQ,
                };
                a.put_u32_be(NFTA_CMP_SREG, NFT_REG_1);
                a.put_u32_be(NFTA_CMP_OP, op);
                let d = a.nest_start(NFTA_CMP_DATA);
                a.put(NFTA_DATA_VALUE, value);
                a.nest_end(d);
            }
            Expr::Bitwise { mask, xor } => {
                // In nft's order: sreg, dreg, op (boolean), len, mask, xor.
                a.put_u32_be(NFTA_BITWISE_SREG, NFT_REG_1);
                a.put_u32_be(NFTA_BITWISE_DREG, NFT_REG_1);
                a.put_u32_be(NFTA_BITWISE_OP, NFT_BITWISE_BOOL);
                a.put_u32_be(NFTA_BITWISE_LEN, mask.len() as u32);
                for (ty, value) in [(NFTA_BITWISE_MASK, mask), (NFTA_BITWISE_XOR, xor)] {
                    let d = a.nest_start(ty);
                    a.put(NFTA_DATA_VALUE, value);
                    a.nest_end(d);
                }
            }
            Expr::Counter => {
                a.put_u64_be(NFTA_COUNTER_BYTES, 0);
                a.put_u64_be(NFTA_COUNTER_PACKETS, 0);
            }
            Expr::ImmediateData(value) | Expr::ImmediateReg2(value) => {
                let reg = match self {
                    Expr::ImmediateReg2(_) => NFT_REG_2,
                    _ => NFT_REG_1,
                };
                a.put_u32_be(NFTA_IMMEDIATE_DREG, reg);
                let d = a.nest_start(NFTA_IMMEDIATE_DATA);
                a.put(NFTA_DATA_VALUE, value);
                a.nest_end(d);
            }
            Expr::FibDaddrType => {
                a.put_u32_be(NFTA_FIB_DREG, NFT_REG_1);
                a.put_u32_be(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                a.put_u32_be(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
            }
            Expr::DnatToReg { family } => {
                a.put_u32_be(NFTA_NAT_TYPE, NFT_NAT_DNAT);
                a.put_u32_be(NFTA_NAT_FAMILY, u32::from(*family));
                a.put_u32_be(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
                a.put_u32_be(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2);
                a.put_u32_be(
                    NFTA_NAT_FLAGS,
                    NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
                );
            }
            Expr::Return | Expr::Drop => {
                let code = match self {
                    Expr::Drop => NF_DROP,
                    _ => NFT_RETURN as u32,
                };
                a.put_u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = a.nest_start(NFTA_IMMEDIATE_DATA);
                let v = a.nest_start(NFTA_DATA_VERDICT);
                a.put_u32_be(NFTA_VERDICT_CODE, code);
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

pub(super) fn rule_msg(
    table: &str,
    exprs: &[Expr],
    comment: Option<&str>,
    op: Op,
) -> Result<BatchMsg, NetfilterError> {
    rule_msg_in(table, CHAIN, exprs, comment, op)
}

pub(super) fn rule_msg_in(
    table: &str,
    chain: &str,
    exprs: &[Expr],
    comment: Option<&str>,
    op: Op,
) -> Result<BatchMsg, NetfilterError> {
    let mut a = AttrBuf::new();
    a.put_str(NFTA_RULE_TABLE, table);
    a.put_str(NFTA_RULE_CHAIN, chain);
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
pub(super) fn encode_comment(comment: &str) -> Result<Vec<u8>, NetfilterError> {
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
pub(super) fn decode_comment(mut udata: &[u8]) -> Option<String> {
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

// --- parsing (everything here is bounded by the slice it is given) ---

pub(super) fn be_u64(v: &[u8]) -> Result<u64, NetfilterError> {
    let a: [u8; 8] = v
        .try_into()
        .map_err(|_| NetfilterError::Protocol(format!("expected 8-byte value, got {}", v.len())))?;
    Ok(u64::from_be_bytes(a))
}

/// One rule from a GETRULE dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DumpedRule {
    pub(super) handle: u64,
    pub(super) label: Option<String>,
    /// (packets, bytes) of its counter expression, if it has one.
    pub(super) counter: Option<(u64, u64)>,
}

/// Parses a NEWRULE message payload (nfgenmsg + attributes).
pub(super) fn parse_rule(payload: &[u8]) -> Result<DumpedRule, NetfilterError> {
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

/// NEWCHAIN of a base chain `name` of type nat on the output hook at
/// `priority`, policy accept: the redirect chain and the keeper's.
fn nat_output_chain(table: &str, name: &str, priority: i32, flags: u16) -> BatchMsg {
    nat_chain(table, name, NF_INET_LOCAL_OUT, priority, flags)
}

/// A base chain `type nat hook <hook> priority <priority>; policy accept`.
pub(super) fn nat_chain(
    table: &str,
    name: &str,
    hooknum: u32,
    priority: i32,
    flags: u16,
) -> BatchMsg {
    let mut a = AttrBuf::new();
    a.put_str(NFTA_CHAIN_TABLE, table);
    a.put_str(NFTA_CHAIN_NAME, name);
    let hook = a.nest_start(NFTA_CHAIN_HOOK);
    a.put_u32_be(NFTA_HOOK_HOOKNUM, hooknum);
    a.put_u32_be(NFTA_HOOK_PRIORITY, priority as u32);
    a.nest_end(hook);
    a.put_u32_be(NFTA_CHAIN_POLICY, NF_ACCEPT);
    a.put_str(NFTA_CHAIN_TYPE, "nat");
    BatchMsg {
        msg_type: NFT_MSG_NEWCHAIN,
        flags,
        attrs: a.into_bytes(),
        op: Op::NewChain(name.to_owned()),
    }
}
