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
            !handed_back
                && listens_on_public
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
    if let Some(why) = &list.stale {
        println!("  {why}");
    }
    ExitCode::from(match verdict {
        Verdict::On => 0,
        Verdict::Off => 3,
        Verdict::PartlyOn => 1,
    })
}
