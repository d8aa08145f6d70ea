//! `rpcbind-proxy status`: the daemon's status as text, JSON or Prometheus.

use std::process::ExitCode;

use super::client::{fail, status_request};
use super::text::human;
use crate::cli::StatusArgs;
use crate::proxy::status::prometheus::prometheus;

pub fn status(args: StatusArgs) -> ExitCode {
    let status = match status_request(&args.control.control) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let out = if args.json {
        // Through a Value, whose keys are sorted, as the daemon sends them.
        match serde_json::to_value(&status) {
            Ok(v) => format!("{v}\n"),
            Err(e) => return fail(format!("cannot write the status: {e}")),
        }
    } else if args.prometheus {
        prometheus(&status)
    } else {
        human(&status)
    };
    print!("{out}");
    ExitCode::SUCCESS
}
