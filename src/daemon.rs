//! The daemon's life: start-up (config, sockets, baseline), serving,
//! reloading on SIGHUP, draining on SIGTERM/SIGINT, and what systemd is told
//! along the way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::cli::ServeArgs;
use crate::config::{Config, FileConfig};
use crate::host::sys::Inherited;
use crate::host::systemd;
use crate::ops::control;
use crate::proxy::listen::{self, ListenSpec};
use crate::proxy::policy::Class;
use crate::proxy::service::{Proxy, RpcbindAddr};
use crate::StartError;

/// How long a stopping daemon waits for calls in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs the daemon until `shutdown` turns true: binds `config.listen` (or
/// serves the `inherited` sockets systemd passed instead), applies the
/// configurations that arrive on `reloads`, and on shutdown stops
/// accepting, answers what is in flight (at most 2 s) and removes the unix
/// sockets it created.
pub async fn run(
    config: Config,
    inherited: Vec<Inherited>,
    mut reloads: mpsc::Receiver<Config>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let mut bound = Vec::new();
    if inherited.is_empty() {
        for spec in &config.listen {
            let b = listen::bind(spec)
                .await
                .map_err(|source| StartError::Listen {
                    spec: spec.clone(),
                    source,
                })?;
            bound.push((spec.clone(), b));
        }
    } else {
        info!(
            count = inherited.len(),
            "using the sockets systemd passed; --listen is ignored"
        );
        for socket in inherited {
            bound.push(listen::adopt(socket).map_err(StartError::Inherited)?);
        }
    }
    let proxy = Proxy::new(
        RpcbindAddr {
            socket: config.rpcbind_socket.clone(),
            port: config.rpcbind_port,
        },
        config.upstream_timeout,
        config.cache,
        config.refresh,
    );
    proxy.limits.set(config.limits);
    raise_fd_limit();
    if let Err(e) = proxy.upstream(Class::Unix).ensure_connected().await {
        warn!(socket = %config.rpcbind_socket.display(), error = %e, "rpcbind not reachable yet; will keep trying");
    }
    let (control, _control_file) =
        listen::bind_unix_socket(&config.control)
            .await
            .map_err(|source| StartError::Control {
                path: config.control.clone(),
                source,
            })?;
    let specs: Vec<ListenSpec> = bound.iter().map(|(s, _)| s.clone()).collect();
    let ctx = Arc::new(control::Context {
        proxy: proxy.clone(),
        listeners: specs.iter().map(ToString::to_string).collect(),
        tcp_ports: specs
            .iter()
            .filter_map(|l| match l {
                ListenSpec::Tcp(a) => Some(a.port()),
                _ => None,
            })
            .collect(),
        rpcbind_port: config.rpcbind_port,
        refresh: config.refresh,
    });
    let mut background = vec![tokio::spawn(control::serve(control, ctx, shutdown.clone()))];

    // A baseline of rpcbind's registrations before clients come, so that a
    // change made right after start-up is seen as one.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    background.push(tokio::spawn(
        proxy.clone().refresh_loop(first_tx, shutdown.clone()),
    ));
    let _ = first_rx.await;

    let mut listeners = Vec::new();
    for (spec, b) in bound {
        info!(%spec, "listening");
        listeners.push(tokio::spawn(listen::serve(
            b,
            proxy.clone(),
            shutdown.clone(),
        )));
    }
    background.push(tokio::spawn(supervise(proxy.clone(), shutdown.clone())));
    let reloader = {
        let proxy = proxy.clone();
        let before = config.clone();
        tokio::spawn(async move {
            while let Some(new) = reloads.recv().await {
                apply(&proxy, &before, &new);
            }
        })
    };
    systemd::ready();
    info!("ready");

    // Listeners end when shutdown turns true: nothing new is accepted.
    for l in listeners {
        let _ = l.await;
    }
    systemd::stopping();
    proxy.tasks.close();
    if tokio::time::timeout(DRAIN, proxy.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            clients = proxy.tasks.len(),
            "calls still in flight after {DRAIN:?}; closing anyway"
        );
    }
    reloader.abort();
    for t in background {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

/// Applies a reloaded configuration: TTLs, limits, timeouts and the refresh
/// period change in place and the cache is kept. Listeners, sockets and
/// paths need a restart.
fn apply(proxy: &Proxy, running: &Config, new: &Config) {
    proxy.reconfigure(new.upstream_timeout, new.cache, new.refresh, new.limits);
    if (
        &new.listen,
        &new.control,
        &new.rpcbind_socket,
        new.rpcbind_port,
    ) != (
        &running.listen,
        &running.control,
        &running.rpcbind_socket,
        running.rpcbind_port,
    ) {
        warn!("listen, control and rpcbind addresses change only with a restart");
    }
    info!(
        ttl = ?new.cache.ttl,
        negative_ttl = ?new.cache.negative_ttl,
        max_entries = new.cache.max_entries,
        refresh = ?new.refresh,
        limits = ?new.limits,
        "configuration reloaded"
    );
}

/// Every client connection is a descriptor: raise the soft limit to the
/// hard one, and say so if the connection limit still does not fit.
fn raise_fd_limit() {
    match crate::host::sys::raise_nofile_limit() {
        Ok(n) => info!(nofile = n, "descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the descriptor limit"),
    }
}

/// Tells systemd the daemon is alive (WATCHDOG=1, only while its own loops
/// go round) and how it is doing (STATUS=), every few seconds.
async fn supervise(proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let watchdog = systemd::watchdog_interval();
    let period = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).min(Duration::from_secs(5))
    });
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        if proxy.healthy() {
            if watchdog.is_some() {
                systemd::watchdog();
            }
        } else {
            error!("the refresh loop has stalled; withholding the watchdog ping");
        }
        systemd::status(&status_line(&proxy));
    }
}

