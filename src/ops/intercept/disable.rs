//! `intercept disable`: every step runs, whatever failed before it, and
//! leaves rpcbind reachable under every name it advertises.

use std::io;
use std::path::Path;

use super::*;

/// Points /run/rpcbind.sock (`public`) back at rpcbind's live socket, known
/// as `upstream`, in one step; nothing to do when it names it already.
pub(super) fn hand_back(upstream: &Path, public: &Path) -> Result<(), String> {
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
/// RemoveOnStop=no in the drop-in), and drops the fail-safe's second name
/// of that socket, if any.
pub(super) fn stop_proxy() -> Result<(), String> {
    let stopped = systemctl(&["stop", "rpcbind-proxy.service", "rpcbind-proxy.socket"]);
    stopped.and(super::failsafe::forget_parked())
}

pub(super) fn disable() -> Result<(), String> {
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
pub(super) fn release_upstream_name(public: &Path) -> Result<(), String> {
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
