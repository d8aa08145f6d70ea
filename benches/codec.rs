//! Criterion micro-benchmarks of the hot path's pieces: decoding a GETPORT
//! call off the wire, encoding a reply, and a cache hit.
//!
//! `cargo bench --bench codec` (about 15 s: short warm-up and measurement
//! times, set in `config()`). Under `cargo test --all-targets` each runs once.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokio_util::codec::Decoder;

use rpcbind_proxy::protocol::rpc::{self, AcceptStat, OpaqueAuth, RecordCodec};
use rpcbind_proxy::protocol::rpcb::{self, Args, Mapping, Procedure};
use rpcbind_proxy::proxy::cache::{Cache, CacheConfig, Key, Lookup};

const PROG: u32 = 100_003;

/// A PMAP v2 GETPORT(100003, 3, tcp) call as it arrives on a stream: record
/// mark, header with AUTH_NONE, mapping.
fn getport_wire() -> Vec<u8> {
    let mut args = BytesMut::new();
    Mapping {
        prog: PROG,
        vers: 3,
        prot: rpcb::IPPROTO_TCP,
        port: 0,
    }
    .encode(&mut args);
    let call = rpc::encode_call(0x1234_5678, rpcb::PROGRAM, 2, 3, &args);
    let mut wire = BytesMut::new();
    rpc::put_record(&mut wire, &call);
    wire.to_vec()
}

fn port_reply(xid: u32, port: u32) -> Bytes {
    rpc::accepted_reply(
        xid,
        OpaqueAuth::NONE,
        AcceptStat::Success,
        &port.to_be_bytes(),
    )
}

fn decode_call(c: &mut Criterion) {
    let wire = getport_wire();
    let mut codec = RecordCodec::new(rpc::MAX_CLIENT_RECORD);
    c.bench_function("decode_getport_call", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |src| {
                let record = codec.decode(src).unwrap().unwrap();
                let call = rpc::parse_call(&record).unwrap();
                let procedure = Procedure::lookup(call.vers, call.procedure).unwrap();
                let args = rpcb::decode_args(procedure, call.vers, call.args).unwrap();
                let Args::Mapping(m) = args else {
                    panic!("GETPORT decodes to a mapping")
                };
                black_box((call.xid, m));
            },
            BatchSize::SmallInput,
        )
    });
}

fn encode_reply(c: &mut Criterion) {
    c.bench_function("encode_getport_reply", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            let reply = port_reply(black_box(0x1234_5678), black_box(2049));
            out.clear();
            rpc::put_record(&mut out, &reply);
            black_box(&out);
        })
    });
}

fn cache_hit(c: &mut Criterion) {
    let cache = Cache::new(CacheConfig::default());
    let key = Key::GetPort {
        prog: PROG,
        vers: 3,
        prot: rpcb::IPPROTO_TCP,
    };
    // Filled as the proxy fills it: a miss, then the answer from rpcbind.
    match cache.lookup(key) {
        Lookup::Miss { ticket, .. } => cache.complete(ticket, &Ok(port_reply(1, 2049))),
        other => panic!("expected a miss, got {other:?}"),
    }
    c.bench_function("cache_hit_getport", |b| {
        b.iter(|| match cache.lookup(black_box(key)) {
            Lookup::Hit(reply) => black_box(reply),
            other => panic!("expected a hit, got {other:?}"),
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_call, encode_reply, cache_hit
}
criterion_main!(benches);
