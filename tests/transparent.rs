//! Transparent mode with unmodified clients: Debian's `rpcinfo` and a
//! stock-libtirpc program (tests/clients/tirpc_client.c), which have
//! 127.0.0.1:111, [::1]:111 and /run/rpcbind.sock compiled in, reach the
//! proxy with no change on their side, see exactly what rpcbind would tell
//! them, and never lose a lookup when the daemon dies or stops.
//!
//! Each sandbox is set up as `rpcbind-proxy intercept enable` sets up a
//! host: rpcbind socket-activated on /run/rpcbind/upstream.sock (its TCP/UDP
//! port 111 as usual), the proxy on /run/rpcbind.sock, 127.0.0.1:1111 and
//! [::1]:1111 with `--intercept`. The control cases run the same clients in
//! a sandbox without the proxy.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::tirpc::tirpc_client;
use support::*;
use tokio::io::AsyncReadExt;

const NOBODY: u32 = 65534;
/// Bound on every wait for an event (a counter moving, a process ending).
const WAIT: Duration = Duration::from_secs(20);

fn transparent() -> Options {
    Options {
        transparent: true,
        ..Options::default()
    }
}

fn plain() -> Options {
    Options {
        proxy: false,
        ..Options::default()
    }
}

/// Runs `body` in a fresh sandbox set up by `opts` and returns what it
/// returns.
fn with_sandbox<T, F, Fut>(opts: Options, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Sandbox) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    run_with(opts, move |sb| async move {
        let _ = tx.send(body(sb).await);
    });
    rx.recv().expect("the sandbox body returned a value")
}

/// The C client's path, as text for a command line.
fn tirpc() -> &'static str {
    tirpc_client().to_str().expect("a UTF-8 path")
}

