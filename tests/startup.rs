//! Start-up and shutdown of the real binary: one-line errors naming the bad
//! value, the unix socket file's life cycle. No rpcbind is needed: the proxy
//! starts without it (and keeps trying to reach it).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rpcbind-proxy");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("rbp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to its end. A refusal is immediate; a daemon still
/// running after 10 s accepted what it should have refused: killed, and the
/// test fails saying so (rather than hanging).
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{args:?} was accepted (still running after 10 s); it said:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

/// Asserts a failed start with exactly one line on stderr containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "must fail: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "names {needle:?}: {err:?}");
}

#[test]
fn a_bad_listen_spec_is_named() {
    for spec in ["tcp:nowhere", "unix:relative.sock", "sctp:127.0.0.1:1"] {
        assert_one_line_error(&run(&["serve", "--listen", spec]), spec);
    }
}

#[test]
fn an_unreadable_or_wrong_config_is_named() {
    let d = Dir::new("cfg");
    let missing = d.0.join("missing.toml");
    assert_one_line_error(
        &run(&["serve", "--config", missing.to_str().unwrap()]),
        missing.to_str().unwrap(),
    );
    let typo = d.0.join("typo.toml");
    std::fs::write(
        &typo,
        "listen = [\"tcp:127.0.0.1:1\"]\nrpcbind-sokcet = \"/x\"\n",
    )
    .unwrap();
    let out = run(&["serve", "--config", typo.to_str().unwrap()]);
    assert_one_line_error(&out, "rpcbind-sokcet");
    assert_one_line_error(&out, typo.to_str().unwrap());
}

#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("tcp:{}", taken.local_addr().unwrap());
    let out = run(&[
        "serve",
        "--listen",
        &spec,
        "--rpcbind-socket",
        "/nonexistent.sock",
    ]);
    assert_one_line_error(&out, &spec);
    assert_one_line_error(&out, "in use");
}

/// Starts `serve` with NOTIFY_SOCKET and waits for READY=1.
fn start(dir: &Path, args: &[&str]) -> Child {
    let notify = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args([
            "--rpcbind-socket",
            dir.join("no-rpcbind.sock").to_str().unwrap(),
        ])
        // Never the host's /run/rpcbind-proxy: tests run side by side.
        .args(["--control", dir.join("control.sock").to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        panic!("no READY=1 within 10 s ({e}); the daemon said:\n{log}")
    });
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    child
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap()
}

