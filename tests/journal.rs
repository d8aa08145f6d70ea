//! The daemon's lines as journald receives them: the real binary, started
//! as systemd starts it (JOURNAL_STREAM set), sends its entries to a socket
//! this test binds at /run/systemd/journal/socket inside the sandbox's
//! private /run. Each entry's MESSAGE, which plain `journalctl` shows, must
//! carry the line's values, and its PRIORITY the line's level.

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::*;
use tokio::net::UnixDatagram;

/// One entry's fields, parsed as journald parses a native datagram.
type Entry = HashMap<String, String>;

fn parse(datagram: &[u8]) -> Result<Entry, String> {
    let mut fields = Entry::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'=')
            .ok_or("a field without a value")?;
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        let (value, next) = if rest[end] == b'=' {
            let nl = rest.iter().position(|&b| b == b'\n').ok_or("no newline")?;
            (&rest[end + 1..nl], nl + 1)
        } else {
            let len = rest
                .get(end + 1..end + 9)
                .ok_or("no length")?
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| "bad length")?;
            let start = end + 9;
            let stop = start + usize::try_from(len).map_err(|_| "bad length")?;
            if rest.get(stop) != Some(&b'\n') {
                return Err(format!("field {name}: no newline after {len} bytes"));
            }
            (&rest[start..stop], stop + 1)
        };
        fields
            .entry(name)
            .or_insert_with(|| String::from_utf8_lossy(value).into_owned());
        rest = &rest[next..];
    }
    Ok(fields)
}

/// Receives entries until one's MESSAGE starts with `until` (at most 10 s
/// and 1,000 entries).
async fn entries_until(journal: &UnixDatagram, until: &str, got: &mut Vec<Entry>) {
    let mut buf = vec![0u8; 65536];
    for _ in 0..1000 {
        let n = match tokio::time::timeout(Duration::from_secs(10), journal.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            other => panic!("no entry starting {until:?} ({other:?}); got {got:#?}"),
        };
        if n == 0 {
            continue; // the daemon's check that the journal is there
        }
        let entry = parse(&buf[..n]).unwrap_or_else(|e| panic!("bad datagram: {e}"));
        let done = entry.get("MESSAGE").is_some_and(|m| m.starts_with(until));
        got.push(entry);
        if done {
            return;
        }
    }
    panic!("1,000 entries without one starting {until:?}");
}

fn messages<'a>(entries: &'a [Entry], prefix: &str) -> Vec<(&'a str, &'a str)> {
    entries
        .iter()
        .filter_map(|e| Some((e.get("PRIORITY")?.as_str(), e.get("MESSAGE")?.as_str())))
        .filter(|(_, m)| m.starts_with(prefix))
        .collect()
}

/// The soft RLIMIT_NOFILE of `pid`, from /proc/PID/limits.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_owned()
}

#[test]
fn the_journal_shows_the_start_up_lines_with_their_values() {
    run_without_proxy(|mut sb| async move {
        let dir = sb.path("/run/systemd/journal");
        std::fs::create_dir_all(&dir).unwrap();
        let journal = UnixDatagram::bind(dir.join("socket")).unwrap();
        std::fs::set_permissions(dir.join("socket"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let conf = sb.tmp_dir().join("config.toml");
        std::fs::write(&conf, "ttl = 60\n").unwrap();
        sb.start_proxy_with_env(
            &["--config", conf.to_str().unwrap()],
            &[("JOURNAL_STREAM", "8:12345")],
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        entries_until(&journal, "ready", &mut got).await;

        let listening = messages(&got, "listening");
        assert_eq!(
            listening,
            [
                (
                    "5",
                    "listening address=unix:/run/rpcbind-proxy/rpcbind.sock"
                ),
                ("5", "listening address=tcp:127.0.0.1:1111"),
                ("5", "listening address=udp:127.0.0.1:1111"),
            ],
            "{got:#?}"
        );
        let limit = open_files_limit(sb.proxy_pid().unwrap());
        assert_eq!(
            messages(&got, "descriptor limit"),
            [("5", format!("descriptor limit nofile={limit}").as_str())]
        );
        let first = got.iter().find(|e| e.contains_key("MESSAGE")).unwrap();
        assert_eq!(first["SYSLOG_IDENTIFIER"], "rpcbind-proxy");
        let address = got
            .iter()
            .find(|e| e["MESSAGE"].starts_with("listening"))
            .unwrap();
        assert_eq!(
            address.get("F_ADDRESS").map(String::as_str),
            Some("unix:/run/rpcbind-proxy/rpcbind.sock"),
            "the value is a field of its own too"
        );

        // A reload that fails says why, as an error.
        std::fs::write(&conf, "ttl = 60\nttl-typo = 1\n").unwrap();
        sb.signal_proxy(Signal::SIGHUP);
        got.clear();
        entries_until(&journal, "reload failed", &mut got).await;
        let failed = messages(&got, "reload failed");
        assert_eq!(failed.len(), 1, "{got:#?}");
        assert_eq!(failed[0].0, "3", "an error is priority 3");
        assert!(
            failed[0]
                .1
                .starts_with("reload failed; keeping the running configuration error=")
                && failed[0].1.contains("ttl-typo"),
            "{failed:?}"
        );
        assert!(
            sb.proxy_log()
                .lines()
                .all(|l| l.starts_with("=== proxy start")),
            "nothing went to stderr besides the journal:\n{}",
            sb.proxy_log()
        );
    });
}
