//! The operator commands against a running daemon in front of the real
//! rpcbind: `status` counts what the test sent, `flush` empties (root only),
//! `check` gives Nagios exit codes for each state, `query` prints what
//! rpcinfo prints, and every command fails at once when no daemon is there.

mod support;

use serde_json::Value;
use support::*;

const BIN: &str = PROXY_BIN;

async fn cli(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    let mut full = vec![BIN];
    full.extend_from_slice(args);
    sb.run_in_ns(&full).await
}

async fn cli_as_nobody(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    let mut full = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
    ];
    full.extend_from_slice(args);
    sb.run_in_ns(&full).await
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_counts_the_traffic_sent() {
    run(|sb| async move {
        assert!(sb.rpcbind_set(600001, 1, "tcp", "0.0.0.0.8.1").await);
        let before = sb.status().await;
        assert_eq!(before["cache"]["hits"], 0);
        let mut conn = Conn::connect(&sb.endpoint(Target::Proxy, Transport::Unix))
            .await
            .unwrap();
        for _ in 0..25 {
            assert!(conn.call(&getport_call(600001).fresh()).await.is_success());
        }
        for _ in 0..5 {
            let out = sb
                .call(Target::Proxy, Transport::Tcp, &getport_call(600002))
                .await;
            assert_eq!(decode_u32(&out.expect_results("miss")).unwrap(), 0);
        }
        let v = sb.status().await;
        assert_eq!(v["requests"]["total"], 30, "{v:#}");
        assert_eq!(v["cache"]["misses"], 2);
        assert_eq!(v["cache"]["hits"], 24);
        assert_eq!(v["cache"]["negative_hits"], 4);
        assert_eq!(v["cache"]["entries"], 2);
        let ratio = v["cache"]["hit_ratio"].as_f64().unwrap();
        assert!((ratio - 28.0 / 30.0).abs() < 1e-9, "{ratio}");
        let getports: Vec<&Value> = v["requests"]["by_procedure"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["procedure"] == "GETPORT")
            .collect();
        assert_eq!(getports[0]["count"], 30);
        let lookup = v["lookups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["program"] == 600001)
            .expect("per-program row");
        assert_eq!(
            (&lookup["hits"], &lookup["misses"], &lookup["netid"]),
            (&24.into(), &1.into(), &"tcp".into())
        );
        assert_eq!(v["upstream"]["classes"]["unix"]["connected"], true);
        assert_eq!(v["clients"]["total"], 6);
        let top = &v["clients"]["top"][0];
        assert_eq!(
            (&top["transport"], &top["requests"], &top["uid"]),
            (&"unix".into(), &25.into(), &0.into())
        );
        assert_eq!(top["pid"], std::process::id());
        for key in ["version", "uptime_seconds", "listeners", "time_wait"] {
            assert!(v.get(key).is_some(), "status has {key}");
        }
        // The human and Prometheus forms carry the same figures.
        let human = stdout(&cli(&sb, &["status"]).await);
        assert!(human.starts_with("hit ratio    93.3%"), "{human}");
        let prom = stdout(&cli(&sb, &["status", "--prometheus"]).await);
        assert!(
            prom.contains("\nrpcbind_proxy_cache_hits_total 24\n"),
            "{prom}"
        );
        assert!(
            prom.contains("rpcbind_proxy_upstream_connected{class=\"unix\"} 1"),
            "{prom}"
        );
    });
}

#[test]
fn flush_empties_the_cache_and_needs_root() {
    run(|sb| async move {
        for prog in [600001, 600002] {
            assert!(sb
                .call(Target::Proxy, Transport::Unix, &getport_call(prog))
                .await
                .is_success());
        }
        assert_eq!(sb.status().await["cache"]["entries"], 2);
        let denied = cli_as_nobody(&sb, &["flush"]).await;
        assert!(!denied.status.success());
        let err = String::from_utf8_lossy(&denied.stderr);
        assert!(
            err.contains("needs root") && err.trim_end().lines().count() == 1,
            "{err}"
        );
        assert_eq!(
            sb.status().await["cache"]["entries"],
            2,
            "nobody flushed nothing"
        );
        // Reading is open to everyone.
        assert!(cli_as_nobody(&sb, &["status", "--json"])
            .await
            .status
            .success());

        let one = cli(&sb, &["flush", "--program", "600001"]).await;
        assert_eq!(stdout(&one), "flushed 1 entries of program 600001\n");
        assert_eq!(sb.status().await["cache"]["entries"], 1);
        let all = cli(&sb, &["flush"]).await;
        assert_eq!(stdout(&all), "flushed 1 entries\n");
        let v = sb.status().await;
        assert_eq!(v["cache"]["entries"], 0);
        assert_eq!(v["cache"]["invalidations"]["flush"], 2);
    });
}

#[test]
fn check_exit_codes_follow_the_state() {
    run(|mut sb| async move {
        let ok = cli(&sb, &["check"]).await;
        assert_eq!(ok.status.code(), Some(0), "{ok:?}");
        assert!(
            stdout(&ok).starts_with("OK: ") && stdout(&ok).contains(" | "),
            "{}",
            stdout(&ok)
        );

        // TIME_WAIT at port 111: one-shot lookups straight at rpcbind.
        for _ in 0..12 {
            assert!(sb
                .call(Target::Direct, Transport::Tcp, &getport_call(100000))
                .await
                .is_success());
        }
        let warn = cli(
            &sb,
            &[
                "check",
                "--warn-time-wait",
                "10",
                "--crit-time-wait",
                "1000",
            ],
        )
        .await;
        assert_eq!(warn.status.code(), Some(1), "{}", stdout(&warn));
        let crit = cli(
            &sb,
            &["check", "--warn-time-wait", "5", "--crit-time-wait", "10"],
        )
        .await;
        assert_eq!(crit.status.code(), Some(2), "{}", stdout(&crit));

        // A hit ratio below the minimum: not judged on a handful of
        // lookups (a fresh daemon), judged once there are --min-lookups.
        assert!(sb
            .call(Target::Proxy, Transport::Unix, &getport_call(600003))
            .await
            .is_success());
        let low_args = [
            "check",
            "--warn-time-wait",
            "1000",
            "--crit-time-wait",
            "2000",
            "--min-hit-ratio",
            "0.9",
        ];
        let young = cli(&sb, &low_args).await;
        assert_eq!(young.status.code(), Some(0), "{}", stdout(&young));
        assert!(
            stdout(&young).contains("hit ratio not judged: 1 lookups over the last")
                && stdout(&young).contains("fewer than --min-lookups 100"),
            "{}",
            stdout(&young)
        );
        let low = cli(&sb, &[&low_args[..], &["--min-lookups", "1"]].concat()).await;
        assert_eq!(low.status.code(), Some(1), "{}", stdout(&low));
        assert!(
            stdout(&low).contains("hit ratio 0.000 below 0.9 over the last")
                && stdout(&low).contains("(1 lookups)"),
            "{}",
            stdout(&low)
        );

        // rpcbind gone: the upstream is down.
        sb.kill_rpcbind().await;
        let mut code = None;
        for _ in 0..100 {
            code = cli(
                &sb,
                &[
                    "check",
                    "--warn-time-wait",
                    "1000",
                    "--crit-time-wait",
                    "2000",
                ],
            )
            .await
            .status
            .code();
            if code == Some(2) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(code, Some(2), "rpcbind killed must be CRITICAL");

        // The daemon gone.
        sb.stop_proxy().await;
        let down = cli(&sb, &["check"]).await;
        assert_eq!(down.status.code(), Some(2), "{down:?}");
        assert!(
            stdout(&down).contains("/run/rpcbind-proxy/control.sock"),
            "{}",
            stdout(&down)
        );
    });
}

#[test]
fn query_prints_what_rpcinfo_prints() {
    run(|sb| async move {
        assert!(sb.rpcbind_set(100003, 3, "tcp", "0.0.0.0.8.1").await);
        assert!(sb.rpcbind_set(100003, 3, "udp", "0.0.0.0.8.1").await);
        assert!(sb.rpcbind_set(100005, 1, "tcp6", "::.3.7").await);
        for (ours, theirs) in [(["query", "-p"], ["-p"]), (["query", "-s"], ["-s"])] {
            let q = cli(&sb, &ours).await;
            let r = sb.run_rpcinfo(&theirs).await;
            assert!(q.status.success() && r.status.success(), "{q:?} {r:?}");
            assert_eq!(
                stdout(&q),
                stdout(&r),
                "query {} vs rpcinfo {}",
                ours[1],
                theirs[0]
            );
        }
        assert_eq!(
            stdout(&cli(&sb, &["query", "getport", "100003", "3", "udp"]).await),
            "2049\n"
        );
        // The options go before or after the subcommand (the README's form).
        for args in [
            &[
                "query", "--socket", PROXY_SOCK, "getport", "100003", "3", "udp",
            ][..],
            &[
                "query", "getport", "100003", "3", "udp", "--socket", PROXY_SOCK,
            ],
        ] {
            let out = cli(&sb, args).await;
            assert_eq!(stdout(&out), "2049\n", "{args:?}: {out:?}");
        }
        assert_eq!(
            stdout(&cli(&sb, &["query", "getaddr", "100003", "3", "tcp"]).await),
            "127.0.0.1.8.1\n"
        );
        let missing = cli(&sb, &["query", "getport", "100004", "1", "tcp"]).await;
        assert_eq!(missing.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&missing.stderr).contains("not registered"));
    });
}

#[test]
fn every_command_fails_at_once_naming_the_socket_when_no_daemon_runs() {
    let sock = "/nonexistent/rpcbind-proxy/control.sock";
    for args in [
        vec!["status", "--control", sock],
        vec!["flush", "--control", sock],
        vec!["query", "--socket", sock, "-p"],
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(sock) && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let out = std::process::Command::new(BIN)
        .args(["check", "--control", sock])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains(sock));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    run(|sb| async move {
        // The reader closes its end at once; the command writes afterwards.
        for cmd in ["status", "status --json", "status --prometheus", "top -n 1"] {
            let script =
                format!("{PROXY_BIN} {cmd} --control {CONTROL_SOCK} | (exec 0<&-; sleep 0.3)");
            let out = sb.run_in_ns(&["sh", "-c", &script]).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("panicked"), "{cmd}: {err}");
            assert!(err.is_empty(), "{cmd}: {err}");
        }
    });
}

