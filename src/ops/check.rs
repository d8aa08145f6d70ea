//! `rpcbind-proxy check`: a Nagios/Icinga plugin over the status.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::client::{control_request, parse_status};
use super::intercept::{Checklist, Verdict};
use crate::cli::CheckArgs;
use crate::proxy::logs::human;
use crate::proxy::status::Status;

/// Nagios plugin exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

/// The check's verdict and its one line of output, from the daemon's
/// status (or why there is none).
pub fn check_verdict(status: Result<Status, String>, args: &CheckArgs) -> (CheckState, String) {
    let s = match status {
        Ok(s) => s,
        Err(e) => return (CheckState::Critical, format!("CRITICAL: {e}")),
    };
    let mut state = CheckState::Ok;
    let mut problems = Vec::new();
    let connected = s.upstream.classes.get("unix").is_some_and(|c| c.connected);
    if !connected {
        state = state.max(CheckState::Critical);
        problems.push("rpcbind not connected".to_string());
    }
    let tw = s.time_wait.port_111 as usize;
    if tw >= args.crit_time_wait {
        state = state.max(CheckState::Critical);
        problems.push(format!(
            "{tw} TIME_WAIT on port 111 (>= {})",
            args.crit_time_wait
        ));
    } else if tw >= args.warn_time_wait {
        state = state.max(CheckState::Warning);
        problems.push(format!(
            "{tw} TIME_WAIT on port 111 (>= {})",
            args.warn_time_wait
        ));
    }
    // The ratio of the last few minutes, not of the daemon's whole life,
    // and only once they hold enough lookups to say something.
    let r = &s.cache.recent;
    let (ratio, lookups) = (r.hit_ratio, r.lookups);
    let over = format!(
        "over the last {}",
        human(std::time::Duration::from_secs(r.seconds))
    );
    let judged = lookups > 0 && lookups >= args.min_lookups as u64;
    let ratio_text = if judged {
        format!("hit ratio {:.1}% {over} ({lookups} lookups)", ratio * 100.0)
    } else if lookups == 0 {
        format!("no lookups {over}")
    } else {
        format!(
            "hit ratio not judged: {lookups} lookups {over}, fewer than --min-lookups {}",
            args.min_lookups
        )
    };
    if judged && ratio < args.min_hit_ratio {
        state = state.max(CheckState::Warning);
        problems.push(format!(
            "hit ratio {ratio:.3} below {} {over} ({lookups} lookups)",
            args.min_hit_ratio
        ));
    }
    let label = match state {
        CheckState::Ok => "OK",
        CheckState::Warning => "WARNING",
        CheckState::Critical => "CRITICAL",
        CheckState::Unknown => "UNKNOWN",
    };
    let summary = if problems.is_empty() {
        format!("{ratio_text}, rpcbind connected, {tw} TIME_WAIT on port 111")
    } else {
        problems.join(", ")
    };
    let perf = format!(
        "hit_ratio={ratio:.4};{};;0;1 recent_lookups={lookups} time_wait_111={tw};{};{};0 upstream_connected={} cache_entries={} requests={}c",
        args.min_hit_ratio,
        args.warn_time_wait,
        args.crit_time_wait,
        u8::from(connected),
        s.cache.entries,
        s.requests.total,
    );
    (state, format!("{label}: {summary} | {perf}"))
}

pub fn check(args: CheckArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        println!("UNKNOWN: {e}");
        return ExitCode::from(CheckState::Unknown as u8);
    }
    let path = &args.control.control;
    let (state, line) = check_answer(path, control_request(path, "status"), &args);
    let (state, line) = with_transparent_mode(state, line, &Checklist::now(path));
    println!("{line}");
    ExitCode::from(state as u8)
}

/// Transparent mode partly on (some of its parts in place, not all: a
/// failed `enable`, a unit edited since, the table gone) is a WARNING:
/// some clients then bypass the proxy, or worse, find nothing. Fully on
/// and fully off are both fine.
fn with_transparent_mode(
    state: CheckState,
    line: String,
    list: &Checklist,
) -> (CheckState, String) {
    if list.verdict() != Verdict::PartlyOn || state >= CheckState::Critical {
        return (state, line);
    }
    let missing: Vec<&str> = list.missing().collect();
    let problem = format!(
        "transparent mode partly on (missing: {})",
        missing.join("; ")
    );
    // The line is "LABEL: summary | perf": the label becomes WARNING and
    // the problem leads the summary.
    let (_, rest) = line.split_once(": ").unwrap_or(("", &line));
    (
        CheckState::Warning.max(state),
        format!("WARNING: {problem}, {rest}"),
    )
}

