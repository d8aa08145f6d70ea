//! rpcbind.socket's drop-in in transparent mode, derived from the units
//! systemd loads for rpcbind.socket rather than fixed text: an empty
//! `ListenStream=` is the only way to take one listener out of a socket
//! unit, and it empties the whole list, so the drop-in repeats every
//! listener the unit and the administrator's drop-ins set, in their order
//! and with their kind, and replaces only rpcbind's unix path. Addresses
//! (a loopback-only port 111, say), extra listeners and the abstract name
//! stay exactly as they were; values are copied as written (systemd expands
//! specifiers in a drop-in for the unit it belongs to, so they mean the
//! same there).

/// The settings that add a listener to a socket unit (systemd.socket(5));
/// an empty value of any of them empties the list.
const LISTEN_KEYS: [&str; 8] = [
    "ListenStream",
    "ListenDatagram",
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
];

/// rpcbind's unix path as a unit may spell it (systemd reads /var/run as
/// /run; `%t` is the system manager's /run).
const RPCBIND_PATHS: [&str; 3] = [
    "/run/rpcbind.sock",
    "/var/run/rpcbind.sock",
    "%t/rpcbind.sock",
];

/// rpcbind's abstract name, as a unit may spell it: libtirpc >= 1.3.4 and
/// the kernel's own rpcbind client (Linux >= 6.5) try it before the path.
/// In transparent mode the proxy's socket unit takes it over.
const RPCBIND_ABSTRACT: [&str; 3] = [
    "@/run/rpcbind.sock",
    "@/var/run/rpcbind.sock",
    "@%t/rpcbind.sock",
];

/// One listener of a socket unit: its setting and its value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listener {
    pub(super) key: &'static str,
    pub(super) value: String,
}

/// A unit file or drop-in as systemd lists it for the unit: its path and
/// its text.
pub(super) struct UnitFile {
    pub(super) path: String,
    pub(super) text: String,
}

