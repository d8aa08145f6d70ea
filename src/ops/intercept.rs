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
//!   and a 5 s watchdog;
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

mod dropin;
mod rollback;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

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
        InterceptAction::Enable => enable(&args.control.control),
        InterceptAction::Disable => disable(),
        InterceptAction::Status => return status(&args.control.control),
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

fn enable(control: &Path) -> Result<(), String> {
    preconditions("enable")?;
    let bin = this_binary()?;
    let files = drop_ins(Path::new(UNIT_DIR), &bin, &rpcbind_listen()?);
    let upstream = Path::new(UPSTREAM_SOCKET);
    let public = Path::new(DEFAULT_RPCBIND_SOCKET);
    let written = files
        .iter()
        .all(|(p, t)| std::fs::read_to_string(p).is_ok_and(|s| s == *t));
    if written && daemon_intercepting(control) && answers_null(upstream) {
        println!("transparent mode is already on");
        return Ok(());
    }
    let link = !answers_null(upstream);
    if link && (!answers_null(public) || daemon_intercepting(control)) {
        return Err(format!(
            "rpcbind does not answer on {} or {}: start it first (systemctl start rpcbind)",
            public.display(),
            upstream.display()
        ));
    }
    let mut done = rollback::Changes::default();
    match enable_steps(control, &files, link, &mut done) {
        Ok(()) => {
            println!("transparent mode is on: local clients of port 111 and {DEFAULT_RPCBIND_SOCKET} go through rpcbind-proxy");
            Ok(())
        }
        Err((step, why)) => Err(done.roll_back(&step, &why)),
    }
}

