//! What a new user runs into first, each held here: the exit status of a
//! mistake against a failure, and commands that say what went wrong and what
//! was expected rather than a bare error.

mod support;

use std::process::Output;

use support::*;

/// The binary run outside any sandbox (for refusals that need no daemon).
fn bin(args: &[&str]) -> Output {
    std::process::Command::new(PROXY_BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Its standard error, on one line that names `needle`, and its exit status.
fn refused(out: &Output, needle: &str) -> i32 {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "names {needle:?}: {err:?}");
    out.status.code().expect("exited")
}

async fn cli(sb: &Sandbox, args: &[&str]) -> Output {
    let mut full = vec![PROXY_BIN];
    full.extend_from_slice(args);
    sb.run_in_ns(&full).await
}

/// One rule, the man page's: 2 when the command line or the config file is
/// wrong (whether clap or the daemon refuses it), 1 when something failed
/// at run time.
#[test]
fn a_mistake_exits_2_and_a_failure_1() {
    let dir = std::env::temp_dir().join(format!("rbp-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_file = dir.join("bad.toml");
    std::fs::write(&bad_file, "ttl = -5\n").unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "tll = 5\n").unwrap();
    let missing = dir.join("missing.toml");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = format!("tcp:{}", taken.local_addr().unwrap());
    let control = dir.join("control.sock");
    let control = control.to_str().unwrap();
    let nowhere = "/nonexistent/control.sock";
    let cases: &[(&[&str], &str, i32)] = &[
        (&["serve", "--ttl", "abc"], "'abc'", 2),
        (&["serve", "--ttl", "-5"], "--ttl: -5", 2),
        (&["serve", "--bogus"], "--bogus", 2),
        (&["serve", "--listen", "tcp:nowhere"], "tcp:nowhere", 2),
        (
            &["serve", "--listen", "tcp:127.0.0.1:99999"],
            "\"tcp:127.0.0.1:99999\": port 99999 out of range (0 to 65535) (expected unix:PATH",
            2,
        ),
        (
            &["serve", "--config", bad_file.to_str().unwrap()],
            "ttl = -5",
            2,
        ),
        (&["serve", "--config", typo.to_str().unwrap()], "tll", 2),
        (
            &["serve", "--config", missing.to_str().unwrap()],
            "missing.toml",
            2,
        ),
        (
            &["serve", "--listen", &in_use, "--control", control],
            "in use",
            1,
        ),
        (&["query"], "say what to query", 2),
        (&["query", "-p", "getport", "1", "2", "tcp"], "-p and -s", 2),
        (&["query", "getport", "nfsx", "3", "tcp"], "'nfsx'", 2),
        (&["query", "-p", "--socket", nowhere], nowhere, 1),
        (&["status", "--control", nowhere], nowhere, 1),
        (&["status", "--jsn"], "--jsn", 2),
        (&["flush", "--control", nowhere], nowhere, 1),
        (&["top", "-n", "1", "--control", nowhere], nowhere, 1),
        (&["top", "-d", "0"], "0.1 to 3600", 2),
        (&["intercept", "enabel"], "enabel", 2),
        (
            &["generate", "man", "/proc/version/x"],
            "/proc/version/x",
            1,
        ),
    ];
    let mut wrong = Vec::new();
    for (args, needle, want) in cases {
        let code = refused(&bin(args), needle);
        if code != *want {
            wrong.push(format!("{args:?} exited {code}, not {want}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `query` takes program names as rpcinfo does, and says why it got no
/// answer: rpcbind down behind the proxy, no proxy at all, or a socket that
/// is not an RPC socket; `status` says when its socket is not the control
/// socket.
#[test]
fn query_and_status_say_what_went_wrong() {
    run(|mut sb| async move {
        // A name from /etc/rpc, as rpcinfo takes it; and an alias.
        let out = cli(&sb, &["query", "getport", "portmapper", "2", "tcp"]).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "111\n", "{out:?}");
        let out = cli(&sb, &["query", "getport", "rpcbind", "2", "udp"]).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "111\n", "{out:?}");
        let out = cli(&sb, &["query", "getport", "nfs", "3", "tcp"]).await;
        assert_eq!(
            refused(&out, "program 100003 version 3 is not registered on tcp"),
            1
        );
        // rpcbind's own socket is not the control socket.
        let out = cli(&sb, &["status", "--control", RPCBIND_SOCK]).await;
        refused(
            &out,
            "/run/rpcbind.sock is not rpcbind-proxy's control socket (it reset the connection",
        );
        // Nor is the control socket an RPC socket.
        let out = cli(&sb, &["query", "-p", "--socket", CONTROL_SOCK]).await;
        refused(
            &out,
            "unix:/run/rpcbind-proxy/control.sock closed the connection without an RPC reply: it is not an RPC socket",
        );
        // rpcbind gone: the proxy answers SYSTEM_ERR, and query says why.
        sb.kill_rpcbind().await;
        let out = cli(&sb, &["query", "getport", "200123", "1", "tcp"]).await;
        refused(
            &out,
            "answered SYSTEM_ERR: it could not get an answer from rpcbind",
        );
        // No proxy: nothing listens.
        sb.stop_proxy().await;
        let out = cli(&sb, &["query", "-p"]).await;
        let code = refused(
            &out,
            "cannot query the proxy at unix:/run/rpcbind-proxy/rpcbind.sock",
        );
        assert_eq!(code, 1);
        refused(&out, "is rpcbind-proxy running");
    });
}

/// `--listen tcp:localhost:PORT` listens on every address localhost has
/// (what /etc/hosts gives it: 127.0.0.1, and ::1 where it is listed), and
/// answers there.
#[test]
fn a_host_name_listens_on_every_address_it_resolves_to() {
    use std::net::ToSocketAddrs;
    let mut want: Vec<std::net::SocketAddr> =
        ("localhost", 1112).to_socket_addrs().unwrap().collect();
    want.dedup();
    assert!(
        want.contains(&"127.0.0.1:1112".parse().unwrap()),
        "{want:?}"
    );
    run_with(
        Options {
            proxy_args: vec!["--listen".into(), "tcp:localhost:1112".into()],
            ..Options::default()
        },
        move |sb| async move {
            let listeners = sb.status().await["listeners"].clone();
            for addr in want {
                let spec = format!("tcp:{addr}");
                assert!(
                    listeners.as_array().unwrap().iter().any(|l| *l == spec),
                    "{spec}: {listeners}"
                );
                let out = call_once(&Endpoint::Tcp(addr), &getport_call(100000).fresh()).await;
                assert_eq!(decode_u32(&out.expect_results(&spec)).unwrap(), 111);
            }
        },
    );
}

/// `serve` started in the sandbox's namespaces with `args`, its standard
/// error read line by line until a line holds `until` (returned, with every
/// line before it) or the daemon exits (None, with its lines and status).
async fn serve_until(
    sb: &Sandbox,
    pre: &[&str],
    args: &[&str],
    until: &str,
) -> (tokio::process::Child, Vec<String>, Option<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("nsenter")
        .args(["-t", &sb.anchor_pid().to_string(), "-m", "--"])
        .args(pre)
        .args([PROXY_BIN, "serve", "--rpcbind-socket", RPCBIND_SOCK])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let found = line.contains(until);
                seen.push(line.clone());
                if found {
                    return (child, seen, Some(line));
                }
            }
            Ok(_) => return (child, seen, None),
            Err(_) => panic!("no line with {until:?} within 15 s: {seen:#?}"),
        }
    }
}

/// A host without 127.0.0.1 starts on the defaults as one without ::1
/// does: the listeners on the missing address are skipped with a warning.
/// A listener asked for on it still fails the start.
#[test]
fn a_missing_default_address_is_skipped_but_one_asked_for_fails() {
    run_without_proxy(|sb| async move {
        let out = sb
            .run_in_ns(&["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"])
            .await;
        assert!(out.status.success(), "{out:?}");
        let (mut child, lines, ready) = serve_until(&sb, &[], &[], "ready").await;
        assert!(ready.is_some(), "it starts on the defaults: {lines:#?}");
        let warned: Vec<&String> = lines
            .iter()
            .filter(|l| {
                l.contains("this host has no 127.0.0.1; skipping the default listeners on it")
            })
            .collect();
        assert_eq!(warned.len(), 1, "one warning for the address: {lines:#?}");
        assert!(warned[0].contains("WARN"), "{}", warned[0]);
        let listeners = sb.status().await["listeners"].clone();
        let want = serde_json::json!([
            "unix:/run/rpcbind-proxy/rpcbind.sock",
            "tcp:[::1]:1111",
            "udp:[::1]:1111"
        ]);
        assert_eq!(listeners, want);
        let _ = child.start_kill();
        let _ = child.wait().await;
        let (mut child, lines, ready) = serve_until(
            &sb,
            &[],
            &[
                "--listen",
                "tcp:127.0.0.1:1111",
                "--listen",
                "unix:/run/x.sock",
            ],
            "ready",
        )
        .await;
        assert!(
            ready.is_none(),
            "a listener asked for must bind: {lines:#?}"
        );
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(1), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("cannot listen on tcp:127.0.0.1:1111")),
            "{lines:#?}"
        );
    });
}

