//! Property tests for the codec: encode/decode round trips (XDR, record
//! marking, call and reply headers, rpcbind arguments) and "arbitrary bytes
//! never panic" for every decoder. Fast (a few seconds): 256 cases each.
//! The long runs are the cargo-fuzz targets in fuzz/.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use rpcbind_proxy::protocol::rpc::{
    accepted_reply, authenticate, encode_call, parse_call, parse_reply, put_record, AcceptStat,
    OpaqueAuth, RecordCodec, RecordError, AUTH_NONE, MAX_AUTH_BYTES, MAX_FRAGMENTS, MSG_CALL,
    RPC_VERSION,
};
use rpcbind_proxy::protocol::rpcb::{
    decode_args, decode_pmaplist, decode_rpcblist, decode_string_reply, Args, Mapping, Procedure,
    Rpcb, RpcbEntry, MAX_NETBUF,
};
use rpcbind_proxy::protocol::xdr::{Reader, XdrError, XdrWrite};
use rpcbind_proxy::proxy::cache::changed_programs;
use tokio_util::codec::Decoder;

const MAX: usize = 9000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Feeds `wire` to a fresh codec in chunks of the given sizes (cycled) and
/// returns the records, or the first error.
fn decode_chunked(max: usize, wire: &[u8], chunks: &[usize]) -> Result<Vec<BytesMut>, RecordError> {
    let mut codec = RecordCodec::new(max);
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut off = 0;
    let mut i = 0;
    while off < wire.len() {
        let n = chunks[i % chunks.len()].clamp(1, wire.len() - off);
        i += 1;
        src.extend_from_slice(&wire[off..off + n]);
        off += n;
        while let Some(r) = codec.decode(&mut src)? {
            out.push(r);
        }
        assert!(src.capacity() < 64 * 1024 + wire.len());
    }
    assert!(src.is_empty(), "{} bytes left over", src.len());
    assert!(!codec.is_mid_record(&src));
    Ok(out)
}

/// `payload` as record-marked fragments cut at `cuts` (fractions of the
/// length; empty fragments allowed), the last one flagged.
fn fragment(payload: &[u8], cuts: &[u16]) -> Vec<u8> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| payload.len() * c as usize / u16::MAX as usize)
        .collect();
    points.sort_unstable();
    points.push(payload.len());
    let mut wire = Vec::new();
    let mut start = 0;
    for (i, &end) in points.iter().enumerate() {
        let last = i + 1 == points.len();
        let mark = (end - start) as u32 | if last { 0x8000_0000 } else { 0 };
        wire.extend_from_slice(&mark.to_be_bytes());
        wire.extend_from_slice(&payload[start..end]);
        start = end;
    }
    wire
}

fn accept_stat() -> impl Strategy<Value = AcceptStat> {
    prop_oneof![
        Just(AcceptStat::Success),
        Just(AcceptStat::ProgUnavail),
        (any::<u32>(), any::<u32>()).prop_map(|(low, high)| AcceptStat::ProgMismatch { low, high }),
        Just(AcceptStat::ProcUnavail),
        Just(AcceptStat::GarbageArgs),
        Just(AcceptStat::SystemErr),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn mapping() -> impl Strategy<Value = Mapping> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(prog, vers, prot, port)| {
        Mapping {
            prog,
            vers,
            prot,
            port,
        }
    })
}

