//! `intercept disable`: every step runs, whatever failed before it, and
//! leaves rpcbind reachable under every name it advertises.

use std::io;
use std::path::Path;

use super::*;
use crate::config::NAT_KEEPER_TABLE;
use crate::host::netfilter;

/// Points /run/rpcbind.sock (`public`) back at rpcbind's live socket, known
/// as `upstream`, in one step; nothing to do when it names it already, or
/// when rpcbind took that path itself (restarted with no unix socket passed
/// by systemd, it binds its own there).
pub(super) fn hand_back(upstream: &Path, public: &Path) -> Result<(), String> {
    if same_file(public, upstream) || rpcbind_listens(public) {
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

/// Removes the NAT keeper the daemon made in transparent mode (it outlives
/// the daemon, see ARCHITECTURE.md, "The order of a death"), and says so
/// when there was one.
pub(super) fn remove_nat_keeper() -> Result<(), String> {
    match netfilter::delete_table(NAT_KEEPER_TABLE) {
        Ok(true) => {
            println!("removed nftables table inet {NAT_KEEPER_TABLE}");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(format!(
            "cannot remove nftables table inet {NAT_KEEPER_TABLE}: {e}"
        )),
    }
}

pub(super) fn disable() -> Result<(), String> {
    preconditions("disable")?;
    let files = drop_ins(
        Path::new(UNIT_DIR),
        "",
        &Derived::default(),
        &EnableArgs::default(),
    );
    let upstream = Path::new(UPSTREAM_SOCKET);
    let public = Path::new(DEFAULT_RPCBIND_SOCKET);
    let any_drop_in = files.iter().any(|(p, _)| p.exists());
    let handed_back = !upstream.exists();
    if !any_drop_in && handed_back {
        // A keeper left by an earlier, partly failed `disable` goes too.
        remove_nat_keeper()?;
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
    // The proxy's socket unit holds rpcbind's abstract name, which its
    // units set: rpcbind gets it back when rpcbind.socket restarts, once the
    // proxy let go of it (step 4).
    let abstract_name = std::fs::read_to_string(&files[1].0).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("ListenStream=@"))
            .map(|name| format!("@{}", name.replace("%t", "/run")))
    });
    let took_abstract = abstract_name.is_some();
    let rebind_now = failed.is_empty() && upstream.exists() && bound_at_upstream(public);
    // 2. rpcbind's socket bound at /run/rpcbind.sock again, if
    //    rpcbind.socket bound it at the upstream path (it started while
    //    transparent mode was on: after a reboot, say). Otherwise every
    //    later restart of rpcbind would be passed a socket bound there and
    //    name that path, gone by then, in its own `local` entries. Done
    //    while the daemon still redirects TCP/UDP clients (they wait for
    //    rpcbind), unless rpcbind must get its abstract name back too.
    if rebind_now && !took_abstract {
        match rebind(upstream, public, &files[0].0) {
            Ok(()) => println!(
                "restarted rpcbind.socket and rpcbind.service: rpcbind's socket is bound at {DEFAULT_RPCBIND_SOCKET} again"
            ),
            Err(e) => failed.push(format!(
                "step 2 (bind rpcbind's socket at {DEFAULT_RPCBIND_SOCKET} again) failed: {e}"
            )),
        }
    }
    // 3. The NAT keeper goes first, while the daemon's own table still
    //    keeps NAT on; then the daemon and its socket unit stop, and with
    //    its table the kernel's NAT and conntrack hooks go (unless others
    //    use them). Removed after the stop, the keeper would leave the
    //    flows redirected earlier bound to port 1111, where nothing listens
    //    any more: a root client's UDP lookup from a reserved port it used
    //    before (same flow) was refused (11 in one e2e run).
    let keeper = remove_nat_keeper();
    if let Err(e) = stop_proxy() {
        failed.push(format!("step 3 (stop rpcbind-proxy) failed: {e}"));
    }
    if let Err(e) = keeper {
        failed.push(format!("step 3 (remove the NAT keeper) failed: {e}"));
    }
    // 4. The units as they were, reloaded while /run/rpcbind.sock and the
    //    upstream path still name the same socket: systemd then matches the
    //    descriptor it holds for rpcbind to the path its units name again
    //    (by the file both names share). Reloaded after the upstream name
    //    is gone, a descriptor bound there would match nothing and be
    //    closed: rpcbind, restarted, would then be passed no unix socket and
    //    bind /run/rpcbind.sock itself, also after the next `enable`.
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
    if let Err(e) = systemctl(&["daemon-reload"]) {
        failed.push(format!("step 4 (systemctl daemon-reload) failed: {e}"));
    }
    if took_abstract {
        match restart_rpcbind() {
            Ok(()) => println!(
                "restarted rpcbind.socket and rpcbind.service: rpcbind listens on its abstract name and {DEFAULT_RPCBIND_SOCKET} again"
            ),
            Err(e) => failed.push(format!(
                "step 4 (give rpcbind its abstract name back: restart rpcbind.socket) failed: {e}"
            )),
        }
    }
    // 5. rpcbind's second name, which `enable` made, or its own path if it
    //    restarted meanwhile (/run/rpcbind.sock names the same socket now,
    //    or rpcbind bound that path itself): removed once rpcbind
    //    advertises it no more.
    if upstream.exists() && (same_file(public, upstream) || rpcbind_listens(public)) {
        // rpcbind names its abstract name in its `local` entries when it
        // has one, its path otherwise.
        let own = abstract_name.as_deref().unwrap_or(DEFAULT_RPCBIND_SOCKET);
        if let Err(e) = release_upstream_name(public, own) {
            failed.push(format!("step 5 (remove {UPSTREAM_SOCKET}) failed: {e}"));
        }
    }
    // 6. The proxy on its defaults.
    let _ = systemctl(&[
        "reset-failed",
        "rpcbind-proxy.socket",
        "rpcbind-proxy.service",
    ]);
    if let Err(e) = systemctl(&["start", "rpcbind-proxy.socket", "rpcbind-proxy.service"]) {
        failed.push(format!(
            "step 6 (start rpcbind-proxy on its defaults) failed: {e}"
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

/// Whether rpcbind's socket, which `public` names, was bound at the upstream
/// path.
fn bound_at_upstream(public: &Path) -> bool {
    matches!(bound_name(public), Some(sockdiag::UnixName::Path(p)) if p == Path::new(UPSTREAM_SOCKET))
}

/// Restarts rpcbind.socket with its own units (its drop-in, `drop_in`,
/// removed and the units reloaded first: systemd matches the descriptor it
/// holds to /run/rpcbind.sock by the file both names share), so that it
/// binds /run/rpcbind.sock itself; rpcbind restarts with it (its warm start
/// keeps its registrations). The daemon still redirects TCP/UDP clients
/// meanwhile and waits for rpcbind: `upstream` names the new socket as soon
/// as it is bound. Unix clients see rpcbind's socket closed for the
/// restart (as with any `systemctl restart rpcbind.socket`).
fn rebind(upstream: &Path, public: &Path, drop_in: &Path) -> Result<(), String> {
    match std::fs::remove_file(drop_in) {
        Ok(()) => println!("removed {}", drop_in.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", drop_in.display())),
    }
    systemctl(&["daemon-reload"])?;
    restart_rpcbind()?;
    link_socket(public, upstream)
}

/// Removes /run/rpcbind/upstream.sock, rpcbind's second name, now that
/// `public` reaches rpcbind too. An rpcbind started while transparent mode
/// was on names the upstream path in its own `local` entries (program
/// 100000, versions 3 and 4): they are re-registered under `public` first,
/// so every address rpcbind advertises keeps working. A name rpcbind still
/// advertises is kept (it goes away when rpcbind restarts).
pub(super) fn release_upstream_name(public: &Path, to: &str) -> Result<(), String> {
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
