//! The daemon as systemd runs it: readiness on NOTIFY_SOCKET (every
//! sandboxed start already waits for READY=1), socket activation with
//! systemd-socket-activate, SIGHUP reloading the config file while keeping
//! the cache, and SIGTERM draining calls in flight before a clean exit.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const BIN: &str = PROXY_BIN;

#[test]
fn sighup_reloads_the_config_and_keeps_the_cache() {
    run_without_proxy(|mut sb| async move {
        let conf = sb.tmp_dir().join("config.toml");
        std::fs::write(&conf, "ttl = 60\n").unwrap();
        sb.start_proxy(&["--config", conf.to_str().unwrap()])
            .await
            .unwrap();
        assert!(sb
            .call(Target::Proxy, Transport::Unix, &getport_call(100000))
            .await
            .is_success());
        let before = sb.status().await;
        assert_eq!(before["cache"]["ttl_seconds"], 60.0);
        assert_eq!(before["cache"]["entries"], 1);

        std::fs::write(&conf, "ttl = 120\nnegative-ttl = 5\nrefresh = 7\n").unwrap();
        sb.signal_proxy(Signal::SIGHUP);
        sb.next_notify("READY=1", Duration::from_secs(10))
            .await
            .unwrap();
        let after = sb.status().await;
        assert_eq!(after["cache"]["ttl_seconds"], 120.0);
        assert_eq!(after["cache"]["negative_ttl_seconds"], 5.0);
        assert_eq!(
            after["cache"]["refresh_seconds"], 7.0,
            "status shows the refresh period in force, not the one started with"
        );
        assert_eq!(after["cache"]["entries"], 1, "the cache survives a reload");

        // A broken file is refused and the running configuration kept.
        std::fs::write(&conf, "ttl = 120\nttl-typo = 1\n").unwrap();
        sb.signal_proxy(Signal::SIGHUP);
        sb.next_notify("READY=1", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(sb.status().await["cache"]["ttl_seconds"], 120.0);
        assert!(
            sb.proxy_log().contains("ttl-typo"),
            "the reload error names the key"
        );

        // A log level that would silence the daemon is refused the same way,
        // and the daemon keeps logging at its old level.
        std::fs::write(&conf, "ttl = 90\nlog-level = \"bogus\"\n").unwrap();
        sb.signal_proxy(Signal::SIGHUP);
        sb.next_notify("READY=1", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(sb.status().await["cache"]["ttl_seconds"], 120.0);
        let log = sb.proxy_log();
        let refused = log
            .lines()
            .position(|l| l.contains("reload failed") && l.contains("log-level = \"bogus\""))
            .unwrap_or_else(|| panic!("no reload error naming the level:\n{log}"));
        std::fs::write(&conf, "ttl = 30\n").unwrap();
        sb.signal_proxy(Signal::SIGHUP);
        sb.next_notify("READY=1", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(sb.status().await["cache"]["ttl_seconds"], 30.0);
        let log = sb.proxy_log();
        assert!(
            log.lines()
                .skip(refused + 1)
                .any(|l| l.contains("configuration reloaded")),
            "still logging after a refused level:\n{log}"
        );
    });
}

#[test]
fn sigterm_answers_calls_in_flight_removes_its_sockets_and_exits_0() {
    run(|mut sb| async move {
        answers_a_call_in_flight_across_sigterm(&sb, Transport::Unix).await;
        let exit = sb.stop_proxy().await.unwrap();
        assert_eq!(exit, "exit code 0", "{}", sb.proxy_log());
        for path in [sb.proxy_unix(), sb.control_unix()] {
            assert!(!path.exists(), "{} removed", path.display());
        }
    });
}

/// A client accepted before SIGTERM whose first call comes only after it
/// (the daemon has stopped accepting and is draining) is still answered:
/// closed unread, its call would be lost, where the next daemon, taking
/// over the listeners, would have answered it (a package upgrade lost one
/// lookup of a loop that way). Over unix and TCP, cached and not.
#[test]
fn a_client_connected_before_sigterm_gets_its_first_call_answered() {
    run(|mut sb| async move {
        // Cached: the hit is answered in the loop's own turn.
        sb.call(Target::Proxy, Transport::Tcp, &getport_call(100000))
            .await;
        let mut conns = Vec::new();
        for t in [Transport::Unix, Transport::Tcp, Transport::Unix] {
            conns.push(Conn::connect(&sb.endpoint(Target::Proxy, t)).await.unwrap());
        }
        let mut waited = 0;
        while sb.status().await["clients"]["connected"] != 3 {
            waited += 1;
            assert!(waited < 400, "the three clients were never accepted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sb.signal_proxy(Signal::SIGTERM);
        // Sent once the daemon stopped accepting and drains.
        sb.next_notify("STOPPING=1", Duration::from_secs(5))
            .await
            .unwrap();
        for (i, mut c) in conns.into_iter().enumerate() {
            // The last asks what is not cached: answered by rpcbind.
            let call = getport_call(if i == 2 { 700_002 } else { 100000 });
            c.send(&call.encode()).await.unwrap();
            let out = c.recv(call.xid).await;
            let want = if i == 2 { 0 } else { 111 };
            assert_eq!(
                decode_u32(&out.expect_results("the first call after SIGTERM")).unwrap(),
                want,
                "client {i}"
            );
        }
        let exit = sb.stop_proxy().await.unwrap();
        assert_eq!(exit, "exit code 0", "{}", sb.proxy_log());
    });
}

/// The same over UDP: a datagram past the cache, in flight when SIGTERM
/// comes, is answered before the daemon exits (the UDP threads stop last,
/// and their miss task is waited for).
#[test]
fn sigterm_answers_a_udp_call_in_flight() {
    run(|mut sb| async move {
        answers_a_call_in_flight_across_sigterm(&sb, Transport::Udp).await;
        let exit = sb.stop_proxy().await.unwrap();
        assert_eq!(exit, "exit code 0", "{}", sb.proxy_log());
    });
}

/// Sends a miss over `transport` while rpcbind is stopped, so that it
/// cannot be answered; once it reached rpcbind, sends the proxy SIGTERM and
/// wakes rpcbind; the answer must come.
async fn answers_a_call_in_flight_across_sigterm(sb: &Sandbox, transport: Transport) {
    sb.signal_rpcbind(Signal::SIGSTOP);
    let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, transport))
        .await
        .unwrap();
    let call = getport_call(700001);
    conn.send(&call.encode()).await.unwrap();
    let mut waited = 0;
    while sb.status().await["upstream"]["in_flight"] == 0 {
        waited += 1;
        assert!(waited < 200, "the call never reached rpcbind");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sb.signal_proxy(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sb.signal_rpcbind(Signal::SIGCONT);
    let out = conn.recv(call.xid).await;
    assert_eq!(
        decode_u32(&out.expect_results("the call in flight")).unwrap(),
        0,
        "over {transport:?}"
    );
}

#[test]
fn socket_activation_serves_the_sockets_systemd_passes() {
    run_without_proxy(|sb| async move {
        std::fs::create_dir_all(sb.path("/run/act")).unwrap();
        let notify_path = sb.tmp_dir().join("act-notify.sock");
        let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
        let mut child = tokio::process::Command::new("nsenter")
            .args([
                "-t",
                &sb.anchor_pid().to_string(),
                "-m",
                "--",
                "systemd-socket-activate",
            ])
            .args(["-l", "/run/act/rpcbind.sock", "-l", "127.0.0.1:1112"])
            // The third, named `metrics`, serves /metrics (and wins over a
            // configured address, bound by nobody).
            .args(["-l", "127.0.0.1:9112", "--fdname=lookups:lookups:metrics"])
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
            .args([
                BIN,
                "serve",
                "--rpcbind-socket",
                "/run/rpcbind.sock",
                "--control",
                "/run/act/control.sock",
            ])
            // Ignored when sockets are passed: nothing may be bound here.
            .args([
                "--listen",
                "tcp:127.0.0.1:1113",
                "--metrics",
                "tcp:127.0.0.1:9113",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // systemd-socket-activate binds, then starts the daemon on the first
        // connection.
        let unix_ep = Endpoint::Unix(sb.path("/run/act/rpcbind.sock"));
        let mut first = None;
        for _ in 0..200 {
            if let Ok(c) = Conn::connect(&unix_ep).await {
                first = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut first = first.expect("systemd-socket-activate listening");
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), notify.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

        let out = first.call(&getport_call(100000)).await;
        assert_eq!(
            decode_u32(&out.expect_results("over the inherited unix socket")).unwrap(),
            111
        );
        let tcp_ep = Endpoint::Tcp("127.0.0.1:1112".parse().unwrap());
        let out = call_once(&tcp_ep, &getport_call(100000)).await;
        assert_eq!(
            decode_u32(&out.expect_results("over the inherited TCP socket")).unwrap(),
            111
        );
        assert!(
            Conn::connect(&Endpoint::Tcp("127.0.0.1:1113".parse().unwrap()))
                .await
                .is_err()
        );
        let v = sb.status_at("/run/act/control.sock").await;
        let listeners: Vec<&str> = v["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            listeners,
            ["unix:/run/act/rpcbind.sock", "tcp:127.0.0.1:1112"]
        );
        let scrape =
            support::http::request("127.0.0.1:9112".parse().unwrap(), "GET", "/metrics").await;
        assert_eq!(scrape.status, 200, "{scrape:?}");
        assert!(
            scrape.body.contains("rpcbind_proxy_requests_total 2"),
            "{}",
            scrape.body
        );
        assert!(tokio::net::TcpStream::connect("127.0.0.1:9113")
            .await
            .is_err());
        let _ = child.start_kill();
        let _ = child.wait().await;
    });
}

/// The watchdog sees a stuck stream loop: with one loop thread stopped (by
/// ptrace, the rest of the daemon running, its UDP self-probe answered),
/// the WATCHDOG=1 pings stop within the 3 s the daemon allows a loop, and
/// they come back once the thread runs again. The same for a UDP thread.
#[test]
fn a_stuck_stream_loop_stops_the_watchdog_pings() {
    a_stuck_thread_stops_the_watchdog_pings("streams-0", &[]);
}

#[test]
fn a_stuck_udp_thread_stops_the_watchdog_pings() {
    // A second UDP socket, whose thread (udp-1) the self-probe (sent to
    // the first) never meets: only its turns tell it is stuck.
    a_stuck_thread_stops_the_watchdog_pings("udp-1", &["--listen", "udp:127.0.0.1:1112"]);
}

/// Stops the daemon's thread named `name` (a ptrace stop, per thread) and
/// expects the watchdog pings to stop, then to come back once it runs.
fn a_stuck_thread_stops_the_watchdog_pings(name: &'static str, args: &'static [&'static str]) {
    use nix::sys::ptrace;
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;

    run_with(
        Options {
            proxy: false,
            ..Options::default()
        },
        move |mut sb| async move {
            // 2 s: a ping every second.
            sb.start_proxy_with_env(args, &[("WATCHDOG_USEC", "2000000")])
                .await
                .unwrap();
            sb.next_notify("WATCHDOG=1", Duration::from_secs(5))
                .await
                .expect("pings while every thread runs");
            let pid = sb.proxy_pid().unwrap();
            let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|e| e.ok())
                .find(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .unwrap_or_else(|| panic!("the daemon has a thread named {name}"));
            let tid = Pid::from_raw(tid);
            // Stops that one thread (ptrace stops are per thread).
            ptrace::seize(tid, ptrace::Options::empty()).expect("PTRACE_SEIZE");
            ptrace::interrupt(tid).expect("PTRACE_INTERRUPT");
            waitpid(tid, Some(WaitPidFlag::__WALL)).expect("waiting for the stop");
            // Pings already on their way, and those of the 3 s allowed,
            // go by; then none may come.
            let quiet_from = std::time::Instant::now() + Duration::from_secs(5);
            while sb
                .next_notify("WATCHDOG=1", Duration::from_secs(3))
                .await
                .is_ok()
            {
                assert!(
                    std::time::Instant::now() < quiet_from,
                    "the watchdog is still pinged 5 s after {name} stopped"
                );
            }
            ptrace::detach(tid, None).expect("PTRACE_DETACH");
            sb.next_notify("WATCHDOG=1", Duration::from_secs(5))
                .await
                .expect("pings again once the thread runs");
        },
    );
}

/// The watchdog's self-probe (a call to the daemon's own UDP listener
/// before each ping) is not a client: it shows in no row of `top` and in
/// no counter of `status` (requests, errors answered locally), however
/// many pings go by.
#[test]
fn the_watchdog_probe_is_not_a_client() {
    run_with(
        Options {
            proxy: false,
            ..Options::default()
        },
        |mut sb| async move {
            // 2 s: a probe and a ping every second.
            sb.start_proxy_with_env(&[], &[("WATCHDOG_USEC", "2000000")])
                .await
                .unwrap();
            sb.next_notify("WATCHDOG=1", Duration::from_secs(5))
                .await
                .expect("a first ping");
            let counts = |s: &Value| {
                (
                    s["requests"]["total"].as_u64().expect("requests.total"),
                    s["requests"]["errors_answered_locally"]
                        .as_u64()
                        .expect("requests.errors_answered_locally"),
                    s["clients"]["top"].as_array().expect("clients.top").len(),
                )
            };
            let before = counts(&sb.status().await);
            for _ in 0..3 {
                sb.next_notify("WATCHDOG=1", Duration::from_secs(5))
                    .await
                    .expect("pings go on, each after a probe answered");
            }
            let after = counts(&sb.status().await);
            assert_eq!(
                after, before,
                "(requests, errors answered locally, client rows) moved over three probes"
            );
            assert_eq!(after.2, 0, "a client row with no client: {after:?}");
        },
    );
}
