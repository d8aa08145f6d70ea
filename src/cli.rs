//! The command line: one binary, subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FileConfig, DEFAULT_CONFIG};
use crate::listen::{ListenSpec, SpecError};

#[derive(Debug, Parser)]
#[command(
    name = "rpcbind-proxy",
    version,
    about = "A caching, multiplexing proxy in front of rpcbind"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (default: /etc/rpcbind-proxy/config.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listener: unix:PATH, tcp:HOST:PORT or udp:HOST:PORT. Repeatable; any
    /// --listen replaces all the defaults (unix:/run/rpcbind-proxy/rpcbind.sock,
    /// tcp:127.0.0.1:1111, udp:127.0.0.1:1111).
    // Parsed after clap so that a bad spec is one line naming it, like every
    // other start-up error.
    #[arg(long, value_name = "SPEC")]
    pub listen: Vec<String>,
    /// rpcbind's unix socket.
    #[arg(long, value_name = "PATH")]
    pub rpcbind_socket: Option<PathBuf>,
    /// rpcbind's TCP and UDP port on loopback.
    #[arg(long, value_name = "PORT")]
    pub rpcbind_port: Option<u16>,
    /// The control socket (status, flush).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Seconds to wait for rpcbind before answering SYSTEM_ERR.
    #[arg(long, value_name = "SECONDS")]
    pub upstream_timeout: Option<f64>,
    /// Seconds a positive lookup answer is kept (0: not cached).
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<f64>,
    /// Seconds a negative answer (not registered) is kept (0: not cached).
    #[arg(long, value_name = "SECONDS")]
    pub negative_ttl: Option<f64>,
    /// Cache entries kept at most; least recently used are evicted beyond.
    #[arg(long, value_name = "N")]
    pub max_entries: Option<usize>,
    /// Seconds between registration-list comparisons: a change made directly
    /// at rpcbind shows through the proxy within this time.
    #[arg(long, value_name = "SECONDS")]
    pub refresh: Option<f64>,
    /// Seconds past expiry an entry may still be served while rpcbind is
    /// unreachable (0: never).
    #[arg(long, value_name = "SECONDS")]
    pub serve_stale: Option<f64>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

impl ServeArgs {
    /// The config file to read: the one named, or the default if it exists.
    pub fn config_path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        }
    }

    /// The flags as a config layer.
    pub fn as_layer(&self) -> Result<FileConfig, SpecError> {
        let listen = self
            .listen
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<ListenSpec>, _>>()?;
        Ok(FileConfig {
            listen: Some(listen),
            rpcbind_socket: self.rpcbind_socket.clone(),
            rpcbind_port: self.rpcbind_port,
            control: self.control.clone(),
            upstream_timeout: self.upstream_timeout,
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            max_entries: self.max_entries,
            refresh: self.refresh,
            serve_stale: self.serve_stale,
        })
    }
}
