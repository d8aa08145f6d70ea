//! The codec against bytes captured from real rpcbind 1.2.6 traffic over TCP
//! (tests/golden/*.hex: record mark included).

use bytes::BytesMut;
use rpcbind_proxy::protocol::rpc::{encode_call, parse_call, parse_reply, AcceptStat, RecordCodec};
use rpcbind_proxy::protocol::rpcb::{decode_args, decode_rpcblist, Args, Mapping, Procedure};
use tokio_util::codec::Decoder;

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let hex = std::fs::read_to_string(&path).unwrap();
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn one_record(wire: &[u8]) -> BytesMut {
    let mut src = BytesMut::from(wire);
    let rec = RecordCodec::new(1 << 20).decode(&mut src).unwrap().unwrap();
    assert!(src.is_empty(), "exactly one record");
    rec
}

#[test]
fn getport_call_decodes_and_our_encoder_produces_the_same_bytes() {
    let wire = golden("v2_getport_tcp_call");
    let rec = one_record(&wire);
    let call = parse_call(&rec).unwrap();
    assert_eq!((call.prog, call.vers, call.procedure), (100000, 2, 3));
    let p = Procedure::lookup(call.vers, call.procedure).unwrap();
    assert_eq!(p, Procedure::GetPort);
    let expected = Mapping {
        prog: 100000,
        vers: 2,
        prot: 6,
        port: 0,
    };
    assert_eq!(decode_args(p, 2, call.args), Ok(Args::Mapping(expected)));
    let mut args = BytesMut::new();
    expected.encode(&mut args);
    assert_eq!(&encode_call(call.xid, 100000, 2, 3, &args)[..], &rec[..]);
}

#[test]
fn getport_reply_decodes() {
    let rec = one_record(&golden("v2_getport_tcp_reply"));
    let r = parse_reply(&rec).unwrap();
    assert_eq!(r.accept, Some(AcceptStat::Success));
    assert_eq!(r.body, &[0, 0, 0, 111]);
}

#[test]
fn v3_dump_reply_decodes_every_portmapper_entry() {
    let call = one_record(&golden("v3_dump_tcp_call"));
    assert_eq!(parse_call(&call).unwrap().procedure, 4);
    let rec = one_record(&golden("v3_dump_tcp_reply"));
    let r = parse_reply(&rec).unwrap();
    assert_eq!(r.accept, Some(AcceptStat::Success));
    let list = decode_rpcblist(r.body).unwrap();
    // rpcbind registers itself on tcp6, udp6 (v3, v4), tcp, udp (v2-v4) and
    // local (v3, v4); the capture also holds program 200001 on tcp and udp.
    assert_eq!(list.len(), 14);
    let own: Vec<_> = list.iter().filter(|e| e.prog == 100000).collect();
    assert_eq!(own.len(), 12);
    assert!(list.iter().all(|e| e.owner == b"superuser"));
    assert_eq!(
        (list[13].prog, &list[13].netid[..], &list[13].addr[..]),
        (200001, &b"udp"[..], &b"0.0.0.0.4.2"[..])
    );
    let netids: std::collections::BTreeSet<_> = own.iter().map(|e| e.netid.clone()).collect();
    let want: std::collections::BTreeSet<Vec<u8>> = ["local", "tcp", "tcp6", "udp", "udp6"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(netids, want);
    // Every truncation of the body is an error, never a panic or a guess.
    for cut in 0..r.body.len() {
        assert!(decode_rpcblist(&r.body[..cut]).is_err(), "cut at {cut}");
    }
}
