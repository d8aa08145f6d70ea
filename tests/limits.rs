//! Hostile and broken clients against the proxy in front of the real
//! rpcbind: each limit bites, is counted in `status`, and leaves everyone
//! else served.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

fn with_args(args: &[&str]) -> Options {
    Options {
        proxy: true,
        proxy_args: args.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

#[test]
fn at_the_connection_limit_new_clients_are_refused_and_old_ones_served() {
    run_with(with_args(&["--max-connections", "5"]), |sb| async move {
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(UnixStream::connect(sb.proxy_unix()).await.unwrap());
        }
        // Let the proxy count them as connected.
        let mut n = 0;
        while sb.status().await["clients"]["connected"] != 5 {
            n += 1;
            assert!(n < 100, "the five clients were never counted");
        }
        let mut extra = UnixStream::connect(sb.proxy_unix()).await.unwrap();
        time_to_close(&mut extra, Duration::from_secs(5)).await;
        let mut old = Conn::from_std_unix(held.pop().unwrap().into_std().unwrap()).unwrap();
        let out = old.call(&getport_call(100000)).await;
        assert_eq!(
            decode_u32(&out.expect_results("an existing client")).unwrap(),
            111
        );
        assert!(
            sb.status().await["limits"]["max_connections"]["refused"]
                .as_u64()
                .unwrap()
                >= 1
        );
    });
}

#[test]
fn a_silent_client_is_closed_after_the_idle_timeout() {
    run_with(with_args(&["--idle-timeout", "0.3"]), |sb| async move {
        let mut s = UnixStream::connect(sb.proxy_unix()).await.unwrap();
        let took = time_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(250),
            "closed too early: {took:?}"
        );
        assert_eq!(sb.status().await["limits"]["idle_timeout"]["closed"], 1);
    });
}

#[test]
fn a_slow_sender_must_finish_its_record_in_time() {
    run_with(
        with_args(&["--record-timeout", "0.3", "--idle-timeout", "60"]),
        |sb| async move {
            let mut s = UnixStream::connect(sb.proxy_unix()).await.unwrap();
            // A record mark announcing 40 bytes, and only 10 of them.
            s.write_all(&[0x80, 0, 0, 40, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            time_to_close(&mut s, Duration::from_secs(5)).await;
            let v = sb.status().await;
            assert_eq!(v["limits"]["record_timeout"]["closed"], 1);
            assert_eq!(v["limits"]["idle_timeout"]["closed"], 0);
        },
    );
}

#[test]
fn lying_record_marks_close_the_connection_and_nothing_else() {
    run(|sb| async move {
        for mark in [
            [0xff, 0xff, 0xff, 0xff],
            [0x80, 0, 0x23, 0x29],
            [0x7f, 0xff, 0xff, 0xff],
        ] {
            let mut s = UnixStream::connect(sb.proxy_unix()).await.unwrap();
            // The proxy closes as soon as it has read the mark, so the
            // second write may race its close (BrokenPipe): as expected.
            // Either way the connection must end up closed.
            if write_unless_closed(&mut s, &mark).await.unwrap() {
                write_unless_closed(&mut s, &[0u8; 64]).await.unwrap();
            }
            time_to_close(&mut s, Duration::from_secs(5)).await;
        }
        let out = sb
            .call(Target::Proxy, Transport::Tcp, &getport_call(100000))
            .await;
        assert_eq!(
            decode_u32(&out.expect_results("after the liars")).unwrap(),
            111
        );
    });
}

#[test]
fn a_pipelining_client_is_held_to_its_in_flight_limit_and_answered_in_order() {
    run_with(with_args(&["--max-in-flight", "2"]), |sb| async move {
        sb.signal_rpcbind(Signal::SIGSTOP);
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        let calls: Vec<Call> = (0..5).map(|i| getport_call(800_000 + i)).collect();
        for c in &calls {
            conn.send(&c.encode()).await.unwrap();
        }
        let mut n = 0;
        while sb.status().await["limits"]["max_in_flight"]["reached"] == 0 {
            n += 1;
            assert!(n < 200, "the in-flight limit never bit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sb.signal_rpcbind(Signal::SIGCONT);
        for c in &calls {
            let out = conn.recv(c.xid).await;
            assert!(out.is_success(), "call {:#x}: {out}", c.xid);
        }
    });
}

#[test]
fn thousands_of_idle_connections_do_not_starve_an_active_client() {
    run(|sb| async move {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 8192, 8192);
        let mut idle = Vec::new();
        for _ in 0..2000 {
            idle.push(UnixStream::connect(sb.proxy_unix()).await.unwrap());
        }
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        let start = Instant::now();
        for i in 0..1000 {
            let out = conn.call(&getport_call(100000).fresh()).await;
            assert!(out.is_success(), "lookup {i}: {out}");
        }
        eprintln!(
            "1000 lookups beside 2000 idle connections: {:?}",
            start.elapsed()
        );
        assert!(sb.status().await["clients"]["connected"].as_u64().unwrap() >= 2001);
    });
}
