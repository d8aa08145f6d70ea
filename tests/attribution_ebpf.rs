//! Attribution by the eBPF recorder, against the real kernel: the daemon
//! says which way it names clients; a client that sends its lookup and
//! exits before the proxy accepts its connection (a storm's backlog) is
//! still named (the kernel recorded it when it connected), which the /proc
//! search cannot do; and under a seccomp filter that
//! forbids bpf() the daemon says so and searches instead.
//!
//! Where this kernel refuses the program (too old, no BTF-free cgroup
//! programs, a container without CAP_BPF), the eBPF checks print one line
//! saying so and pass without asserting.

mod support;

use serde_json::Value;
use support::tirpc::compile_c;
use support::units::{row, rows, run_in, Unit};
use support::*;

const NOBODY: u32 = 65534;

fn transparent() -> Options {
    Options {
        transparent: true,
        ..Options::default()
    }
}

/// Connects to 127.0.0.1:111 (redirected to the proxy), writes one PMAP
/// GETPORT call and exits without waiting for the answer.
const HIT_AND_RUN: &str = r#"use Socket;
socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
connect($s, pack_sockaddr_in(111, inet_aton("127.0.0.1"))) or die "connect: $!\n";
my $call = pack("N*", 7, 0, 2, 100000, 2, 3, 0, 0, 0, 0, 100000, 2, 6, 0);
syswrite($s, pack("N", 0x80000000 | length $call) . $call) or die "write: $!\n";
exit 0;"#;

/// The attribution part of `status --json`.
fn attribution(status: &Value) -> &Value {
    &status["clients"]["attribution"]
}

/// Whether the daemon loaded the recorder; if not, prints why (once per
/// test) so that a skipped check says so.
fn ebpf_loaded(sb: &Sandbox, status: &Value, test: &str) -> bool {
    let a = attribution(status);
    if a["mode"] == "ebpf" {
        return true;
    }
    assert!(
        !ebpf_expected(),
        "{test}: the eBPF recorder should load on this machine: {}",
        a["why"]
    );
    println!(
        "{test}: skipped, the kernel or this machine refuses the eBPF recorder: {} (log: {})",
        a["why"],
        sb.proxy_log()
            .lines()
            .find(|l| l.contains("attribution:"))
            .unwrap_or("-")
    );
    false
}

/// `n` hit-and-run lookups from a unit while the proxy is stopped
/// (SIGSTOP: the connections wait in its backlog, as in a storm), so that
/// each client has exited before the proxy accepts its connection; then
/// the rows once the proxy has counted them all (at most 30 s).
async fn hit_and_run(sb: &Sandbox, unit: &Unit, n: u64) -> Vec<Value> {
    let script = sb.tmp_dir().join("hit-and-run.pl");
    std::fs::write(&script, HIT_AND_RUN).expect("writing the client");
    let script = script.to_str().expect("a UTF-8 path");
    sb.signal_proxy(Signal::SIGSTOP);
    for _ in 0..n {
        run_in(sb, unit, NOBODY, &["perl", script]).await;
    }
    sb.signal_proxy(Signal::SIGCONT);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows = rows(&sb.status().await);
        // Only these clients make TCP lookups in the sandbox.
        let counted: u64 = rows
            .iter()
            .filter(|r| r["transport"] == "tcp")
            .map(|r| r["requests"].as_u64().unwrap_or(0))
            .sum();
        if counted >= n || tokio::time::Instant::now() >= deadline {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// 20 one-shot TCP lookups by the libtirpc client as nobody, in a unit of
/// its own: all 20 must be on its row, named `tirpc_client`.
async fn tirpc_lookups_are_named(sb: &Sandbox, stem: &str) {
    let unit = Unit::new(stem);
    let t = support::tirpc::tirpc_client().to_str().unwrap().to_owned();
    run_in(
        sb,
        &unit,
        NOBODY,
        &[&t, "getaddr", "127.0.0.1", "100000", "4", "tcp", "20"],
    )
    .await;
    let rows = rows(&sb.status().await);
    let r = row(&rows, &unit.name, "tcp", NOBODY);
    assert!(
        r.is_some_and(|r| r["command"] == "tirpc_client" && r["requests"] == 20),
        "{rows:#?}"
    );
}

#[test]
fn the_daemon_says_how_it_names_clients() {
    run_with(transparent(), |sb| async move {
        let status = sb.status().await;
        let a = attribution(&status);
        let log = sb.proxy_log();
        let line = log
            .lines()
            .find(|l| l.contains("attribution: "))
            .unwrap_or_else(|| panic!("no attribution line in the log:\n{log}"));
        match a["mode"].as_str() {
            Some("ebpf") => assert!(line.contains("attribution: ebpf"), "{line}"),
            Some("search") => {
                let why = a["why"].as_str().expect("search says why");
                assert!(
                    line.contains(&format!("attribution: search ({why})")),
                    "{line}"
                );
            }
            other => panic!("mode {other:?} in {status}"),
        }
        let text = sb.status_printed(&[]).await;
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("attribution")
                    && l.contains(a["mode"].as_str().unwrap())),
            "{text}"
        );
        let prom = sb.status_printed(&["--prometheus"]).await;
        let series = format!(
            "rpcbind_proxy_attribution_mode{{mode=\"{}\"}} 1",
            a["mode"].as_str().unwrap()
        );
        assert!(prom.lines().any(|l| l == series), "no {series} in:\n{prom}");
    });
}

