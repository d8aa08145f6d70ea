//! The cache against the real rpcbind: answers change within the refresh
//! interval whatever the TTL, a restarted rpcbind is re-learnt, and rpcbind
//! stops seeing the lookups the proxy answers.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// A TTL far longer than any test: only coherence can change an answer.
const LONG_TTL: [&str; 6] = [
    "--ttl",
    "300",
    "--negative-ttl",
    "300",
    "--log-level",
    "debug",
];
/// The default refresh interval, plus room for one DUMP and the poll step.
const STALENESS_BOUND: Duration = Duration::from_millis(1500);

fn long_ttl() -> Options {
    Options {
        proxy: true,
        proxy_args: LONG_TTL.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

async fn proxy_port(sb: &Sandbox, transport: Transport, prog: u32) -> u32 {
    let out = sb.call(Target::Proxy, transport, &getport_call(prog)).await;
    decode_u32(&out.expect_results("GETPORT through the proxy")).unwrap()
}

/// Polls the proxy until it answers `want`; returns how long that took.
async fn time_until(sb: &Sandbox, prog: u32, want: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = proxy_port(sb, Transport::Unix, prog).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "proxy still answers {got} for {prog} after {limit:?} (want {want})\n{}",
            sb.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_direct_change_shows_within_the_refresh_interval() {
    run_with(long_ttl(), |sb| async move {
        assert!(sb.rpcbind_set(500001, 1, "tcp", "0.0.0.0.8.1").await);
        assert_eq!(proxy_port(&sb, Transport::Unix, 500001).await, 2049);
        assert_eq!(proxy_port(&sb, Transport::Udp, 500001).await, 2049);
        // Change it behind the proxy's back.
        assert!(sb.rpcbind_unset(500001, 1, "tcp").await);
        assert!(sb.rpcbind_set(500001, 1, "tcp", "0.0.0.0.8.2").await);
        let took = time_until(&sb, 500001, 2050, STALENESS_BOUND).await;
        eprintln!("staleness after a direct change: {took:?}");
    });
}

#[test]
fn a_program_that_appears_or_disappears_shows_within_the_refresh_interval() {
    run_with(long_ttl(), |sb| async move {
        // Cached as not registered (a negative entry with a 300 s TTL).
        assert_eq!(proxy_port(&sb, Transport::Tcp, 500002).await, 0);
        assert_eq!(proxy_port(&sb, Transport::Unix, 500002).await, 0);
        assert!(sb.rpcbind_set(500002, 1, "tcp", "0.0.0.0.8.3").await);
        let appeared = time_until(&sb, 500002, 2051, STALENESS_BOUND).await;
        assert!(sb.rpcbind_unset(500002, 1, "tcp").await);
        let gone = time_until(&sb, 500002, 0, STALENESS_BOUND).await;
        eprintln!("staleness: appear {appeared:?}, disappear {gone:?}");
    });
}

#[test]
fn a_restarted_rpcbind_is_relearnt() {
    run_with(long_ttl(), |mut sb| async move {
        assert!(sb.rpcbind_set(500003, 1, "tcp", "0.0.0.0.8.1").await);
        assert_eq!(proxy_port(&sb, Transport::Unix, 500003).await, 2049);
        sb.restart_rpcbind().await;
        // The new rpcbind knows nothing of 500003 until it registers again,
        // on another port.
        assert!(sb.rpcbind_set(500003, 1, "tcp", "0.0.0.0.8.9").await);
        // Reconnect backoff (at most 2 s) plus one refresh.
        let took = time_until(&sb, 500003, 2057, Duration::from_secs(5)).await;
        eprintln!("re-learnt after a restart in {took:?}");
    });
}

#[test]
fn rpcbind_sees_a_handful_of_ten_thousand_lookups() {
    run(|sb| async move {
        assert!(sb.rpcbind_set(500004, 1, "tcp", "0.0.0.0.8.1").await);
        assert!(sb.rpcbind_set(500004, 1, "udp", "0.0.0.0.8.1").await);
        let before = sb.rpcbind_lookups().await;
        let getaddr = Call::rpcb(3, RPCBPROC_GETADDR, rpcb_args(500004, 1, "tcp", "", ""));
        let calls = [getport_call(500004), getaddr];
        let mut served = 0;
        for transport in Transport::ALL {
            let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, transport))
                .await
                .unwrap();
            for i in 0..3334 {
                let out = conn.call(&calls[i % 2].fresh()).await;
                assert!(out.is_success(), "{transport:?} lookup {i}: {out}");
                served += 1;
            }
        }
        let upstream = sb.rpcbind_lookups().await - before;
        eprintln!("{served} lookups through the proxy, {upstream} reached rpcbind");
        // One miss per distinct question: GETPORT once (shared by every
        // transport), GETADDR once per arrival class.
        assert!(
            upstream <= 6,
            "rpcbind served {upstream} of {served} lookups"
        );
    });
}

#[test]
fn a_registration_through_the_proxy_shows_at_once() {
    // A refresh far away: only the pass-through invalidation can help.
    let opts = Options {
        proxy: true,
        proxy_args: ["--ttl", "300", "--negative-ttl", "300", "--refresh", "600"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Options::default()
    };
    run_with(opts, |sb| async move {
        assert_eq!(proxy_port(&sb, Transport::Unix, 500005).await, 0);
        let set = Call::new(
            PMAP_PROG,
            2,
            PMAPPROC_SET,
            pmap_args(500005, 1, IPPROTO_TCP, 2052),
        );
        let out = sb.call(Target::Proxy, Transport::Unix, &set).await;
        assert!(decode_bool(&out.expect_results("SET through the proxy")).unwrap());
        assert_eq!(proxy_port(&sb, Transport::Tcp, 500005).await, 2052);
        let unset = Call::new(
            PMAP_PROG,
            2,
            PMAPPROC_UNSET,
            pmap_args(500005, 1, IPPROTO_TCP, 0),
        );
        let out = sb.call(Target::Proxy, Transport::Unix, &unset).await;
        assert!(decode_bool(&out.expect_results("UNSET through the proxy")).unwrap());
        assert_eq!(proxy_port(&sb, Transport::Udp, 500005).await, 0);
        let v = sb.status().await;
        assert_eq!(v["cache"]["invalidations"]["registration"], 2, "{v:#}");
    });
}

#[test]
fn getaddr_with_an_ipv6_hint_is_cached_and_answered_as_rpcbind_answers() {
    run(|sb| async move {
        assert!(sb.rpcbind_set(500010, 1, "tcp6", "::.8.1").await);
        // An IPv6 universal address: longer than the 24 bytes the cache used
        // to hold, so it used to be forwarded every time.
        let hint = "fe80:1234:5678:9abc:def0:1234:5678:9abc.0.111";
        let call = Call::rpcb(3, RPCBPROC_GETADDR, rpcb_args(500010, 1, "tcp6", hint, ""));
        let direct = sb.call(Target::Direct, Transport::Unix, &call).await;
        let before = sb.rpcbind_lookups().await;
        for i in 0..100 {
            let through = sb.call(Target::Proxy, Transport::Unix, &call).await;
            assert_eq!(through, direct, "lookup {i}");
        }
        let asked = sb.rpcbind_lookups().await - before;
        assert_eq!(
            asked, 1,
            "rpcbind answered {asked} of 100 lookups with one hint"
        );
        // A hint spelt another way is still answered, uncached.
        let odd = Call::rpcb(
            3,
            RPCBPROC_GETADDR,
            rpcb_args(500010, 1, "tcp6", "FE80::1.0.111", ""),
        );
        assert_eq!(
            sb.call(Target::Proxy, Transport::Unix, &odd).await,
            sb.call(Target::Direct, Transport::Unix, &odd).await
        );
    });
}
