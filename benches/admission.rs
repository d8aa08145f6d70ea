//! What a client's admission costs at the connection limit, when one other
//! host holds every connection (server mode's connection flood): each
//! newcomer evicts one of its idle connections.
//!
//! `cargo bench --bench admission` (criterion, about 10 s). Under `cargo
//! test --all-targets` it runs once.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use rpcbind_proxy::proxy::limits::{Limits, LimitsConfig, Owner};

/// The default connection limit.
const MAX: usize = 4096;

fn admission_at_the_limit(c: &mut Criterion) {
    let limits = Limits::new(LimitsConfig {
        max_connections: MAX,
        ..LimitsConfig::default()
    });
    let abuser = Owner::Remote(IpAddr::from([169, 254, 2, 2]));
    let mut held: Vec<_> = (0..MAX)
        .map(|_| limits.admit(abuser).expect("below the limit"))
        .collect();
    c.bench_function("admit_evicting_one_of_4096_from_one_host", |b| {
        b.iter(|| {
            held.push(limits.admit(black_box(abuser)).expect("evicts one"));
            // The evicted ones' places are the registry's already; their
            // handles are let go now and then (amortised).
            if held.len() >= 2 * MAX {
                held.retain(|a| !a.is_evicted());
            }
        })
    });
    assert_eq!(limits.connected(), MAX);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = admission_at_the_limit
}
criterion_main!(benches);