/// The verdict on the daemon's answer: a status this build cannot read
/// (a field missing or renamed) is UNKNOWN, not a 0 judged.
fn check_answer(
    path: &Path,
    answer: Result<Value, String>,
    args: &CheckArgs,
) -> (CheckState, String) {
    match answer.map(|v| parse_status(path, v)) {
        Ok(Err(e)) => (CheckState::Unknown, format!("UNKNOWN: {e}")),
        answer => check_verdict(answer.and_then(std::convert::identity), args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::status::UpstreamClass;

    fn args() -> CheckArgs {
        CheckArgs {
            control: crate::cli::ControlArg {
                control: "/x".into(),
            },
            warn_time_wait: 10,
            crit_time_wait: 100,
            min_hit_ratio: 0.5,
            min_lookups: 5,
        }
    }

    /// A status with rpcbind `connected` or not, `tw` TIME_WAIT on port
    /// 111, and `lookups` recent lookups `seconds` long at `ratio`.
    fn status(connected: bool, tw: u64, ratio: f64, lookups: u64, seconds: u64) -> Status {
        let mut s = Status::default();
        s.cache.entries = 3;
        s.cache.recent.hit_ratio = ratio;
        s.cache.recent.lookups = lookups;
        s.cache.recent.seconds = seconds;
        s.upstream.classes.insert(
            "unix".into(),
            UpstreamClass {
                connected,
                ..UpstreamClass::default()
            },
        );
        s.time_wait.port_111 = tw;
        s.requests.total = 9;
        s
    }

    fn verdict(s: Status) -> (CheckState, String) {
        check_verdict(Ok(s), &args())
    }

    #[test]
    fn check_states_follow_nagios_conventions() {
        let (s, line) = verdict(status(true, 0, 0.9, 10, 300));
        assert_eq!(s, CheckState::Ok);
        assert!(
            line.starts_with("OK: ") && line.contains(" | hit_ratio=0.9000;"),
            "{line}"
        );
        // (rpcbind connected, TIME_WAIT on port 111, recent ratio, verdict)
        for (connected, tw, ratio, state) in [
            (true, 10, 0.9, CheckState::Warning),
            (true, 100, 0.9, CheckState::Critical),
            (true, 0, 0.1, CheckState::Warning),
            (false, 0, 0.9, CheckState::Critical),
        ] {
            let (s, line) = verdict(status(connected, tw, ratio, 10, 300));
            assert_eq!(s, state, "{line}");
        }
        let (s, line) = check_verdict(
            Err("cannot reach the daemon at /x: refused".into()),
            &args(),
        );
        assert_eq!(s, CheckState::Critical);
        assert!(line.starts_with("CRITICAL: cannot reach the daemon at /x"));
        let (s, line) = check_answer(Path::new("/x"), Ok(serde_json::json!({})), &args());
        assert_eq!(s, CheckState::Unknown);
        assert!(
            line.starts_with("UNKNOWN: bad status from the daemon at /x: missing field"),
            "{line}"
        );
    }

    #[test]
    fn the_hit_ratio_is_judged_over_the_recent_window_with_enough_lookups() {
        // (recent ratio, its lookups, its seconds, ratio over the daemon's
        // life, verdict, what the line says)
        #[rustfmt::skip]
        let cases = [
            // A fresh daemon, a few lookups old: 0.000 but not judged.
            (0.0, 3, 40, 0.0, CheckState::Ok, "not judged: 3 lookups over the last 40s, fewer than --min-lookups 5"),
            // Enough recent lookups, a bad recent ratio, however good the life.
            (0.2, 50, 300, 0.99, CheckState::Warning, "hit ratio 0.200 below 0.5 over the last 5m (50 lookups)"),
            (0.2, 50, 300, 0.99, CheckState::Warning, "hit_ratio=0.2000;0.5;;0;1 recent_lookups=50"),
            // And the other way round: a bad life, a good recent window.
            (0.9, 50, 300, 0.1, CheckState::Ok, "hit ratio 90.0% over the last 5m (50 lookups)"),
        ];
        for (ratio, lookups, seconds, life, state, says) in cases {
            let mut v = status(true, 0, ratio, lookups, seconds);
            v.cache.hit_ratio = life;
            let (s, line) = verdict(v);
            assert_eq!(s, state, "{line}");
            assert!(line.contains(says), "{line}");
        }
    }

    #[test]
    fn transparent_mode_partly_on_is_a_warning() {
        let list = |ticks: &[bool]| Checklist {
            parts: ticks
                .iter()
                .enumerate()
                .map(|(i, ok)| (format!("part {i}"), *ok))
                .collect(),
            unknown: Vec::new(),
            stale: None,
        };
        let ok = || (CheckState::Ok, "OK: fine | perf".to_owned());
        let (state, line) = with_transparent_mode(ok().0, ok().1, &list(&[true, false, true]));
        assert_eq!(state, CheckState::Warning, "{line}");
        assert_eq!(
            line,
            "WARNING: transparent mode partly on (missing: part 1), fine | perf"
        );
        for whole in [[true, true, true], [false, false, false]] {
            assert_eq!(with_transparent_mode(ok().0, ok().1, &list(&whole)), ok());
        }
        let critical = (CheckState::Critical, "CRITICAL: down | perf".to_owned());
        assert_eq!(
            with_transparent_mode(critical.0, critical.1.clone(), &list(&[true, false])),
            critical
        );
    }
}
