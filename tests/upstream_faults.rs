//! The upstream multiplexer against a fake rpcbind that misbehaves on
//! purpose (support/fake_rpcbind.rs, no root needed): out-of-order
//! replies, silence, dropped connections, garbage.
//! (The real rpcbind is the judge of correct answers: see differential.rs.)

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rpcbind_proxy::protocol::rpc::{encode_call, parse_reply, xid_of};
use rpcbind_proxy::proxy::service::Outcome;
use rpcbind_proxy::proxy::upstream::{Target, Upstream, UpstreamError};
use support::fake_rpcbind::{fake, rand_suffix, Act, ROOT};
use tokio::task::JoinHandle;

fn call(xid: u32, tag: u32) -> BytesMut {
    let mut args = BytesMut::new();
    args.put_u32(tag);
    encode_call(xid, 100000, 2, 0, &args)
}

/// `n` concurrent lookups through `up`, the i-th with XID and tag i.
fn spawn_lookups(up: &Arc<Upstream>, n: u32) -> Vec<JoinHandle<Result<Bytes, UpstreamError>>> {
    (0..n)
        .map(|i| {
            let up = up.clone();
            tokio::spawn(async move { up.call(&call(i, i), true).await })
        })
        .collect()
}

fn tag_of(reply: &[u8]) -> u32 {
    u32::from_be_bytes(reply[40..44].try_into().unwrap())
}

