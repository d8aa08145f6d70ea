//! `rpcbind-proxy check`: a Nagios/Icinga plugin over the status.

use std::process::ExitCode;

use serde_json::Value;

use super::client::{control_request, f, u};
use crate::cli::CheckArgs;

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
    let ratio = f(&v, "/cache/hit_ratio");
    let lookups = u(&v, "/cache/hits") + u(&v, "/cache/negative_hits") + u(&v, "/cache/misses");
    if lookups > 0 && ratio < args.min_hit_ratio {
        state = state.max(CheckState::Warning);
        problems.push(format!("hit ratio {ratio:.3} below {}", args.min_hit_ratio));
    }
    let label = match state {
        CheckState::Ok => "OK",
        CheckState::Warning => "WARNING",
        CheckState::Critical => "CRITICAL",
        CheckState::Unknown => "UNKNOWN",
    };
    let summary = if problems.is_empty() {
        format!(
            "hit ratio {:.1}%, rpcbind connected, {tw} TIME_WAIT on port 111",
            ratio * 100.0
        )
    } else {
        problems.join(", ")
    };
    let perf = format!(
        "hit_ratio={ratio:.4};{};;0;1 time_wait_111={tw};{};{};0 upstream_connected={} cache_entries={} requests={}c",
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
            min_lookups: 0,
        }
    }

    fn status(connected: bool, tw: u64, ratio: f64, hits: u64) -> Value {
        json!({
            "cache": {"hit_ratio": ratio, "hits": hits, "negative_hits": 0, "misses": 1, "entries": 3},
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
}
