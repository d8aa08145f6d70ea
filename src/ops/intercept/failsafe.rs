//! The unix fail-safe: `intercept fail-open` and `intercept reclaim`.
//!
//! With transparent mode on, /run/rpcbind.sock is the proxy's (systemd's
//! rpcbind-proxy.socket holds it). When the daemon dies, the kernel removes
//! its nftables table and TCP/UDP clients reach rpcbind at once; but the
//! unix path stays the proxy's socket, where clients queue until a restart
//! succeeds, and are refused once systemd gives up (start limit). So the
//! service drop-in runs `fail-open` after every stop: on any stop that was
//! not clean ($SERVICE_RESULT other than `success`) it gives the path to
//! rpcbind's live socket in one rename, first keeping a second name for the
//! proxy's own socket (`PARKED`), which systemd still holds; and `reclaim`
//! once the daemon is ready again, which points the path back at that very
//! socket. A second failure in a row (the daemon never became ready since
//! the first) stops the socket unit: the connections queued on it are closed
//! at once instead of waiting through systemd's further attempts, and
//! nothing restarts the daemon until someone does.
//!
//! Without systemd (a daemon started by hand binds the path itself),
//! `fail-open` run when the daemon exits is the same hand-back.

use std::io;
use std::path::Path;

use super::*;

/// A second name of rpcbind-proxy's own socket (the one systemd holds for
/// it at /run/rpcbind.sock) while `fail-open` has given that path to
/// rpcbind: `reclaim` links it back. Beside the upstream path, not in
/// /run/rpcbind-proxy: the service's commands run in its mount namespace
/// (systemd 252 too for `+` commands), where the runtime directory is a
/// mount of its own, and a hard link or rename across mounts fails (EXDEV)
/// even within one tmpfs.
pub(super) const PARKED: &str = "/run/rpcbind/parked-proxy.sock";

/// The names `fail-open` and `reclaim` decide from, as seen on the host.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Names {
    /// /run/rpcbind/upstream.sock exists: transparent mode is on, at least
    /// in part.
    pub(super) upstream_exists: bool,
    /// Something listens at /run/rpcbind/upstream.sock (rpcbind).
    pub(super) upstream_listening: bool,
    /// /run/rpcbind.sock is the same file as the upstream path: rpcbind's.
    pub(super) public_is_rpcbind: bool,
    /// Something listens at /run/rpcbind.sock.
    pub(super) public_listening: bool,
    pub(super) parked_exists: bool,
    /// Something listens at the parked name: systemd still holds the
    /// proxy's socket it names.
    pub(super) parked_listening: bool,
}

impl Names {
    fn look(public: &Path, upstream: &Path, parked: &Path) -> Names {
        Names {
            upstream_exists: upstream.exists(),
            upstream_listening: listening(upstream),
            public_is_rpcbind: same_file(public, upstream),
            public_listening: listening(public),
            parked_exists: std::fs::symlink_metadata(parked).is_ok(),
            parked_listening: listening(parked),
        }
    }
}