#[tokio::test]
async fn replies_are_matched_by_xid_and_carry_the_clients_xid() {
    // The first call is held back and answered after the second: the reply
    // order differs from the call order.
    let f = fake(|_, i| if i == 0 { Act::Hold } else { Act::Echo });
    let up = Arc::new(f.upstream(Duration::from_secs(5)));
    let (a, b) = {
        let up1 = up.clone();
        let first = tokio::spawn(async move { up1.call(&call(0xaaaa, 1), true).await });
        // Make sure the first is on the wire before the second.
        tokio::task::yield_now().await;
        while up.stats.calls.load(Ordering::Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
        let second = up.call(&call(0xbbbb, 2), true).await;
        (first.await.unwrap(), second)
    };
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((xid_of(&a), tag_of(&a)), (Some(0xaaaa), 1));
    assert_eq!((xid_of(&b), tag_of(&b)), (Some(0xbbbb), 2));
    assert_eq!(
        f.connections.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
}

#[tokio::test]
async fn a_call_that_never_gets_a_reply_times_out_and_leaves_nothing_behind() {
    let f = fake(|_, i| if i == 0 { Act::Silence } else { Act::Echo });
    let up = f.upstream(Duration::from_millis(200));
    assert_eq!(
        up.call(&call(1, 1), true).await,
        Err(UpstreamError::Timeout)
    );
    assert_eq!(up.stats.timeouts.load(Ordering::Relaxed), 1);
    // The connection stays usable for the next call.
    let r = up.call(&call(2, 2), true).await.unwrap();
    assert_eq!(tag_of(&r), 2);
    assert_eq!(f.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_lookup_lost_with_its_connection_is_retried_on_a_new_one() {
    // Connection 0 closes on its first call; connection 1 answers.
    let f = fake(|conn, _| if conn == 0 { Act::Close } else { Act::Echo });
    let up = f.upstream(Duration::from_secs(5));
    let r = up.call(&call(7, 3), true).await.unwrap();
    assert_eq!((xid_of(&r), tag_of(&r)), (Some(7), 3));
    assert_eq!(f.connections.load(Ordering::SeqCst), 2);
    assert_eq!(up.stats.retries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_lookup_lost_again_while_rpcbind_stops_is_retried_a_few_times() {
    // rpcbind stopping: its socket accepts a connection and drops it again
    // (connections 0 to 2); the fourth connection answers. A fifth loss
    // would end the call.
    let f = fake(|conn, _| if conn < 3 { Act::Close } else { Act::Echo });
    let up = f.upstream(Duration::from_secs(5));
    let r = up.call(&call(8, 4), true).await.unwrap();
    assert_eq!((xid_of(&r), tag_of(&r)), (Some(8), 4));
    assert_eq!(f.connections.load(Ordering::SeqCst), 4);
    assert_eq!(up.stats.retries.load(Ordering::Relaxed), 3);
    let g = fake(|_, _| Act::Close);
    let up = g.upstream(Duration::from_secs(5));
    assert_eq!(
        up.call(&call(9, 5), true).await,
        Err(UpstreamError::ConnectionLost)
    );
    assert_eq!(g.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_registration_lost_with_its_connection_is_not_sent_twice() {
    let f = fake(|_, _| Act::Close);
    let up = f.upstream(Duration::from_secs(5));
    assert_eq!(
        up.call(&call(7, 3), false).await,
        Err(UpstreamError::ConnectionLost)
    );
    assert_eq!(f.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn garbage_from_rpcbind_drops_the_connection_and_the_next_call_reconnects() {
    let f = fake(|conn, _| if conn == 0 { Act::Garbage } else { Act::Echo });
    let up = f.upstream(Duration::from_secs(5));
    // Retried once after the garbage, on a fresh connection.
    let r = up.call(&call(9, 4), true).await.unwrap();
    assert_eq!(tag_of(&r), 4);
    assert_eq!(f.connections.load(Ordering::SeqCst), 2);
    assert_eq!(up.stats.bad_replies.load(Ordering::Relaxed), 1, "counted");
}

#[tokio::test(start_paused = true)]
async fn an_absent_rpcbind_is_waited_for_5_s_with_backoff() {
    // However short the upstream timeout: an rpcbind restarting (its
    // package upgraded) is waited for up to 5 s.
    let dir = std::env::temp_dir().join(format!("rbp-none-{}", rand_suffix()));
    let up = Upstream::new(
        Target::Unix(dir.join("nothing.sock")),
        Duration::from_millis(500),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        up.call(&call(1, 1), true).await,
        Err(UpstreamError::Unavailable)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
    // Attempts back off (to one per 250 ms), not one per retry of the
    // waiting caller.
    let attempts = up.stats.connect_failures.load(Ordering::Relaxed);
    assert!((10..=30).contains(&attempts), "{attempts} attempts");
    assert!(up.unreachable());
}

#[tokio::test]
async fn a_call_waits_for_an_rpcbind_that_comes_back_within_the_timeout() {
    // rpcbind restarting: its socket refuses for a moment, then answers.
    let dir = std::env::temp_dir().join(format!("rbp-later-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("later.sock");
    let up = Arc::new(Upstream::new(
        Target::Unix(path.clone()),
        Duration::from_secs(5),
    ));
    let caller = {
        let up = up.clone();
        tokio::spawn(async move { up.call(&call(3, 7), true).await })
    };
    for _ in 0..1000 {
        if up.stats.connect_failures.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(up.unreachable(), "the first attempt failed");
    // rpcbind is back: a listening socket appears at the path.
    let f = fake(|_, _| Act::Echo);
    std::fs::rename(&f.path, &path).unwrap();
    let r = caller
        .await
        .unwrap()
        .expect("answered once rpcbind is back");
    assert_eq!((xid_of(&r), tag_of(&r)), (Some(3), 7));
    assert!(!up.unreachable());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn many_concurrent_calls_share_one_connection() {
    let f = fake(|_, _| Act::Echo);
    let up = Arc::new(f.upstream(Duration::from_secs(5)));
    let tasks = spawn_lookups(&up, 200);
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!((xid_of(&r), tag_of(&r)), (Some(i as u32), i as u32));
    }
    assert_eq!(f.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_call() {
    let f = fake(|_, _| Act::SlowPort(2049));
    let proxy = f.proxy(Duration::from_secs(5));
    let mut getport = BytesMut::new();
    for v in [300001u32, 1, 6, 0] {
        getport.put_u32(v);
    }
    let tasks: Vec<_> = (0..100u32)
        .map(|i| {
            let proxy = proxy.clone();
            let record = encode_call(1000 + i, 100000, 2, 3, &getport);
            tokio::spawn(async move { proxy.handle(record, ROOT).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (reply, xid) = match t.await.unwrap() {
            Outcome::Reply(r) => (r.clone(), xid_of(&r).unwrap()),
            Outcome::Shared(r, xid) => (r, xid),
            other => panic!("client {i}: {other:?}"),
        };
        assert_eq!(xid, 1000 + i as u32, "each client gets its own XID");
        assert_eq!(parse_reply(&reply).unwrap().body, &2049u32.to_be_bytes());
    }
    assert_eq!(
        f.calls.load(Ordering::SeqCst),
        1,
        "one call reached the upstream"
    );
    let cache = proxy.snapshot().cache;
    assert_eq!((cache.misses, cache.coalesced + cache.hits), (1, 99));
}

/// A lookup that reaches the proxy after a registration passed through it
/// must be answered by rpcbind after that registration, never by a fetch
/// that was already in flight before it (single flight would hand it the
/// old answer: "not registered" right after the server registered).
#[tokio::test]
async fn a_lookup_after_a_registration_never_gets_an_answer_fetched_before_it() {
    // Call 0: the first lookup, answered "not registered" (port 0) only at
    // the end; call 1: the SET; call 2: the lookup after the SET.
    let f = fake(|_, i| match i {
        0 => Act::HoldPort(0),
        1 => Act::True,
        _ => Act::PortThenRelease(2049),
    });
    let proxy = f.proxy(Duration::from_secs(2));
    let mapping = |port: u32| {
        let mut b = BytesMut::new();
        for v in [300002u32, 1, 6, port] {
            b.put_u32(v);
        }
        b
    };
    let port_of = |o: Outcome| match o {
        Outcome::Reply(r) | Outcome::Shared(r, _) => parse_reply(&r).unwrap().body.to_vec(),
        other => panic!("{other:?}"),
    };
    let before = {
        let proxy = proxy.clone();
        let record = encode_call(1, 100000, 2, 3, &mapping(0));
        tokio::spawn(async move { proxy.handle(record, ROOT).await })
    };
    while f.calls.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    let set = proxy
        .handle(encode_call(2, 100000, 2, 1, &mapping(2049)), ROOT)
        .await;
    assert_eq!(port_of(set), 1u32.to_be_bytes(), "SET accepted");
    let after = tokio::time::timeout(
        Duration::from_secs(1),
        proxy.handle(encode_call(3, 100000, 2, 3, &mapping(0)), ROOT),
    )
    .await
    .expect("the lookup after the SET was answered at once, not held behind the older fetch");
    assert_eq!(port_of(after), 2049u32.to_be_bytes());
    // The lookup from before the SET gets the answer of its own time.
    assert_eq!(port_of(before.await.unwrap()), 0u32.to_be_bytes());
    assert_eq!(f.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_client_that_goes_away_mid_call_leaves_nothing_in_flight() {
    let f = fake(|_, _| Act::Silence);
    let up = Arc::new(f.upstream(Duration::from_secs(60)));
    let calls = spawn_lookups(&up, 10);
    while f.calls.load(Ordering::SeqCst) < 10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(up.in_flight(), 10);
    // The clients disconnect: their futures are dropped mid-call.
    for c in calls {
        c.abort();
        let _ = c.await;
    }
    assert_eq!(up.in_flight(), 0, "every abandoned call left the table");
}
