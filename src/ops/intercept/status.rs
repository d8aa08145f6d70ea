//! `intercept status` and the checklist `check` shares: each part of
//! transparent mode ticked only when seen on the host.

use std::path::Path;
use std::process::ExitCode;

use super::failsafe;
use super::*;

/// What `intercept status` verifies on the host, each part ticked only
/// when seen: the drop-ins (rpcbind.socket's matching what its units give
/// now), rpcbind on the upstream path, the proxy holding the usual path,
/// the redirect table.
#[derive(Debug)]
pub(crate) struct Checklist {
    pub(crate) parts: Vec<(String, bool)>,
    /// Parts this user cannot see (another user's descriptors: root can);
    /// neither ticked nor counted.
    pub(crate) unknown: Vec<String>,
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
            &listen.clone().unwrap_or_default(),
            &EnableArgs::default(),
        );
        let mut parts: Vec<(String, bool)> = files
            .iter()
            .map(|(p, _)| (format!("drop-in {}", p.display()), p.exists()))
            .collect();
        // rpcbind.socket's drop-in repeats the listeners its units set at
        // `enable` (and the proxy's socket unit takes its abstract name):
        // if they changed since, the drop-ins no longer match.
        let (rpcbind_drop_in, wanted) = &files[0];
        let (proxy_drop_in, proxy_wanted) = &files[1];
        let proxy_matches =
            std::fs::read_to_string(proxy_drop_in).map_or(true, |text| text == *proxy_wanted);
        let stale = match (&listen, std::fs::read_to_string(rpcbind_drop_in)) {
            (Ok(_), Ok(text)) if text == *wanted && proxy_matches => None,
            (Ok(_), Ok(_)) => Some(
                "rpcbind.socket's units changed since `enable`: run `rpcbind-proxy intercept enable` again to derive its drop-in anew".to_owned(),
            ),
            (Err(e), Ok(_)) => Some(format!("cannot derive rpcbind.socket's drop-in: {e}")),
            (_, Err(_)) => None,
        };
        parts[0].1 &= stale.is_none();
        let upstream = Path::new(UPSTREAM_SOCKET);
        let public = Path::new(DEFAULT_RPCBIND_SOCKET);
        parts.push((
            format!("rpcbind answers on {UPSTREAM_SOCKET}"),
            answers_null(upstream),
        ));
        let mut unknown = Vec::new();
        let held = format!(
            "systemd holds rpcbind's socket at {UPSTREAM_SOCKET} (rpcbind keeps that path when restarted)"
        );
        match systemd_holds(upstream) {
            Some(yes) => parts.push((held, yes)),
            None => unknown.push(held),
        }
        let daemon = status_request(control).ok();
        let listens_on_public = daemon.as_ref().is_some_and(|s| {
            s.listeners
                .iter()
                .any(|l| *l == format!("unix:{DEFAULT_RPCBIND_SOCKET}"))
        });
        // Never ticked while the fail-safe has given the path to rpcbind
        // (the daemon may list it: systemd passed it the socket under that
        // name), and then the line says so.
        let handed_back = failsafe::handed_back();
        let holds = format!("rpcbind-proxy holds {DEFAULT_RPCBIND_SOCKET}");
        parts.push((
            if handed_back {
                format!("{holds} (fail-safe: {DEFAULT_RPCBIND_SOCKET} handed back to rpcbind while rpcbind-proxy is down)")
            } else {
                holds
            },
            // Not rpcbind's: the same socket as the upstream path's, or
            // one rpcbind bound there itself.
            !handed_back
                && listens_on_public
                && !same_file(public, upstream)
                && !rpcbind_listens(public),
        ));
        // The abstract name libtirpc >= 1.3.4 and the kernel try first:
        // whoever listens there gets those clients, around the proxy.
        let name = listen
            .as_ref()
            .ok()
            .and_then(|d| d.abstract_name.clone())
            .unwrap_or_else(|| "@/run/rpcbind.sock".into());
        match abstract_holders(&name) {
            None => {} // no one: clients go on to the path
            Some(h) if h.is_empty() => unknown.push(format!("rpcbind-proxy holds {name}")),
            Some(h) if h.iter().any(|c| c == "rpcbind-proxy") => {
                parts.push((format!("rpcbind-proxy holds {name}"), true));
            }
            Some(h) => parts.push((
                format!(
                    "rpcbind-proxy holds {name} (held by {}: clients that try it first bypass the proxy)",
                    h.join(", ")
                ),
                false,
            )),
        }
        parts.push((
            "rpcbind-proxy redirects port 111 (nftables table inet rpcbind_proxy)".into(),
            daemon.is_some_and(|s| s.intercept.active()),
        ));
        Checklist {
            parts,
            unknown,
            stale,
        }
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
pub(super) fn status(control: &Path) -> ExitCode {
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
    for what in &list.unknown {
        println!("  [?] {what}: not visible to this user (run as root)");
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
