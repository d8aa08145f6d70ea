//! rpcbind-proxy: a transparent, multiplexing proxy in front of rpcbind.
//!
//! The path of a call: `listen` (unix, TCP, UDP) → `service::Proxy::handle`
//! (decode with `rpc`/`rpcb`/`xdr`, check, `policy::route`) → `upstream` (one
//! persistent connection per transport class) → back the same way. See
//! ARCHITECTURE.md.

pub mod cache;
pub mod cli;
pub mod config;
pub mod listen;
pub mod policy;
pub mod rpc;
pub mod rpcb;
pub mod service;
pub mod sys;
pub mod systemd;
pub mod upstream;
pub mod xdr;

use std::process::ExitCode;

use clap::Parser;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cli::{Cli, Command, ServeArgs};
use crate::config::{Config, ConfigError, FileConfig};
use crate::listen::ListenSpec;
use crate::policy::Class;
use crate::service::{Proxy, RpcbindAddr};

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
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the daemon until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), StartError> {
    let mut bound = Vec::with_capacity(config.listen.len());
    for spec in &config.listen {
        let b = listen::bind(spec)
            .await
            .map_err(|source| StartError::Listen {
                spec: spec.clone(),
                source,
            })?;
        bound.push((spec.clone(), b));
    }
    let proxy = Proxy::new(
        RpcbindAddr {
            socket: config.rpcbind_socket.clone(),
            port: config.rpcbind_port,
        },
        config.upstream_timeout,
        config.cache,
    );
    if let Err(e) = proxy.upstream(Class::Unix).ensure_connected().await {
        warn!(socket = %config.rpcbind_socket.display(), error = %e, "rpcbind not reachable yet; will keep trying");
    }
    let mut tasks = Vec::new();
    // A baseline of rpcbind's registrations before clients come, so that a
    // change made right after start-up is seen as one.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let refresh = proxy
        .clone()
        .refresh_loop(config.refresh, first_tx, shutdown.clone());
    tasks.push(tokio::spawn(refresh));
    let _ = first_rx.await;
    for (spec, b) in bound {
        info!(%spec, "listening");
        tasks.push(tokio::spawn(listen::serve(
            b,
            proxy.clone(),
            shutdown.clone(),
        )));
    }
    systemd::ready();
    for t in tasks {
        let _ = t.await;
    }
    systemd::stopping();
    info!("stopped");
    Ok(())
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn serve(args: ServeArgs) -> Result<(), StartError> {
    init_logging(&args.log_level);
    let flags = args.as_layer()?;
    let file = match args.config_path() {
        Some(path) => FileConfig::load(&path)?,
        None => FileConfig::default(),
    };
    let config = Config::resolve(file, flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(async {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            info!("stopping");
            let _ = tx.send(true);
        });
        run(config, rx).await
    })
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rpcbind-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
