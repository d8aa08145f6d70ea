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

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
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
fn the_unix_socket_is_created_0666_in_a_new_directory_and_removed_on_exit() {
    let d = Dir::new("life");
    let path = d.0.join("sub/dir/rpcbind.sock");
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
