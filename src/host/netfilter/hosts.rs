//! The rules for traffic of other hosts: server mode's `prerouting` chain
//! (other hosts' calls to this host's port 111, and the guard of the
//! daemon's own port) and the client side's `output` rules (this host's
//! connections to other hosts' port 111).

use super::*;
use crate::host::netlink::{NLM_F_CREATE, NLM_F_EXCL};

/// The client side's part of the install batch, in the `output` chain after
/// the mark rule (the daemon's own connections to the servers pass): per
/// family, `meta nfproto F meta l4proto tcp th dport 111 tcp SYN fib daddr
/// type != local [ip6 daddr != fe80::/10] counter redirect to :PORT`.
pub(super) fn outbound_rules(
    table: &str,
    outbound: &OutboundRedirect,
) -> Result<Vec<BatchMsg>, NetfilterError> {
    if outbound.port == 0 {
        return Err(NetfilterError::Invalid("redirect port 0".into()));
    }
    let mut out = Vec::new();
    for (on, family, nfproto) in [
        (outbound.ipv4, "ipv4", NFPROTO_IPV4),
        (outbound.ipv6, "ipv6", NFPROTO_IPV6),
    ] {
        if !on {
            continue;
        }
        let label = format!("{OUTBOUND_LABEL}{family} tcp");
        let exprs = outbound_exprs(nfproto, outbound.port);
        out.push(rule_msg_in(
            table,
            CHAIN,
            &exprs,
            Some(&label),
            Op::NewRule(label.clone()),
        )?);
    }
    Ok(out)
}

/// One client-side rule (see [`outbound_rules`]). A loopback or other local
/// destination is transparent mode's or rpcbind's own, never a server's; an
/// IPv6 link-local one is left alone because the scope (the interface) is
/// not in what conntrack keeps, so the proxy could not reach it.
pub(super) fn outbound_exprs(nfproto: u8, port: u16) -> Vec<Expr> {
    let mut exprs = nfproto_is(nfproto).to_vec();
    exprs.extend(port_111_exprs(libc::IPPROTO_TCP as u8));
    exprs.extend([
        Expr::FibDaddrType,
        Expr::CmpNeq(RTN_LOCAL.to_ne_bytes().to_vec()),
    ]);
    if nfproto == NFPROTO_IPV6 {
        exprs.extend([
            Expr::Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset: 24,
                len: 2,
            },
            Expr::Bitwise {
                mask: vec![0xff, 0xc0],
                xor: vec![0, 0],
            },
            Expr::CmpNeq(vec![0xfe, 0x80]),
        ]);
    }
    exprs.extend([
        Expr::Counter,
        Expr::ImmediateData(port.to_be_bytes().to_vec()),
        Expr::Redir,
    ]);
    exprs
}

/// Server mode's part of the install batch: the `prerouting` nat chain and,
/// per interface, family and protocol, one rule
/// `iifname IF meta nfproto F meta l4proto P th dport 111 [tcp SYN]
/// fib daddr type local counter dnat to <its own daddr>:PORT`. Only the
/// port changes: the proxy sees the address the client asked, as rpcbind
/// would, and answers from it.
pub(super) fn remote_rules(
    table: &str,
    remote: &RemoteRedirect,
) -> Result<Vec<BatchMsg>, NetfilterError> {
    if remote.interfaces.is_empty() {
        return Err(NetfilterError::Invalid(
            "server mode without an interface".into(),
        ));
    }
    let mut out = vec![nat_chain(
        table,
        REMOTE_CHAIN,
        NF_INET_PRE_ROUTING,
        CHAIN_PRIORITY,
        NLM_F_CREATE | NLM_F_EXCL,
    )];
    let families = [
        (remote.ipv4, "ipv4", NFPROTO_IPV4),
        (remote.ipv6, "ipv6", NFPROTO_IPV6),
    ];
    for iface in &remote.interfaces {
        for (redirect, family, nfproto) in families {
            let Some(r) = redirect else { continue };
            for (proto, port, pname) in [
                (libc::IPPROTO_TCP, r.tcp_port, "tcp"),
                (libc::IPPROTO_UDP, r.udp_port, "udp"),
            ] {
                if port == 0 {
                    return Err(NetfilterError::Invalid("redirect port 0".into()));
                }
                let label = format!("{REMOTE_LABEL}{iface} {family} {pname}");
                let exprs = remote_exprs(iface, nfproto, proto as u8, port)?;
                out.push(rule_msg_in(
                    table,
                    REMOTE_CHAIN,
                    &exprs,
                    Some(&label),
                    Op::NewRule(label.clone()),
                )?);
            }
        }
    }
    if let Some(port) = remote.guard {
        for nfproto in [NFPROTO_IPV4, NFPROTO_IPV6] {
            for proto in [libc::IPPROTO_TCP, libc::IPPROTO_UDP] {
                let exprs = guard_exprs(nfproto, proto as u8, port)?;
                out.push(rule_msg_in(
                    table,
                    REMOTE_CHAIN,
                    &exprs,
                    Some(GUARD_COMMENT),
                    Op::NewGuardRule,
                )?);
            }
        }
    }
    Ok(out)
}