fn rpcb_entry() -> impl Strategy<Value = RpcbEntry> {
    (any::<u32>(), any::<u32>(), bytes(12), bytes(40), bytes(12)).prop_map(
        |(prog, vers, netid, addr, owner)| RpcbEntry {
            prog,
            vers,
            netid,
            addr,
            owner,
        },
    )
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

/// Every (version, procedure) pair that exists.
fn procedures() -> Vec<(u32, u32, Procedure)> {
    let mut v = Vec::new();
    for vers in 2..=4 {
        for p in 0..16 {
            if let Some(proc_) = Procedure::lookup(vers, p) {
                v.push((vers, p, proc_));
            }
        }
    }
    v
}

proptest! {
    #![proptest_config(config())]

    // ---- XDR ----

    #[test]
    fn xdr_values_round_trip(
        items in vec(prop_oneof![
            any::<u32>().prop_map(Ok),
            bytes(64).prop_map(Err),
        ], 0..16),
    ) {
        let mut b = BytesMut::new();
        for it in &items {
            match it {
                Ok(v) => b.put_xdr_u32(*v),
                Err(d) => b.put_xdr_opaque(d),
            }
        }
        prop_assert_eq!(b.len() % 4, 0);
        let mut r = Reader::new(&b);
        for it in &items {
            match it {
                Ok(v) => prop_assert_eq!(r.u32(), Ok(*v)),
                Err(d) => {
                    // Alternately as opaque and as a string, with a maximum
                    // that is just enough.
                    let got = if d.len() % 2 == 0 {
                        r.opaque(d.len() as u32)
                    } else {
                        r.string(d.len() as u32)
                    };
                    prop_assert_eq!(got, Ok(&d[..]));
                }
            }
        }
        prop_assert_eq!(r.remaining(), 0);
        prop_assert_eq!(r.position(), b.len());
    }

    #[test]
    fn xdr_fixed_and_wide_values_round_trip(
        d in bytes(64), hi in any::<u32>(), lo in any::<u32>(), flag in any::<bool>(),
    ) {
        let mut b = BytesMut::new();
        b.put_xdr_fixed(&d);
        b.put_xdr_u32(hi);
        b.put_xdr_u32(lo);
        b.put_xdr_u32(flag as u32);
        let mut r = Reader::new(&b);
        prop_assert_eq!(r.opaque_fixed(d.len()), Ok(&d[..]));
        prop_assert_eq!(r.u64(), Ok((hi as u64) << 32 | lo as u64));
        prop_assert_eq!(r.bool(), Ok(flag));
        prop_assert!(r.rest().is_empty());
    }

    #[test]
    fn xdr_opaque_over_its_maximum_is_refused(d in bytes(64), under in 1u32..=64) {
        prop_assume!(d.len() as u32 >= under);
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&d);
        let max = d.len() as u32 - under;
        prop_assert_eq!(
            Reader::new(&b).opaque(max),
            Err(XdrError::TooLong { len: d.len() as u32, max })
        );
    }

    #[test]
    fn xdr_truncated_opaque_is_an_error(d in bytes(64), cut in any::<prop::sample::Index>()) {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&d);
        let cut = cut.index(b.len());
        let is_truncated = matches!(
            Reader::new(&b[..cut]).opaque(u32::MAX),
            Err(XdrError::Truncated { .. })
        );
        prop_assert!(is_truncated);
    }

    #[test]
    fn xdr_reader_never_panics_and_stays_in_bounds(
        buf in bytes(64), ops in vec(0u8..7, 0..24), max in any::<u32>(),
    ) {
        let mut r = Reader::new(&buf);
        for op in ops {
            let before = r.position();
            let ok = match op {
                0 => r.u32().is_ok(),
                1 => r.i32().is_ok(),
                2 => r.u64().is_ok(),
                3 => r.bool().is_ok(),
                4 => r.opaque(max).is_ok(),
                5 => r.string(max).is_ok(),
                _ => r.opaque_fixed(max as usize % 16).is_ok(),
            };
            prop_assert!(r.position() <= buf.len());
            prop_assert_eq!(r.position() + r.remaining(), buf.len());
            if !ok {
                prop_assert!(r.position() >= before);
            }
        }
    }

    // ---- Record marking ----

    #[test]
    fn fragmented_records_reassemble(
        payloads in vec((bytes(3000), vec(any::<u16>(), 0..6)), 1..4),
        chunks in vec(1usize..700, 1..5),
    ) {
        let mut wire = Vec::new();
        for (p, cuts) in &payloads {
            wire.extend(fragment(p, cuts));
        }
        let out = decode_chunked(MAX, &wire, &chunks).unwrap();
        prop_assert_eq!(out.len(), payloads.len());
        for (got, (want, _)) in out.iter().zip(&payloads) {
            prop_assert_eq!(&got[..], &want[..]);
        }
    }

    #[test]
    fn put_record_output_decodes_back(
        payloads in vec(bytes(MAX), 1..4),
        chunks in vec(1usize..5000, 1..4),
    ) {
        let mut wire = BytesMut::new();
        let mut codec = RecordCodec::new(MAX);
        for (i, p) in payloads.iter().enumerate() {
            if i % 2 == 0 {
                put_record(&mut wire, p);
            } else {
                tokio_util::codec::Encoder::encode(&mut codec, &p[..], &mut wire).unwrap();
            }
        }
        let out = decode_chunked(MAX, &wire, &chunks).unwrap();
        let out: Vec<&[u8]> = out.iter().map(|r| &r[..]).collect();
        let want: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        prop_assert_eq!(out, want);
    }

    #[test]
    fn records_over_the_limit_are_refused(
        len in (MAX + 1)..(MAX + 200), cuts in vec(any::<u16>(), 0..4),
        chunks in vec(1usize..4000, 1..4),
    ) {
        let wire = fragment(&vec![0x5a; len], &cuts);
        let refused = matches!(
            decode_chunked(MAX, &wire, &chunks),
            Err(RecordError::TooLarge { max: MAX, .. })
        );
        prop_assert!(refused);
    }

    #[test]
    fn a_lying_mark_reserves_nothing(mark in (MAX as u32 + 1)..=0x7fff_ffff, last in any::<bool>()) {
        let mark = mark | if last { 0x8000_0000 } else { 0 };
        let mut src = BytesMut::from(&mark.to_be_bytes()[..]);
        prop_assert!(RecordCodec::new(MAX).decode(&mut src).is_err());
        prop_assert!(src.capacity() <= MAX);
    }

    #[test]
    fn too_many_fragments_are_refused(extra in 1u32..8, chunks in vec(1usize..64, 1..3)) {
        let mut wire = Vec::new();
        for _ in 0..MAX_FRAGMENTS + extra {
            wire.extend_from_slice(&[0, 0, 0, 0]);
        }
        wire.extend_from_slice(&[0x80, 0, 0, 0]);
        let refused = matches!(
            decode_chunked(MAX, &wire, &chunks),
            Err(RecordError::TooManyFragments)
        );
        prop_assert!(refused);
    }

    #[test]
    fn record_decoder_never_panics_nor_overgrows(
        wire in bytes(2048), chunks in vec(1usize..300, 1..4), marks in vec(any::<(u16, u32)>(), 0..4),
    ) {
        // Arbitrary bytes with a few arbitrary record marks planted in them.
        let mut wire = wire;
        for (at, mark) in marks {
            if wire.len() >= 4 {
                let at = at as usize % (wire.len() - 3);
                wire[at..at + 4].copy_from_slice(&mark.to_be_bytes());
            }
        }
        let mut codec = RecordCodec::new(MAX);
        let mut src = BytesMut::new();
        let mut off = 0;
        let mut i = 0;
        'feed: while off < wire.len() {
            let n = chunks[i % chunks.len()].min(wire.len() - off);
            i += 1;
            src.extend_from_slice(&wire[off..off + n]);
            off += n;
            loop {
                match codec.decode(&mut src) {
                    Ok(Some(r)) => prop_assert!(r.len() <= MAX),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            prop_assert!(src.capacity() < 64 * 1024 + wire.len());
        }
    }

    // ---- Call and reply headers ----

    #[test]
    fn encode_call_parses_back(
        xid in any::<u32>(), prog in any::<u32>(), vers in any::<u32>(),
        procedure in any::<u32>(), args in bytes(256),
    ) {
        let b = encode_call(xid, prog, vers, procedure, &args);
        let c = parse_call(&b).unwrap();
        prop_assert_eq!((c.xid, c.prog, c.vers, c.procedure), (xid, prog, vers, procedure));
        prop_assert_eq!(c.cred, OpaqueAuth::NONE);
        prop_assert_eq!(c.verf, OpaqueAuth::NONE);
        prop_assert_eq!(c.args, &args[..]);
        prop_assert_eq!(c.header, &b[..40]);
        prop_assert_eq!(authenticate(&c), Ok(OpaqueAuth::NONE));
    }

    #[test]
    fn call_with_any_auth_parses_back(
        xid in any::<u32>(), cred_flavor in any::<u32>(), cred in bytes(MAX_AUTH_BYTES as usize),
        verf_flavor in any::<u32>(), verf in bytes(MAX_AUTH_BYTES as usize), args in bytes(64),
    ) {
        let mut b = BytesMut::new();
        for v in [xid, MSG_CALL, RPC_VERSION, 100000, 4, 3, cred_flavor] {
            b.put_xdr_u32(v);
        }
        b.put_xdr_opaque(&cred);
        b.put_xdr_u32(verf_flavor);
        b.put_xdr_opaque(&verf);
        let header_len = b.len();
        b.extend_from_slice(&args);
        let c = parse_call(&b).unwrap();
        prop_assert_eq!(c.cred, OpaqueAuth { flavor: cred_flavor, body: &cred });
        prop_assert_eq!(c.verf, OpaqueAuth { flavor: verf_flavor, body: &verf });
        prop_assert_eq!(c.header.len(), header_len);
        prop_assert_eq!(c.args, &args[..]);
        match authenticate(&c) {
            Ok(v) => prop_assert!(v == OpaqueAuth::NONE || v == c.verf),
            Err(_) => prop_assert_ne!(cred_flavor, AUTH_NONE),
        }
    }

    #[test]
    fn auth_sys_credentials_within_limits_authenticate(
        stamp in any::<u32>(), machine in bytes(255), uid in any::<u32>(), gid in any::<u32>(),
        gids in vec(any::<u32>(), 0..=16), verf in bytes(32),
    ) {
        let mut cred = BytesMut::new();
        cred.put_xdr_u32(stamp);
        cred.put_xdr_opaque(&machine);
        cred.put_xdr_u32(uid);
        cred.put_xdr_u32(gid);
        cred.put_xdr_u32(gids.len() as u32);
        for g in &gids {
            cred.put_xdr_u32(*g);
        }
        prop_assume!(cred.len() <= MAX_AUTH_BYTES as usize);
        let mut b = BytesMut::new();
        for v in [1, MSG_CALL, RPC_VERSION, 100000, 2, 3, 1] {
            b.put_xdr_u32(v);
        }
        b.put_xdr_opaque(&cred);
        b.put_xdr_u32(AUTH_NONE);
        b.put_xdr_opaque(&verf);
        let c = parse_call(&b).unwrap();
        let want = if verf.is_empty() { OpaqueAuth::NONE } else { c.verf };
        prop_assert_eq!(authenticate(&c), Ok(want));
    }

    #[test]
    fn accepted_reply_parses_back(
        xid in any::<u32>(), flavor in any::<u32>(), verf in bytes(MAX_AUTH_BYTES as usize),
        stat in accept_stat(), body in bytes(128),
    ) {
        let body = if stat == AcceptStat::Success { body } else { Vec::new() };
        let verf = OpaqueAuth { flavor, body: &verf };
        let r = accepted_reply(xid, verf, stat, &body);
        let p = parse_reply(&r).unwrap();
        prop_assert_eq!(p.xid, xid);
        prop_assert_eq!(p.accept, Some(stat));
        prop_assert_eq!(p.body, &body[..]);
    }

    // ---- rpcbind arguments and results ----

    #[test]
    fn mapping_args_round_trip(m in mapping(), trailing in bytes(8)) {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        b.extend_from_slice(&trailing);
        for (vers, p) in [(2, 1), (2, 2), (2, 3)] {
            let proc_ = Procedure::lookup(vers, p).unwrap();
            prop_assert_eq!(decode_args(proc_, vers, &b), Ok(Args::Mapping(m)));
        }
    }

    #[test]
    fn rpcb_args_round_trip(
        prog in any::<u32>(), vers in any::<u32>(), netid in bytes(16), addr in bytes(64),
        owner in bytes(16),
    ) {
        let r = Rpcb { prog, vers, netid: &netid, addr: &addr, owner: &owner };
        let mut b = BytesMut::new();
        r.encode(&mut b);
        // SET, UNSET, GETADDR (v3/v4), GETVERSADDR, GETADDRLIST.
        for (v, p) in [(3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (4, 9), (4, 11)] {
            let proc_ = Procedure::lookup(v, p).unwrap();
            prop_assert_eq!(decode_args(proc_, v, &b), Ok(Args::Rpcb(r)));
            if !b.is_empty() {
                prop_assert!(decode_args(proc_, v, &b[..b.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn other_args_round_trip(
        uaddr in bytes(64), maxlen in 0..=MAX_NETBUF, buf in bytes(64),
        call in (any::<u32>(), any::<u32>(), any::<u32>(), bytes(128)),
    ) {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&uaddr);
        for v in [3, 4] {
            prop_assert_eq!(
                decode_args(Procedure::Uaddr2Taddr, v, &b),
                Ok(Args::Uaddr(&uaddr[..]))
            );
        }

        let maxlen = maxlen.max(buf.len() as u32);
        let mut b = BytesMut::new();
        b.put_xdr_u32(maxlen);
        b.put_xdr_opaque(&buf);
        prop_assert_eq!(
            decode_args(Procedure::Taddr2Uaddr, 4, &b),
            Ok(Args::Netbuf { maxlen, buf: &buf[..] })
        );

        let (prog, vers, procedure, args) = call;
        let mut b = BytesMut::new();
        for v in [prog, vers, procedure] {
            b.put_xdr_u32(v);
        }
        b.put_xdr_opaque(&args);
        for (v, p) in [(2, 5), (3, 5), (4, 5), (4, 10)] {
            let proc_ = Procedure::lookup(v, p).unwrap();
            match decode_args(proc_, v, &b) {
                Ok(Args::RemoteCall(c)) => {
                    prop_assert_eq!((c.prog, c.vers, c.procedure), (prog, vers, procedure));
                    prop_assert_eq!(c.args, &args[..]);
                }
                other => prop_assert!(false, "v{} proc {}: {:?}", v, p, other),
            }
        }
    }

    #[test]
    fn decode_args_never_panics(args in bytes(256)) {
        for (vers, _, proc_) in procedures() {
            let _ = decode_args(proc_, vers, &args);
        }
    }

    #[test]
    fn dump_lists_round_trip(
        entries in vec(rpcb_entry(), 0..12), maps in vec(mapping(), 0..12),
    ) {
        let b = encode_rpcblist(&entries);
        prop_assert_eq!(decode_rpcblist(&b), Ok(entries.clone()));
        let mut b = BytesMut::new();
        for m in &maps {
            b.put_xdr_u32(1);
            m.encode(&mut b);
        }
        b.put_xdr_u32(0);
        prop_assert_eq!(decode_pmaplist(&b), Ok(maps));
        prop_assert!(changed_programs(&entries, &entries).is_empty());
    }

    #[test]
    fn changed_programs_names_exactly_the_differing_programs(
        old in vec(rpcb_entry(), 0..8), new in vec(rpcb_entry(), 0..8), prog in 0u32..4,
    ) {
        // Few program numbers so that old and new share some.
        let squash = |mut l: Vec<RpcbEntry>| {
            for e in &mut l {
                e.prog %= 4;
            }
            l
        };
        let (old, new) = (squash(old), squash(new));
        let changed = changed_programs(&old, &new);
        prop_assert_eq!(&changed, &changed_programs(&new, &old));
        let regs = |l: &[RpcbEntry]| {
            let mut s: Vec<_> = l
                .iter()
                .filter(|e| e.prog == prog)
                .map(|e| (e.vers, e.netid.clone(), e.addr.clone(), e.owner.clone()))
                .collect();
            s.sort();
            s.dedup();
            s
        };
        prop_assert_eq!(changed.contains(&prog), regs(&old) != regs(&new));
        // Order does not matter.
        let mut reversed = new.clone();
        reversed.reverse();
        prop_assert!(changed_programs(&new, &reversed).is_empty());
    }

    #[test]
    fn string_reply_round_trips(s in bytes(128)) {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&s);
        prop_assert_eq!(decode_string_reply(&b), Ok(&s[..]));
    }

    #[test]
    fn header_and_result_decoders_never_panic(buf in bytes(512)) {
        if let Ok(c) = parse_call(&buf) {
            prop_assert_eq!(c.header.len() + c.args.len(), buf.len());
            let _ = authenticate(&c);
        }
        if let Ok(r) = parse_reply(&buf) {
            prop_assert!(r.body.len() + 12 <= buf.len());
            let a = decode_rpcblist(r.body);
            let _ = decode_pmaplist(r.body);
            let _ = decode_string_reply(r.body);
            if let Ok(a) = a {
                prop_assert!(changed_programs(&a, &a).is_empty());
            }
        }
        let _ = decode_rpcblist(&buf);
        let _ = decode_pmaplist(&buf);
        let _ = decode_string_reply(&buf);
    }

    #[test]
    fn call_header_prefixes_decode_like_the_real_thing(
        xid in any::<u32>(), vers in 2u32..=4, p in 0u32..13, args in bytes(64),
    ) {
        // A well-formed call, cut anywhere inside its header, is refused.
        let b = encode_call(xid, 100000, vers, p, &args);
        for cut in 0..40 {
            prop_assert!(parse_call(&b[..cut]).is_err());
        }
    }
}
