//! Replies from rpcbind: `rpc::parse_reply`, then every result decoder on the
//! body (`decode_rpcblist`, `decode_pmaplist`, `decode_string_reply`), and
//! `cache::changed_programs` between two DUMPs.
//!
//! Input: bytes 0..2 (big-endian) say where the reply ends; the bytes after
//! it are a second v3/v4 DUMP body, compared with the first when both decode.
//! Checks: no panic; the body is a suffix of the reply; decoded lists
//! re-encode and decode back to themselves; `changed_programs` is symmetric,
//! empty against itself, and names exactly the programs whose registrations
//! differ.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpcbind_proxy::proxy::cache::changed_programs;
use rpcbind_proxy::protocol::rpc::parse_reply;
use rpcbind_proxy::protocol::rpcb::{decode_pmaplist, decode_rpcblist, decode_string_reply, Rpcb, RpcbEntry};
use rpcbind_proxy::protocol::xdr::XdrWrite;

type Regs<'a> = BTreeMap<u32, BTreeSet<(u32, &'a [u8], &'a [u8], &'a [u8])>>;

fn registrations(list: &[RpcbEntry]) -> Regs<'_> {
    let mut m: Regs<'_> = BTreeMap::new();
    for e in list {
        m.entry(e.prog)
            .or_default()
            .insert((e.vers, &e.netid[..], &e.addr[..], &e.owner[..]));
    }
    m
}

fn encode_rpcblist(list: &[RpcbEntry]) -> BytesMut {
    let mut b = BytesMut::new();
    for e in list {
        b.put_xdr_u32(1);
        Rpcb {
            prog: e.prog,
            vers: e.vers,
            netid: &e.netid,
            addr: &e.addr,
            owner: &e.owner,
        }
        .encode(&mut b);
    }
    b.put_xdr_u32(0);
    b
}

fuzz_target!(|data: &[u8]| {
    let [hi, lo, rest @ ..] = data else {
        return;
    };
    let split = (u16::from_be_bytes([*hi, *lo]) as usize).min(rest.len());
    let (reply, other) = rest.split_at(split);

    let Ok(parsed) = parse_reply(reply) else {
        return;
    };
    let body = parsed.body;
    assert!(body.len() <= reply.len().saturating_sub(12));
    assert_eq!(body, &reply[reply.len() - body.len()..]);

    let dump = decode_rpcblist(body);
    if let Ok(list) = &dump {
        let b = encode_rpcblist(list);
        assert!(b.len() <= body.len());
        assert_eq!(decode_rpcblist(&b).as_ref(), Ok(list));
    }
    if let Ok(list) = decode_pmaplist(body) {
        let mut b = BytesMut::new();
        for m in &list {
            b.put_xdr_u32(1);
            m.encode(&mut b);
        }
        b.put_xdr_u32(0);
        assert!(b.len() <= body.len());
        assert_eq!(decode_pmaplist(&b), Ok(list));
    }
    if let Ok(s) = decode_string_reply(body) {
        assert!(s.len() + 4 <= body.len());
    }

    let (Ok(old), Ok(new)) = (dump, decode_rpcblist(other)) else {
        return;
    };
    let changed = changed_programs(&old, &new);
    assert_eq!(changed, changed_programs(&new, &old));
    assert!(changed_programs(&old, &old).is_empty());
    assert!(changed_programs(&new, &new).is_empty());
    let (a, b) = (registrations(&old), registrations(&new));
    let expected: BTreeSet<u32> = a
        .keys()
        .chain(b.keys())
        .filter(|p| a.get(p) != b.get(p))
        .copied()
        .collect();
    assert_eq!(changed, expected);
});
