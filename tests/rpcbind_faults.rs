//! A misbehaving rpcbind (the real one, stopped and killed): cached answers
//! keep flowing; misses wait for a restarting rpcbind for up to 5 s into
//! the outage and get SYSTEM_ERR at once after that (or within the upstream
//! timeout when rpcbind hangs); everything recovers without restarting the
//! proxy.

mod support;

use std::time::{Duration, Instant};

use support::*;

const TIMEOUT: &str = "0.5";

/// rpcbind only: each test registers first, then starts the proxy.
fn rpcbind_only() -> Options {
    Options {
        proxy: false,
        ..Options::default()
    }
}

async fn start(sb: &mut Sandbox, extra: &[&str]) {
    let mut args = vec!["--upstream-timeout", TIMEOUT];
    args.extend_from_slice(extra);
    sb.start_proxy(&args).await.unwrap();
}

async fn port(sb: &Sandbox, t: Transport, prog: u32) -> Outcome {
    sb.call(Target::Proxy, t, &getport_call(prog)).await
}

/// A miss must be answered SYSTEM_ERR, and soon.
async fn assert_fast_system_err(sb: &Sandbox, prog: u32) {
    let start = Instant::now();
    let out = port(sb, Transport::Unix, prog).await;
    let took = start.elapsed();
    assert_eq!(
        out.reply(),
        Some(Ok(Reply::SystemErr)),
        "miss while rpcbind is out: {out}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "SYSTEM_ERR took {took:?}"
    );
}

#[test]
fn a_stopped_rpcbind_stalls_only_the_misses() {
    run_with(rpcbind_only(), |mut sb| async move {
        assert!(sb.rpcbind_set(900001, 1, "tcp", "0.0.0.0.8.1").await);
        start(&mut sb, &[]).await;
        assert!(port(&sb, Transport::Udp, 900001).await.is_success());
        sb.signal_rpcbind(Signal::SIGSTOP);
        for t in Transport::ALL {
            let out = port(&sb, t, 900001).await;
            assert_eq!(
                decode_u32(&out.expect_results("a hit while rpcbind is stopped")).unwrap(),
                2049
            );
        }
        assert_fast_system_err(&sb, 900002).await;
        sb.signal_rpcbind(Signal::SIGCONT);
        let mut recovered = false;
        for _ in 0..100 {
            if port(&sb, Transport::Unix, 900003).await.is_success() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recovered, "no recovery after SIGCONT\n{}", sb.proxy_log());
        assert!(sb.status().await["upstream"]["timeouts"].as_u64().unwrap() >= 1);
    });
}

#[test]
fn a_killed_rpcbind_leaves_hits_a_wait_then_fast_errors_and_a_restart_is_picked_up() {
    run_with(rpcbind_only(), |mut sb| async move {
        assert!(sb.rpcbind_set(900011, 1, "tcp", "0.0.0.0.8.1").await);
        start(&mut sb, &[]).await;
        assert!(port(&sb, Transport::Tcp, 900011).await.is_success());
        sb.kill_rpcbind().await;
        let out = port(&sb, Transport::Tcp, 900011).await;
        assert_eq!(
            decode_u32(&out.expect_results("a hit while rpcbind is dead")).unwrap(),
            2049
        );
        // Early in the outage a miss waits for rpcbind to come back (as
        // from a restart): nothing within the client's 2 s.
        let killed = Instant::now();
        let out = port(&sb, Transport::Tcp, 900012).await;
        assert!(matches!(out, Outcome::NoReply), "a miss waits: {out}");
        // 5 s into the outage rpcbind is down, not restarting: SYSTEM_ERR.
        loop {
            let out = port(&sb, Transport::Unix, 900013).await;
            if out.reply() == Some(Ok(Reply::SystemErr)) {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(8), "still {out}");
        }
        assert!(
            killed.elapsed() >= Duration::from_secs(4),
            "{:?}",
            killed.elapsed()
        );
        for prog in [900013, 900014] {
            assert_fast_system_err(&sb, prog).await;
        }
        sb.restart_rpcbind().await;
        assert!(sb.rpcbind_set(900015, 1, "tcp", "0.0.0.0.8.5").await);
        let start = Instant::now();
        loop {
            let out = port(&sb, Transport::Unix, 900015).await;
            if out.results().and_then(|r| decode_u32(&r).ok()) == Some(2053) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(6),
                "restart not picked up: {out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let v = sb.status().await;
        assert!(v["upstream"]["connects"].as_u64().unwrap() >= 2, "{v:#}");
    });
}

#[test]
fn expired_answers_are_served_stale_while_rpcbind_is_gone() {
    run_with(rpcbind_only(), |mut sb| async move {
        assert!(sb.rpcbind_set(900021, 1, "tcp", "0.0.0.0.8.1").await);
        start(&mut sb, &["--ttl", "0.2", "--serve-stale", "30"]).await;
        assert!(port(&sb, Transport::Unix, 900021).await.is_success());
        sb.kill_rpcbind().await;
        // Past the TTL (a clock, not an event: the entry must be expired).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = port(&sb, Transport::Unix, 900021).await;
        assert_eq!(
            decode_u32(&out.expect_results("a stale answer")).unwrap(),
            2049
        );
        assert_eq!(sb.status().await["cache"]["stale_served"], 1);
    });
}
