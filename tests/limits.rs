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

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (never
/// lowering the hard one: tests in this binary run side by side), which must
/// be at least `need`.
fn raise_nofile(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= need,
        "RLIMIT_NOFILE's hard limit {hard} is below {need}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising RLIMIT_NOFILE");
}

#[test]
fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    run_with(with_args(&["--max-connections", "5"]), |sb| async move {
        // The lookup cached first, so that the held clients' calls are hits,
        // answered by the loop itself: a miss's reply may reach the client
        // a moment before the loop counts the connection idle again, and
        // this test is about which idle connection goes.
        let out = call_once(
            &sb.endpoint(Target::Proxy, Transport::Unix),
            &getport_call(100000).fresh(),
        )
        .await;
        assert!(out.is_success(), "warming the cache: {out}");
        for round in 0.. {
            assert!(round < 500, "the warming connection never went");
            if sb.status().await["limits"]["max_connections"]["connected"] == 0 {
                break;
            }
        }
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(
                Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
                    .await
                    .unwrap(),
            );
        }
        // Each answered once, the third first: it is the longest idle
        // (neither the first connected nor the last).
        for i in [2, 0, 1, 3, 4] {
            let out = held[i].call(&getport_call(100000).fresh()).await;
            assert!(out.is_success(), "held client {i}: {out}");
        }
        let mut extra = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        let out = extra.call(&getport_call(100000).fresh()).await;
        assert_eq!(
            decode_u32(&out.expect_results("the newcomer")).unwrap(),
            111
        );
        // The longest idle (held[2]) was closed; the others are served.
        let Conn::Stream(s) = &mut held[2] else {
            unreachable!()
        };
        time_to_close(s.as_mut(), Duration::from_secs(5)).await;
        for i in [0, 1, 3, 4] {
            let out = held[i].call(&getport_call(100000).fresh()).await;
            assert!(
                out.is_success(),
                "held client {i} after the eviction: {out}"
            );
        }
        let v = sb.status().await;
        assert_eq!(v["limits"]["max_connections"]["evicted"], 1);
        assert_eq!(v["limits"]["max_connections"]["refused"], 0);
        assert_eq!(v["limits"]["max_connections"]["connected"], 5);
    });
}

/// The measured failure: one unprivileged user holding more idle
/// connections than the limit locked every other client out until the idle
/// timeout. Now the flood only ever evicts its own, and another user's
/// client is admitted and served at its full rate.
#[test]
fn ten_thousand_idle_connections_of_one_user_do_not_lock_out_another() {
    run(|sb| async move {
        raise_nofile(11_000);
        let mut idle = Vec::with_capacity(10_000);
        for i in 0..10_000 {
            match sb.connect_unix_as(&sb.proxy_unix(), 65534, 65534).await {
                Ok(c) => idle.push(c),
                Err(e) => panic!("idle connection {i} as uid 65534: {e}"),
            }
        }
        // Every one of the flood accepted (a connect returns once queued):
        // the lookups below then measure the service, not the backlog.
        for round in 0.. {
            assert!(round < 1000, "the proxy never accepted the 10,000");
            let v = sb.status().await;
            if v["limits"]["max_connections"]["evicted"] == 10_000 - 4096 {
                break;
            }
        }
        // A blocking connect, as libtirpc's.
        let path = sb.proxy_unix();
        let std =
            tokio::task::spawn_blocking(move || std::os::unix::net::UnixStream::connect(path))
                .await
                .unwrap()
                .unwrap();
        let mut conn = Conn::from_std_unix(std).unwrap();
        let start = Instant::now();
        for i in 0..1000 {
            let out = conn.call(&getport_call(100000).fresh()).await;
            assert!(out.is_success(), "lookup {i}: {out}");
        }
        eprintln!(
            "1000 lookups beside 10,000 idle connections of another user: {:?}",
            start.elapsed()
        );
        let v = sb.status().await;
        let limit = &v["limits"]["max_connections"];
        println!("{limit}");
        assert_eq!(limit["refused"], 0);
        assert!(limit["connected"].as_u64().unwrap() <= 4096);
        assert_eq!(limit["evicted"], 10_000 - 4096 + 1);
    });
}

