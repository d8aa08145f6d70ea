//! `rpcbind-proxy flush`: drop cached answers (root only; the daemon checks).

use std::process::ExitCode;

use super::client::{control_request, fail, u};
use crate::cli::FlushArgs;

pub fn flush(args: FlushArgs) -> ExitCode {
    let line = match args.program {
        Some(p) => format!("flush {p}"),
        None => "flush".to_string(),
    };
    match control_request(&args.control.control, &line) {
        Ok(v) => {
            match args.program {
                Some(p) => println!("flushed {} entries of program {p}", u(&v, "/flushed")),
                None => println!("flushed {} entries", u(&v, "/flushed")),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
