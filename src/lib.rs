//! rpcbind-proxy: a transparent, multiplexing proxy in front of rpcbind.
//!
//! The path of a call: `listen` (unix, TCP, UDP) → `service::Proxy::handle`
//! (decode with `rpc`/`rpcb`/`xdr`, check, `policy::route`) → `upstream` (one
//! persistent connection per transport class) → back the same way. See
//! ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod host;
pub mod ops;
pub mod protocol;
pub mod proxy;

use std::process::ExitCode;

use clap::Parser;
use thiserror::Error;

use crate::cli::{Cli, Command};
use crate::config::ConfigError;
use crate::proxy::listen::{self, ListenSpec};

/// Why the daemon could not start. Each renders as one line naming the bad
/// value.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] listen::SpecError),
    #[error("cannot listen on {spec}: {source}")]
    Listen {
        spec: ListenSpec,
        source: std::io::Error,
    },
    #[error("cannot create the control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the sockets systemd passed: {0}")]
    Inherited(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

pub use daemon::run;

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match daemon::serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rpcbind-proxy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status(args) => ops::status::status(args),
        Command::Flush(args) => ops::flush::flush(args),
        Command::Check(args) => ops::check::check(args),
        Command::Query(args) => ops::query::query(args),
        Command::Generate(args) => ops::generate::main(args),
    }
}