impl UnitFile {
    fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The listeners `files` set (the unit first, then its drop-ins in
/// systemd's order), leaving out the drop-in named `ours` (the proxy's
/// own, from an earlier `enable`). A drop-in that sorts after `ours` and
/// sets listeners is refused: systemd would apply it after the proxy's
/// drop-in. An unknown `Listen...` setting or a line that is no setting in
/// a `[Socket]` section is refused too, with one line naming it.
pub(super) fn listeners(files: &[UnitFile], ours: &str) -> Result<Vec<Listener>, String> {
    let mut list = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 && file.name() == ours {
            continue;
        }
        let mut set_any = false;
        let mut section = String::new();
        for line in logical_lines(&file.text) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            if section != "Socket" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!(
                    "{}: a line of [Socket] that is no setting: `{line}`",
                    file.path
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(key) = LISTEN_KEYS.iter().find(|k| **k == key) else {
                if key.starts_with("Listen") {
                    return Err(format!("{}: unknown listener setting `{line}`", file.path));
                }
                continue;
            };
            set_any = true;
            if value.is_empty() {
                list.clear();
            } else {
                list.push(Listener {
                    key,
                    value: value.to_owned(),
                });
            }
        }
        if set_any && i > 0 && file.name() > ours {
            return Err(format!(
                "{} sets rpcbind.socket's listeners after rpcbind-proxy's drop-in {ours} would: rename it to sort before {ours}",
                file.path
            ));
        }
    }
    Ok(list)
}

/// The drop-in's `Listen...` lines for `listeners`: a reset, then each
/// listener in order, rpcbind's unix path replaced by `upstream` and its
/// abstract name left out (see [`abstract_name`]). Without a unix path in
/// the list, rpcbind would bind /run/rpcbind.sock itself when it starts, so
/// `upstream` comes first then.
pub(super) fn listen_lines(listeners: &[Listener], upstream: &str) -> String {
    let is_path =
        |l: &Listener| l.key == "ListenStream" && RPCBIND_PATHS.contains(&l.value.as_str());
    let mut lines = vec!["ListenStream=".to_owned()];
    if !listeners.iter().any(is_path) {
        lines.push(format!("ListenStream={upstream}"));
    }
    for l in listeners.iter().filter(|l| !is_abstract(l)) {
        let value = if is_path(l) { upstream } else { &l.value };
        lines.push(format!("{}={value}", l.key));
    }
    lines.join("\n")
}

fn is_abstract(l: &Listener) -> bool {
    l.key == "ListenStream" && RPCBIND_ABSTRACT.contains(&l.value.as_str())
}

/// rpcbind's abstract name, as its units set it, if they do: in
/// transparent mode the proxy's socket unit listens there instead (a
/// client that finds it goes no further), and rpcbind does not.
pub(super) fn abstract_name(listeners: &[Listener]) -> Option<&str> {
    listeners
        .iter()
        .find(|l| is_abstract(l))
        .map(|l| l.value.as_str())
}

/// `text`'s setting and section lines, as systemd's parser sees them:
/// trimmed, comments and blank lines left out, a line ending in `\`
/// joined to the next (comment lines inside such a line are skipped).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if pending.is_none() && line.is_empty() {
            continue;
        }
        let (part, continues) = match line.strip_suffix('\\') {
            Some(p) => (p, true),
            None => (line, false),
        };
        let joined = match pending.take() {
            Some(mut acc) => {
                acc.push(' ');
                acc.push_str(part);
                acc
            }
            None => part.to_owned(),
        };
        if continues {
            pending = Some(joined);
        } else {
            out.push(joined.trim().to_owned());
        }
    }
    if let Some(acc) = pending {
        out.push(acc.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "50-rpcbind-proxy-intercept.conf";
    const UP: &str = "/run/rpcbind/upstream.sock";
    /// Debian's rpcbind.socket (11, 12 and 13 alike).
    const DEBIAN: &str = "[Unit]\nDescription=RPCbind Server Activation Socket\n\
        DefaultDependencies=no\nWants=rpcbind.target\nBefore=rpcbind.target\n\n\
        [Socket]\nListenStream=/run/rpcbind.sock\n\n\
        # RPC netconfig can't handle ipv6/ipv4 dual sockets\nBindIPv6Only=ipv6-only\n\
        ListenStream=0.0.0.0:111\nListenDatagram=0.0.0.0:111\n\
        ListenStream=[::]:111\nListenDatagram=[::]:111\n\n\
        [Install]\nWantedBy=sockets.target\n";

    fn file(path: &str, text: &str) -> UnitFile {
        UnitFile {
            path: path.into(),
            text: text.into(),
        }
    }
    fn derive(files: &[UnitFile]) -> Result<Vec<String>, String> {
        let l = listeners(files, OURS)?;
        Ok(listen_lines(&l, UP).lines().map(str::to_owned).collect())
    }
    const UNIT: &str = "/lib/systemd/system/rpcbind.socket";
    const DIR: &str = "/etc/systemd/system/rpcbind.socket.d/";

    #[test]
    fn debian_s_unit_keeps_every_listener_but_the_unix_path() {
        assert_eq!(
            derive(&[file(UNIT, DEBIAN)]).unwrap(),
            [
                "ListenStream=",
                "ListenStream=/run/rpcbind/upstream.sock",
                "ListenStream=0.0.0.0:111",
                "ListenDatagram=0.0.0.0:111",
                "ListenStream=[::]:111",
                "ListenDatagram=[::]:111",
            ]
        );
    }

    #[test]
    fn an_administrator_s_loopback_only_list_stays_loopback_only() {
        let admin = "[Socket]\nListenStream=\nListenStream=/run/rpcbind.sock\n\
            ListenStream=127.0.0.1:111\nListenDatagram=127.0.0.1:111\n";
        let files = [
            file(UNIT, DEBIAN),
            file(&format!("{DIR}10-loopback.conf"), admin),
        ];
        assert_eq!(
            derive(&files).unwrap(),
            [
                "ListenStream=",
                "ListenStream=/run/rpcbind/upstream.sock",
                "ListenStream=127.0.0.1:111",
                "ListenDatagram=127.0.0.1:111",
            ]
        );
        // The proxy's own drop-in from an earlier enable is left out: the
        // same lines come out again.
        let ours = format!(
            "[Socket]\n{}\n",
            listen_lines(&listeners(&files, OURS).unwrap(), UP)
        );
        let with_ours = [
            file(UNIT, DEBIAN),
            file(&format!("{DIR}10-loopback.conf"), admin),
            file(&format!("{DIR}{OURS}"), &ours),
        ];
        assert_eq!(derive(&with_ours).unwrap(), derive(&files).unwrap());
    }

    #[test]
    fn extra_listeners_stay_in_order_and_the_abstract_name_goes_to_the_proxy() {
        let extra = "[Socket]\n# a second address\nListenStream=192.0.2.1:111\n\
            ListenSequentialPacket=@/run/other.sock\nListenStream=@/run/rpcbind.sock\n";
        let files = [
            file(UNIT, DEBIAN),
            file(&format!("{DIR}20-extra.conf"), extra),
        ];
        let lines = derive(&files).unwrap();
        assert_eq!(
            lines[6..],
            [
                "ListenStream=192.0.2.1:111",
                "ListenSequentialPacket=@/run/other.sock",
            ]
        );
        assert_eq!(lines[1], "ListenStream=/run/rpcbind/upstream.sock");
        let all = listeners(&files, OURS).unwrap();
        assert_eq!(abstract_name(&all), Some("@/run/rpcbind.sock"));
        assert_eq!(abstract_name(&all[..6]), None);
    }

    #[test]
    fn the_unix_path_however_spelled_is_moved_and_added_when_missing() {
        let unit = "[Socket]\nListenStream=%t/rpcbind.sock\nListenDatagram=/run/rpcbind.sock\n";
        assert_eq!(
            derive(&[file(UNIT, unit)]).unwrap(),
            [
                "ListenStream=",
                "ListenStream=/run/rpcbind/upstream.sock",
                "ListenDatagram=/run/rpcbind.sock",
            ]
        );
        // Without a unix socket from systemd rpcbind binds /run/rpcbind.sock
        // itself: the upstream path comes first.
        let tcp_only = "[Socket]\nListenStream=127.0.0.1:111\n";
        assert_eq!(
            derive(&[file(UNIT, tcp_only)]).unwrap(),
            [
                "ListenStream=",
                "ListenStream=/run/rpcbind/upstream.sock",
                "ListenStream=127.0.0.1:111",
            ]
        );
    }

    #[test]
    fn sections_comments_and_continued_lines_are_read_as_systemd_reads_them() {
        let unit = "[Unit]\nListenBogus=not in [Socket]\n[Socket]\n; comment\n\
            ListenStream = 127.0.0.1:111\nListenDatagram=\\\n  127.0.0.1:111\n\
            [Install]\nWantedBy=sockets.target\n";
        assert_eq!(
            derive(&[file(UNIT, unit)]).unwrap()[2..],
            ["ListenStream=127.0.0.1:111", "ListenDatagram=127.0.0.1:111"]
        );
    }

    #[test]
    fn an_unknown_or_invalid_line_is_refused_naming_it() {
        let bogus = "[Socket]\nListenStreem=127.0.0.1:111\n";
        let path = format!("{DIR}10-typo.conf");
        let err = derive(&[file(UNIT, DEBIAN), file(&path, bogus)]).unwrap_err();
        assert_eq!(
            err,
            format!("{path}: unknown listener setting `ListenStreem=127.0.0.1:111`")
        );
        assert!(!err.contains('\n'));
        let err = derive(&[file(UNIT, "[Socket]\nListenStream\n")]).unwrap_err();
        assert_eq!(
            err,
            format!("{UNIT}: a line of [Socket] that is no setting: `ListenStream`")
        );
    }

    #[test]
    fn a_drop_in_applied_after_the_proxy_s_is_refused() {
        let later = format!("{DIR}60-late.conf");
        let err = derive(&[
            file(UNIT, DEBIAN),
            file(&later, "[Socket]\nListenStream=127.0.0.1:111\n"),
        ])
        .unwrap_err();
        assert!(err.starts_with(&format!("{later} sets rpcbind.socket's listeners after")));
        // One that sets something else is no concern.
        assert!(derive(&[file(UNIT, DEBIAN), file(&later, "[Socket]\nBacklog=64\n")]).is_ok());
    }
}