#[test]
fn the_unix_socket_is_created_0666_and_removed_on_exit() {
    let d = Dir::new("life");
    // Directories under /run are created (every sandboxed test starts on a
    // fresh /run); elsewhere the directory must exist.
    let path = d.0.join("rpcbind.sock");
    let spec = format!("unix:{}", path.display());
    let child = start(&d.0, &["--listen", &spec]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    UnixStream::connect(&path).expect("accepting");
    assert!(terminate(child).success(), "clean exit on SIGTERM");
    assert!(!path.exists(), "socket removed on clean exit");
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_one_is_not_stolen() {
    let d = Dir::new("stale");
    let path = d.0.join("rpcbind.sock");
    // A stale socket file: bound, then its listener dropped.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let spec = format!("unix:{}", path.display());
    let child = start(&d.0, &["--listen", &spec]);
    UnixStream::connect(&path).expect("the new daemon answers on the old path");
    // A second daemon on the same path must refuse, naming it.
    let out = run(&[
        "serve",
        "--listen",
        &spec,
        "--rpcbind-socket",
        "/nonexistent.sock",
    ]);
    assert_one_line_error(&out, &spec);
    UnixStream::connect(&path).expect("the first daemon still owns the socket");
    assert!(terminate(child).success());
}

#[test]
fn a_socket_directory_outside_run_is_never_created() {
    let d = Dir::new("nodir");
    let missing = d.0.join("no-such-dir");
    let spec = format!("unix:{}/x.sock", missing.display());
    let out = run(&[
        "serve",
        "--listen",
        &spec,
        "--rpcbind-socket",
        "/nonexistent.sock",
    ]);
    assert_one_line_error(&out, &spec);
    assert_one_line_error(&out, "does not exist");
    assert!(!missing.exists(), "the mistyped directory was created");
    // The control socket follows the same rule.
    let control = format!("{}/control.sock", missing.display());
    let out = run(&[
        "serve",
        "--listen",
        "tcp:127.0.0.1:0",
        "--control",
        &control,
        "--rpcbind-socket",
        "/nonexistent.sock",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(&control) && last.contains("does not exist"),
        "{err}"
    );
    assert!(!missing.exists());
}

#[test]
fn a_log_level_that_would_log_nothing_is_refused() {
    let out = run(&["serve", "--log-level", "bogus"]);
    assert_one_line_error(&out, "--log-level: \"bogus\"");
    assert_one_line_error(&out, "error, warn, info, debug, trace");
    let d = Dir::new("level");
    let conf = d.0.join("c.toml");
    std::fs::write(&conf, "ttl = 5\nlog-level = \"verbose\"\n").unwrap();
    let out = run(&["serve", "--config", conf.to_str().unwrap()]);
    assert_one_line_error(&out, &format!("{} line 2", conf.display()));
    assert_one_line_error(&out, "log-level = \"verbose\"");
}

#[test]
fn nonsense_values_are_refused_naming_the_value_and_the_range() {
    for (args, needle, range) in [
        (
            &["--max-connections", "0"][..],
            "--max-connections: 0",
            "1 or more",
        ),
        (
            &["--max-entries", "0"],
            "--max-entries: 0",
            "ttl and negative-ttl to 0",
        ),
        (&["--rpcbind-port", "0"], "--rpcbind-port: 0", "1 to 65535"),
        (&["--ttl", "-1"], "--ttl: -1", "0 turns caching"),
    ] {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        let out = run(&full);
        assert_one_line_error(&out, needle);
        assert_one_line_error(&out, range);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let d = Dir::new("empty");
    let conf = d.0.join("c.toml");
    std::fs::write(&conf, "listen = []\n").unwrap();
    let out = run(&["serve", "--config", conf.to_str().unwrap()]);
    assert_one_line_error(&out, "line 1");
    assert_one_line_error(&out, "listen = []: expected a non-empty list");
}

#[test]
fn a_negative_number_reads_the_same_in_either_spelling() {
    for (a, b) in [
        (["--ttl", "-1"], ["--ttl=-1"]),
        (["--max-connections", "-1"], ["--max-connections=-1"]),
    ] {
        let spaced = run(&[&["serve"][..], &a].concat());
        let joined = run(&[&["serve"][..], &b].concat());
        assert_one_line_error(&spaced, "-1");
        assert_eq!(spaced.stderr, joined.stderr, "{a:?} vs {b:?}");
        assert_eq!(spaced.status.code(), joined.status.code());
    }
}

#[test]
fn config_errors_name_the_file_line_key_and_form() {
    let d = Dir::new("where");
    let conf = d.0.join("c.toml");
    std::fs::write(&conf, "# comment\nupstream-timeout = \"30s\"\n").unwrap();
    let out = run(&["serve", "--config", conf.to_str().unwrap()]);
    assert_one_line_error(&out, &format!("{} line 2, column 20", conf.display()));
    assert_one_line_error(&out, "upstream-timeout: invalid type: string \"30s\"");
    assert_one_line_error(&out, "a positive number of seconds without a unit");
    std::fs::write(&conf, "ttl = 1\n[limits\n").unwrap();
    let out = run(&["serve", "--config", conf.to_str().unwrap()]);
    assert_one_line_error(&out, &format!("{} line 2", conf.display()));
}

#[test]
fn check_refuses_thresholds_that_make_no_sense_as_unknown() {
    for (args, needles) in [
        (&["--min-hit-ratio", "1.5"][..], &["'1.5'", "0 to 1"][..]),
        (
            &["--warn-time-wait", "500", "--crit-time-wait", "100"],
            &["500", "100", "at most"],
        ),
    ] {
        let mut full = vec!["check", "--control", "/nonexistent/control.sock"];
        full.extend_from_slice(args);
        let out = run(&full);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "UNKNOWN: {out:?}");
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        assert!(text.starts_with("UNKNOWN: "), "{text}");
        for n in needles {
            assert!(text.contains(n), "{n}: {text}");
        }
    }
}

/// Starts `serve` with stderr piped; every line it logs arrives on the
/// returned channel.
fn start_logging(dir: &Path, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--control", dir.join("control.sock").to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one matches `want` (returned last), within 10 s.
fn lines_until(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(want);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!(
                "no line with {want:?} ({e}); the daemon said:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn the_log_says_version_config_and_rpcbind_lost_once_and_back() {
    let d = Dir::new("logs");
    let rpcbind = d.0.join("rpcbind.sock");
    let conf = d.0.join("c.toml");
    std::fs::write(&conf, "ttl = 30\n").unwrap();
    let (child, rx) = start_logging(
        &d.0,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--listen",
            &format!("unix:{}", d.0.join("proxy.sock").display()),
            "--rpcbind-socket",
            rpcbind.to_str().unwrap(),
            // Debug for the proxy's own lines: each retry shows, at debug.
            "--log-level",
            "rpcbind_proxy=debug,info",
        ],
    );
    let mut lines = lines_until(&rx, "starting");
    let start = lines.last().unwrap().clone();
    assert!(
        start.contains(&format!(
            "rpcbind-proxy {} starting",
            env!("CARGO_PKG_VERSION")
        )) && start.contains(&format!("config file {}", conf.display())),
        "{start}"
    );
    let settings = lines_until(&rx, "settings:").pop().unwrap();
    assert!(settings.contains("ttl 30s, negative-ttl 10s"), "{settings}");
    // rpcbind is not there: said once, then two more attempts at debug.
    for _ in 0..3 {
        lines.extend(lines_until(&rx, "cannot connect to rpcbind"));
    }
    // rpcbind arrives (a listener is all a connect needs).
    let _rpcbind = UnixListener::bind(&rpcbind).unwrap();
    lines.extend(lines_until(&rx, "reachable again after"));
    let warned: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("rpcbind"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning for the outage: {lines:#?}");
    assert!(
        warned[0].contains(&format!(
            "cannot reach rpcbind at unix:{}",
            rpcbind.display()
        )),
        "{}",
        warned[0]
    );
    let back = lines.last().unwrap();
    assert!(
        back.contains("INFO")
            && back.contains(&format!(
                "rpcbind at unix:{} reachable again after",
                rpcbind.display()
            )),
        "{back}"
    );
    assert!(terminate(child).success());
}

#[test]
fn check_config_says_ok_in_one_line_or_fails_as_start_up_would() {
    let d = Dir::new("check");
    let good = d.0.join("good.toml");
    std::fs::write(&good, "ttl = 30\nmetrics = \"tcp:127.0.0.1:9111\"\n").unwrap();
    let out = run(&[
        "serve",
        "--check-config",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.lines().count(), 1, "{said:?}");
    assert!(
        said.starts_with(&format!("configuration OK: {}; ttl 30s", good.display())),
        "{said:?}"
    );
    // Checking binds nothing: the same check twice at once, and a
    // listener nobody could bind, are fine.
    let out = run(&[
        "serve",
        "--check-config",
        "--config",
        good.to_str().unwrap(),
        "--listen",
        "tcp:192.0.2.1:1",
    ]);
    assert!(out.status.success(), "{out:?}");

    // A broken file: exactly the line and the exit status (2, a config
    // error) a start gives.
    let bad = d.0.join("bad.toml");
    std::fs::write(&bad, "ttl = \"soon\"\n").unwrap();
    let checked = run(&["serve", "--check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(2), "{checked:?}");
    assert_one_line_error(&checked, "ttl");
    let started = run(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(checked.stderr, started.stderr);
    assert_eq!(checked.status.code(), started.status.code());
    assert!(checked.stdout.is_empty());
}
