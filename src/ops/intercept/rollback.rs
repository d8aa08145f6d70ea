//! What `intercept enable` changed, recorded as it makes each change, and
//! undone in reverse order when a later step fails, so that a failed
//! `enable` leaves the host as it found it: the drop-ins as they were (none,
//! or an earlier `enable`'s), the units loaded from them, rpcbind's socket
//! at /run/rpcbind.sock, no name of the proxy's in /run, and the proxy's
//! units running again if they ran before.

use std::path::{Path, PathBuf};

use super::disable::{hand_back, release_upstream_name, remove_nat_keeper, stop_proxy};
use super::{restart_rpcbind, same_file, systemctl, PROXY_UNITS, UPSTREAM_SOCKET};
use crate::config::DEFAULT_RPCBIND_SOCKET;

/// One change `enable` made.
enum Change {
    /// The second name of rpcbind's live socket at the upstream path, and
    /// its directory if `enable` made it.
    Linked { made_dir: Option<PathBuf> },
    /// A drop-in written over `before` (`None`: there was none), in a
    /// directory `enable` made if `made_dir`.
    Wrote {
        path: PathBuf,
        before: Option<String>,
        made_dir: bool,
    },
    /// systemd reloaded the units.
    Reloaded,
    /// The daemon started in transparent mode, which makes the NAT keeper
    /// table, where there was none.
    NatKeeper,
    /// The proxy's units restarted; `ran`: those active before.
    Restarted { ran: Vec<&'static str> },
    /// rpcbind.socket and rpcbind.service restarted on the upstream path.
    RestartedRpcbind,
}

/// The changes made so far, oldest first.
#[derive(Default)]
pub(super) struct Changes(Vec<Change>);

impl Changes {
    /// Before the upstream name is made.
    pub(super) fn linking(&mut self, link: &Path) {
        let dir = link.parent().filter(|d| !d.exists());
        let made_dir = dir.map(Path::to_path_buf);
        self.0.push(Change::Linked { made_dir });
    }

    /// Before `path` is written.
    pub(super) fn writing(&mut self, path: &Path) {
        let before = std::fs::read_to_string(path).ok();
        let made_dir = path.parent().is_some_and(|d| !d.exists());
        self.0.push(Change::Wrote {
            path: path.to_owned(),
            before,
            made_dir,
        });
    }

    /// Before `systemctl daemon-reload`.
    pub(super) fn reloading(&mut self) {
        self.0.push(Change::Reloaded);
    }

    /// Before rpcbind.socket and rpcbind.service are restarted.
    pub(super) fn restarting_rpcbind(&mut self) {
        self.0.push(Change::RestartedRpcbind);
    }

    /// Before the proxy's units are restarted: the daemon they start makes
    /// the NAT keeper, to be removed again if there was none. (A keeper that
    /// cannot be looked up is left alone.)
    pub(super) fn keeping_nat_hooks(&mut self) {
        let table = crate::config::NAT_KEEPER_TABLE;
        if matches!(crate::host::netfilter::table_exists(table), Ok(false)) {
            self.0.push(Change::NatKeeper);
        }
    }

    /// Before the proxy's units are restarted.
    pub(super) fn restarting(&mut self) {
        let ran = PROXY_UNITS
            .into_iter()
            .filter(|unit| systemctl(&["is-active", "--quiet", unit]).is_ok())
            .collect();
        self.0.push(Change::Restarted { ran });
    }

