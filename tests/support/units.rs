//! Clients in cgroups named like systemd units (`NAME-PID-N.service`),
//! run as a given uid inside a test's sandbox, and the top-clients rows of
//! `status --json` they should land in.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::Sandbox;

/// A cgroup named like a systemd unit, removed when dropped.
pub struct Unit {
    pub name: String,
    pub dir: PathBuf,
}

static UNITS: AtomicUsize = AtomicUsize::new(0);

impl Unit {
    pub fn new(stem: &str) -> Unit {
        let mount = rpcbind_proxy::host::cgroup::cgroup2_mountpoint()
            .expect("reading /proc/self/mountinfo")
            .expect("attribution needs a cgroup2 hierarchy (none is mounted)");
        let n = UNITS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{stem}-{}-{n}.service", std::process::id());
        let dir = mount
            .join(format!("rbp-test-{}-{n}", std::process::id()))
            .join(&name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        Unit { name, dir }
    }

    /// `args` run as `uid` inside this cgroup (the shell moves itself in,
    /// then execs the client, so every socket is created inside).
    pub fn command(&self, uid: u32, args: &[&str]) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        let mut script = format!("echo $$ > {} && exec", procs.display());
        if uid != 0 {
            script.push_str(&format!(
                " setpriv --reuid={uid} --regid={uid} --clear-groups --"
            ));
        }
        for a in args {
            script.push(' ');
            script.push_str(a);
        }
        vec!["sh".into(), "-c".into(), script]
    }

    /// A shell `script` run as `uid` inside this cgroup: the outer shell
    /// moves itself in, then execs (as `uid`) the shell that runs it, so
    /// every process of the script is created inside.
    pub fn shell(&self, uid: u32, script: &str) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        let mut outer = format!("echo $$ > {} && exec", procs.display());
        if uid != 0 {
            outer.push_str(&format!(
                " setpriv --reuid={uid} --regid={uid} --clear-groups --"
            ));
        }
        outer.push_str(&format!(" sh -c '{script}'"));
        vec!["sh".into(), "-c".into(), outer]
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

pub async fn run_in(sb: &Sandbox, unit: &Unit, uid: u32, args: &[&str]) -> String {
    let cmd = unit.command(uid, args);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = sb.run_in_ns(&cmd).await;
    assert!(
        out.status.success(),
        "{args:?} as {uid} in {}: {}{}",
        unit.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn rows(status: &Value) -> Vec<Value> {
    status["clients"]["top"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn row<'a>(rows: &'a [Value], unit: &str, transport: &str, uid: u32) -> Option<&'a Value> {
    rows.iter().find(|r| {
        r["unit"].as_str() == Some(unit)
            && r["transport"].as_str() == Some(transport)
            && r["uid"].as_u64() == Some(u64::from(uid))
    })
}