/// Under socket activation the start-up line names the sockets taken, and
/// says the listen setting is ignored only when one was given.
#[test]
fn the_sockets_systemd_passed_are_named_and_listen_ignored_only_when_set() {
    run_without_proxy(|sb| async move {
        std::fs::create_dir_all(sb.path("/run/act")).unwrap();
        let activate = [
            "systemd-socket-activate",
            "-l",
            "/run/act/rpcbind.sock",
            "-l",
            "127.0.0.1:1112",
        ];
        for (listen, ignored) in [
            (&[][..], false),
            (&["--listen", "tcp:127.0.0.1:1113"][..], true),
        ] {
            let mut args = vec!["--control", "/run/act/control.sock"];
            args.extend_from_slice(listen);
            let start = serve_until(&sb, &activate, &args, "using the sockets systemd passed");
            // systemd-socket-activate starts the daemon on the first client.
            let ep = Endpoint::Unix(sb.path("/run/act/rpcbind.sock"));
            let client = async {
                for _ in 0..500 {
                    if let Ok(c) = Conn::connect(&ep).await {
                        return c;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("systemd-socket-activate never listened");
            };
            let ((mut child, lines, line), _conn) = tokio::join!(start, client);
            let line = line.unwrap_or_else(|| panic!("{lines:#?}"));
            assert!(
                line.contains("using the sockets systemd passed: unix:/run/act/rpcbind.sock tcp:127.0.0.1:1112"),
                "{line}"
            );
            assert_eq!(line.contains("--listen"), ignored, "{line}");
            assert_eq!(line.contains("is ignored"), ignored, "{line}");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    });
}

/// A daemon that has served no one yet: `status --json` has no negative
/// zero rate, and the text's requests row ends at its count.
#[test]
fn a_fresh_daemons_status_renders_cleanly() {
    run(|sb| async move {
        let json = cli(&sb, &["status", "--json", "--control", CONTROL_SOCK]).await;
        let json = String::from_utf8_lossy(&json.stdout);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["requests"]["total"], 0, "fresh: {json}");
        assert!(!json.contains("-0.0"), "{json}");
        assert!(json.contains("\"per_second_10s\":0.0"), "{json}");
        let text = cli(&sb, &["status", "--control", CONTROL_SOCK]).await;
        let text = String::from_utf8_lossy(&text.stdout);
        let line = text.lines().find(|l| l.starts_with("requests")).unwrap();
        assert_eq!(line, "requests     0 total", "{text}");
    });
}

/// The README's Usage block names every option of every command (clap's
/// definition is the reference), and its account of the socket unit lists
/// the addresses the shipped unit holds, no more.
#[test]
fn the_readme_agrees_with_the_command_line_and_the_socket_unit() {
    use clap::CommandFactory;
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let usage = readme
        .split("## Usage\n\n```\n")
        .nth(1)
        .and_then(|r| r.split("```").next())
        .expect("a Usage block");
    let mut missing = Vec::new();
    for sub in rpcbind_proxy::cli::Cli::command().get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let name = sub.get_name();
        // A command's lines: its own, and the indented ones that follow.
        let mut lines = String::new();
        let mut inside = false;
        for line in usage.lines() {
            if line.starts_with("rpcbind-proxy ") {
                inside = line.split_whitespace().nth(1) == Some(name);
            }
            if inside {
                lines.push_str(line);
                lines.push('\n');
            }
        }
        assert!(!lines.is_empty(), "Usage has no line for {name}");
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            // Either spelling: `top [-n N] [-d SECONDS]`.
            let short = arg
                .get_short()
                .is_some_and(|c| lines.contains(&format!("[-{c} ")));
            if let Some(long) = arg.get_long() {
                if long != "help" && !short && !lines.contains(&format!("--{long}")) {
                    missing.push(format!("{name} --{long}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "README's Usage omits {missing:?}");

    let unit = std::fs::read_to_string(format!("{root}/systemd/rpcbind-proxy.socket")).unwrap();
    let held: Vec<&str> = unit
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ListenStream=")
                .or_else(|| l.strip_prefix("ListenDatagram="))
        })
        .collect();
    let under_systemd = readme
        .split("### Under systemd\n")
        .nth(1)
        .and_then(|r| r.split("first client").next())
        .expect("the Under systemd section");
    for addr in &held {
        assert!(
            under_systemd.contains(&format!("`{addr}`")),
            "{addr}: {under_systemd}"
        );
    }
    if !held.iter().any(|a| a.contains("[::1]")) {
        assert!(
            under_systemd.contains("not `[::1]:1111`"),
            "the unit holds no [::1]; the README must not say it does: {under_systemd}"
        );
    }
}

/// debian/postrm, run as dpkg runs it (its DEBHELPER token is a comment
/// line to sh) on a private /run without systemd: a purge removes
/// /run/rpcbind-proxy and what is in it; a removal removes it when empty
/// and keeps it otherwise.
#[test]
fn the_package_leaves_no_runtime_directory_behind() {
    let postrm = format!("{}/debian/postrm", env!("CARGO_MANIFEST_DIR"));
    let script = r#"
        set -e
        mount -t tmpfs tmpfs /run
        d=/run/rpcbind-proxy
        mkdir $d; touch $d/control.sock
        sh "$0" purge; [ ! -e $d ] || { echo "purge left $d"; exit 1; }
        mkdir $d
        sh "$0" remove; [ ! -e $d ] || { echo "remove left an empty $d"; exit 1; }
        mkdir $d; touch $d/other
        sh "$0" remove; [ -e $d/other ] || { echo "remove took a non-empty $d"; exit 1; }
        sh "$0" upgrade; [ -e $d/other ] || { echo "upgrade took $d"; exit 1; }
        echo ok
    "#;
    let out = std::process::Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            &postrm,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{out:?}"
    );
}
