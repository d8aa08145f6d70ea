//! The daemon's life: start-up (config, sockets, baseline), serving,
//! reloading on SIGHUP, draining on SIGTERM/SIGINT, and what systemd is told
//! along the way.

mod control;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::cli::ServeArgs;
use crate::config::{Config, FileConfig};
use crate::host::netfilter::{InterceptRules, InterceptTable, Redirect};
use crate::host::sys::Inherited;
use crate::host::systemd;
use crate::proxy::listen::{self, Bound, DatagramThreads, ListenSpec, StreamLoop};
use crate::proxy::policy::Class;
use crate::proxy::service::{Proxy, RpcbindAddr};
use crate::StartError;

/// How long a stopping daemon waits for calls in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// Transparent mode, stopping: how long the listeners keep accepting after
/// the redirect stopped catching new flows, so that a client whose
/// connection was redirected just before (its SYN in flight or in the
/// backlog) is still served rather than reset.
const SETTLE: Duration = Duration::from_millis(200);
/// Stream loops and UDP threads turn at least once a second; one that has
/// not turned for this long is stuck (and the watchdog ping is withheld).
const STUCK_AFTER: Duration = Duration::from_secs(3);
/// Threads per UDP socket (see where the UDP threads start).
const UDP_THREADS_PER_SOCKET: usize = 1;
/// The config file `serve` read, for the start-up line.
static CONFIG_SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The nftables table of transparent mode (family inet).
pub const INTERCEPT_TABLE: &str = "rpcbind_proxy";

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
        let mut no_ipv6 = false;
        for spec in &config.listen {
            match listen::bind(spec).await {
                Ok(b) => bound.push((spec.clone(), b)),
                // A host without an IPv6 loopback: that family is skipped
                // (said once), the rest serves.
                Err(e) if spec.is_ipv6_loopback() && listen::no_such_address(&e) => {
                    if !no_ipv6 {
                        warn!(%spec, error = %e, "no IPv6 loopback on this host; skipping the [::1] listeners");
                        no_ipv6 = true;
                    }
                }
                Err(source) => {
                    return Err(StartError::Listen {
                        spec: spec.clone(),
                        source,
                    })
                }
            }
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
    // Said once the listeners are bound, so that a listener that cannot be
    // had stays the only line of a failed start.
    info!(
        "rpcbind-proxy {} starting; config file {}",
        env!("CARGO_PKG_VERSION"),
        CONFIG_SOURCE.get().map_or("not read", String::as_str)
    );
    info!("settings: {}", config.summary());
    let specs: Vec<ListenSpec> = bound.iter().map(|(s, _)| s.clone()).collect();
    let public_socket = stand_in_socket(&specs, &config)?;
    let redirects = if config.intercept {
        Some(intercept_rules(&specs, config.intercept_mark)?)
    } else {
        None
    };
    let proxy = Proxy::new(
        RpcbindAddr {
            socket: config.rpcbind_socket.clone(),
            port: config.rpcbind_port,
            mark: config.intercept.then_some(config.intercept_mark),
            public_socket,
        },
        config.upstream_timeout,
        config.cache,
        config.refresh,
    );
    proxy.limits.set(config.limits);
    proxy.attribution.set_enabled(config.attribution);
    raise_fd_limit();
    // Connected or not, the upstream says so itself (once).
    let _ = proxy.upstream(Class::Unix).ensure_connected().await;
    let (control, _control_file) =
        listen::bind_unix_socket(&config.control)
            .await
            .map_err(|source| StartError::Control {
                path: config.control.clone(),
                source,
            })?;
    let intercept: control::SharedTable = Arc::new(std::sync::Mutex::new(None));
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
        intercept: config
            .intercept
            .then(|| (intercept.clone(), config.intercept_mark)),
    });
    let mut background = vec![tokio::spawn(control::serve(control, ctx, shutdown.clone()))];

    // A baseline of rpcbind's registrations before clients come, so that a
    // change made right after start-up is seen as one.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    background.push(tokio::spawn(
        proxy.clone().refresh_loop(first_tx, shutdown.clone()),
    ));
    let _ = first_rx.await;

    // Stream listeners stop when `stop` turns true, UDP ones later: in
    // transparent mode only after the redirect table is gone, so that a
    // datagram of a flow redirected earlier never finds the port closed.
    let (stop_tx, stop) = watch::channel(false);
    // The loops keep these descriptors (and add copies above them): the
    // redirect table's owner goes above them all.
    let listeners_up_to = bound.iter().map(|(_, b)| b.as_raw_fd()).max().unwrap_or(0);
    let (mut streams, mut datagrams) = (Vec::new(), Vec::new());
    for (spec, b) in bound {
        info!(%spec, "listening");
        match b {
            Bound::Udp(socket) => datagrams.push(socket),
            b => streams.push(b),
        }
    }
    let threads = stream_threads(config.threads);
    let mut streams = StreamLoop::start(
        streams,
        threads,
        proxy.clone(),
        tokio::runtime::Handle::current(),
    )
    .map_err(StartError::StreamLoop)?;
    // One thread per UDP socket: it takes in one call what came while it
    // worked. Two on two CPUs served fewer lookups (105k/s against 112k/s,
    // measured side by side) for the wake-ups they add.
    let mut datagrams = DatagramThreads::start(
        datagrams,
        UDP_THREADS_PER_SOCKET,
        proxy.clone(),
        &tokio::runtime::Handle::current(),
    )
    .map_err(StartError::UdpThreads)?;
    if let Some(rules) = &redirects {
        let table =
            InterceptTable::install(rules, listeners_up_to).map_err(StartError::Intercept)?;
        info!(
            table = %format!("inet {INTERCEPT_TABLE}"),
            mark = %format!("{:#x}", rules.mark),
            ipv4 = ?rules.ipv4.map(|r| (r.tcp_port, r.udp_port)),
            ipv6 = ?rules.ipv6.map(|r| (r.tcp_port, r.udp_port)),
            "transparent mode: local traffic to port 111 is redirected here"
        );
        *intercept.lock().unwrap() = Some(table);
        proxy.attribution.set_redirected(true);
    }
    background.push(tokio::spawn(stop_listening(
        shutdown.clone(),
        intercept.clone(),
        stop_tx,
    )));
    let probe_at = specs.iter().find_map(|s| match s {
        ListenSpec::Udp(a) if a.ip().is_loopback() => Some(*a),
        _ => None,
    });
    background.push(tokio::spawn(supervise(
        proxy.clone(),
        probe_at,
        {
            let (streams, udp) = (streams.turn_counter(), datagrams.turn_counter());
            move || (streams(), udp())
        },
        shutdown.clone(),
    )));
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

    // The stream listeners close when `stop` turns true: nothing new is
    // accepted, and the clients are drained.
    let _ = stop.clone().wait_for(|&s| s).await;
    streams.stop();
    streams.stopped_accepting().await;
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
    // The redirect goes last: flows redirected earlier kept reaching the
    // proxy (their conntrack NAT binding) while they drained. Removing the
    // table ends those bindings; the UDP listeners close only after.
    let table = intercept.lock().unwrap().take();
    if let Some(table) = table {
        match table.remove() {
            Ok(()) => info!("transparent mode off: redirect table removed"),
            Err(e) => {
                warn!(error = %e, "cannot remove the redirect table; it goes when the daemon exits")
            }
        }
    }
    datagrams.stop();
    if tokio::time::timeout(DRAIN, datagrams.stopped())
        .await
        .is_err()
    {
        warn!("UDP calls still in flight after {DRAIN:?}; closing anyway");
    }
    for t in background {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

/// On shutdown: in transparent mode, first stop redirecting new flows (they
/// reach rpcbind directly from then on), give the flows redirected just
/// before a moment to be accepted, then stop the listeners.
async fn stop_listening(
    mut shutdown: watch::Receiver<bool>,
    intercept: control::SharedTable,
    stop: watch::Sender<bool>,
) {
    let _ = shutdown.wait_for(|&s| s).await;
    let stopped = {
        let mut table = intercept.lock().unwrap();
        table.as_mut().map(InterceptTable::stop_redirecting)
    };
    match stopped {
        Some(Ok(())) => {
            info!("stopped redirecting new flows; serving those in flight");
            tokio::time::sleep(SETTLE).await;
        }
        Some(Err(e)) => warn!(error = %e, "cannot stop redirecting; removing the table at exit"),
        None => {}
    }
    let _ = stop.send(true);
}

/// The path of rpcbind's usual unix socket when the proxy listens there in
/// its place (transparent mode), so answers name it instead of the path
/// rpcbind moved to. Refuses a configuration that would have the proxy
/// forward to itself.
fn stand_in_socket(
    specs: &[ListenSpec],
    config: &Config,
) -> Result<Option<std::path::PathBuf>, StartError> {
    let unix: Vec<&std::path::Path> = specs
        .iter()
        .filter_map(|s| match s {
            ListenSpec::Unix(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    if unix.contains(&config.rpcbind_socket.as_path()) {
        return Err(StartError::SelfLoop(config.rpcbind_socket.clone()));
    }
    let usual = std::path::Path::new(crate::config::DEFAULT_RPCBIND_SOCKET);
    Ok(unix.contains(&usual).then(|| usual.to_path_buf()))
}

/// The redirect rules for the listeners at hand: IPv4 needs a TCP and a UDP
/// listener on 127.0.0.1; IPv6 is redirected when there are both on [::1].
fn intercept_rules(specs: &[ListenSpec], mark: u32) -> Result<InterceptRules, StartError> {
    let port = |want: fn(&ListenSpec) -> Option<std::net::SocketAddr>, ip: std::net::IpAddr| {
        specs
            .iter()
            .filter_map(want)
            .find(|a| a.ip() == ip)
            .map(|a| a.port())
    };
    let tcp = |s: &ListenSpec| match s {
        ListenSpec::Tcp(a) => Some(*a),
        _ => None,
    };
    let udp = |s: &ListenSpec| match s {
        ListenSpec::Udp(a) => Some(*a),
        _ => None,
    };
    let family = |ip: std::net::IpAddr| match (port(tcp, ip), port(udp, ip)) {
        (Some(tcp_port), Some(udp_port)) => Some(Redirect { tcp_port, udp_port }),
        _ => None,
    };
    let ipv4 = family(std::net::Ipv4Addr::LOCALHOST.into());
    let ipv6 = family(std::net::Ipv6Addr::LOCALHOST.into());
    if ipv4.is_none() {
        return Err(StartError::InterceptListeners);
    }
    if ipv6.is_none() {
        warn!("no tcp and udp listeners on [::1]: clients of [::1]:111 are not intercepted");
    }
    if !specs
        .iter()
        .any(|s| *s == ListenSpec::Unix(crate::config::DEFAULT_RPCBIND_SOCKET.into()))
    {
        warn!(
            "no listener on {}: its clients (registrations, rpcinfo without a host) still reach rpcbind directly",
            crate::config::DEFAULT_RPCBIND_SOCKET
        );
    }
    Ok(InterceptRules {
        table: INTERCEPT_TABLE.to_string(),
        mark,
        ipv4,
        ipv6,
    })
}

/// Applies a reloaded configuration: TTLs, limits, timeouts and the refresh
/// period change in place and the cache is kept. Listeners, sockets and
/// paths need a restart.
fn apply(proxy: &Proxy, running: &Config, new: &Config) {
    proxy.reconfigure(new.upstream_timeout, new.cache, new.refresh, new.limits);
    proxy.attribution.set_enabled(new.attribution);
    if (
        &new.listen,
        &new.control,
        &new.rpcbind_socket,
        new.rpcbind_port,
        (new.intercept, new.intercept_mark),
    ) != (
        &running.listen,
        &running.control,
        &running.rpcbind_socket,
        running.rpcbind_port,
        (running.intercept, running.intercept_mark),
    ) {
        warn!("listen, control, rpcbind addresses and intercept change only with a restart");
    }
    info!("configuration reloaded: {}", new.summary());
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
/// go round and it answers a call) and how it is doing (STATUS=), every few
/// seconds.
async fn supervise(
    proxy: Arc<Proxy>,
    probe_at: Option<std::net::SocketAddr>,
    turns: impl Fn() -> (Vec<u64>, Vec<u64>),
    mut shutdown: watch::Receiver<bool>,
) {
    // Per stream loop and per UDP thread: its turn count, and since when it
    // has not moved.
    let since = |counts: Vec<u64>| -> Vec<(u64, tokio::time::Instant)> {
        let now = tokio::time::Instant::now();
        counts.into_iter().map(|t| (t, now)).collect()
    };
    let (streams, udp) = turns();
    let (mut last_streams, mut last_udp) = (since(streams), since(udp));
    let watchdog = systemd::watchdog_interval();
    let period = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).min(Duration::from_secs(5))
    });
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        // Stream loops and UDP threads turn at least once a second, busy
        // or not.
        let (streams, udp) = turns();
        let streams_stuck = stuck(&mut last_streams, streams);
        let udp_stuck = stuck(&mut last_udp, udp);
        if !proxy.healthy() {
            error!("the refresh loop has stalled; withholding the watchdog ping");
        } else if streams_stuck {
            error!(
                "the stream loop (unix and TCP clients) is stuck; withholding the watchdog ping"
            );
        } else if udp_stuck {
            error!("a UDP thread is stuck; withholding the watchdog ping");
        } else if let Some(w) = watchdog {
            match probe_at {
                Some(at) => match answers(at, w / 2).await {
                    Ok(()) => systemd::watchdog(),
                    Err(e) => {
                        error!(listener = %at, error = %e, "the proxy did not answer its own call; withholding the watchdog ping")
                    }
                },
                None => systemd::watchdog(),
            }
        }
        systemd::status(&proxy.status_line());
    }
}

/// Whether a thread's turn count has stayed put for STUCK_AFTER,
/// given the counts now (`last` keeps each count and since when).
fn stuck(last: &mut [(u64, tokio::time::Instant)], counts: Vec<u64>) -> bool {
    let now = tokio::time::Instant::now();
    let mut any = false;
    for (last, count) in last.iter_mut().zip(counts) {
        if count != last.0 {
            *last = (count, now);
        }
        any |= now.duration_since(last.1) > STUCK_AFTER;
    }
    any
}

/// One call to the daemon's own UDP listener, answered by the request path
/// itself (an unknown program: PROG_UNAVAIL, rpcbind not involved). In
/// transparent mode clients wait on the daemon, so the watchdog must see a
/// stalled request path, not only a live timer.
async fn answers(at: std::net::SocketAddr, within: Duration) -> std::io::Result<()> {
    let probe = async {
        let sock = tokio::net::UdpSocket::bind((at.ip(), 0)).await?;
        sock.connect(at).await?;
        let xid = std::process::id() ^ 0x7761_7463;
        sock.send(&crate::protocol::rpc::encode_call(xid, 0, 1, 0, &[]))
            .await?;
        let mut buf = [0u8; 64];
        loop {
            let n = sock.recv(&mut buf).await?;
            if crate::protocol::rpc::xid_of(&buf[..n]) == Some(xid) {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(within, probe)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
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
    // The file was checked on its own when read (its errors name the line):
    // what fails now is a flag.
    Ok(Config::resolve(file, flags).map_err(crate::config::ConfigError::as_flag)?)
}

/// `rpcbind-proxy serve`.
pub fn serve(args: ServeArgs) -> Result<(), StartError> {
    let config = load(&args)?;
    let log = init_logging(&config.log_level);
    let _ = CONFIG_SOURCE.set(args.config_path().map_or_else(
        || {
            format!(
                "none ({} does not exist; defaults and flags)",
                crate::config::DEFAULT_CONFIG
            )
        },
        |p| p.display().to_string(),
    ));
    // Read (and unset) LISTEN_FDS while the process has one thread.
    let inherited = systemd::inherited_sockets().map_err(StartError::Inherited)?;
    // One runtime worker: calls past the cache, UDP clients, control and
    // refresh. Unix and TCP clients have the stream loops' threads; more
    // workers would only add cross-thread wake-ups to every miss.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1);
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

/// Stream loop threads: `threads`, or for 0 one per CPU the process may
/// use, at most [`crate::config::MAX_AUTO_THREADS`].
fn stream_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(crate::config::MAX_AUTO_THREADS)
}