fn status_line(proxy: &Proxy) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &proxy.cache.stats;
    let answered = c.hits.load(Relaxed) + c.negative_hits.load(Relaxed) + c.coalesced.load(Relaxed);
    let lookups = answered + c.misses.load(Relaxed);
    let ratio = if lookups == 0 {
        0.0
    } else {
        answered as f64 * 100.0 / lookups as f64
    };
    let up = if proxy.upstream(Class::Unix).is_connected() {
        "connected"
    } else {
        "unreachable"
    };
    format!(
        "hit ratio {ratio:.1}% of {lookups} lookups, {} entries, rpcbind {up}",
        proxy.cache.len()
    )
}

type LogHandle = reload::Handle<EnvFilter, Registry>;

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| {
        eprintln!("rpcbind-proxy: bad log level {level:?}; using info");
        EnvFilter::new("info")
    })
}

/// Logs go to the journal when systemd connected stderr to it
/// (JOURNAL_STREAM), to stderr otherwise.
fn init_logging(level: &str) -> Option<LogHandle> {
    let (layer, handle) = reload::Layer::new(filter(level));
    let registry = tracing_subscriber::registry().with(layer);
    let to_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let result = match tracing_journald::layer() {
        Ok(journald) if to_journal => registry.with(journald).try_init(),
        _ => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
    result.ok().map(|()| handle)
}

/// Reads the config file (if any) under the command-line flags.
fn load(args: &ServeArgs) -> Result<Config, StartError> {
    let flags = args.as_layer()?;
    let file = match args.config_path() {
        Some(path) => FileConfig::load(&path)?,
        None => FileConfig::default(),
    };
    Ok(Config::resolve(file, flags)?)
}

/// `rpcbind-proxy serve`.
pub fn serve(args: ServeArgs) -> Result<(), StartError> {
    let config = load(&args)?;
    let log = init_logging(&config.log_level);
    // Read (and unset) LISTEN_FDS while the process has one thread.
    let inherited = systemd::inherited_sockets().map_err(StartError::Inherited)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        builder.worker_threads(config.threads);
    }
    let runtime = builder.enable_all().build().map_err(StartError::Runtime)?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (reload_tx, reload_rx) = mpsc::channel(4);
        tokio::spawn(signals(args, log, stop_tx, reload_tx));
        run(config, inherited, reload_rx, stop_rx).await
    })
}

/// SIGTERM and SIGINT stop the daemon; SIGHUP reloads the config file.
async fn signals(
    args: ServeArgs,
    log: Option<LogHandle>,
    stop: watch::Sender<bool>,
    reload: mpsc::Sender<Config>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
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
                            let _ = h.reload(filter(&config.log_level));
                        }
                        let _ = reload.send(config).await;
                    }
                    Err(e) => error!(error = %e, "reload failed; keeping the running configuration"),
                }
                systemd::ready();
            }
        }
    }
    info!("stopping");
    let _ = stop.send(true);
}
