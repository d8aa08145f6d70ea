//! The daemon's life as a type: [`Daemon::start`] binds, builds and
//! installs everything and hands back the [`Running`] daemon, which serves
//! (applying reloads) until the shutdown token is cancelled and then
//! [`Running::drain`]s, in the one order ARCHITECTURE.md states.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::PoisonError;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::host::netfilter::{InterceptRules, InterceptTable, Redirect};
use crate::host::sys::Inherited;
use crate::host::systemd::{self, Passed};
use crate::proxy::listen::{self, Bound, DatagramThreads, ListenSpec, StreamLoop, UnixSocketFile};
use crate::proxy::policy::Class;
use crate::proxy::service::{Proxy, RpcbindAddr};

use super::control;
use super::error::StartError;
use super::reload::apply;
use super::supervise::supervise;
use super::transparent::{
    intercept_rules, keep_nat_hooks, outbound_listeners, remote_redirect, stand_in_socket,
    INTERCEPT_TABLE, REMOTE_PORT,
};

/// How long a stopping daemon waits for calls in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// Transparent mode, stopping: how long the listeners keep accepting after
/// the redirect stopped catching new flows, so that a client whose
/// connection was redirected just before (its SYN in flight or in the
/// backlog) is still served rather than reset.
const SETTLE: Duration = Duration::from_millis(200);
/// Threads per UDP socket (see where the UDP threads start).
const UDP_THREADS_PER_SOCKET: usize = 1;

/// Runs the daemon until `shutdown` is cancelled: binds `config.listen` (or
/// serves the `inherited` sockets systemd passed instead), applies the
/// configurations that arrive on `reloads`, and on shutdown stops
/// accepting, answers what is in flight (at most 2 s) and removes the unix
/// sockets it created. `config_source` names the config file read, for the
/// start-up line.
pub async fn run(
    config: Config,
    inherited: Passed,
    config_source: &str,
    reloads: mpsc::Receiver<Config>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let running = Daemon::start(config, inherited, config_source, shutdown).await?;
    running.serve(reloads).await;
    running.drain().await;
    Ok(())
}

/// The daemon before it runs: [`Daemon::start`] is the way to a [`Running`]
/// one.
#[derive(Debug)]
pub struct Daemon;

/// A started daemon: its listeners served by their threads, the redirect
/// table (transparent mode) installed, the background tasks going. Each
/// field is kept until [`Running::drain`] has let it go in its turn.
pub struct Running {
    /// The configuration started with: reloads are compared with it.
    config: Config,
    proxy: Arc<Proxy>,
    streams: StreamLoop,
    datagrams: DatagramThreads,
    /// The redirect table (transparent mode), shared with the control
    /// socket that reports its counters.
    intercept: control::SharedTable,
    background: Background,
    shutdown: CancellationToken,
    /// Removes the control socket's file when the daemon is done.
    _control_file: UnixSocketFile,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("streams", &self.streams)
            .field("datagrams", &self.datagrams)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Binds the listeners, builds the proxy, takes the baseline DUMP, starts
    /// the stream loops and UDP threads and (transparent mode) installs the
    /// redirect table, in that order; then tells systemd it is ready. The
    /// background tasks stop when `shutdown` is cancelled.
    pub async fn start(
        config: Config,
        inherited: Passed,
        config_source: &str,
        shutdown: CancellationToken,
    ) -> Result<Running, StartError> {
        // The NAT keeper is wanted only where something keeps the proxy's
        // ports open after this process dies (systemd's socket unit):
        // there, a flow redirected before the death waits for the next
        // daemon. Started by hand, the ports close with the process, and a
        // NAT kept alive would send such a flow (a root client's UDP lookups
        // reuse their source ports) to a closed port: refused.
        let held_by_systemd = !inherited.listeners.is_empty();
        let mut bound = bind(&config, inherited.listeners).await?;
        let mut guard = None;
        if config.intercept_remote {
            let own = remote_listeners(&bound, &config)?;
            guard = (!own.is_empty()).then_some(REMOTE_PORT);
            bound.extend(own);
        }
        let outbound = outbound_listeners(&config).await?;
        let outbound_redirect = outbound.as_ref().map(|(_, r)| *r);
        let metrics_listener = metrics_listener(&config, inherited.metrics)?;
        // Said once the listeners are bound, so that a listener that cannot be
        // had stays the only line of a failed start.
        info!(
            "rpcbind-proxy {} starting; config file {config_source}",
            env!("CARGO_PKG_VERSION"),
        );
        info!("settings: {}", config.summary());
        let specs: Vec<ListenSpec> = bound.iter().map(|(s, _)| s.clone()).collect();
        let public_socket = stand_in_socket(&specs, &config)?;
        let redirects = intercept_rules(&specs, &config, guard, outbound_redirect)?;
        let proxy = build_proxy(&config, public_socket);
        // The client side's listeners join the others after the redirect's
        // choice of listeners, which they are not among.
        let specs = match outbound {
            Some((listeners, redirect)) => {
                proxy.enable_outbound(redirect.port, config.intercept_mark);
                bound.extend(listeners);
                bound.iter().map(|(s, _)| s.clone()).collect()
            }
            None => specs,
        };
        super::attribution::start(&config, &specs, &proxy);
        raise_fd_limit();
        // Connected or not, the upstream says so itself (once).
        let _ = proxy.upstream(Class::Unix).ensure_connected().await;
        let (control, control_file) =
            listen::bind_unix_socket(&config.control)
                .await
                .map_err(|source| StartError::Control {
                    path: config.control.clone(),
                    source,
                })?;
        let intercept: control::SharedTable = Arc::new(std::sync::Mutex::new(None));
        let ctx = control_context(&proxy, &specs, &config, &intercept);
        let mut background = Background::default();
        if let Some(listener) = metrics_listener {
            let addr = listener.local_addr().ok();
            let done = super::metrics::spawn(
                listener,
                ctx.clone(),
                tokio::runtime::Handle::current(),
                shutdown.clone(),
            )
            .map_err(|source| StartError::Metrics {
                addr: addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                source,
            })?;
            background.spawn("metrics", async move {
                let _ = done.await;
            });
        }
        background.spawn(
            "control socket",
            control::serve(control, ctx, shutdown.clone()),
        );

        // A baseline of rpcbind's registrations before clients come, so that a
        // change made right after start-up is seen as one.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        background.spawn(
            "refresh loop",
            proxy.clone().refresh_loop(first_tx, shutdown.clone()),
        );
        let _ = first_rx.await;

