//! `rpcbind-proxy flush`: drop cached answers (root only; the daemon checks).

use std::process::ExitCode;

use serde::Deserialize;

use super::client::{control_request, fail};
use crate::cli::FlushArgs;

pub fn flush(args: FlushArgs) -> ExitCode {
    let line = match args.program {
        Some(p) => format!("flush {p}"),
        None => "flush".to_string(),
    };
    match control_request(&args.control.control, &line) {
        Ok(v) => {
            let n = match serde_json::from_value::<Flushed>(v) {
                Ok(f) => f.flushed,
                Err(e) => return fail(format!("bad answer from the daemon: {e}")),
            };
            match args.program {
                Some(p) => println!("flushed {n} entries of program {p}"),
                None => println!("flushed {n} entries"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The daemon's answer to a flush.
#[derive(Debug, Deserialize)]
struct Flushed {
    flushed: u64,
}