/// Whether a listening socket is bound at `path`. The connect does not wait:
/// a full backlog (clients queued on a socket whose daemon is down) counts
/// as listening, a stale socket file refuses.
fn listening(path: &Path) -> bool {
    match mio::net::UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// What `fail-open` does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FailOpen {
    /// Nothing; the line to print.
    Nothing(&'static str),
    /// Give /run/rpcbind.sock to rpcbind; first keep a second name of the
    /// socket there if `park` (it is the proxy's, still held by systemd).
    HandBack { park: bool },
    /// Already rpcbind's, and the daemon failed again without becoming
    /// ready: stop rpcbind-proxy.socket.
    StopSocket,
    /// Cannot hand back; why.
    Refuse(String),
}

/// `result`: $SERVICE_RESULT (`None` when run by hand or empty).
pub(super) fn decide_fail_open(result: Option<&str>, names: Names) -> FailOpen {
    if !names.upstream_exists {
        return FailOpen::Nothing("transparent mode is off: nothing to hand back");
    }
    if result == Some("success") {
        return FailOpen::Nothing(
            "rpcbind-proxy stopped cleanly: /run/rpcbind.sock stays with its socket unit",
        );
    }
    if names.public_is_rpcbind {
        // Parked: this fail-safe handed the path back after an earlier
        // failure, and `reclaim` has not run since: the daemon failed again
        // before it was ready.
        if result.is_some() && names.parked_exists {
            return FailOpen::StopSocket;
        }
        return FailOpen::Nothing("/run/rpcbind.sock is rpcbind's already");
    }
    if !names.upstream_listening {
        return FailOpen::Refuse(format!(
            "rpcbind does not answer on {UPSTREAM_SOCKET}, so {DEFAULT_RPCBIND_SOCKET} is not handed to it: start rpcbind (systemctl start rpcbind), then run `rpcbind-proxy intercept fail-open` again"
        ));
    }
    FailOpen::HandBack {
        park: names.public_listening,
    }
}

/// What `reclaim` does.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reclaim {
    /// Nothing; the line to print.
    Nothing(&'static str),
    /// Link the parked socket over /run/rpcbind.sock, then drop the parked
    /// name.
    Relink,
    /// Drop the parked name: it names no live socket (the socket unit bound
    /// /run/rpcbind.sock anew since), or transparent mode is off.
    Forget,
}

pub(super) fn decide_reclaim(names: Names) -> Reclaim {
    if !names.parked_exists {
        return Reclaim::Nothing("/run/rpcbind.sock was not handed back: nothing to take back");
    }
    if names.upstream_exists && names.parked_listening {
        Reclaim::Relink
    } else {
        Reclaim::Forget
    }
}

/// `intercept fail-open`: after the daemon stopped, hands /run/rpcbind.sock
/// to rpcbind unless it stopped cleanly.
pub(super) fn fail_open() -> Result<(), String> {
    root("fail-open")?;
    let result = std::env::var("SERVICE_RESULT")
        .ok()
        .filter(|r| !r.is_empty());
    let (public, upstream, parked) = paths();
    match decide_fail_open(result.as_deref(), Names::look(public, upstream, parked)) {
        FailOpen::Nothing(line) => println!("{line}"),
        FailOpen::Refuse(why) => return Err(why),
        FailOpen::HandBack { park } => {
            if park {
                link_socket(public, parked)?;
            }
            super::disable::hand_back(upstream, public)?;
            let why = result.map_or_else(String::new, |r| format!(" ({r})"));
            println!(
                "fail-safe: {DEFAULT_RPCBIND_SOCKET} handed back to rpcbind while rpcbind-proxy is down{why}"
            );
        }
        FailOpen::StopSocket => {
            // --no-block: this runs inside the service's own stop, which a
            // waiting stop of the unit it requires would wait for in turn.
            systemctl(&["stop", "--no-block", "rpcbind-proxy.socket"])?;
            // With the socket unit, port 1111 closes: the NAT keeper would
            // still send flows redirected earlier there (a root client's UDP
            // lookups reuse their reserved source ports: the same flow), to
            // be refused. Without it they reach rpcbind; the daemon makes
            // the keeper again when it starts.
            super::disable::remove_nat_keeper()?;
            println!(
                "fail-safe: rpcbind-proxy failed again before it was ready: rpcbind-proxy.socket stopped (connections queued on it closed, no more restarts); {DEFAULT_RPCBIND_SOCKET} stays rpcbind's; fix the cause (journalctl -u rpcbind-proxy), then systemctl start rpcbind-proxy"
            );
        }
    }
    Ok(())
}

/// `intercept reclaim`: once the daemon is ready, /run/rpcbind.sock is its
/// socket again.
pub(super) fn reclaim() -> Result<(), String> {
    root("reclaim")?;
    let (public, upstream, parked) = paths();
    match decide_reclaim(Names::look(public, upstream, parked)) {
        Reclaim::Nothing(line) => println!("{line}"),
        Reclaim::Relink => {
            link_socket(parked, public)?;
            forget_parked()?;
            println!("{DEFAULT_RPCBIND_SOCKET} is rpcbind-proxy's again");
        }
        Reclaim::Forget => {
            forget_parked()?;
            println!("{PARKED} named no live socket: removed");
        }
    }
    Ok(())
}

/// Removes the parked name, if any (`disable`, `reclaim`).
pub(super) fn forget_parked() -> Result<(), String> {
    match std::fs::remove_file(PARKED) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot remove {PARKED}: {e}"))
        }
        _ => Ok(()),
    }
}

/// Whether the fail-safe holds /run/rpcbind.sock for rpcbind now.
pub(super) fn handed_back() -> bool {
    let (public, upstream, parked) = paths();
    std::fs::symlink_metadata(parked).is_ok() && same_file(public, upstream)
}

fn paths() -> (&'static Path, &'static Path, &'static Path) {
    (
        Path::new(DEFAULT_RPCBIND_SOCKET),
        Path::new(UPSTREAM_SOCKET),
        Path::new(PARKED),
    )
}

