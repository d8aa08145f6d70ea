//! Unit tests of `netfilter`: encoding, parsing, error mapping.

use super::*;
use crate::host::netlink::*;

/// The messages of a datagram, or the first length that does not fit.
fn split_msgs(buf: &[u8]) -> Result<Vec<NlMsg<'_>>, NetlinkError> {
    msgs(buf).collect()
}

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
        remote: None,
        outbound: None,
    }
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

/// The expression names of a NEWRULE message and the values its cmp and
/// immediate expressions carry, in order.
fn rule_exprs(m: &BatchMsg) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for a in attrs(&m.attrs) {
        let (ty, v) = a.unwrap();
        if ty != NFTA_RULE_EXPRESSIONS {
            continue;
        }
        for e in attrs(v) {
            let (_, ev) = e.unwrap();
            for x in attrs(ev) {
                let (xt, xv) = x.unwrap();
                if xt == NFTA_EXPR_NAME {
                    names.push(String::from_utf8(xv[..xv.len() - 1].to_vec()).unwrap());
                    continue;
                }
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
    (names, values)
}

/// The keeper: a table without the owner flag and a chain, both made only if
/// missing (no NLM_F_EXCL), its rules flushed, and one rule that only
/// reads the conntrack state: no redirect, no verdict.
#[test]
fn keeper_batch_is_idempotent_and_decides_nothing() {
    let b = build_keeper_batch("rpcbind_proxy_nat").unwrap();
    let ops: Vec<String> = b.iter().map(|m| m.op.to_string()).collect();
    assert_eq!(
        ops,
        [
            "NEWTABLE (NAT keeper)",
            "NEWCHAIN output",
            "DELRULE (flush chain output)",
            "NEWRULE (ct state new)"
        ]
    );
    assert!(b.iter().all(|m| m.flags & NLM_F_EXCL == 0));
    let t: Vec<_> = attrs(&b[0].attrs).map(Result::unwrap).collect();
    assert_eq!(t, [(NFTA_TABLE_NAME, &b"rpcbind_proxy_nat\0"[..])]);
    let flush: Vec<u16> = attrs(&b[2].attrs).map(|a| a.unwrap().0).collect();
    assert_eq!(
        flush,
        [NFTA_RULE_TABLE, NFTA_RULE_CHAIN],
        "no handle: every rule"
    );
    let (names, values) = rule_exprs(&b[3]);
    assert_eq!(names, ["ct", "bitwise", "cmp"]);
    assert_eq!(values, [vec![0; 4]]);
    assert!(build_keeper_batch("").is_err());
}

/// Parses our own NEWRULEs back: the redirect port, the protocol, and for
/// TCP the pure-SYN match.
#[test]
fn redirect_rule_encodes_nft_expressions() {
    let b = build_install_batch(&rules()).unwrap();
    let udp = &b[4]; // ipv4 udp
    let label = attrs(&udp.attrs)
        .map(Result::unwrap)
        .find(|(ty, _)| *ty == NFTA_RULE_USERDATA)
        .map(|(_, v)| decode_comment(v));
    assert_eq!(label, Some(Some("ipv4 udp".into())));
    let (names, values) = rule_exprs(udp);
    let head = [
        "meta", "cmp", "payload", "cmp", "meta", "cmp", "payload", "cmp",
    ];
    let tail = ["counter", "immediate", "redir"];
    assert_eq!(names, [&head[..], &tail[..]].concat());
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
    // ipv4 tcp: `tcp flags & (fin|syn|rst|ack) == syn` before the counter.
    let (names, values) = rule_exprs(&b[3]);
    let flags = ["payload", "bitwise", "cmp"];
    assert_eq!(names, [&head[..], &flags[..], &tail[..]].concat());
    assert_eq!(
        values,
        vec![
            vec![2],
            vec![127, 0, 0, 1],
            vec![6],
            vec![0, 111],
            vec![2],
            1111u16.to_be_bytes().to_vec()
        ]
    );
    // ipv6 tcp has it too, ipv6 udp does not.
    assert_eq!(
        rule_exprs(&b[5]).0.len(),
        head.len() + flags.len() + tail.len()
    );
    assert_eq!(rule_exprs(&b[6]).0.len(), head.len() + tail.len());
}

/// The pure-SYN match is byte for byte what nft 1.0.6 sends for
/// `tcp flags & (fin|syn|rst|ack) == syn` (`nft --debug=mnl add rule ...`).
#[test]
fn syn_match_bytes_match_nft() {
    fn nla(len: u16, ty: u16, nested: bool) -> Vec<u8> {
        let ty = if nested { ty | NLA_F_NESTED } else { ty };
        [len.to_ne_bytes(), ty.to_ne_bytes()].concat()
    }
    let u32_attr = |ty, v: u32| [nla(8, ty, false), v.to_be_bytes().to_vec()].concat();
    let value = |ty, byte: u8| [nla(12, ty, true), nla(5, 1, false), vec![byte, 0, 0, 0]].concat();
    let expected = [
        // [ payload load 1b @ transport header + 13 => reg 1 ]
        nla(52, 1, true),
        nla(12, 1, false),
        b"payload\0".to_vec(),
        nla(36, 2, true),
        u32_attr(1, 1),
        u32_attr(2, 2),
        u32_attr(3, 13),
        u32_attr(4, 1),
        // [ bitwise reg 1 = ( reg 1 & 0x00000017 ) ^ 0x00000000 ]
        nla(76, 1, true),
        nla(12, 1, false),
        b"bitwise\0".to_vec(),
        nla(60, 2, true),
        u32_attr(1, 1),
        u32_attr(2, 1),
        u32_attr(6, 0),
        u32_attr(3, 1),
        value(4, 0x17),
        value(5, 0),
        // [ cmp eq reg 1 0x00000002 ]
        nla(44, 1, true),
        nla(8, 1, false),
        b"cmp\0".to_vec(),
        nla(32, 2, true),
        u32_attr(1, 1),
        u32_attr(2, 0),
        value(3, 2),
    ]
    .concat();
    let exprs = redirect_exprs(
        NFPROTO_IPV4,
        16,
        &[127, 0, 0, 1],
        libc::IPPROTO_TCP as u8,
        1111,
    );
    let mut a = AttrBuf::new();
    for e in &exprs[8..11] {
        e.encode(&mut a);
    }
    assert_eq!(a.into_bytes(), expected);
}

/// `parse_rule` reads a dumped TCP rule (with the SYN match) like any other.
#[test]
fn tcp_rule_parsed_back() {
    let b = build_install_batch(&rules()).unwrap();
    let mut a = AttrBuf::new();
    a.put_u64_be(NFTA_RULE_HANDLE, 9);
    let mut payload = vec![NFPROTO_INET, 0, 0, 5];
    payload.extend_from_slice(&b[3].attrs);
    payload.extend_from_slice(&a.into_bytes());
    assert_eq!(
        parse_rule(&payload).unwrap(),
        DumpedRule {
            handle: 9,
            label: Some("ipv4 tcp".into()),
            counter: Some((0, 0)),
        }
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
    nf_msg(
        nft_type(NFT_MSG_NEWRULE),
        NLM_F_MULTI,
        NFPROTO_INET,
        5,
        &captured_rule()[4..],
    )
    .encode(7, 0, &mut dgram);
    nf_msg(NLMSG_DONE, NLM_F_MULTI, 0, 0, &[]).encode(7, 0, &mut dgram);
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
        map_batch_error(&Op::NewChain("output".into()), libc::ENOENT, None, t),
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

/// Server mode: a `prerouting` nat chain and, per interface, family and
/// protocol, one rule that keeps the destination address and changes only
/// the port (`dnat to <daddr>:PORT`), for the host's own addresses only.
#[test]
fn remote_rules_keep_the_address_and_match_the_interface() {
    let mut r = rules();
    r.remote = Some(RemoteRedirect {
        interfaces: vec!["eth0".into(), "bond1".into()],
        ipv4: Some(Redirect {
            tcp_port: 1112,
            udp_port: 1112,
        }),
        ipv6: None,
        guard: Some(1112),
    });
    let b = build_install_batch(&r).unwrap();
    let ops: Vec<String> = b.iter().map(|m| m.op.to_string()).collect();
    assert_eq!(
        ops[7..],
        [
            "NEWCHAIN prerouting",
            "NEWRULE (remote eth0 ipv4 tcp)",
            "NEWRULE (remote eth0 ipv4 udp)",
            "NEWRULE (remote bond1 ipv4 tcp)",
            "NEWRULE (remote bond1 ipv4 udp)",
            "NEWRULE (guard)",
            "NEWRULE (guard)",
            "NEWRULE (guard)",
            "NEWRULE (guard)",
        ]
    );
    let guard = guard_exprs(NFPROTO_IPV6, libc::IPPROTO_UDP as u8, 1112).unwrap();
    assert_eq!(
        guard[1],
        Expr::CmpNeq(b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec())
    );
    assert_eq!(guard.last(), Some(&Expr::Drop));
    let exprs = remote_exprs("eth0", NFPROTO_IPV4, libc::IPPROTO_UDP as u8, 1112).unwrap();
    assert_eq!(
        exprs[..2],
        [
            Expr::Meta {
                key: NFT_META_IIFNAME
            },
            Expr::CmpEq(b"eth0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()),
        ]
    );
    assert!(exprs.contains(&Expr::FibDaddrType));
    assert_eq!(
        exprs[exprs.len() - 3..],
        [
            Expr::Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset: 16,
                len: 4
            },
            Expr::ImmediateReg2(1112u16.to_be_bytes().to_vec()),
            Expr::DnatToReg {
                family: NFPROTO_IPV4
            },
        ]
    );
    r.remote.as_mut().unwrap().interfaces = vec!["x".repeat(16)];
    assert!(build_install_batch(&r).is_err());
    r.remote.as_mut().unwrap().interfaces.clear();
    assert!(build_install_batch(&r).is_err());
}

/// The client side: after the mark rule, in the `output` chain, one rule
/// per family for TCP to port 111 of an address not this host's (IPv6: not
/// link-local either), redirected to the loopback port.
#[test]
fn outbound_rules_catch_tcp_to_other_hosts_only() {
    let mut r = rules();
    r.outbound = Some(OutboundRedirect {
        ipv4: true,
        ipv6: true,
        port: 1113,
    });
    let b = build_install_batch(&r).unwrap();
    let ops: Vec<String> = b.iter().map(|m| m.op.to_string()).collect();
    assert_eq!(
        ops[7..],
        ["NEWRULE (outbound ipv4 tcp)", "NEWRULE (outbound ipv6 tcp)"]
    );
    let v4 = outbound_exprs(NFPROTO_IPV4, 1113);
    assert!(v4.contains(&Expr::CmpEq(vec![libc::IPPROTO_TCP as u8])));
    let fib = v4.iter().position(|e| *e == Expr::FibDaddrType).unwrap();
    assert_eq!(v4[fib + 1], Expr::CmpNeq(RTN_LOCAL.to_ne_bytes().to_vec()));
    assert_eq!(
        v4[v4.len() - 2..],
        [
            Expr::ImmediateData(1113u16.to_be_bytes().to_vec()),
            Expr::Redir
        ]
    );
    let v6 = outbound_exprs(NFPROTO_IPV6, 1113);
    assert!(v6.contains(&Expr::CmpNeq(vec![0xfe, 0x80])));
    r.outbound = Some(OutboundRedirect {
        ipv4: true,
        ipv6: false,
        port: 0,
    });
    assert!(build_install_batch(&r).is_err());
}