/// The steps of `enable` that change the host, each recorded in `done`
/// before it is made; on failure, the step's name and why it failed.
fn enable_steps(
    control: &Path,
    files: &[(PathBuf, String)],
    link: bool,
    done: &mut rollback::Changes,
) -> Result<(), (String, String)> {
    let upstream = Path::new(UPSTREAM_SOCKET);
    let public = Path::new(DEFAULT_RPCBIND_SOCKET);
    // 1. The running rpcbind, reachable at its new path before anything
    //    depends on it there.
    if link {
        done.linking(upstream);
        link_socket(public, upstream).map_err(step(
            1,
            "link rpcbind's socket at /run/rpcbind/upstream.sock",
        ))?;
        println!("rpcbind's running socket is reachable at {UPSTREAM_SOCKET}");
    }
    // 2. The drop-ins.
    for (path, text) in files {
        done.writing(path);
        write_file(path, text).map_err(step(2, "write the drop-ins"))?;
        println!("wrote {}", path.display());
    }
    // 3. systemd reads them.
    done.reloading();
    systemctl(&["daemon-reload"]).map_err(step(3, "systemctl daemon-reload"))?;
    // 4. The proxy's units: the socket unit takes /run/rpcbind.sock (systemd
    //    replaces the path; clients queue on it meanwhile), the daemon starts
    //    in transparent mode and installs its table.
    let restart = "restart rpcbind-proxy.socket and rpcbind-proxy.service";
    done.restarting();
    let mut args = vec!["restart"];
    args.extend(PROXY_UNITS);
    systemctl(&args).map_err(step(4, restart))?;
    // 5. The new daemon's table in place.
    let deadline = Instant::now() + READY;
    while !daemon_intercepting(control) {
        if Instant::now() >= deadline {
            return Err(step(5, "wait for the redirect table")(format!(
                "rpcbind-proxy did not start intercepting within {READY:?}: see journalctl -u rpcbind-proxy"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The error of `enable`'s step `n`, `what` it does: its name and why.
fn step(n: u8, what: &'static str) -> impl Fn(String) -> (String, String) {
    move |e| (format!("step {n} ({what})"), e)
}

/// Points /run/rpcbind.sock (`public`) back at rpcbind's live socket, known
/// as `upstream`, in one step; nothing to do when it names it already.
fn hand_back(upstream: &Path, public: &Path) -> Result<(), String> {
    if same_file(public, upstream) {
        return Ok(());
    }
    if !answers_null(upstream) {
        return Err(format!(
            "rpcbind does not answer on {}: start it (systemctl start rpcbind), then run `rpcbind-proxy intercept disable`",
            upstream.display()
        ));
    }
    link_socket(upstream, public)
}

/// Stops the daemon (it stops redirecting, drains and removes its table)
/// and its socket unit (which leaves /run/rpcbind.sock alone:
/// RemoveOnStop=no in the drop-in).
fn stop_proxy() -> Result<(), String> {
    systemctl(&["stop", "rpcbind-proxy.service", "rpcbind-proxy.socket"])
}

fn disable() -> Result<(), String> {
    preconditions("disable")?;
    let files = drop_ins(Path::new(UNIT_DIR), "", "");
    let upstream = Path::new(UPSTREAM_SOCKET);
    let public = Path::new(DEFAULT_RPCBIND_SOCKET);
    let any_drop_in = files.iter().any(|(p, _)| p.exists());
    let handed_back = !upstream.exists();
    if !any_drop_in && handed_back {
        println!("transparent mode is already off");
        return Ok(());
    }
    // Each step runs even when one before it failed; each failure is one
    // line naming its step.
    let mut failed: Vec<String> = Vec::new();
    // 1. /run/rpcbind.sock back to rpcbind's live socket, in one step.
    if !handed_back {
        let step = format!("step 1 (hand {DEFAULT_RPCBIND_SOCKET} back to rpcbind)");
        if let Err(e) = hand_back(upstream, public) {
            failed.push(format!("{step} failed: {e}"));
        } else {
            println!("{DEFAULT_RPCBIND_SOCKET} is rpcbind's again");
        }
    }
    // 2. The daemon and its socket unit stop.
    if let Err(e) = stop_proxy() {
        failed.push(format!("step 2 (stop rpcbind-proxy) failed: {e}"));
    }
    // 3. rpcbind's second name, which `enable` made, or its own path if it
    //    restarted meanwhile (/run/rpcbind.sock names the same socket now):
    //    removed once rpcbind advertises it no more.
    if same_file(public, upstream) {
        if let Err(e) = release_upstream_name(public) {
            failed.push(format!("step 3 (remove {UPSTREAM_SOCKET}) failed: {e}"));
        }
    }
    // 4. The units as they were.
    for (path, _) in &files {
        match std::fs::remove_file(path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failed.push(format!(
                "step 4 (remove the drop-ins) failed: cannot remove {}: {e}",
                path.display()
            )),
        }
        if let Some(dir) = path.parent() {
            // Only if empty: the administrator's own drop-ins stay.
            let _ = std::fs::remove_dir(dir);
        }
    }
    let restarted = systemctl(&["daemon-reload"])
        .and_then(|()| systemctl(&["start", "rpcbind-proxy.socket", "rpcbind-proxy.service"]));
    if let Err(e) = restarted {
        failed.push(format!(
            "step 5 (start rpcbind-proxy on its defaults) failed: {e}"
        ));
    }
    match failed.split_last() {
        None => {
            println!("transparent mode is off: clients reach rpcbind directly");
            Ok(())
        }
        Some((last, earlier)) => {
            for line in earlier {
                eprintln!("rpcbind-proxy: {line}");
            }
            Err(last.clone())
        }
    }
}

/// Removes /run/rpcbind/upstream.sock, rpcbind's second name, now that
/// `public` reaches rpcbind too. An rpcbind started while transparent mode
/// was on names the upstream path in its own `local` entries (program
/// 100000, versions 3 and 4): they are re-registered under `public` first,
/// so every address rpcbind advertises keeps working. A name rpcbind still
/// advertises is kept (it goes away when rpcbind restarts).
fn release_upstream_name(public: &Path) -> Result<(), String> {
    let to = DEFAULT_RPCBIND_SOCKET;
    let moved = local_entries::move_own_entries(public, UPSTREAM_SOCKET, to).map_err(|e| {
        format!("{e}; {UPSTREAM_SOCKET} kept, as rpcbind still names it (until rpcbind restarts)")
    })?;
    if !moved.is_empty() {
        let versions: Vec<String> = moved.iter().map(|v| format!("v{v}")).collect();
        println!(
            "rpcbind's own local entries (100000 {}) name {to} again",
            versions.join(", ")
        );
    }
    match local_entries::advertised(public, UPSTREAM_SOCKET) {
        Ok(false) => std::fs::remove_file(UPSTREAM_SOCKET)
            .map_err(|e| format!("cannot remove {UPSTREAM_SOCKET}: {e}")),
        Ok(true) => Err(format!(
            "a registration at rpcbind still names {UPSTREAM_SOCKET}, so it is kept (until rpcbind restarts)"
        )),
        Err(e) => Err(format!("{e}; {UPSTREAM_SOCKET} kept")),
    }
}

/// What `intercept status` verifies on the host, each part ticked only
/// when seen: the drop-ins (rpcbind.socket's matching what its units give
/// now), rpcbind on the upstream path, the proxy holding the usual path,
/// the redirect table.
#[derive(Debug)]
pub(crate) struct Checklist {
    pub(crate) parts: Vec<(String, bool)>,
    /// Why rpcbind.socket's drop-in no longer matches, if it does not.
    pub(crate) stale: Option<String>,
}

/// Transparent mode as a whole, from its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    On,
    Off,
    PartlyOn,
}

impl Checklist {
    /// Looks at the host and asks the daemon at `control`.
    pub(crate) fn now(control: &Path) -> Checklist {
        let bin = this_binary().unwrap_or_default();
        let listen = rpcbind_listen();
        let files = drop_ins(
            Path::new(UNIT_DIR),
            &bin,
            listen.as_deref().unwrap_or_default(),
        );
        let mut parts: Vec<(String, bool)> = files
            .iter()
            .map(|(p, _)| (format!("drop-in {}", p.display()), p.exists()))
            .collect();
        // rpcbind.socket's drop-in repeats the listeners its units set at
        // `enable`: if they changed since, it no longer matches.
        let (rpcbind_drop_in, wanted) = &files[0];
        let stale = match (&listen, std::fs::read_to_string(rpcbind_drop_in)) {
            (Ok(_), Ok(text)) if text == *wanted => None,
            (Ok(_), Ok(_)) => Some(
                "rpcbind.socket's units changed since `enable`: run `rpcbind-proxy intercept enable` again to derive its drop-in anew".to_owned(),
            ),
            (Err(e), Ok(_)) => Some(format!("cannot derive rpcbind.socket's drop-in: {e}")),
            (_, Err(_)) => None,
        };
        parts[0].1 &= stale.is_none();
        parts.push((
            format!("rpcbind answers on {UPSTREAM_SOCKET}"),
            answers_null(Path::new(UPSTREAM_SOCKET)),
        ));
        let daemon = status_request(control).ok();
        let listens_on_public = daemon.as_ref().is_some_and(|s| {
            s.listeners
                .iter()
                .any(|l| *l == format!("unix:{DEFAULT_RPCBIND_SOCKET}"))
        });
        parts.push((
            format!("rpcbind-proxy holds {DEFAULT_RPCBIND_SOCKET}"),
            listens_on_public
                && !same_file(
                    Path::new(DEFAULT_RPCBIND_SOCKET),
                    Path::new(UPSTREAM_SOCKET),
                ),
        ));
        parts.push((
            "rpcbind-proxy redirects port 111 (nftables table inet rpcbind_proxy)".into(),
            daemon.is_some_and(|s| s.intercept.active()),
        ));
        Checklist { parts, stale }
    }

    pub(crate) fn verdict(&self) -> Verdict {
        match self.parts.iter().filter(|(_, ok)| *ok).count() {
            n if n == self.parts.len() => Verdict::On,
            0 => Verdict::Off,
            _ => Verdict::PartlyOn,
        }
    }

    /// The parts not in place.
    pub(crate) fn missing(&self) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(what, _)| what.as_str())
    }
}

/// Exit status of `intercept status`: 0 on, 3 off (as `systemctl
/// is-active`), 1 partly on.
fn status(control: &Path) -> ExitCode {
    let list = Checklist::now(control);
    let verdict = list.verdict();
    println!(
        "transparent mode: {}",
        match verdict {
            Verdict::On => "on",
            Verdict::Off => "off",
            Verdict::PartlyOn => "partly on",
        }
    );
    for (what, ok) in &list.parts {
        println!("  [{}] {what}", if *ok { "x" } else { " " });
    }
    if let Some(why) = &list.stale {
        println!("  {why}");
    }
    ExitCode::from(match verdict {
        Verdict::On => 0,
        Verdict::Off => 3,
        Verdict::PartlyOn => 1,
    })
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
