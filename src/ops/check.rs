//! `rpcbind-proxy check`: a Nagios/Icinga plugin over the status.

use std::process::ExitCode;

use serde_json::Value;

use super::client::{control_request, f, u};
use crate::cli::CheckArgs;
use crate::proxy::logs::human;

/// Nagios plugin exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

/// The check's verdict and its one line of output.
pub fn check_verdict(status: Result<Value, String>, args: &CheckArgs) -> (CheckState, String) {
    let v = match status {
        Ok(v) => v,
        Err(e) => return (CheckState::Critical, format!("CRITICAL: {e}")),
    };
    if v.pointer("/cache/hit_ratio").is_none() {
        return (
            CheckState::Unknown,
            "UNKNOWN: the daemon's status has no hit ratio".into(),
        );
    }
    let mut state = CheckState::Ok;
    let mut problems = Vec::new();
    let connected = v
        .pointer("/upstream/classes/unix/connected")
        .and_then(Value::as_bool)
        == Some(true);
    if !connected {
        state = state.max(CheckState::Critical);
        problems.push("rpcbind not connected".to_string());
    }
    let tw = u(&v, "/time_wait/port_111") as usize;
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
    // and only once they hold enough lookups to say something (a daemon
    // older than this command judges its whole life).
    let (ratio, lookups, over) = match v.pointer("/cache/recent") {
        Some(r) => (
            f(r, "/hit_ratio"),
            u(r, "/lookups"),
            format!(
                "over the last {}",
                human(std::time::Duration::from_secs(u(r, "/seconds")))
            ),
        ),
        None => (
            f(&v, "/cache/hit_ratio"),
            u(&v, "/cache/hits") + u(&v, "/cache/negative_hits") + u(&v, "/cache/misses"),
            "since start".to_string(),
        ),
    };
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
        u(&v, "/cache/entries"),
        u(&v, "/requests/total"),
    );
    (state, format!("{label}: {summary} | {perf}"))
}

pub fn check(args: CheckArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        println!("UNKNOWN: {e}");
        return ExitCode::from(CheckState::Unknown as u8);
    }
    let (state, line) = check_verdict(control_request(&args.control.control, "status"), &args);
    println!("{line}");
    ExitCode::from(state as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn status(connected: bool, tw: u64, ratio: f64, hits: u64) -> Value {
        json!({
            "cache": {"hit_ratio": ratio, "hits": hits, "negative_hits": 0, "misses": 1, "entries": 3,
                      "recent": {"hit_ratio": ratio, "lookups": hits + 1, "seconds": 300}},
            "upstream": {"classes": {"unix": {"connected": connected}}},
            "time_wait": {"port_111": tw},
            "requests": {"total": 9},
        })
    }

    #[test]
    fn check_states_follow_nagios_conventions() {
        let a = args();
        let (s, line) = check_verdict(Ok(status(true, 0, 0.9, 9)), &a);
        assert_eq!(s, CheckState::Ok);
        assert!(
            line.starts_with("OK: ") && line.contains(" | hit_ratio=0.9000;"),
            "{line}"
        );
        assert_eq!(
            check_verdict(Ok(status(true, 10, 0.9, 9)), &a).0,
            CheckState::Warning
        );
        assert_eq!(
            check_verdict(Ok(status(true, 100, 0.9, 9)), &a).0,
            CheckState::Critical
        );
        assert_eq!(
            check_verdict(Ok(status(true, 0, 0.1, 9)), &a).0,
            CheckState::Warning
        );
        assert_eq!(
            check_verdict(Ok(status(false, 0, 0.9, 9)), &a).0,
            CheckState::Critical
        );
        let (s, line) = check_verdict(Err("cannot reach the daemon at /x: refused".into()), &a);
        assert_eq!(s, CheckState::Critical);
        assert!(line.starts_with("CRITICAL: cannot reach the daemon at /x"));
        assert_eq!(check_verdict(Ok(json!({})), &a).0, CheckState::Unknown);
    }

    #[test]
    fn the_hit_ratio_is_judged_over_the_recent_window_with_enough_lookups() {
        let a = args();
        // A fresh daemon, a few lookups old: 0.000 but not judged.
        let mut v = status(true, 0, 0.0, 0);
        v["cache"]["recent"] = json!({"hit_ratio": 0.0, "lookups": 3, "seconds": 40});
        let (s, line) = check_verdict(Ok(v), &a);
        assert_eq!(s, CheckState::Ok, "{line}");
        assert!(
            line.contains("not judged: 3 lookups over the last 40s, fewer than --min-lookups 5"),
            "{line}"
        );
        // Enough recent lookups, a bad recent ratio, however good the life.
        let mut v = status(true, 0, 0.99, 999);
        v["cache"]["recent"] = json!({"hit_ratio": 0.2, "lookups": 50, "seconds": 300});
        let (s, line) = check_verdict(Ok(v), &a);
        assert_eq!(s, CheckState::Warning, "{line}");
        assert!(
            line.contains("hit ratio 0.200 below 0.5 over the last 5m (50 lookups)"),
            "{line}"
        );
        assert!(
            line.contains("hit_ratio=0.2000;0.5;;0;1 recent_lookups=50"),
            "{line}"
        );
        // And the other way round: a bad life, a good recent window.
        let mut v = status(true, 0, 0.1, 9);
        v["cache"]["recent"] = json!({"hit_ratio": 0.9, "lookups": 50, "seconds": 300});
        let (s, line) = check_verdict(Ok(v), &a);
        assert_eq!(s, CheckState::Ok, "{line}");
        assert!(
            line.contains("hit ratio 90.0% over the last 5m (50 lookups)"),
            "{line}"
        );
    }
}
