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
    #[error("cannot start the stream loop: {0}")]
    StreamLoop(std::io::Error),
    #[error("cannot start the UDP threads: {0}")]
    UdpThreads(std::io::Error),
    #[error("cannot intercept port 111: {0}")]
    Intercept(host::netfilter::NetfilterError),
    #[error("--intercept needs a tcp and a udp listener on 127.0.0.1 to redirect port 111 to (e.g. --listen tcp:127.0.0.1:1111 --listen udp:127.0.0.1:1111)")]
    InterceptListeners,
    #[error("rpcbind-socket {0} is also one of the proxy's listeners: the proxy would forward to itself (in transparent mode rpcbind listens elsewhere, e.g. /run/rpcbind/upstream.sock)")]
    SelfLoop(std::path::PathBuf),
}

pub use daemon::run;

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = cli::or_exit(Cli::try_parse());
    if !matches!(cli.command, Command::Serve(_)) {
        host::sys::default_sigpipe();
    }
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
        Command::Intercept(args) => ops::intercept::intercept(args),
        Command::Top(args) => ops::top::top(args),
        Command::Generate(args) => ops::generate::main(args),
    }
}