/// Root, or one line saying so. No systemd needed: by hand, `fail-open` is
/// the fail-safe of a daemon started without it.
fn root(what: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return Err(format!(
            "intercept {what} changes {DEFAULT_RPCBIND_SOCKET} and needs root"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transparent mode on, the proxy's socket at /run/rpcbind.sock, the
    /// daemon just gone.
    fn on() -> Names {
        Names {
            upstream_exists: true,
            upstream_listening: true,
            public_is_rpcbind: false,
            public_listening: true,
            parked_exists: false,
            parked_listening: false,
        }
    }

    #[test]
    fn every_unclean_stop_hands_the_path_back_and_parks_the_proxys_socket() {
        for result in [
            "exit-code",
            "signal",
            "core-dump",
            "watchdog",
            "timeout",
            "oom-kill",
            "protocol",
            "resources",
        ] {
            assert_eq!(
                decide_fail_open(Some(result), on()),
                FailOpen::HandBack { park: true },
                "{result}"
            );
        }
        // By hand (no SERVICE_RESULT): the daemon is down, whatever ended it.
        assert_eq!(
            decide_fail_open(None, on()),
            FailOpen::HandBack { park: true }
        );
    }

    #[test]
    fn a_clean_stop_or_transparent_mode_off_changes_nothing() {
        assert!(matches!(
            decide_fail_open(Some("success"), on()),
            FailOpen::Nothing(_)
        ));
        let off = Names {
            upstream_exists: false,
            upstream_listening: false,
            ..on()
        };
        for result in [None, Some("signal"), Some("success")] {
            assert!(matches!(
                decide_fail_open(result, off),
                FailOpen::Nothing(_)
            ));
        }
    }

    #[test]
    fn a_dead_socket_file_is_replaced_without_parking() {
        // Started by hand, the daemon's own socket file died with it (or it
        // removed it): nothing holds a socket worth keeping.
        let dead = Names {
            public_listening: false,
            ..on()
        };
        assert_eq!(
            decide_fail_open(None, dead),
            FailOpen::HandBack { park: false }
        );
    }

    #[test]
    fn a_second_failure_before_the_daemon_was_ready_stops_the_socket_unit() {
        let handed_back = Names {
            public_is_rpcbind: true,
            parked_exists: true,
            parked_listening: true,
            ..on()
        };
        assert_eq!(
            decide_fail_open(Some("exit-code"), handed_back),
            FailOpen::StopSocket
        );
        // By hand: the hand-back is done, nothing more.
        assert!(matches!(
            decide_fail_open(None, handed_back),
            FailOpen::Nothing(_)
        ));
        // rpcbind's without a parked name (`enable` or `disable` midway):
        // not this fail-safe's doing, left alone.
        let unparked = Names {
            parked_exists: false,
            ..handed_back
        };
        assert!(matches!(
            decide_fail_open(Some("exit-code"), unparked),
            FailOpen::Nothing(_)
        ));
    }

    #[test]
    fn no_hand_back_to_an_rpcbind_that_does_not_answer() {
        let down = Names {
            upstream_listening: false,
            ..on()
        };
        let FailOpen::Refuse(line) = decide_fail_open(Some("signal"), down) else {
            panic!("handed back to a dead rpcbind");
        };
        assert!(line.contains("rpcbind does not answer on /run/rpcbind/upstream.sock"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn reclaim_relinks_a_live_parked_socket_and_drops_a_dead_one() {
        let parked = Names {
            public_is_rpcbind: true,
            parked_exists: true,
            parked_listening: true,
            ..on()
        };
        assert_eq!(decide_reclaim(parked), Reclaim::Relink);
        // The socket unit restarted and bound /run/rpcbind.sock itself.
        let rebound = Names {
            public_is_rpcbind: false,
            parked_listening: false,
            ..parked
        };
        assert_eq!(decide_reclaim(rebound), Reclaim::Forget);
        let off = Names {
            upstream_exists: false,
            ..parked
        };
        assert_eq!(decide_reclaim(off), Reclaim::Forget);
        assert!(matches!(decide_reclaim(on()), Reclaim::Nothing(_)));
    }

    #[test]
    fn names_are_read_from_the_sockets_themselves() {
        let dir = std::env::temp_dir().join(format!("rbp-failsafe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (public, upstream, parked) =
            (dir.join("public"), dir.join("upstream"), dir.join("parked"));
        let _rpcbind = std::os::unix::net::UnixListener::bind(&upstream).unwrap();
        let proxy = std::os::unix::net::UnixListener::bind(&public).unwrap();
        let n = Names::look(&public, &upstream, &parked);
        assert!(n.upstream_exists && n.upstream_listening && n.public_listening);
        assert!(!n.public_is_rpcbind && !n.parked_exists && !n.parked_listening);
        // fail-open's two steps, then the proxy's socket closes: the parked
        // name is a dead file.
        link_socket(&public, &parked).unwrap();
        link_socket(&upstream, &public).unwrap();
        let n = Names::look(&public, &upstream, &parked);
        assert!(n.public_is_rpcbind && n.parked_exists && n.parked_listening);
        drop(proxy);
        let n = Names::look(&public, &upstream, &parked);
        assert!(n.parked_exists && !n.parked_listening);
        assert_eq!(decide_reclaim(n), Reclaim::Forget);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