        // The loops keep these descriptors (and add copies above them): the
        // redirect table's owner goes above them all.
        let listeners_up_to = bound.iter().map(|(_, b)| b.as_raw_fd()).max().unwrap_or(0);
        let (streams, datagrams) = start_threads(bound, &config, &proxy)?;
        if let Some(rules) = &redirects {
            if held_by_systemd {
                keep_nat_hooks();
            }
            let table = redirect(rules, listeners_up_to)?;
            *intercept.lock().unwrap_or_else(PoisonError::into_inner) = Some(table);
            proxy.set_redirected(config.intercept);
        }
        let probe_at = specs.iter().find_map(|s| match s {
            ListenSpec::Udp(a) if a.ip().is_loopback() => Some(*a),
            _ => None,
        });
        background.spawn(
            "supervision",
            supervise(
                proxy.clone(),
                probe_at,
                {
                    let (streams, udp) = (streams.turn_counter(), datagrams.turn_counter());
                    move || (streams(), udp())
                },
                shutdown.clone(),
            ),
        );
        systemd::ready();
        info!("ready");
        Ok(Running {
            config,
            proxy,
            streams,
            datagrams,
            intercept,
            background,
            shutdown,
            _control_file: control_file,
        })
    }
}

impl Running {
    /// Applies the configurations that arrive on `reloads` until the
    /// shutdown token is cancelled.
    pub async fn serve(&self, mut reloads: mpsc::Receiver<Config>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                new = reloads.recv() => match new {
                    Some(new) => apply(&self.proxy, &self.config, &new),
                    // The signal handler is gone; it cancels the token as it
                    // goes.
                    None => return self.shutdown.cancelled().await,
                },
            }
        }
    }

    /// Stops, in this order: stop redirecting new flows (transparent mode)
    /// and keep accepting for SETTLE; close the stream listeners and drain
    /// their clients (at most DRAIN); remove the redirect table; stop the
    /// UDP threads and wait for their misses' answers (at most DRAIN); join
    /// the background tasks. The redirect table goes after the stream
    /// clients drained (their flows keep their NAT binding until then) and
    /// before the UDP threads stop, so that a datagram of a flow redirected
    /// earlier never finds the port closed.
    pub async fn drain(mut self) {
        self.stop_redirecting().await;
        // Nothing new is accepted; the clients are drained.
        self.streams.stop();
        self.streams.stopped_accepting().await;
        systemd::stopping();
        if let Err(left) = self.proxy.drain(DRAIN).await {
            warn!(
                clients = left,
                "calls still in flight after {DRAIN:?}; closing anyway"
            );
        }
        self.remove_table();
        self.datagrams.stop();
        if tokio::time::timeout(DRAIN, self.datagrams.stopped())
            .await
            .is_err()
        {
            warn!("UDP calls still in flight after {DRAIN:?}; closing anyway");
        }
        self.background.join().await;
        info!("stopped");
    }

    /// Transparent mode: new flows reach rpcbind directly from now on; the
    /// flows redirected just before get SETTLE to be accepted.
    async fn stop_redirecting(&self) {
        let stopped = {
            let mut table = self
                .intercept
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            table.as_mut().map(InterceptTable::stop_redirecting)
        };
        match stopped {
            Some(Ok(())) => {
                info!("stopped redirecting new flows; serving those in flight");
                tokio::time::sleep(SETTLE).await;
            }
            Some(Err(e)) => {
                warn!(error = %e, "cannot stop redirecting; removing the table at exit")
            }
            None => {}
        }
    }

    /// The redirect goes last: flows redirected earlier kept reaching the
    /// proxy (their conntrack NAT binding) while they drained. Removing the
    /// table ends those bindings; the UDP listeners close only after.
    fn remove_table(&self) {
        let table = self
            .intercept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(table) = table {
            match table.remove() {
                Ok(()) => info!("transparent mode off: redirect table removed"),
                Err(e) => {
                    warn!(error = %e, "cannot remove the redirect table; it goes when the daemon exits")
                }
            }
        }
    }
}

