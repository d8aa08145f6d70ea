//! One-shot TCP lookups, made the way libtirpc's rpcb_getaddr makes them
//! (connect, send, read the reply, close: the client closes first), leave a
//! TIME_WAIT socket per lookup at rpcbind. Through the proxy they must leave
//! none. The direct run is the control: it shows the measurement can fail.

mod support;

use std::time::Duration;

use support::*;

const LOOKUPS: usize = 500;
/// Bound on the wait for the last connections to finish closing.
const SETTLE: Duration = Duration::from_secs(10);

/// `LOOKUPS` GETPORT(portmapper, v2, tcp) calls to `target`, each on its own
/// TCP connection, closed by the client once the reply is in.
async fn one_shot_lookups(sb: &Sandbox, target: Target) {
    let ep = sb.endpoint(target, Transport::Tcp);
    for i in 0..LOOKUPS {
        let call = Call::rpcb(2, PMAPPROC_GETPORT, pmap_args(PMAP_PROG, 2, IPPROTO_TCP, 0));
        let out = call_once(&ep, &call).await;
        let port = decode_u32(&out.expect_results(&format!("lookup {i} at {ep}"))).unwrap();
        assert_eq!(port, 111, "lookup {i} at {ep}");
    }
}

#[test]
fn one_shot_lookups_through_the_proxy_leave_no_time_wait() {
    run(|sb| async move {
        assert_eq!(sb.time_wait_count(None), 0);
        one_shot_lookups(&sb, Target::Proxy).await;
        if let Err(e) = sb.wait_tcp_settled(None, SETTLE).await {
            panic!("after {LOOKUPS} lookups through the proxy: {e}");
        }
        // Anywhere in the namespace: client side, proxy side, and any TCP
        // the proxy itself might open towards rpcbind.
        let tw = sb.time_wait_count(None);
        println!("through the proxy: {tw} TIME_WAIT after {LOOKUPS} lookups");
        assert_eq!(
            tw, 0,
            "{LOOKUPS} one-shot lookups through the proxy left {tw} TIME_WAIT sockets"
        );
    });
}

/// The control: the same lookups straight at rpcbind.
#[test]
fn one_shot_lookups_at_rpcbind_leave_one_time_wait_each() {
    run_without_proxy(|sb| async move {
        one_shot_lookups(&sb, Target::Direct).await;
        if let Err(e) = sb.wait_tcp_settled(Some(RPCBIND_PORT), SETTLE).await {
            panic!("after {LOOKUPS} lookups at rpcbind: {e}");
        }
        let tw = sb.time_wait_count(Some(RPCBIND_PORT));
        println!("at rpcbind: {tw} TIME_WAIT after {LOOKUPS} lookups");
        assert!(
            tw >= LOOKUPS * 4 / 5,
            "{LOOKUPS} one-shot lookups at rpcbind left only {tw} TIME_WAIT sockets: the count cannot see them"
        );
    });
}
