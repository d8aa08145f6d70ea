//! `rpcbind-proxy status`: the daemon's status as text, JSON or Prometheus.

use std::process::ExitCode;

use super::client::{control_request, fail};
use super::{prometheus::prometheus, text::human};
use crate::cli::StatusArgs;

pub fn status(args: StatusArgs) -> ExitCode {
    let v = match control_request(&args.control.control, "status") {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let out = if args.json {
        format!("{v}\n")
    } else if args.prometheus {
        prometheus(&v)
    } else {
        human(&v)
    };
    print!("{out}");
    ExitCode::SUCCESS
}
