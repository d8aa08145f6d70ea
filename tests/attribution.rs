//! Every lookup attributed to the systemd unit, command and user behind
//! it, live: clients run in a cgroup of their own named like a systemd unit
//! (`hammer-<n>.service`), as a given uid, over each transport, in
//! transparent mode (TCP and UDP to 127.0.0.1:111 are redirected to the
//! proxy); `status --json`, `--prometheus` and `top` must name them.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::tirpc::tirpc_client;
use support::units::{row, rows, run_in, Unit};
use support::*;

const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(30);

fn transparent() -> Options {
    Options {
        transparent: true,
        ..Options::default()
    }
}

fn tirpc() -> &'static str {
    tirpc_client().to_str().expect("a UTF-8 path")
}

#[test]
fn each_transport_is_attributed_to_its_unit_command_and_user() {
    run_with(transparent(), |sb| async move {
        let t = tirpc();
        let unit = Unit::new("hammer");
        // One-shot TCP lookups to 127.0.0.1:111 (redirected), as nobody.
        let out = run_in(
            &sb,
            &unit,
            NOBODY,
            &[t, "getaddr", "127.0.0.1", "100000", "4", "tcp", "200"],
        )
        .await;
        assert_eq!(out, "addr 127.0.0.1.0.111\n");
        // UDP lookups to 127.0.0.1:111 (pmap_getport), as root.
        run_in(
            &sb,
            &unit,
            0,
            &[t, "pmap-getport", "127.0.0.1", "100000", "2", "udp", "30"],
        )
        .await;
        // Over /run/rpcbind.sock, as nobody: rpcinfo without a host.
        run_in(&sb, &unit, NOBODY, &["rpcinfo", "-p"]).await;

        let status = sb.status().await;
        let rows = rows(&status);
        let tcp = row(&rows, &unit.name, "tcp", NOBODY)
            .unwrap_or_else(|| panic!("no tcp row: {rows:#?}"));
        assert_eq!(tcp["command"], "tirpc_client");
        assert_eq!(tcp["requests"], 200);
        assert!(tcp["pid"].as_u64().is_some(), "{tcp}");
        assert!(tcp["per_second_10s"].as_f64().unwrap() > 0.0, "{tcp}");
        let udp =
            row(&rows, &unit.name, "udp", 0).unwrap_or_else(|| panic!("no udp row: {rows:#?}"));
        assert_eq!(udp["command"], "tirpc_client");
        assert_eq!(udp["requests"], 30);
        let unix = row(&rows, &unit.name, "unix", NOBODY)
            .unwrap_or_else(|| panic!("no unix row: {rows:#?}"));
        assert_eq!(unix["command"], "rpcinfo");
        assert!(unix["requests"].as_u64().unwrap() >= 1, "{unix}");
        assert_eq!(
            unix["per_second_60s"].as_f64().unwrap() * 60.0,
            unix["requests"].as_f64().unwrap()
        );

        // Prometheus: one series per unit, command and uid.
        let text = sb.status_printed(&["--prometheus"]).await;
        let series = format!(
            "rpcbind_proxy_client_requests_total{{unit=\"{}\",command=\"tirpc_client\",uid=\"{NOBODY}\"}} 200",
            unit.name
        );
        assert!(
            text.lines().any(|l| l == series),
            "no line {series} in:\n{text}"
        );

        // The rate falls to 0 within 10 s of the client stopping.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self::rows(&sb.status().await);
            let tcp = row(&rows, &unit.name, "tcp", NOBODY).expect("the row stays");
            if tcp["per_second_10s"].as_f64() == Some(0.0) {
                assert_eq!(tcp["requests"], 200, "the total stays");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "rate still {tcp}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

#[test]
fn commands_and_users_are_rows_and_ports_are_not() {
    run_with(transparent(), |sb| async move {
        let t = tirpc();
        let unit = Unit::new("storm");
        // 10,000 one-shot connections from one command: 10,000 source ports.
        run_in(
            &sb,
            &unit,
            NOBODY,
            &[t, "getaddr", "127.0.0.1", "100000", "4", "tcp", "10000"],
        )
        .await;
        // Another command under another uid, same unit.
        run_in(&sb, &unit, 0, &["rpcinfo", "-p", "127.0.0.1"]).await;
        let rows = rows(&sb.status().await);
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| r["unit"] == unit.name.as_str())
            .collect();
        assert_eq!(mine.len(), 2, "{mine:#?}");
        let storm = row(&rows, &unit.name, "tcp", NOBODY).expect("the storm row");
        assert_eq!(
            (storm["command"].as_str(), storm["requests"].as_u64()),
            (Some("tirpc_client"), Some(10_000))
        );
        let other = row(&rows, &unit.name, "tcp", 0).expect("rpcinfo's row");
        assert_eq!(other["command"], "rpcinfo");
        // The busiest first.
        assert_eq!(rows[0]["requests"], 10_000);
    });
}

#[test]
fn top_shows_the_clients_on_a_terminal_and_as_plain_text() {
    run_with(transparent(), |sb| async move {
        let t = tirpc();
        let unit = Unit::new("monitor");
        run_in(
            &sb,
            &unit,
            NOBODY,
            &[t, "getaddr", "127.0.0.1", "100000", "4", "tcp", "50"],
        )
        .await;

        // Not a terminal: one plain frame, then exit.
        let out = sb
            .run_in_ns(&[PROXY_BIN, "top", "--control", CONTROL_SOCK])
            .await;
        assert!(out.status.success());
        let plain = String::from_utf8_lossy(&out.stdout);
        assert!(plain.starts_with("rpcbind-proxy top"), "{plain}");
        assert!(plain.contains("TIME_WAIT: port 111 0"), "{plain}");
        let line = plain
            .lines()
            .find(|l| l.contains(&unit.name))
            .unwrap_or_else(|| panic!("no row for {} in:\n{plain}", unit.name));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cols[1..4], ["tirpc_client", "65534", "tcp"], "{line}");
        assert_eq!(cols[6], "50", "{line}");
        assert!(
            !plain.contains('\x1b'),
            "no escape sequences when not on a terminal"
        );

        // On a terminal (script(1) gives it a pseudo-terminal): the live
        // view clears the screen, draws, and `q` ends it.
        let cmd =
            format!("printf q | script -qec '{PROXY_BIN} top --control {CONTROL_SOCK}' /dev/null");
        let out = sb.run_in_ns(&["sh", "-c", &cmd]).await;
        let screen = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{screen}");
        assert!(screen.contains("\x1b[H\x1b[2J"), "{screen:?}");
        assert!(
            screen.contains(&unit.name) && screen.contains("q: quit"),
            "{screen:?}"
        );
    });
}

#[test]
fn processes_sharing_a_unit_and_a_user_are_told_apart() {
    run_with(transparent(), |sb| async move {
        let t = tirpc();
        // A unit with a long-running client (a daemon and its jobs share a
        // cgroup and a uid, as cron and its jobs do)...
        let unit = Unit::new("cron");
        let argv = unit.command(0, &[t, "probe", "127.0.0.1", "100000", "2", "20", "30"]);
        let mut probe = tokio::process::Command::new("nsenter")
            .arg("-t")
            .arg(sb.anchor_pid().to_string())
            .args(["-m", "--"])
            .args(&argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the prober");
        let deadline = tokio::time::Instant::now() + WAIT;
        while row(&rows(&sb.status().await), &unit.name, "tcp", 0).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the prober's row never showed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...and a short job of the same user in it meanwhile.
        run_in(&sb, &unit, 0, &["rpcinfo", "-p", "127.0.0.1"]).await;
        run_in(
            &sb,
            &unit,
            0,
            &["rpcinfo", "-T", "tcp", "127.0.0.1", "100000"],
        )
        .await;
        drop(probe.stdin.take());
        let _ = probe.wait().await;
        let rows = rows(&sb.status().await);
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| r["unit"] == unit.name.as_str() && r["transport"] == "tcp")
            .collect();
        let count = |command: &str| {
            mine.iter()
                .filter(|r| r["command"] == command)
                .map(|r| r["requests"].as_u64().unwrap())
                .sum::<u64>()
        };
        // rpcinfo -p: one DUMP; -T tcp: NULL to versions 2, 3, 4 (and the
        // lookups before them): each call is rpcinfo's, none the prober's.
        assert!(count("rpcinfo") >= 4, "{mine:#?}");
        assert!(count("tirpc_client") >= 1, "{mine:#?}");
        assert!(
            mine.iter().all(|r| r["command"] == "rpcinfo"
                || r["command"] == "tirpc_client"
                || r["command"].is_null()),
            "{mine:#?}"
        );
    });
}