/// The guard rules' comment, what an administrator reading the ruleset sees.
const GUARD_COMMENT: &str =
    "rpcbind-proxy: other hosts reach its server-mode port only through the redirect of port 111";

/// One server-mode rule: `iifname IF meta nfproto F meta l4proto P th
/// dport 111 [tcp SYN] fib daddr type local counter dnat to <daddr>:PORT`.
pub(super) fn remote_exprs(
    iface: &str,
    nfproto: u8,
    l4proto: u8,
    port: u16,
) -> Result<Vec<Expr>, NetfilterError> {
    let (daddr_offset, addr_len) = if nfproto == NFPROTO_IPV6 {
        (24, 16)
    } else {
        (16, 4)
    };
    let mut exprs = vec![
        Expr::Meta {
            key: NFT_META_IIFNAME,
        },
        Expr::CmpEq(iifname(iface)?.to_vec()),
    ];
    exprs.extend(nfproto_is(nfproto));
    exprs.extend(port_111_exprs(l4proto));
    exprs.extend([
        Expr::FibDaddrType,
        Expr::CmpEq(RTN_LOCAL.to_ne_bytes().to_vec()),
        Expr::Counter,
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: daddr_offset,
            len: addr_len,
        },
        Expr::ImmediateReg2(port.to_be_bytes().to_vec()),
        Expr::DnatToReg { family: nfproto },
    ]);
    Ok(exprs)
}

/// An interface name as `meta iifname` compares it: NUL-padded to IFNAMSIZ.
pub(super) fn iifname(name: &str) -> Result<[u8; 16], NetfilterError> {
    let mut out = [0u8; 16];
    if name.is_empty() || name.len() >= out.len() || name.bytes().any(|b| b == 0) {
        return Err(NetfilterError::Invalid(format!(
            "interface name {name:?} must be 1-15 bytes without NUL"
        )));
    }
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Server mode's guard of its own port: `iifname != "lo" meta nfproto F
/// meta l4proto P th dport PORT [SYN] fib daddr type local counter drop`.
/// A flow redirected from 111 is past the nat chain by then (its first
/// packet matched the redirect, which ends the chain), so only flows
/// addressed to PORT itself are dropped.
pub(super) fn guard_exprs(
    nfproto: u8,
    l4proto: u8,
    port: u16,
) -> Result<Vec<Expr>, NetfilterError> {
    let mut exprs = vec![
        Expr::Meta {
            key: NFT_META_IIFNAME,
        },
        Expr::CmpNeq(iifname("lo")?.to_vec()),
    ];
    exprs.extend(nfproto_is(nfproto));
    exprs.extend(port_exprs(l4proto, port));
    exprs.extend([
        Expr::FibDaddrType,
        Expr::CmpEq(RTN_LOCAL.to_ne_bytes().to_vec()),
        Expr::Counter,
        Expr::Drop,
    ]);
    Ok(exprs)
}
