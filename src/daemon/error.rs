//! Why the daemon could not start, beside the start-up that says it.

use thiserror::Error;

use crate::config::ConfigError;
use crate::host::netfilter::NetfilterError;
use crate::proxy::listen::{ListenSpec, SpecError};

/// Why the daemon could not start. Each renders as one line naming the bad
/// value.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
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
    #[error("cannot serve metrics on tcp:{addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
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
    Intercept(NetfilterError),
    #[error("--intercept needs a tcp and a udp listener on 127.0.0.1 to redirect port 111 to (e.g. --listen tcp:127.0.0.1:1111 --listen udp:127.0.0.1:1111)")]
    InterceptListeners,
    #[error("server mode (intercept-remote) has no tcp and udp listener pair on 0.0.0.0 or [::] to send the network's port-111 traffic to")]
    RemoteListeners,
    #[error("rpcbind-socket {0} is also one of the proxy's listeners: the proxy would forward to itself (in transparent mode rpcbind listens elsewhere, e.g. /run/rpcbind/upstream.sock)")]
    SelfLoop(std::path::PathBuf),
}

impl StartError {
    /// The exit status it ends the process with: 2 when what was asked for
    /// is wrong (a flag, a value, the config file: fixed by editing them,
    /// as clap's own refusals are), 1 when the host refused what was asked
    /// (a port in use, a socket that cannot be made).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_)
            | StartError::Spec(_)
            | StartError::InterceptListeners
            | StartError::RemoteListeners
            | StartError::SelfLoop(_) => crate::cli::EXIT_USAGE,
            _ => crate::cli::EXIT_FAILURE,
        }
    }
}