#[test]
fn a_client_that_exits_right_after_its_lookup_is_named() {
    run_with(transparent(), |sb| async move {
        if !ebpf_loaded(
            &sb,
            &sb.status().await,
            "a_client_that_exits_right_after_its_lookup_is_named",
        ) {
            return;
        }
        let unit = Unit::new("hit-and-run");
        let rows = hit_and_run(&sb, &unit, 20).await;
        let named = row(&rows, &unit.name, "tcp", NOBODY)
            .unwrap_or_else(|| panic!("no row for {}: {rows:#?}", unit.name));
        assert_eq!(named["command"], "perl", "{named}");
        assert_eq!(named["requests"], 20, "every lookup named: {rows:#?}");
        let share = attribution(&sb.status().await)["named_60s"].as_f64();
        assert_eq!(share, Some(1.0), "{rows:#?}");
    });
}

#[test]
fn the_search_cannot_name_a_client_that_has_exited() {
    // The broken case of the test above: with the recorder off, the
    // process is gone when the proxy looks, and the row stays unnamed.
    run_with(
        Options {
            proxy_args: vec!["--no-attribution-ebpf".into()],
            ..transparent()
        },
        |sb| async move {
            let status = sb.status().await;
            assert_eq!(attribution(&status)["mode"], "search");
            assert_eq!(attribution(&status)["why"], "attribution-ebpf = false");
            let unit = Unit::new("hit-and-run");
            let rows = hit_and_run(&sb, &unit, 5).await;
            let named: u64 = rows
                .iter()
                .filter(|r| r["command"] == "perl")
                .map(|r| r["requests"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(named, 0, "{rows:#?}");
            // Nor is its user guessed: an orphaned socket's uid reads 0.
            assert!(rows.iter().all(|r| r["uid"] != 0), "{rows:#?}");
        },
    );
}

#[test]
fn under_a_seccomp_filter_without_bpf_the_daemon_says_so_and_searches() {
    let deny = compile_c(
        "deny_bpf",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/deny_bpf.c"),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    run_with(
        Options {
            proxy: false,
            ..transparent()
        },
        move |mut sb| async move {
            sb.wrap_proxy(&[deny.to_str().unwrap()]);
            sb.start_proxy(&[]).await.expect("the proxy starts");
            let status = sb.status().await;
            assert_eq!(attribution(&status)["mode"], "search", "{status}");
            let why = attribution(&status)["why"].as_str().unwrap().to_owned();
            assert_eq!(
                why,
                "bpf() forbidden by seccomp: Operation not permitted (os error 1)"
            );
            let log = sb.proxy_log();
            assert!(
                log.lines()
                    .any(|l| l.contains(&format!("attribution: search ({why})"))),
                "{log}"
            );
            // Nor can cgroups be named by file handle: a walk names them.
            assert!(
                log.lines().any(|l| l.contains(
                    "attribution: cgroups named by a walk of the cgroup2 tree (open_by_handle_at forbidden by seccomp)"
                )),
                "{log}"
            );
            // Clients are still named, by the search.
            tirpc_lookups_are_named(&sb, "sealed").await;
        },
    );
}

#[test]
fn without_cap_perfmon_commands_come_from_proc() {
    // The kernel gives the command helper to cgroup programs only with
    // CAP_PERFMON (or CAP_SYS_ADMIN): without them the recorder is loaded
    // without it, says so, and the command is read from /proc.
    run_with(
        Options {
            proxy: false,
            ..transparent()
        },
        |mut sb| async move {
            sb.wrap_proxy(&["setpriv", "--bounding-set=-perfmon,-sys_admin", "--"]);
            sb.start_proxy(&[]).await.expect("the proxy starts");
            let status = sb.status().await;
            if !ebpf_loaded(&sb, &status, "without_cap_perfmon_commands_come_from_proc") {
                return;
            }
            assert_eq!(
                attribution(&status)["why"],
                "commands read from /proc/PID/comm: no CAP_PERFMON"
            );
            assert!(
                sb.proxy_log().lines().any(|l| l.contains(
                    "attribution: ebpf (commands read from /proc/PID/comm: no CAP_PERFMON)"
                )),
                "{}",
                sb.proxy_log()
            );
            tirpc_lookups_are_named(&sb, "no-perfmon").await;
        },
    );
}

/// Binds 127.0.0.1:PORT (UDP), sends one PMAP GETPORT call to
/// 127.0.0.1:111 (redirected) and waits for the answer.
const FROM_PORT: &str = r#"use Socket;
my ($port) = @ARGV;
socket(my $s, PF_INET, SOCK_DGRAM, 0) or die "socket: $!\n";
setsockopt($s, SOL_SOCKET, SO_REUSEADDR, 1) or die "setsockopt: $!\n";
bind($s, pack_sockaddr_in($port, inet_aton("127.0.0.1"))) or die "bind: $!\n";
my $call = pack("N*", 9, 0, 2, 100000, 2, 3, 0, 0, 0, 0, 100000, 2, 17, 0);
send($s, $call, 0, pack_sockaddr_in(111, inet_aton("127.0.0.1"))) or die "send: $!\n";
my $reply; defined(recv($s, $reply, 4096, 0)) or die "recv: $!\n";
exit 0;"#;

#[test]
fn a_udp_source_port_reused_by_another_process_is_counted_on_its_own_row() {
    // One process sends from port 40111 and exits; another, of another
    // unit, sends from the same port at once. Without the recorder the
    // source's identity holds 2 s, so the second would be counted on the
    // first's row.
    run_with(transparent(), |sb| async move {
        if !ebpf_loaded(&sb, &sb.status().await, "a_udp_source_port_reused") {
            return;
        }
        let script = sb.tmp_dir().join("from-port.pl");
        std::fs::write(&script, FROM_PORT).expect("writing the client");
        let script = script.to_str().expect("a UTF-8 path");
        let (first, second) = (Unit::new("first"), Unit::new("second"));
        run_in(&sb, &first, NOBODY, &["perl", script, "40111"]).await;
        run_in(&sb, &second, NOBODY, &["perl", script, "40111"]).await;
        let rows = rows(&sb.status().await);
        for unit in [&first, &second] {
            let r = row(&rows, &unit.name, "udp", NOBODY);
            assert!(
                r.is_some_and(|r| r["command"] == "perl" && r["requests"] == 1),
                "{}: {rows:#?}",
                unit.name
            );
        }
    });
}
