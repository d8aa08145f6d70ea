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
//! live socket, so rpcbind need not restart), reloads the units (systemd
//! matches the socket it holds for rpcbind to the new path by the file both
//! names share), restarts rpcbind.socket only if systemd holds no socket
//! for rpcbind (then every later restart of rpcbind would bind
//! /run/rpcbind.sock itself), then restarts only the proxy's units (systemd
//! holds the sockets: connections queue, none is refused); until the new
//! daemon has installed its table, port 111 goes straight to rpcbind.
//! `disable` first hands /run/rpcbind.sock back to rpcbind's live socket
//! (an atomic rename), rebinds rpcbind's socket at that path if
//! rpcbind.socket bound it at the upstream path, stops the daemon (which
//! stops redirecting before it drains), removes the drop-ins and reloads
//! the units while both names still name rpcbind's socket, then
//! re-registers rpcbind's own `local` entries under /run/rpcbind.sock where
//! an rpcbind restarted meanwhile named the upstream path in them, removes
//! that path once rpcbind names it nowhere, and starts the proxy's units on
//! their defaults. Both are idempotent; a failing step of `disable` does not
//! stop the others, and a failing step of `enable` undoes every change made
//! before it (`rollback`), newest first.

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
use crate::cli::{EnableArgs, InterceptAction, InterceptArgs};
use crate::config::DEFAULT_RPCBIND_SOCKET;
use crate::host::{procfd, sockdiag};

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
/// `@LISTEN@`: rpcbind.socket's listeners, derived from its units;
/// `@ABSTRACT@`: rpcbind's abstract name, if its units set one).
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
        InterceptAction::Enable(e) => enable::enable(&args.control.control, &e),
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

/// What rpcbind.socket's units set, as transparent mode rearranges it:
/// the `Listen...` lines of rpcbind.socket's drop-in, and rpcbind's
/// abstract name if they set one (the proxy's socket unit takes it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Derived {
    listen: String,
    abstract_name: Option<String>,
}

/// Each drop-in's path and the text it must hold, from what
/// `rpcbind_listen` derived.
fn drop_ins(
    unit_dir: &Path,
    bin: &str,
    derived: &Derived,
    modes: &EnableArgs,
) -> Vec<(PathBuf, String)> {
    let mut remote_args: String = if modes.remote.is_empty() {
        String::new()
    } else {
        std::iter::once(" --intercept-remote".to_owned())
            .chain(
                modes
                    .remote
                    .iter()
                    .map(|i| format!(" --remote-interface {i}")),
            )
            .collect()
    };
    if modes.outbound {
        remote_args.push_str(" --intercept-outbound");
    }
    let abstract_line = derived
        .abstract_name
        .as_ref()
        .map_or(String::new(), |name| {
            format!(
                "# rpcbind's abstract name, which its units set (libtirpc >= 1.3.4 and the\n\
             # kernel try it first); rpcbind no longer listens there.\n\
             ListenStream={name}"
            )
        });
    DROP_INS
        .iter()
        .map(|(unit, text)| {
            (
                unit_dir.join(format!("{unit}.d")).join(DROP_IN),
                text.replace("@BIN@", bin)
                    .replace("@REMOTE@", &remote_args)
                    .replace("@LISTEN@", &derived.listen)
                    .replace("@ABSTRACT@", &abstract_line),
            )
        })
        .collect()
}