#[test]
fn a_refused_connection_is_logged_once_and_counted_in_every_status_format() {
    let opts = Options {
        proxy_args: vec!["--max-connections".into(), "1".into()],
        ..Options::default()
    };
    run_with(opts, |sb| async move {
        // The one connection allowed, with a call in flight (rpcbind
        // stopped): at the limit an idle connection would be evicted to
        // admit a newcomer, a busy one never is, so newcomers are refused.
        let mut held = tokio::net::UnixStream::connect(sb.proxy_unix())
            .await
            .unwrap();
        sb.signal_rpcbind(Signal::SIGSTOP);
        let call = getport_call(399_999).encode();
        let mut record = Vec::new();
        put_record(&mut record, &call);
        tokio::io::AsyncWriteExt::write_all(&mut held, &record)
            .await
            .unwrap();
        let mut n = 0;
        while sb.status().await["upstream"]["in_flight"] != 1 {
            n += 1;
            assert!(
                n < 1000,
                "the first client's call never reached the upstream"
            );
        }
        let mut refused = Vec::new();
        for _ in 0..3 {
            refused.push(
                tokio::net::UnixStream::connect(sb.proxy_unix())
                    .await
                    .unwrap(),
            );
        }
        let mut n = 0;
        while sb.status().await["limits"]["max_connections"]["refused"] != 3 {
            n += 1;
            assert!(n < 1000, "three refusals never counted");
        }
        let text = stdout(&cli(&sb, &["status", "--control", CONTROL_SOCK]).await);
        assert!(
            text.contains("max-connections 1 (refused 3, evicted 0), max-in-flight 64 (reached 0), idle-timeout 2m (closed 0)"),
            "{text}"
        );
        let prom = stdout(&cli(&sb, &["status", "--prometheus", "--control", CONTROL_SOCK]).await);
        for line in [
            "rpcbind_proxy_limit_hits_total{limit=\"max_connections\"} 3",
            "rpcbind_proxy_limit_hits_total{limit=\"record_timeout\"} 0",
            "rpcbind_proxy_limit{limit=\"max_connections\"} 1",
            "rpcbind_proxy_limit{limit=\"idle_timeout\"} 120",
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} in:\n{prom}");
        }
        // The first refusal is said at once; the two after it are held for
        // the window's line (src/proxy/logs.rs, in paused time), not one line each.
        let log = sb.proxy_log();
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("max-connections 1 reached"))
            .collect();
        assert_eq!(said.len(), 1, "{log}");
        assert!(
            said[0].contains("WARN") && said[0].contains("refused a new client"),
            "{log}"
        );
        sb.signal_rpcbind(Signal::SIGCONT);
    });
}
