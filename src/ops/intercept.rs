//! `rpcbind-proxy intercept enable|disable|status`: transparent mode on a
//! systemd host, turned on and off with one command each.
//!
//! What "on" is, part by part (`status` reports each):
//! - three drop-ins (`systemd/intercept/`, embedded here): rpcbind.socket
//!   moves rpcbind's unix socket to /run/rpcbind/upstream.sock and keeps
//!   every other listener its units set (`dropin`: derived at `enable`,
//!   re-checked by `status`);
//!   rpcbind-proxy.socket takes /run/rpcbind.sock and [::1]:1111;
//!   rpcbind-proxy.service runs `serve --intercept` with CAP_NET_ADMIN
//!   and a 5 s watchdog, and the unix fail-safe (`failsafe`: rpcbind
//!   serves /run/rpcbind.sock while the daemon is down);
//! - the running rpcbind reachable at /run/rpcbind/upstream.sock;
//! - the daemon running with its redirect table in place.
//!
//! The order of the steps is what keeps clients served: `enable` first
//! makes the running rpcbind reachable at the new path (a hard link to its
//! live socket, so rpcbind need not restart), then restarts only the proxy's
//! units (systemd holds the sockets: connections queue, none is refused);
//! until the new daemon has installed its table, port 111 goes straight to
//! rpcbind. `disable` first hands /run/rpcbind.sock back to rpcbind's live
//! socket (an atomic rename), then stops the daemon (which stops redirecting
//! before it drains), then re-registers rpcbind's own `local` entries under
//! /run/rpcbind.sock where an rpcbind restarted meanwhile named the upstream
//! path in them, and removes that path once rpcbind names it nowhere, then
//! removes the drop-ins and starts the proxy's units on their defaults. Both
//! are idempotent; a failing step of `disable` does not stop the others,
//! and a failing step of `enable` undoes every change made before it
//! (`rollback`), newest first.

mod disable;
mod dropin;
mod enable;
mod failsafe;
mod rollback;
mod status;

pub(crate) use status::{Checklist, Verdict};

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use super::client::{fail, status_request};
use super::local_entries;
use super::query::answers_null;
use crate::cli::{InterceptAction, InterceptArgs};
use crate::config::DEFAULT_RPCBIND_SOCKET;

/// rpcbind's unix socket in transparent mode.
pub const UPSTREAM_SOCKET: &str = "/run/rpcbind/upstream.sock";
/// Where systemd reads administrator drop-ins.
const UNIT_DIR: &str = "/etc/systemd/system";
/// The drop-ins' file name inside each `UNIT.d/`.
const DROP_IN: &str = "50-rpcbind-proxy-intercept.conf";
/// The proxy's units, as `enable` restarts them.
const PROXY_UNITS: [&str; 2] = ["rpcbind-proxy.socket", "rpcbind-proxy.service"];
/// How long `enable` waits for the restarted daemon's table.
const READY: Duration = Duration::from_secs(15);

/// The drop-ins, as shipped in systemd/intercept/ (`@BIN@`: this binary;
/// `@LISTEN@`: rpcbind.socket's listeners, derived from its units).
const DROP_INS: [(&str, &str); 3] = [
    (
        "rpcbind.socket",
        include_str!("../../systemd/intercept/rpcbind.socket.conf"),
    ),
    (
        "rpcbind-proxy.socket",
        include_str!("../../systemd/intercept/rpcbind-proxy.socket.conf"),
    ),
    (
        "rpcbind-proxy.service",
        include_str!("../../systemd/intercept/rpcbind-proxy.service.conf"),
    ),
];

