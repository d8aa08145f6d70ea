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
