//! One-shot TCP lookups, made the way libtirpc's rpcb_getaddr makes them
//! (connect, send, read the reply, close: the client closes first), leave a
//! TIME_WAIT socket per lookup at rpcbind. Through the proxy they must leave
//! none. The direct run is the control: it shows the measurement can fail.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

// --- closes the proxy starts itself ---------------------------------------------
//
// The side that closes first keeps the TIME_WAIT. Each test below makes the
// proxy give up on a TCP client for one reason, waits until the client sees
// the close (EOF or reset), closes the client, and counts: a FIN from the
// proxy would leave a TIME_WAIT on 127.0.0.1:1111 once the client's own FIN
// comes back; an RST leaves none.

fn with_args(args: &[&str]) -> Options {
    Options {
        proxy: true,
        proxy_args: args.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

/// A fresh TCP client of the proxy.
async fn tcp_client(sb: &Sandbox) -> TcpStream {
    TcpStream::connect(sb.proxy_tcp()).await.unwrap()
}

/// Sends `bytes` (the write may race the proxy's close), waits until the
/// proxy has closed the connection, and closes the client.
async fn send_and_wait_closed(mut s: TcpStream, bytes: &[u8]) {
    if !bytes.is_empty() {
        write_unless_closed(&mut s, bytes).await.unwrap();
    }
    time_to_close(&mut s, CLOSE_LIMIT).await;
}

/// After the closes: nothing left closing and no TIME_WAIT anywhere in the
/// namespace.
async fn assert_no_time_wait(sb: &Sandbox, cause: &str) {
    if let Err(e) = sb.wait_tcp_settled(None, SETTLE).await {
        panic!("after {cause}: {e}");
    }
    let tw: Vec<TcpSocketInfo> = sb
        .tcp_sockets()
        .into_iter()
        .filter(|s| s.state == TCP_TIME_WAIT)
        .collect();
    assert!(
        tw.is_empty(),
        "{cause} left {} TIME_WAIT sockets: {tw:?}",
        tw.len()
    );
}

/// Bound on the wait for the proxy to close a client.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Polls the proxy's status (each poll is a round trip to its control
/// socket) until `ready` holds; panics naming `what` after 5 s.
async fn wait_status(sb: &Sandbox, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + CLOSE_LIMIT;
    while !ready(&sb.status().await) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen in the proxy's status within {CLOSE_LIMIT:?}"
        );
    }
}

#[test]
fn bad_framing_closes_leave_no_time_wait() {
    run(|sb| async move {
        // Only the mark, so the proxy has read everything the client sent
        // when it closes (unread data would make even a plain close an RST).
        for mark in [
            // 9001 bytes: over the record limit.
            [0x80, 0, 0x23, 0x29],
            // A non-last fragment announcing 2 GiB.
            [0x7f, 0xff, 0xff, 0xff],
        ] {
            send_and_wait_closed(tcp_client(&sb).await, &mark).await;
        }
        assert_no_time_wait(&sb, "closes for bad framing").await;
    });
}

#[test]
fn an_undecodable_call_header_close_leaves_no_time_wait() {
    run(|sb| async move {
        // One whole record holding a REPLY, not a CALL: Outcome::Close.
        let record = [0x80, 0, 0, 8, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1];
        send_and_wait_closed(tcp_client(&sb).await, &record).await;
        assert_eq!(
            sb.status().await["requests"]["errors_answered_locally"],
            1,
            "the close was not for the header"
        );
        assert_no_time_wait(&sb, "a close for an undecodable header").await;
    });
}

#[test]
fn an_idle_timeout_close_leaves_no_time_wait() {
    run_with(with_args(&["--idle-timeout", "0.2"]), |sb| async move {
        send_and_wait_closed(tcp_client(&sb).await, &[]).await;
        assert_eq!(sb.status().await["limits"]["idle_timeout"]["closed"], 1);
        assert_no_time_wait(&sb, "an idle-timeout close").await;
    });
}

#[test]
fn a_record_timeout_close_leaves_no_time_wait() {
    run_with(
        with_args(&["--record-timeout", "0.2", "--idle-timeout", "60"]),
        |sb| async move {
            // A mark announcing 40 bytes, and only 10 of them.
            let partial = [0x80, 0, 0, 40, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            send_and_wait_closed(tcp_client(&sb).await, &partial).await;
            assert_eq!(sb.status().await["limits"]["record_timeout"]["closed"], 1);
            assert_no_time_wait(&sb, "a record-timeout close").await;
        },
    );
}

#[test]
fn a_refusal_at_the_connection_limit_leaves_no_time_wait() {
    run_with(with_args(&["--max-connections", "1"]), |sb| async move {
        // The one connection allowed, on the unix socket, with a call in
        // flight (rpcbind stopped): not idle, so it cannot be evicted.
        let mut held = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        sb.signal_rpcbind(Signal::SIGSTOP);
        held.send(&getport_call(700_002).encode()).await.unwrap();
        wait_status(&sb, "the held client's call in flight", |v| {
            v["upstream"]["in_flight"] != 0
        })
        .await;
        // The refusal's RST may beat the connect's completion to the client.
        match TcpStream::connect(sb.proxy_tcp()).await {
            Ok(s) => send_and_wait_closed(s, &[]).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connecting: {e}"),
        }
        sb.signal_rpcbind(Signal::SIGCONT);
        let v = sb.status().await;
        assert_eq!(v["limits"]["max_connections"]["refused"], 1);
        assert_eq!(v["limits"]["max_connections"]["evicted"], 0);
        assert_no_time_wait(&sb, "a refusal at the connection limit").await;
    });
}

#[test]
fn an_eviction_at_the_connection_limit_leaves_no_time_wait() {
    run_with(with_args(&["--max-connections", "1"]), |sb| async move {
        let idle = tcp_client(&sb).await;
        wait_status(&sb, "the idle client counted", |v| {
            v["limits"]["max_connections"]["connected"] == 1
        })
        .await;
        // A newer client of the same user takes the idle one's place.
        let _newer = tcp_client(&sb).await;
        send_and_wait_closed(idle, &[]).await;
        assert_eq!(sb.status().await["limits"]["max_connections"]["evicted"], 1);
        assert_no_time_wait(&sb, "an eviction at the connection limit").await;
    });
}

#[test]
fn closes_at_shutdown_leave_no_time_wait() {
    // An upstream timeout longer than the drain, so the stuck call is still
    // in flight when the drain gives up and the daemon exits.
    run_with(
        with_args(&["--upstream-timeout", "30"]),
        |mut sb| async move {
            let idle = tcp_client(&sb).await;
            // A call rpcbind cannot answer while stopped.
            sb.signal_rpcbind(Signal::SIGSTOP);
            let mut busy = tcp_client(&sb).await;
            let call = getport_call(700_001);
            let mut msg = Vec::new();
            put_record(&mut msg, &call.encode());
            busy.write_all(&msg).await.unwrap();
            wait_status(&sb, "the call in flight to rpcbind", |v| {
                v["upstream"]["in_flight"] != 0
            })
            .await;
            let stopped = sb.stop_proxy().await;
            sb.signal_rpcbind(Signal::SIGCONT);
            println!("the proxy stopped: {stopped:?}");
            send_and_wait_closed(idle, &[]).await;
            send_and_wait_closed(busy, &[]).await;
            assert_no_time_wait(&sb, "the shutdown drain").await;
        },
    );
}