/// Runs `args` as `uid` and insists that it succeeded; returns stdout.
async fn ok_as(sb: &Sandbox, uid: u32, args: &[&str]) -> String {
    let out = sb.run_in_ns_as(uid, args).await;
    assert!(
        out.status.success(),
        "{args:?} as uid {uid}: {}",
        transcript(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flows the proxy's redirect rules caught so far (0 without the table).
async fn redirected_flows(sb: &Sandbox) -> u64 {
    sb.status()
        .await
        .pointer("/intercept/redirected_flows")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// Polls `what` (every 20 ms, at most [`WAIT`]) until it reaches `want`.
async fn wait_until<F, Fut>(label: &str, want: u64, mut what: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = what().await;
        if now >= want {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: {now} after {WAIT:?}, waiting for {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// What clients see
// ---------------------------------------------------------------------------

/// Registrations both sandboxes get, through whatever answers on
/// /run/rpcbind.sock: fixed addresses, so the listings can be compared.
async fn register_fixtures(sb: &Sandbox) {
    for (uid, args) in [
        (0, ["set", "400100", "1", "tcp", "127.0.0.1.8.1"]),
        (0, ["set", "400100", "1", "udp", "127.0.0.1.8.2"]),
        (0, ["set", "400100", "2", "tcp6", "::1.8.3"]),
        (NOBODY, ["set", "400101", "2", "tcp", "0.0.0.0.8.4"]),
    ] {
        let mut full = vec![tirpc()];
        full.extend_from_slice(&args);
        assert_eq!(ok_as(sb, uid, &full).await, "true\n", "{args:?} as {uid}");
    }
}

/// The unmodified clients, as root and as nobody: each command and what it
/// printed.
async fn client_transcripts(sb: &Sandbox) -> Vec<(String, String)> {
    register_fixtures(sb).await;
    let t = tirpc();
    let commands: Vec<Vec<&str>> = vec![
        vec!["rpcinfo"],
        vec!["rpcinfo", "-s"],
        vec!["rpcinfo", "-p", "localhost"],
        vec!["rpcinfo", "-p", "127.0.0.1"],
        vec!["rpcinfo", "-T", "tcp", "127.0.0.1", "100000"],
        vec!["rpcinfo", "-s", "127.0.0.1"],
        vec!["rpcinfo", "-T", "tcp6", "::1", "100000"],
        vec!["rpcinfo", "-l", "127.0.0.1", "400100", "1"],
        vec![t, "clnt-create", "localhost", "100000", "2", "tcp", "3"],
        vec![t, "clnt-create", "127.0.0.1", "100000", "4", "udp", "3"],
        vec![t, "pmap-getport", "127.0.0.1", "400100", "1", "tcp", "1"],
        vec![t, "pmap-getport", "127.0.0.1", "400100", "1", "udp", "1"],
        vec![t, "pmap-getport", "127.0.0.1", "400199", "1", "tcp", "1"],
        vec![t, "getaddr", "127.0.0.1", "400100", "1", "tcp", "2"],
        vec![t, "getaddr", "localhost", "400101", "2", "tcp", "1"],
        vec![t, "getaddr", "::1", "400100", "2", "tcp6", "1"],
        vec![t, "getaddr", "127.0.0.1", "400199", "1", "udp", "1"],
    ];
    let mut out = Vec::new();
    for uid in [0, NOBODY] {
        for c in &commands {
            let o = sb.run_in_ns_as(uid, c).await;
            out.push((format!("uid {uid}: {}", c.join(" ")), transcript(&o)));
        }
    }
    // A live service, for rpcinfo's -t/-u pings (its ports differ between
    // sandboxes, so it is registered only after the listings above).
    let mut server = spawn_in_ns(sb, 0, &[t, "serve", "400102", "1"]);
    let mut ready = [0u8; 6];
    let stdout = server.stdout.as_mut().expect("piped");
    tokio::time::timeout(WAIT, stdout.read_exact(&mut ready))
        .await
        .expect("the service started")
        .expect("reading its ready line");
    assert_eq!(&ready, b"ready\n");
    for uid in [0, NOBODY] {
        for c in [
            ["rpcinfo", "-t", "127.0.0.1", "400102", "1"],
            ["rpcinfo", "-u", "127.0.0.1", "400102", "1"],
            ["rpcinfo", "-t", "localhost", "400102", "2"],
        ] {
            let o = sb.run_in_ns_as(uid, &c).await;
            out.push((format!("uid {uid}: {}", c.join(" ")), transcript(&o)));
        }
    }
    let _ = server.kill().await;
    out
}

/// A command started in the sandbox as `uid`, stdin and stdout piped,
/// killed when dropped.
fn spawn_in_ns(sb: &Sandbox, uid: u32, args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg("-t")
        .arg(sb.anchor_pid().to_string())
        .args(["-m", "--"]);
    if uid != 0 {
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ]);
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"))
}

#[test]
fn unmodified_clients_print_exactly_what_they_print_against_rpcbind() {
    let direct = with_sandbox(plain(), |sb| async move { client_transcripts(&sb).await });
    let (through, flows, unix_requests) = with_sandbox(transparent(), |sb| async move {
        let t = client_transcripts(&sb).await;
        let status = sb.status().await;
        let flows = status["intercept"]["redirected_flows"]
            .as_u64()
            .unwrap_or(0);
        let requests = status["requests"]["total"].as_u64().unwrap_or(0);
        (t, flows, requests)
    });
    // The comparison proves nothing unless the calls went through the proxy:
    // every TCP/UDP client above was redirected, every host-less one came
    // over /run/rpcbind.sock.
    assert!(
        flows >= 40,
        "only {flows} flows were redirected to the proxy"
    );
    assert!(
        unix_requests > flows,
        "{unix_requests} requests for {flows} flows"
    );
    assert_eq!(direct.len(), through.len());
    let differences: Vec<String> = direct
        .iter()
        .zip(&through)
        .filter(|(d, t)| d != t)
        .map(|((cmd, d), (_, t))| format!("{cmd}\n--- rpcbind:\n{d}\n--- through the proxy:\n{t}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} commands differ:\n{}",
        differences.len(),
        direct.len(),
        differences.join("\n")
    );
    // The listings themselves must have said something (a sandbox where
    // every command failed the same way would compare equal).
    let listing = &direct[0].1;
    assert!(
        listing.contains("portmapper") && listing.contains("400101"),
        "{listing}"
    );
    println!(
        "{} commands: identical output, {flows} flows redirected",
        direct.len()
    );
}

// ---------------------------------------------------------------------------
// TIME_WAIT and offload
// ---------------------------------------------------------------------------

const ONE_SHOT: &str = "1000";

/// `rpcb_getaddr` over a fresh TCP connection to 127.0.0.1:111, 1,000
/// times, as `uid` (root binds a reserved port for each).
async fn one_shot_lookups(sb: &Sandbox, uid: u32) {
    let out = ok_as(
        sb,
        uid,
        &[
            tirpc(),
            "getaddr",
            "127.0.0.1",
            "100000",
            "4",
            "tcp",
            ONE_SHOT,
        ],
    )
    .await;
    assert_eq!(out, "addr 127.0.0.1.0.111\n");
}

#[test]
fn one_shot_lookups_leave_no_time_wait_and_rpcbind_serves_one_in_a_thousand() {
    let (tw, served) = with_sandbox(transparent(), |sb| async move {
        let before = sb.rpcbind_lookups().await;
        for uid in [0, NOBODY] {
            one_shot_lookups(&sb, uid).await;
        }
        let served = sb.rpcbind_lookups().await - before;
        sb.wait_tcp_settled(None, WAIT).await.unwrap();
        (sb.time_wait_count(None), served)
    });
    println!(
        "transparent: 2 x {ONE_SHOT} one-shot lookups, {tw} TIME_WAIT, {served} served by rpcbind"
    );
    assert_eq!(tw, 0, "TIME_WAIT sockets left in the namespace");
    assert!(served <= 2, "rpcbind served {served} of 2,000 lookups");

    // The control: the same clients without the proxy leave one each.
    let tw = with_sandbox(plain(), |sb| async move {
        one_shot_lookups(&sb, 0).await;
        sb.time_wait_count(Some(RPCBIND_PORT))
    });
    println!("without the proxy: {ONE_SHOT} one-shot lookups, {tw} TIME_WAIT");
    assert!(tw >= 900, "only {tw} TIME_WAIT without the proxy");
}

// ---------------------------------------------------------------------------
// Registrations
// ---------------------------------------------------------------------------

#[test]
fn registrations_through_the_intercepted_socket_keep_the_callers_identity() {
    run_with(transparent(), |sb| async move {
        let t = tirpc();
        assert_eq!(
            ok_as(&sb, 0, &[t, "set", "400200", "1", "tcp", "127.0.0.1.9.1"]).await,
            "true\n"
        );
        assert_eq!(
            ok_as(
                &sb,
                NOBODY,
                &[t, "set", "400201", "1", "tcp", "127.0.0.1.9.2"]
            )
            .await,
            "true\n"
        );
        assert_eq!(
            ok_as(&sb, 0, &[t, "pmap-set", "400202", "1", "udp", "2307"]).await,
            "true\n"
        );
        let owner = |dump: &[RpcbEntry], prog: u32| {
            dump.iter()
                .find(|e| e.prog == prog)
                .map(|e| e.owner.clone())
                .unwrap_or_else(|| panic!("{prog} not registered: {dump:?}"))
        };
        let dump = sb.rpcbind_dump().await;
        assert_eq!(owner(&dump, 400200), "superuser");
        assert_eq!(owner(&dump, 400201), NOBODY.to_string());
        assert_eq!(owner(&dump, 400202), "superuser");
        // nobody cannot remove root's registration; its own, yes.
        assert_eq!(
            ok_as(&sb, NOBODY, &[t, "unset", "400200", "1"]).await,
            "false\n"
        );
        assert_eq!(
            ok_as(&sb, NOBODY, &[t, "unset", "400201", "1"]).await,
            "true\n"
        );
        let dump = sb.rpcbind_dump().await;
        assert!(dump.iter().any(|e| e.prog == 400200));
        assert!(!dump.iter().any(|e| e.prog == 400201));
        // And the answers came through the proxy.
        let status = sb.status().await;
        let sets = status["requests"]["by_procedure"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| matches!(p["procedure"].as_str(), Some("SET" | "UNSET")))
            .map(|p| p["count"].as_u64().unwrap())
            .sum::<u64>();
        assert!(sets >= 5, "{sets} SET/UNSET through the proxy");
    });
}

#[test]
fn a_service_re_registering_is_never_answered_with_its_old_port() {
    run_with(transparent(), |sb| async move {
        let t = tirpc();
        // Other clients asking for the same program all along, so that a
        // fetch is often in flight while the service re-registers: a lookup
        // arriving right after the SET must not get the answer rpcbind gave
        // before it.
        let hammers: Vec<_> = (0..3)
            .map(|_| {
                spawn_in_ns(
                    &sb,
                    0,
                    &[t, "getaddr", "127.0.0.1", "400300", "1", "tcp", "100000000"],
                )
            })
            .collect();
        let out = ok_as(
            &sb,
            0,
            &[t, "rereg-check", "127.0.0.1", "400300", "1", "200"],
        )
        .await;
        drop(hammers);
        println!("{}", out.trim_end());
        assert_eq!(out, "rounds 200 stale 0 failed 0\n");
        let invalidations = sb.status().await["cache"]["invalidations"]["registration"]
            .as_u64()
            .unwrap();
        assert!(
            invalidations > 0,
            "the registrations went through the proxy"
        );
    });
}

// ---------------------------------------------------------------------------
// Fail-safe
// ---------------------------------------------------------------------------

/// Runs the prober (20 TCP and 20 UDP lookups a second to 127.0.0.1:111)
/// and returns what it counted once its stdin closes.
async fn finish_probe(mut probe: tokio::process::Child) -> String {
    drop(probe.stdin.take());
    let mut out = String::new();
    let stdout = probe.stdout.as_mut().expect("piped");
    tokio::time::timeout(WAIT, stdout.read_to_string(&mut out))
        .await
        .expect("the prober stopped")
        .expect("reading the prober's output");
    out
}

fn probe_counts(line: &str) -> [u64; 4] {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 8, "prober said {line:?}");
    [1, 3, 5, 7].map(|i| words[i].parse().unwrap())
}

#[test]
fn a_killed_or_stopped_daemon_never_takes_port_111_down() {
    run_with(transparent(), |mut sb| async move {
        let t = tirpc();
        let start_probes = |sb: &Sandbox| -> Vec<tokio::process::Child> {
            [0, NOBODY]
                .iter()
                .map(|&uid| {
                    spawn_in_ns(
                        sb,
                        uid,
                        &[t, "probe", "127.0.0.1", "100000", "2", "20", "120"],
                    )
                })
                .collect()
        };
        // What each prober counted; `lost` lookups allowed each.
        let finish = |probes: Vec<tokio::process::Child>, phase: &'static str, lost: u64| async move {
            for (uid, probe) in [0, NOBODY].into_iter().zip(probes) {
                let out = finish_probe(probe).await;
                let [tcp_ok, tcp_failed, udp_ok, udp_failed] = probe_counts(&out);
                println!("{phase}, prober as uid {uid}: {}", out.trim_end());
                assert!(
                    tcp_failed + udp_failed <= lost,
                    "{phase}: uid {uid} lost lookups: {out}"
                );
                // It ran through the phase (about two seconds of lookups, at
                // 20/s, shared by the two probers).
                assert!(tcp_ok >= 20 && udp_ok >= 20, "{phase}, uid {uid}: {out}");
            }
        };

        // Through the proxy, then SIGKILL: the kernel drops the table with
        // the daemon's socket, and the probers reach rpcbind directly. A
        // lookup on a connection to the daemon at the very moment it is
        // killed dies with it (nothing can answer it): at most that one.
        // Each phase lasts until the probers made about a second's worth of
        // lookups on each side of the event (2 probers, a TCP and a UDP flow
        // each, 20 times a second).
        let probes = start_probes(&sb);
        wait_until("flows redirected", 80, || redirected_flows(&sb)).await;
        sb.signal_proxy(Signal::SIGKILL);
        sb.kill_proxy().await;
        assert!(!sb.intercept_table_exists(), "the table outlived a SIGKILL");
        let at = sb.rpcbind_lookups().await;
        wait_until("lookups at rpcbind after SIGKILL", at + 80, || {
            sb.rpcbind_lookups()
        })
        .await;
        finish(probes, "SIGKILL", 1).await;

        // Back in transparent mode, then SIGTERM: stop redirecting, serve
        // what was redirected, remove the table, exit 0. Nothing is lost.
        let probes = start_probes(&sb);
        sb.start_proxy(&[]).await.unwrap();
        wait_until("flows redirected after the restart", 80, || {
            redirected_flows(&sb)
        })
        .await;
        let exit = sb.stop_proxy().await;
        assert_eq!(exit.as_deref(), Some("exit code 0"), "{}", sb.proxy_log());
        assert!(!sb.intercept_table_exists(), "the table outlived SIGTERM");
        let at = sb.rpcbind_lookups().await;
        wait_until("lookups at rpcbind after SIGTERM", at + 80, || {
            sb.rpcbind_lookups()
        })
        .await;
        finish(probes, "SIGTERM and restart", 0).await;
    });
}

/// What UDP lookups sent while a daemon died met: answers, silence (a
/// datagram the dying daemon never read: its retransmission would reach
/// rpcbind), refusals (a redirect to a port already closed).
#[derive(Debug, Default, Clone, Copy)]
struct Burst {
    answered: u64,
    lost: u64,
    refused: u64,
}

/// Waits until `conn` (a client connection the daemon holds) is closed by
/// the daemon's death, then sends UDP GETPORT lookups to 127.0.0.1:111 for
/// `BURST`, each from a fresh connected socket (a new flow, as every
/// pmap_getport makes), and then collects what each met. A connected socket
/// reports the ICMP port unreachable of a redirect to a closed port as
/// ECONNREFUSED.
fn udp_burst_after_close(mut conn: std::net::TcpStream) -> Burst {
    use std::io::Read;
    const BURST: Duration = Duration::from_millis(20);
    let mut buf = [0u8; 512];
    conn.set_read_timeout(Some(WAIT)).unwrap();
    // The connection's close (RST) reaches the client: it is released
    // before the table, whose going would end the redirect that carries it
    // back (a client waiting for an answer would then wait out its timeout).
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        closed.is_ok(),
        "a client of the killed daemon never saw its connection close: {closed:?}"
    );
    let call = getport_call(100000);
    let end = std::time::Instant::now() + BURST;
    let mut sent = Vec::new();
    while std::time::Instant::now() < end {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect("127.0.0.1:111").unwrap();
        if sock.send(&call.fresh().encode()).is_ok() {
            sent.push(sock);
        }
    }
    // Answers come within milliseconds; what has none by then is unread.
    let answers_by = std::time::Instant::now() + Duration::from_millis(300);
    let mut b = Burst::default();
    for sock in sent {
        let left = answers_by.saturating_duration_since(std::time::Instant::now());
        sock.set_nonblocking(left.is_zero()).unwrap();
        if !left.is_zero() {
            sock.set_read_timeout(Some(left)).unwrap();
        }
        match sock.recv(&mut buf) {
            Ok(_) => b.answered += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => b.refused += 1,
            Err(_) => b.lost += 1,
        }
    }
    b
}

/// When the daemon dies, the kernel releases its descriptors highest number
/// first; the socket that owns the table is moved above the listeners, so
/// the redirect goes before the ports it points at close. A lookup sent as
/// the daemon is SIGKILLed is then at worst unread (its retransmission
/// reaches rpcbind), never refused. The lookups start the moment a client
/// connection of the daemon's closes, which must go first, its reset still
/// redirected back to the client. Measured against the broken cases: with
/// the owner below the UDP listener, 10 rounds saw refusals; with the owner
/// above everything and a descriptor freed below it, the client connection
/// took that number and never saw its close.
#[test]
fn a_lookup_sent_as_the_daemon_is_killed_is_never_refused() {
    run_with(transparent(), |mut sb| async move {
        let mut total = Burst::default();
        for round in 0..10 {
            if round > 0 {
                sb.start_proxy(&[]).await.unwrap();
            }
            // A client connection, redirected to the daemon and answered.
            let mut conn = std::net::TcpStream::connect("127.0.0.1:111").unwrap();
            {
                use std::io::{Read, Write};
                let mut record = Vec::new();
                put_record(&mut record, &getport_call(100000).encode());
                conn.write_all(&record).unwrap();
                let mut header = [0u8; 4];
                conn.read_exact(&mut header).unwrap();
            }
            let burst = std::thread::spawn(move || udp_burst_after_close(conn));
            sb.signal_proxy(Signal::SIGKILL);
            sb.kill_proxy().await;
            let b = burst.join().unwrap();
            total.answered += b.answered;
            total.lost += b.lost;
            total.refused += b.refused;
        }
        println!("10 SIGKILLs, UDP lookups sent as each began: {total:?}");
        assert_eq!(total.refused, 0, "{total:?}");
        assert!(total.answered > 0, "{total:?}");
    });
}

#[test]
fn the_table_goes_with_the_daemon_however_it_exits() {
    run_with(transparent(), |mut sb| async move {
        for sig in [
            Signal::SIGKILL,
            Signal::SIGABRT,
            Signal::SIGSEGV,
            Signal::SIGTERM,
        ] {
            if sb.proxy_pid().is_none() {
                sb.start_proxy(&[]).await.unwrap();
            }
            assert!(sb.intercept_table_exists(), "no table while serving");
            sb.signal_proxy(sig);
            let how = sb.stop_proxy().await;
            assert!(
                !sb.intercept_table_exists(),
                "the table outlived {sig:?} ({how:?})"
            );
        }
    });
}

#[test]
fn intercept_refuses_to_start_when_it_cannot_own_the_table() {
    run_with(transparent(), |sb| async move {
        let other = |extra: &[&str]| {
            let mut args = vec![
                PROXY_BIN,
                "serve",
                "--intercept",
                "--listen",
                "tcp:127.0.0.1:2111",
                "--listen",
                "udp:127.0.0.1:2111",
                "--control",
                "/run/other.sock",
                "--rpcbind-socket",
                RPCBIND_UPSTREAM_SOCK,
            ];
            args.extend_from_slice(extra);
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        // A second instance while the first holds the table.
        let args = other(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.run_in_ns(&args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.lines()
                .last()
                .unwrap_or("")
                .contains("another rpcbind-proxy instance holds table inet rpcbind_proxy"),
            "{err}"
        );
        // Without CAP_NET_ADMIN.
        let mut capless = vec![
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            "--",
        ];
        capless.extend_from_slice(&args);
        let out = sb.run_in_ns(&capless).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("CAP_NET_ADMIN"), "{err}");
        // Without the listeners to redirect to.
        let out = sb
            .run_in_ns(&[
                PROXY_BIN,
                "serve",
                "--intercept",
                "--listen",
                "unix:/run/x.sock",
                "--control",
                "/run/o.sock",
            ])
            .await;
        let err = String::from_utf8_lossy(&out.stderr);
        // A configuration mistake: 2, as the man page's EXIT STATUS says.
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("needs a tcp and a udp listener on 127.0.0.1"),
            "{err}"
        );
        // Forwarding to itself.
        let out = sb
            .run_in_ns(&[
                PROXY_BIN,
                "serve",
                "--listen",
                "unix:/run/y.sock",
                "--rpcbind-socket",
                "/run/y.sock",
                "--control",
                "/run/p.sock",
            ])
            .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("would forward to itself"), "{err}");
        // The first instance is untouched.
        assert!(sb.intercept_table_exists());
    });
}

#[test]
fn an_abstract_socket_listener_answers_like_the_path() {
    // libtirpc >= 1.3.4 tries @/run/rpcbind.sock before the path.
    let opts = Options {
        proxy_args: vec!["--listen".into(), "unix:@/run/rpcbind.sock".into()],
        ..transparent()
    };
    run_with(opts, |sb| async move {
        use std::io::{Read, Write};
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(b"/run/rpcbind.sock").unwrap();
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr)
            .expect("the proxy listens on @/run/rpcbind.sock");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let call = getport_call(PMAP_PROG).encode();
        let mut record = Vec::new();
        put_record(&mut record, &call);
        s.write_all(&record).unwrap();
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark).unwrap();
        let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        assert!(len <= 9000, "reply of {len} bytes");
        let mut abstract_reply = vec![0u8; len];
        s.read_exact(&mut abstract_reply).unwrap();
        let by_path = sb
            .call(Target::Proxy, Transport::Unix, &getport_call(PMAP_PROG))
            .await;
        let Outcome::Reply(by_path) = by_path else {
            panic!("{by_path:?}")
        };
        assert_eq!(
            abstract_reply[4..],
            by_path[..],
            "the same answer (after the XID)"
        );
        let listeners = sb.status().await["listeners"].to_string();
        assert!(listeners.contains("unix:@/run/rpcbind.sock"), "{listeners}");
    });
}