/// The daemon's background tasks (control socket, refresh loop,
/// supervision), each of which returns when the shutdown token is
/// cancelled. A task that panicked is said, by name, when they are joined.
#[derive(Default)]
struct Background {
    tasks: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Background {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits for every task, logging each that did not end by returning.
    async fn join(mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined {
                let task = self.names.get(&e.id()).copied().unwrap_or("unknown");
                error!(task, error = %e, "a background task failed");
            }
        }
    }
}

/// The `/metrics` listener: the one systemd passed, else `config.metrics`
/// bound here (None: metrics off).
fn metrics_listener(
    config: &Config,
    passed: Option<std::net::TcpListener>,
) -> Result<Option<std::net::TcpListener>, StartError> {
    if passed.is_some() {
        return Ok(passed);
    }
    config
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr).map_err(|source| StartError::Metrics { addr, source })
        })
        .transpose()
}

/// Binds `config.listen`, or adopts the `inherited` sockets systemd passed
/// instead. A default listener whose address this host does not have (no
/// 127.0.0.1, no ::1) is skipped with a warning while another listener is
/// bound; any other list of listeners (a flag, the config file) must all bind.
async fn bind(
    config: &Config,
    inherited: Vec<Inherited>,
) -> Result<Vec<(ListenSpec, Bound)>, StartError> {
    let mut bound = Vec::new();
    if !inherited.is_empty() {
        for socket in inherited {
            bound.push(listen::adopt(socket).map_err(StartError::Inherited)?);
        }
        let count = bound.len();
        let sockets = bound
            .iter()
            .map(|(s, _)| s.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        if config.listen_set {
            info!(
                count,
                "using the sockets systemd passed: {sockets}; the listen setting (--listen or the config file) is ignored"
            );
        } else {
            info!(count, "using the sockets systemd passed: {sockets}");
        }
        return Ok(bound);
    }
    let mut skipped: Vec<(ListenSpec, std::io::Error)> = Vec::new();
    for spec in &config.listen {
        match listen::bind_among(spec, &config.listen).await {
            Ok(b) => bound.push((spec.clone(), b)),
            Err(e) if !config.listen_set && listen::no_such_address(&e) => {
                let ip = spec_ip(spec);
                if !skipped.iter().any(|(s, _)| spec_ip(s) == ip) {
                    warn!(%spec, error = %e, "this host has no {ip}; skipping the default listeners on it");
                }
                skipped.push((spec.clone(), e));
            }
            Err(source) => {
                return Err(StartError::Listen {
                    spec: spec.clone(),
                    source,
                })
            }
        }
    }
    match skipped.into_iter().next() {
        Some((spec, source)) if bound.is_empty() => Err(StartError::Listen { spec, source }),
        _ => Ok(bound),
    }
}

/// The IP address of a TCP or UDP listener, as the warning names it.
fn spec_ip(spec: &ListenSpec) -> String {
    match spec {
        ListenSpec::Tcp(a) | ListenSpec::Udp(a) => a.ip().to_string(),
        ListenSpec::Unix(p) => p.display().to_string(),
    }
}

/// The proxy as `config` sets it up; `public_socket` is the unix path it
/// stands in for (transparent mode).
fn build_proxy(config: &Config, public_socket: Option<std::path::PathBuf>) -> Arc<Proxy> {
    Proxy::new(
        RpcbindAddr {
            socket: config.rpcbind_socket.clone(),
            port: config.rpcbind_port,
            mark: config.intercept.then_some(config.intercept_mark),
            public_socket,
        },
        config.proxy_settings(),
    )
}

/// What the control socket reports besides the proxy's own counters.
fn control_context(
    proxy: &Arc<Proxy>,
    specs: &[ListenSpec],
    config: &Config,
    intercept: &control::SharedTable,
) -> Arc<control::Context> {
    Arc::new(control::Context {
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
        intercept: (config.intercept || config.intercept_remote || config.intercept_outbound)
            .then(|| (intercept.clone(), config.intercept_mark)),
    })
}

/// Hands the unix and TCP listeners to the stream loops, the UDP sockets to
/// their threads.
fn start_threads(
    bound: Vec<(ListenSpec, Bound)>,
    config: &Config,
    proxy: &Arc<Proxy>,
) -> Result<(StreamLoop, DatagramThreads), StartError> {
    let (mut streams, mut datagrams) = (Vec::new(), Vec::new());
    for (spec, b) in bound {
        info!(address = %spec, "listening");
        match b {
            Bound::Udp(socket) => datagrams.push(socket),
            b => streams.push(b),
        }
    }
    let streams = StreamLoop::start(
        streams,
        stream_threads(config.threads),
        proxy.clone(),
        tokio::runtime::Handle::current(),
    )
    .map_err(StartError::StreamLoop)?;
    // One thread per UDP socket: it takes in one call what came while it
    // worked. Two on two CPUs served fewer lookups (105k/s against 112k/s,
    // measured side by side) for the wake-ups they add.
    let datagrams = DatagramThreads::start(
        datagrams,
        UDP_THREADS_PER_SOCKET,
        proxy.clone(),
        &tokio::runtime::Handle::current(),
    )
    .map_err(StartError::UdpThreads)?;
    Ok((streams, datagrams))
}

/// Installs the redirect table, its owning socket above `listeners_up_to`
/// (see ARCHITECTURE.md, "The order of a death").
fn redirect(rules: &InterceptRules, listeners_up_to: RawFd) -> Result<InterceptTable, StartError> {
    let table = InterceptTable::install(rules, listeners_up_to).map_err(StartError::Intercept)?;
    if rules.ipv4.is_some() {
        info!(
            table = %format!("inet {INTERCEPT_TABLE}"),
            mark = %format!("{:#x}", rules.mark),
            ipv4 = %redirected_to(rules.ipv4),
            ipv6 = %redirected_to(rules.ipv6),
            "transparent mode: local traffic to port 111 is redirected here"
        );
    }
    if let Some(remote) = &rules.remote {
        info!(
            table = %format!("inet {INTERCEPT_TABLE}"),
            interfaces = %remote.interfaces.join(","),
            ipv4 = %redirected_to(remote.ipv4),
            ipv6 = %redirected_to(remote.ipv6),
            "server mode: other hosts' traffic to port 111 on these interfaces is redirected here"
        );
    }
    if let Some(out) = &rules.outbound {
        info!(
            table = %format!("inet {INTERCEPT_TABLE}"),
            ipv4 = out.ipv4,
            ipv6 = out.ipv6,
            port = out.port,
            "client side: this host's TCP connections to other hosts' port 111 are redirected here"
        );
    }
    Ok(table)
}

/// Server mode's listeners, when those bound do not serve the network: a
/// TCP and UDP pair on `[::]` (both families) at [`REMOTE_PORT`].
fn remote_listeners(
    bound: &[(ListenSpec, Bound)],
    config: &Config,
) -> Result<Vec<(ListenSpec, Bound)>, StartError> {
    let specs: Vec<ListenSpec> = bound.iter().map(|(s, _)| s.clone()).collect();
    if remote_redirect(&specs, &config.remote_interface).is_some() {
        return Ok(Vec::new());
    }
    listen::bind_remote(REMOTE_PORT).map_err(|source| StartError::Listen {
        spec: ListenSpec::Tcp((std::net::Ipv6Addr::UNSPECIFIED, REMOTE_PORT).into()),
        source,
    })
}

/// Where one family's port-111 traffic goes, as the log says it:
/// `tcp:1111,udp:1111`, or `none`.
fn redirected_to(redirect: Option<Redirect>) -> String {
    redirect.map_or_else(
        || "none".to_owned(),
        |r| format!("tcp:{},udp:{}", r.tcp_port, r.udp_port),
    )
}

/// Every client connection is a descriptor: raise the soft limit to the
/// hard one, and say so if the connection limit still does not fit.
fn raise_fd_limit() {
    match crate::host::sys::raise_nofile_limit() {
        Ok(n) => info!(nofile = n, "descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the descriptor limit"),
    }
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