/// The share: a user at its share evicts its own connections, never the
/// idler ones of a user below it.
#[test]
fn a_flooding_user_cannot_evict_another_users_idle_connections() {
    run_with(with_args(&["--max-connections", "8"]), |sb| async move {
        // Root's three, opened first and never used again: the idlest.
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(
                Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
                    .await
                    .unwrap(),
            );
        }
        let mut flood = Vec::new();
        for _ in 0..40 {
            flood.push(
                sb.connect_unix_as(&sb.proxy_unix(), 65534, 65534)
                    .await
                    .unwrap(),
            );
        }
        // The newest of the flood is served (it evicted an older one).
        let out = flood
            .last_mut()
            .unwrap()
            .call(&getport_call(100000).fresh())
            .await;
        assert!(out.is_success(), "the flood's newest: {out}");
        for (i, c) in mine.iter_mut().enumerate() {
            let out = c.call(&getport_call(100000).fresh()).await;
            assert!(out.is_success(), "root's connection {i}: {out}");
        }
        let v = sb.status().await;
        assert_eq!(v["limits"]["max_connections"]["evicted"], 40 + 3 - 8);
        assert_eq!(v["limits"]["max_connections"]["refused"], 0);
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

/// A client that sends calls and never reads the replies: once its socket
/// is full the proxy stops reading from it (its replies wait, bounded, in
/// the proxy), and when it has taken nothing for the idle timeout it is
/// closed. Other clients are served all along.
#[test]
fn a_client_that_never_reads_its_replies_is_closed_after_the_idle_timeout() {
    run_with(with_args(&["--idle-timeout", "0.5"]), |sb| async move {
        let body = getport_call(100000).encode();
        let mut wire = Vec::new();
        for _ in 0..2000 {
            put_record(&mut wire, &body);
        }
        let mut hog = UnixStream::connect(sb.proxy_unix()).await.unwrap();
        // Writes until the proxy closes the connection (a write fails).
        let writer = tokio::spawn(async move {
            let start = Instant::now();
            while hog.write_all(&wire).await.is_ok() {}
            start.elapsed()
        });
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        for i in 0..100 {
            let out = conn.call(&getport_call(100000).fresh()).await;
            assert!(out.is_success(), "lookup {i} beside the hog: {out}");
        }
        // Closed by the client: not an idle close.
        drop(conn);
        let took = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the client that does not read was never closed")
            .unwrap();
        assert!(
            took >= Duration::from_millis(450),
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
        raise_nofile(3_000);
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

/// max-in-flight holds exactly, however many calls one read brings: 200
/// calls in one write, rpcbind stopped, and never more than 4 reach it.
#[test]
fn pipelined_calls_in_one_write_never_exceed_max_in_flight() {
    run_with(with_args(&["--max-in-flight", "4"]), |sb| async move {
        sb.signal_rpcbind(Signal::SIGSTOP);
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        // Distinct programs: each one a miss, forwarded on its own.
        let calls: Vec<Call> = (0..200).map(|i| getport_call(900_000 + i)).collect();
        let mut wire = Vec::new();
        for c in &calls {
            put_record(&mut wire, &c.encode());
        }
        let Conn::Stream(s) = &mut conn else {
            unreachable!()
        };
        s.write_all(&wire).await.unwrap();
        let mut n = 0;
        for round in 0.. {
            assert!(round < 500, "the proxy never had 4 calls in flight");
            let v = sb.status().await;
            let in_flight = v["upstream"]["in_flight"].as_u64().unwrap();
            assert!(in_flight <= 4, "{in_flight} calls in flight at rpcbind");
            if in_flight == 4 && v["limits"]["max_in_flight"]["reached"] != 0 {
                n += 1;
                // Seen full; a few more looks that it stays at 4.
                if n == 5 {
                    break;
                }
            }
        }
        sb.signal_rpcbind(Signal::SIGCONT);
        for c in &calls {
            let out = conn.recv(c.xid).await;
            assert!(out.is_success(), "call {:#x}: {out}", c.xid);
        }
        assert_eq!(sb.status().await["upstream"]["in_flight"], 0);
    });
}

/// Whole records the in-flight limit holds back are the proxy's wait, not a
/// slow sender's: the record timeout does not close their client.
#[test]
fn records_held_back_by_the_in_flight_limit_are_not_a_slow_sender() {
    run_with(
        with_args(&[
            "--max-in-flight",
            "1",
            "--record-timeout",
            "0.2",
            "--upstream-timeout",
            "0.5",
        ]),
        |sb| async move {
            sb.signal_rpcbind(Signal::SIGSTOP);
            let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
                .await
                .unwrap();
            let calls: Vec<Call> = (0..3).map(|i| getport_call(910_000 + i)).collect();
            let mut wire = Vec::new();
            for c in &calls {
                put_record(&mut wire, &c.encode());
            }
            let Conn::Stream(s) = &mut conn else {
                unreachable!()
            };
            s.write_all(&wire).await.unwrap();
            // Each times out at rpcbind in turn (SYSTEM_ERR), 1.5 s in all,
            // far past the record timeout.
            for c in &calls {
                let out = conn.recv(c.xid).await;
                assert!(matches!(out, Outcome::Reply(_)), "call {:#x}: {out}", c.xid);
            }
            sb.signal_rpcbind(Signal::SIGCONT);
            assert_eq!(sb.status().await["limits"]["record_timeout"]["closed"], 0);
        },
    );
}

/// A flood of UDP misses is bounded per listener: at most 256 wait for
/// rpcbind, the rest are dropped (counted), and the listener answers again
/// once rpcbind does.
#[test]
fn udp_misses_are_bounded_and_the_excess_dropped() {
    // Nothing times out while rpcbind is stopped.
    run_with(with_args(&["--upstream-timeout", "30"]), |sb| async move {
        sb.signal_rpcbind(Signal::SIGSTOP);
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Udp))
            .await
            .unwrap();
        // In bursts of 50, so that the socket buffer (which drops what it
        // cannot hold, before the proxy sees it) never overflows, however
        // busy the machine: the drops counted are the proxy's.
        let mut n = 0u32;
        let mut seen_full = 0;
        for round in 0.. {
            assert!(round < 1000, "the listener never held 256 calls");
            if n < 2000 {
                for _ in 0..50 {
                    conn.send(&getport_call(920_000 + n).encode())
                        .await
                        .unwrap();
                    n += 1;
                }
            }
            let v = sb.status().await;
            let in_flight = v["upstream"]["in_flight"].as_u64().unwrap();
            // 256, and maybe the refresh loop's DUMP.
            assert!(in_flight <= 257, "{in_flight} calls in flight at rpcbind");
            if in_flight >= 256 && v["limits"]["udp_in_flight"]["dropped"].as_u64().unwrap() > 0 {
                seen_full += 1;
                if seen_full == 5 {
                    break;
                }
            }
        }
        sb.signal_rpcbind(Signal::SIGCONT);
        for round in 0.. {
            assert!(round < 1000, "the calls held never drained");
            if sb.status().await["upstream"]["in_flight"] == 0 {
                break;
            }
        }
        // From a socket of its own: the flood's socket holds the replies to
        // the 256 calls (more than its receive buffer may keep).
        drop(conn);
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Udp))
            .await
            .unwrap();
        let out = conn.call(&getport_call(100000).fresh()).await;
        assert!(
            out.is_success(),
            "after the flood: {out}; {}",
            sb.status().await
        );
        let dropped = sb.status().await["limits"]["udp_in_flight"]["dropped"]
            .as_u64()
            .unwrap();
        println!("{dropped} of {n} dropped");
        assert!(dropped <= n as u64 - 256);
    });
}

/// Evictions at the connection limit are logged as refusals are: the first
/// at once, naming the uid whose connection went; those after it counted
/// into one line per window, with whose they were.
#[test]
fn evictions_are_logged_with_whose_connection_went() {
    run_with(with_args(&["--max-connections", "2"]), |sb| async move {
        let proxy = sb.endpoint(Target::Proxy, Transport::Unix);
        let mut nobody = Vec::new();
        for _ in 0..2 {
            let mut c = sb
                .connect_unix_as(&sb.proxy_unix(), 65534, 65534)
                .await
                .unwrap();
            assert!(c.call(&getport_call(100000).fresh()).await.is_success());
            nobody.push(c);
        }
        // Root's first evicts one of nobody's (the user holding the most).
        let mut first = Conn::connect(&proxy).await.unwrap();
        assert!(first.call(&getport_call(100000).fresh()).await.is_success());
        let said = |want: &'static str| {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let log = sb.proxy_log();
                if let Some(line) = log.lines().find(|l| l.contains(want)) {
                    return line.to_owned();
                }
                assert!(Instant::now() < deadline, "no {want:?} in:\n{log}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let line = said("evicted the longest-idle connection of");
        assert!(
            line.contains("WARN")
                && line.contains("max-connections 2 reached: evicted the longest-idle connection of uid 65534 to admit a new client"),
            "{line}"
        );
        // Root's second, within the window: root holds its share (1 of 2),
        // so its own first goes; counted, and said when the window ends.
        let mut second = Conn::connect(&proxy).await.unwrap();
        assert!(second
            .call(&getport_call(100000).fresh())
            .await
            .is_success());
        let line = said("evicted 1 idle connections in the last");
        assert!(line.contains("theirs: uid 0"), "{line}");
        let v = sb.status().await;
        assert_eq!(v["limits"]["max_connections"]["evicted"], 2);
    });
}