    /// Undoes every change, newest first, after `step` failed with `why`;
    /// returns the line to exit with. Each change that cannot be undone is
    /// one line on stderr naming what is left and how to finish by hand.
    pub(super) fn roll_back(self, step: &str, why: &str) -> String {
        let public = Path::new(DEFAULT_RPCBIND_SOCKET);
        let upstream = Path::new(UPSTREAM_SOCKET);
        let by_hand = "run `rpcbind-proxy intercept disable`";
        let mut left: Vec<String> = Vec::new();
        // The units are reloaded once the drop-ins they read are restored,
        // and those that ran start again once reloaded.
        let mut reload = false;
        let mut start: Vec<&'static str> = Vec::new();
        let mut rpcbind_moved = false;
        for change in self.0.into_iter().rev() {
            match change {
                Change::Restarted { ran } => {
                    // As `disable` does: /run/rpcbind.sock is rpcbind's
                    // again before the proxy stops.
                    if let Err(e) = hand_back(upstream, public) {
                        left.push(format!(
                            "{DEFAULT_RPCBIND_SOCKET} is not rpcbind's socket: {e}"
                        ));
                    }
                    if let Err(e) = stop_proxy() {
                        left.push(format!(
                            "rpcbind-proxy still runs in transparent mode ({e}): {by_hand}"
                        ));
                    }
                    let mut args = vec!["reset-failed"];
                    args.extend(PROXY_UNITS);
                    let _ = systemctl(&args);
                    start = ran;
                }
                Change::RestartedRpcbind => {
                    // rpcbind listens on the upstream path alone now: it
                    // gets its usual name back before the units are
                    // reloaded, so that systemd matches its socket to that
                    // name by the file both share; once the units are as
                    // before, rpcbind.socket restarts again to bind its
                    // own listeners (its path, its abstract name).
                    if let Err(e) = hand_back(upstream, public) {
                        left.push(format!(
                            "{DEFAULT_RPCBIND_SOCKET} is not rpcbind's socket: {e}"
                        ));
                    }
                    rpcbind_moved = true;
                }
                Change::Reloaded => reload = true,
                // Undone before `Restarted` (see `disable`, step 2).
                Change::NatKeeper => {
                    if let Err(e) = remove_nat_keeper() {
                        left.push(format!("{e}: {by_hand}"));
                    }
                }
                Change::Wrote {
                    path,
                    before,
                    made_dir,
                } => {
                    let _ = std::fs::remove_file(path.with_extension("conf.tmp"));
                    let restored = match &before {
                        Some(text) => super::write_file(&path, text),
                        None => match std::fs::remove_file(&path) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                Err(format!("cannot remove {}: {e}", path.display()))
                            }
                            _ => Ok(()),
                        },
                    };
                    match restored {
                        Err(e) => left.push(format!("{e}: {by_hand}")),
                        Ok(()) if made_dir => {
                            if let Some(dir) = path.parent() {
                                let _ = std::fs::remove_dir(dir);
                            }
                        }
                        Ok(()) => {}
                    }
                }
                Change::Linked { made_dir } => {
                    settle(&mut reload, &mut start, &mut left);
                    let released = if same_file(public, upstream) {
                        release_upstream_name(public, DEFAULT_RPCBIND_SOCKET)
                    } else if upstream.exists() {
                        Err(format!(
                            "{UPSTREAM_SOCKET} kept: {DEFAULT_RPCBIND_SOCKET} is not rpcbind's socket"
                        ))
                    } else {
                        Ok(())
                    };
                    match released {
                        Err(e) => left.push(format!("{e}: {by_hand}")),
                        Ok(()) => {
                            if let Some(dir) = made_dir {
                                let _ = std::fs::remove_dir(dir);
                            }
                        }
                    }
                }
            }
        }
        settle(&mut reload, &mut start, &mut left);
        if rpcbind_moved {
            if let Err(e) = restart_rpcbind() {
                left.push(format!(
                    "rpcbind.socket still binds what the proxy's drop-in set ({e}): run `systemctl restart rpcbind.socket rpcbind.service`"
                ));
            }
        }
        let failed = format!(
            "intercept enable failed at {step}: {}",
            why.trim_end_matches('.')
        );
        if left.is_empty() {
            return format!("{failed}; every change it made is rolled back, the host is as before");
        }
        for line in &left {
            eprintln!("rpcbind-proxy: not rolled back: {line}");
        }
        format!("{failed}; rolled back but for what is named above")
    }
}

/// The units reloaded if `reload`, then `start` started; what fails is added
/// to `left`.
fn settle(reload: &mut bool, start: &mut Vec<&'static str>, left: &mut Vec<String>) {
    if std::mem::take(reload) {
        if let Err(e) = systemctl(&["daemon-reload"]) {
            left.push(format!(
                "the units still read the proxy's drop-ins ({e}): run `systemctl daemon-reload`"
            ));
        }
    }
    let units = std::mem::take(start);
    if !units.is_empty() {
        let mut args = vec!["start"];
        args.extend(&units);
        if let Err(e) = systemctl(&args) {
            left.push(format!(
                "{} not running again ({e}): run `systemctl start {}`",
                units.join(" and "),
                units.join(" ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_written_are_restored_and_new_directories_removed() {
        let dir = std::env::temp_dir().join(format!("rbp-rollback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kept = dir.join("rpcbind.socket.d/50.conf");
        std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
        std::fs::write(&kept, "an earlier enable's\n").unwrap();
        let new = dir.join("rpcbind-proxy.socket.d/50.conf");
        let mut done = Changes::default();
        for path in [&kept, &new] {
            done.writing(path);
            super::super::write_file(path, "this enable's\n").unwrap();
        }
        let line = done.roll_back("step 4 (restart)", "Address already in use");
        assert_eq!(
            line,
            "intercept enable failed at step 4 (restart): Address already in use; every change it made is rolled back, the host is as before"
        );
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "an earlier enable's\n"
        );
        assert!(!new.exists() && !new.parent().unwrap().exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
