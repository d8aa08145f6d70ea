//! Children: the proxy binary, and the rpcbind, proxy and floor processes
//! this run starts (in the namespaces of tests/support/namespaces.rs).

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::floor::{to_hex, FLOOR_PROCESS_ARG, FLOOR_READY};
use crate::{Instance, RPCBIND_SOCK};

/// The proxy binary: in a full run the release build users run (built here,
/// so that `cargo bench`'s dev-dependency features, e.g. tokio's test-util,
/// are not in it); in a smoke run the one cargo built for this target.
pub(crate) fn proxy_binary(full: bool) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RPCBIND_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    if !full {
        return Ok(PathBuf::from(env!("CARGO_BIN_EXE_rpcbind-proxy")));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("load: cargo build --release --bin rpcbind-proxy");
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--release",
            "--bin",
            "rpcbind-proxy",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !out.status.success() {
        return Err("cargo build --release --bin rpcbind-proxy failed".into());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "rpcbind-proxy" {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err("cargo build did not report the rpcbind-proxy executable".into())
}

/// Environment variables children must not inherit.
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "RUST_LOG",
];

/// A command for a child: without the variables above.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for v in SCRUBBED_ENV {
        cmd.env_remove(v);
    }
    cmd
}

pub(crate) struct Env {
    pub(crate) procs: Vec<(u32, Child)>,
    pub(crate) tmp: PathBuf,
    pub(crate) bin: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Env {
    /// Starts a child, its stdin /dev/null, its output to the log `log`.
    fn spawn(&mut self, log: &str, cmd: &mut Command) -> Result<u32, String> {
        let file = self.open_log(log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?);
        self.spawn_with_stderr(file, cmd)
    }

    fn open_log(&self, log: &str) -> Result<File, String> {
        File::options()
            .create(true)
            .append(true)
            .open(self.tmp.join(log))
            .map_err(|e| format!("opening {log}: {e}"))
    }

    /// Starts a child whose stdin and stdout `cmd` already set up, its
    /// stderr to `log`.
    fn spawn_with_stderr(&mut self, log: File, cmd: &mut Command) -> Result<u32, String> {
        cmd.stderr(log);
        let child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let pid = child.id();
        self.procs.push((pid, child));
        Ok(pid)
    }

    fn exited(&mut self, pid: u32) -> Option<String> {
        let (_, child) = self.procs.iter_mut().find(|(p, _)| *p == pid)?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub(crate) fn stop(&mut self, pid: u32) {
        if let Some(i) = self.procs.iter().position(|(p, _)| *p == pid) {
            let (_, mut child) = self.procs.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.tmp.join(name)).unwrap_or_default()
    }

    pub(crate) fn start_rpcbind(&mut self) -> Result<u32, String> {
        let pid = self.spawn("rpcbind.log", command("rpcbind").arg("-f"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // It creates its unix socket after the inet ones.
        while UnixStream::connect(RPCBIND_SOCK).is_err() {
            if let Some(status) = self.exited(pid) {
                return Err(format!(
                    "rpcbind exited ({status}): {}",
                    self.log("rpcbind.log")
                ));
            }
            if Instant::now() > deadline {
                return Err("rpcbind did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(pid)
    }

    /// Starts the floor in its own process (floor.rs): this bench binary
    /// again, with [`FLOOR_PROCESS_ARG`] and the reply to give, a child in
    /// these namespaces. Its stdin is a pipe whose write end stays in its
    /// `Child` here (and in no other child: std opens pipes close-on-exec);
    /// when that end closes, as this process exits or is killed, the floor
    /// exits. Waits for its ready line on its stdout.
    pub(crate) fn start_floor_process(&mut self, expected: &[u8]) -> Result<u32, String> {
        const LOG: &str = "floor-process.log";
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let mut cmd = command(exe);
        cmd.arg(FLOOR_PROCESS_ARG)
            .arg(to_hex(expected))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let log = self.open_log(LOG)?;
        let pid = self.spawn_with_stderr(log, &mut cmd)?;
        let stdout = self
            .procs
            .iter_mut()
            .find(|(p, _)| *p == pid)
            .and_then(|(_, child)| child.stdout.take())
            .ok_or("floor process: no stdout")?;
        // A pipe has no read timeout: a thread reads the line (it ends at
        // EOF, at the latest when the child is killed).
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(line) if line.trim_end() == FLOOR_READY => return Ok(pid),
                Ok(line) => {
                    // EOF or something else: the child is exiting or broken.
                    std::thread::sleep(Duration::from_millis(50));
                    let status = self.exited(pid).unwrap_or_else(|| "still running".into());
                    return Err(format!(
                        "floor process ({status}) said {line:?}, not {FLOOR_READY:?}: {}",
                        self.log(LOG)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("floor process: the reader thread died".into());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "floor process did not say {FLOOR_READY:?} within 10 s: {}",
                    self.log(LOG)
                ));
            }
        }
    }

    /// Starts a proxy instance (under `wrapper`, e.g. valgrind, if given)
    /// and waits for its READY=1.
    pub(crate) fn start_proxy(
        &mut self,
        inst: &Instance,
        wrapper: Option<&[String]>,
    ) -> Result<u32, String> {
        fs::create_dir_all(inst.dir).map_err(|e| format!("creating {}: {e}", inst.dir))?;
        fs::set_permissions(inst.dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let notify_path = self.tmp.join(format!("notify-{}.sock", inst.name));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| e.to_string())?;
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = command(&w[0]);
                c.args(&w[1..]).arg(&self.bin);
                c
            }
            None => command(&self.bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", inst.sock().display()))
            .arg("--listen")
            .arg(format!("tcp:127.0.0.1:{}", inst.port))
            .arg("--listen")
            .arg(format!("udp:127.0.0.1:{}", inst.port))
            .args(["--rpcbind-socket", RPCBIND_SOCK])
            .arg("--control")
            .arg(inst.control())
            .args(inst.args)
            // Extra serve options for experiments, e.g. RPCBIND_PROXY_ARGS="--threads 1".
            .args(
                std::env::var("RPCBIND_PROXY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("NOTIFY_SOCKET", &notify_path);
        let log = format!("{}.log", inst.name);
        let pid = self.spawn(&log, &mut cmd)?;
        let timeout = if wrapper.is_some() { 120 } else { 10 };
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return Ok(pid);
                }
            }
            if let Some(status) = self.exited(pid) {
                return Err(format!(
                    "{} exited ({status}) before READY=1: {}",
                    inst.name,
                    self.log(&log)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} sent no READY=1 within {timeout} s: {}",
                    inst.name,
                    self.log(&log)
                ));
            }
        }
    }
}