pub fn intercept(args: InterceptArgs) -> ExitCode {
    let result = match args.action {
        InterceptAction::Enable => enable::enable(&args.control.control),
        InterceptAction::Disable => disable::disable(),
        InterceptAction::Status => return status::status(&args.control.control),
        InterceptAction::FailOpen => failsafe::fail_open(),
        InterceptAction::Reclaim => failsafe::reclaim(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Each drop-in's path and the text it must hold; `listen`: the lines
/// `rpcbind_listen` derived.
fn drop_ins(unit_dir: &Path, bin: &str, listen: &str) -> Vec<(PathBuf, String)> {
    DROP_INS
        .iter()
        .map(|(unit, text)| {
            (
                unit_dir.join(format!("{unit}.d")).join(DROP_IN),
                text.replace("@BIN@", bin).replace("@LISTEN@", listen),
            )
        })
        .collect()
}

/// The `Listen...` lines of rpcbind.socket's drop-in, derived from the unit
/// file and drop-ins systemd loaded for rpcbind.socket (the proxy's own
/// left out): every listener as they set it, the unix path moved.
fn rpcbind_listen() -> Result<String, String> {
    let out = Command::new("systemctl")
        .args([
            "show",
            "-p",
            "FragmentPath",
            "-p",
            "DropInPaths",
            "rpcbind.socket",
        ])
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    let fragment = value("FragmentPath");
    if !out.status.success() || fragment.is_empty() {
        return Err(
            "rpcbind.socket has no unit file (systemctl show -p FragmentPath rpcbind.socket): is rpcbind installed?"
                .into(),
        );
    }
    let drop_ins = value("DropInPaths");
    let paths = std::iter::once(fragment).chain(drop_ins.split_whitespace().map(str::to_owned));
    let mut files = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
        files.push(dropin::UnitFile { path, text });
    }
    let listeners = dropin::listeners(&files, DROP_IN)?;
    Ok(dropin::listen_lines(&listeners, UPSTREAM_SOCKET))
}

/// This binary's path, for the service drop-in's ExecStart=.
fn this_binary() -> Result<String, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this binary's path: {e}"))?;
    exe.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("this binary's path is not UTF-8: {}", exe.display()))
}

/// Root and a running systemd, or one line saying what is missing.
fn preconditions(what: &str) -> Result<(), String> {
    // /proc/self belongs to the process's effective uid.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if euid != Some(0) {
        return Err(format!(
            "intercept {what} changes systemd units and needs root"
        ));
    }
    if !Path::new("/run/systemd/system").exists() {
        return Err(format!(
            "intercept {what} needs systemd (not running here); without it run `rpcbind-proxy serve --intercept --listen unix:/run/rpcbind.sock ...` by hand (README: Transparent mode)"
        ));
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {} failed: {}",
            args.join(" "),
            // One line: systemctl's message may span several.
            String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ))
    }
}

/// Writes `text` to `path` atomically (a temporary file renamed over it),
/// creating the directory.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let err = |e: io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("conf.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Makes `link` a second name of the socket at `target`, replacing
/// whatever is at `link` in one step (rename), so that at no moment does
/// `link` name nothing.
fn link_socket(target: &Path, link: &Path) -> Result<(), String> {
    let err = |e: io::Error| {
        format!(
            "cannot link {} to {}: {e}",
            link.display(),
            target.display()
        )
    };
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = link.with_extension("sock.rpcbind-proxy-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(target, &tmp).map_err(err)?;
    std::fs::rename(&tmp, link).map_err(err)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Whether the daemon at `control` runs with its redirect table in place.
fn daemon_intercepting(control: &Path) -> bool {
    status_request(control).is_ok_and(|s| s.intercept.active())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_name_this_binary_and_move_only_the_unix_socket() {
        let lines =
            "ListenStream=\nListenStream=/run/rpcbind/upstream.sock\nListenStream=127.0.0.1:111";
        let files = drop_ins(
            Path::new("/etc/systemd/system"),
            "/opt/bin/rpcbind-proxy",
            lines,
        );
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/etc/systemd/system/rpcbind.socket.d/50-rpcbind-proxy-intercept.conf",
                "/etc/systemd/system/rpcbind-proxy.socket.d/50-rpcbind-proxy-intercept.conf",
                "/etc/systemd/system/rpcbind-proxy.service.d/50-rpcbind-proxy-intercept.conf",
            ]
        );
        let service = &files[2].1;
        assert!(service.contains(
            "ExecStart=/opt/bin/rpcbind-proxy serve --intercept --rpcbind-socket /run/rpcbind/upstream.sock"
        ));
        assert!(!service.contains("@BIN@"));
        let listen = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("Listen"))
                .map(str::to_owned)
                .collect()
        };
        // rpcbind.socket's: the derived lines, in the [Socket] section.
        assert!(files[0].1.ends_with(&format!("[Socket]\n{lines}\n")));
        assert!(!files[0].1.contains("@LISTEN@"));
        assert!(listen(&files[1].1).contains(&"ListenStream=/run/rpcbind.sock".to_string()));
    }

    #[test]
    fn a_socket_link_replaces_the_old_name_in_one_step() {
        let dir = std::env::temp_dir().join(format!("rbp-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let live = dir.join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let name = dir.join("sub/name.sock");
        link_socket(&live, &name).unwrap();
        assert!(same_file(&live, &name));
        assert!(std::os::unix::net::UnixStream::connect(&name).is_ok());
        // Over an existing (stale) file too.
        let other = dir.join("other.sock");
        let _other = std::os::unix::net::UnixListener::bind(&other).unwrap();
        link_socket(&other, &name).unwrap();
        assert!(same_file(&other, &name));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
