//! The daemon: `serve` is its entry (the runtime, signals); `log` where
//! its lines go and what they say; `lifecycle` is its life from start-up to
//! drain; `supervise` what systemd is told while it serves; `transparent`
//! transparent mode's start-up decisions; `attribution` the eBPF recorder's
//! load and the mode it gives; `control` the control socket; `metrics`
//! `/metrics` over HTTP; `reload` what a SIGHUP changes; `error` why a
//! start failed.

mod attribution;
mod control;
mod error;
mod lifecycle;
mod log;
mod metrics;
mod reload;
mod supervise;
mod transparent;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::cli::ServeArgs;
use crate::config::{Config, Settings};
use crate::host::systemd;

pub use error::StartError;
pub use lifecycle::{run, Daemon, Running};
pub use transparent::INTERCEPT_TABLE;

/// Reads the config file (if any) under the command-line flags.
fn load(args: &ServeArgs) -> Result<Config, StartError> {
    let flags = args.as_layer()?;
    let file = match args.config_path() {
        Some(path) => Settings::load(&path)?,
        None => Settings::default(),
    };
    // The file was checked on its own when read (its errors name the line):
    // what fails now is a flag.
    Ok(Config::resolve(file, flags).map_err(crate::config::ConfigError::as_flag)?)
}

/// `rpcbind-proxy serve`.
pub fn serve(args: ServeArgs) -> Result<(), StartError> {
    let config = load(&args)?;
    let config_source = args.config_path().map_or_else(
        || {
            format!(
                "none ({} does not exist; defaults and flags)",
                crate::config::DEFAULT_CONFIG
            )
        },
        |p| p.display().to_string(),
    );
    if args.check_config {
        println!("configuration OK: {config_source}; {}", config.summary());
        return Ok(());
    }
    let log = log::init(&config.log_level);
    // Read (and unset) LISTEN_FDS while the process has one thread.
    let inherited = systemd::inherited_sockets().map_err(StartError::Inherited)?;
    // One runtime worker: calls past the cache, UDP clients, control and
    // refresh. Unix and TCP clients have the stream loops' threads; more
    // workers would only add cross-thread wake-ups to every miss.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1);
    let runtime = builder.enable_all().build().map_err(StartError::Runtime)?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let daemon = async {
            let result = run(
                config,
                inherited,
                &config_source,
                reload_rx,
                shutdown.clone(),
            )
            .await;
            // After a start that failed, the signal handler stops too.
            shutdown.cancel();
            result
        };
        let ((), result) = tokio::join!(signals(args, log, shutdown.clone(), reload_tx), daemon);
        result
    })
}

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP reloads the config file.
async fn signals(
    args: ServeArgs,
    log: Option<log::LogHandle>,
    shutdown: CancellationToken,
    reload: mpsc::Sender<Config>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        // Without them the daemon could not be stopped cleanly.
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                match load(&args) {
                    Ok(config) => {
                        if let Some(h) = &log {
                            let _ = h.reload(log::filter(&config.log_level));
                        }
                        let _ = reload.send(config).await;
                    }
                    Err(e) => error!(error = %e, "reload failed; keeping the running configuration"),
                }
                systemd::ready();
            }
            () = shutdown.cancelled() => return,
        }
    }
    info!("stopping");
    shutdown.cancel();
}