/// The `Listen...` lines of rpcbind.socket's drop-in, derived from the unit
/// file and drop-ins systemd loaded for rpcbind.socket (the proxy's own
/// left out): every listener as they set it, the unix path moved.
fn rpcbind_listen() -> Result<Derived, String> {
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
    Ok(Derived {
        listen: dropin::listen_lines(&listeners, UPSTREAM_SOCKET),
        abstract_name: dropin::abstract_name(&listeners).map(str::to_owned),
    })
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

/// Restarts rpcbind.socket and rpcbind.service (rpcbind's warm start keeps
/// its registrations). Their start-rate limit is reset first: this restart
/// is deliberate, and refused by systemd after others in the last 10 s it
/// would leave rpcbind down.
fn restart_rpcbind() -> Result<(), String> {
    let _ = systemctl(&["reset-failed", "rpcbind.socket", "rpcbind.service"]);
    systemctl(&["restart", "rpcbind.socket", "rpcbind.service"])
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

/// The processes holding the listening unix socket that `path` names (by
/// its file, so a second name of the socket counts), each with its command;
/// `None` when no socket listens there or it cannot be told (no unix_diag).
/// Processes this user may not look at are left out (run as root).
fn listening_holders(path: &Path) -> Option<Vec<(u32, String)>> {
    let inode = listening_socket(path)?;
    procfd::holders(inode).ok().map(|(found, _)| found)
}

/// The inode of the listening unix socket whose file `path` names.
fn listening_socket(path: &Path) -> Option<u64> {
    listener_at(path).map(|l| l.inode)
}

/// The listening unix socket whose file `path` names.
fn listener_at(path: &Path) -> Option<sockdiag::UnixListener> {
    let meta = std::fs::metadata(path).ok()?;
    let file = (meta.dev(), meta.ino());
    sockdiag::unix_listeners()
        .ok()?
        .into_iter()
        .find(|l| l.file == Some(file))
}

/// The name the listening socket `path` names was bound to (a second name,
/// made by a hard link, is not it).
fn bound_name(path: &Path) -> Option<sockdiag::UnixName> {
    listener_at(path)?.name
}

/// Whether rpcbind itself listens on the socket `path` names.
fn rpcbind_listens(path: &Path) -> bool {
    listening_holders(path).is_some_and(|h| h.iter().any(|(_, comm)| comm == "rpcbind"))
}

/// The commands of the processes listening on rpcbind's abstract name as
/// a unit spells it (`@/run/rpcbind.sock`; `%t` is /run for the system
/// manager); `None` when nothing listens there.
fn abstract_holders(name: &str) -> Option<Vec<String>> {
    let bytes = name.strip_prefix('@')?.replace("%t", "/run").into_bytes();
    let want = sockdiag::UnixName::Abstract(bytes);
    let listener = sockdiag::unix_listeners()
        .ok()?
        .into_iter()
        .find(|l| l.name.as_ref() == Some(&want))?;
    let (found, _) = procfd::holders(listener.inode).ok()?;
    Some(found.into_iter().map(|(_, comm)| comm).collect())
}

/// Whether something other than rpcbind-proxy listens on the abstract
/// name `name` (rpcbind, before `enable` took it over).
fn abstract_elsewhere(name: Option<&str>) -> bool {
    name.and_then(abstract_holders)
        .is_some_and(|h| !h.iter().any(|comm| comm == "rpcbind-proxy"))
}

/// Whether systemd (pid 1) holds the listening socket `path` names, so that
/// it passes that socket to rpcbind on every restart (rpcbind, passed no
/// unix socket, binds /run/rpcbind.sock itself and takes that path from
/// the proxy). `None`: cannot be told as this user (root can).
fn systemd_holds(path: &Path) -> Option<bool> {
    let Some(inode) = listening_socket(path) else {
        return Some(false);
    };
    procfd::holds(1, inode).ok()
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
        let derived = Derived {
            listen: lines.into(),
            abstract_name: None,
        };
        let files = drop_ins(
            Path::new("/etc/systemd/system"),
            "/opt/bin/rpcbind-proxy",
            &derived,
            &EnableArgs::default(),
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
        assert!(!files[1].1.contains("@ABSTRACT@") && !files[1].1.contains("=@"));
        // rpcbind's abstract name, where its units set one, is the proxy's.
        let derived = Derived {
            abstract_name: Some("@/run/rpcbind.sock".into()),
            ..derived
        };
        let files = drop_ins(
            Path::new("/etc/systemd/system"),
            "/b",
            &derived,
            &EnableArgs::default(),
        );
        assert!(listen(&files[1].1).contains(&"ListenStream=@/run/rpcbind.sock".to_string()));
        assert!(!files[0].1.contains('@'));
        assert!(files[2].1.contains("upstream.sock\n") && !files[2].1.contains("@REMOTE@"));
    }

    /// `enable --remote IF --outbound`: server mode's flags on the daemon's
    /// command line, one --remote-interface per interface, and the client
    /// side's.
    #[test]
    fn enable_remote_and_outbound_add_their_modes_to_the_daemons_command_line() {
        let ifaces = ["eth0".to_owned(), "bond1".to_owned()];
        let modes = EnableArgs {
            remote: ifaces.to_vec(),
            outbound: true,
        };
        let files = drop_ins(Path::new("/u"), "/b", &Derived::default(), &modes);
        assert!(
            files[2].1.contains(
                "ExecStart=/b serve --intercept --rpcbind-socket /run/rpcbind/upstream.sock \
                 --intercept-remote --remote-interface eth0 --remote-interface bond1 \
                 --intercept-outbound\n"
            ),
            "{}",
            files[2].1
        );
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
