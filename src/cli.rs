//! The command line: one binary, subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FileConfig, Mark, DEFAULT_CONFIG};
use crate::proxy::listen::{ListenSpec, SpecError};

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

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Show what the daemon is doing: hit ratio, cache, upstream, clients.
    Status(StatusArgs),
    /// Drop cached answers (all, or one program's); needs root.
    Flush(FlushArgs),
    /// Monitoring-plugin check (Nagios/Icinga exit codes).
    Check(CheckArgs),
    /// Ask rpcbind through the proxy, printing like rpcinfo.
    Query(QueryArgs),
    /// Transparent mode on a systemd host: enable, disable, status (root
    /// for enable/disable).
    Intercept(InterceptArgs),
    /// Write man pages or shell completions (packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (default: /etc/rpcbind-proxy/config.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listener: unix:PATH, tcp:HOST:PORT or udp:HOST:PORT. Repeatable; any
    /// --listen replaces all the defaults (unix:/run/rpcbind-proxy/rpcbind.sock,
    /// tcp:127.0.0.1:1111, udp:127.0.0.1:1111, tcp:[::1]:1111, udp:[::1]:1111).
    // Parsed after clap so that a bad spec is one line naming it, like every
    // other start-up error.
    #[arg(long, value_name = "SPEC")]
    pub listen: Vec<String>,
    /// rpcbind's unix socket [default: /run/rpcbind.sock].
    #[arg(long, value_name = "PATH")]
    pub rpcbind_socket: Option<PathBuf>,
    /// rpcbind's TCP and UDP port on loopback [default: 111].
    #[arg(long, value_name = "PORT")]
    pub rpcbind_port: Option<u16>,
    /// The control socket (status, flush) [default:
    /// /run/rpcbind-proxy/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Seconds to wait for rpcbind before answering SYSTEM_ERR [default: 2].
    #[arg(long, value_name = "SECONDS")]
    pub upstream_timeout: Option<f64>,
    /// Seconds a positive lookup answer is kept (0: not cached) [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<f64>,
    /// Seconds a negative answer (not registered) is kept (0: not cached)
    /// [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub negative_ttl: Option<f64>,
    /// Cache entries kept at most; least recently used are evicted beyond
    /// [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_entries: Option<usize>,
    /// Seconds between registration-list comparisons: a change made directly
    /// at rpcbind shows through the proxy within this time [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub refresh: Option<f64>,
    /// Seconds past expiry an entry may still be served while rpcbind is
    /// unreachable (0: never) [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub serve_stale: Option<f64>,
    /// Stream clients connected at once; at the limit a newcomer evicts the
    /// longest-idle connection of the user holding the most [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Calls one stream client may have in flight before the proxy stops
    /// reading from it [default: 64].
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Seconds a stream client may stay silent with nothing in flight
    /// [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<f64>,
    /// Seconds a client has to finish a record it started [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub record_timeout: Option<f64>,
    /// The largest reply sent as one UDP datagram; bigger ones get what
    /// rpcbind sends then [default: 9000, rpcbind's own].
    #[arg(long, value_name = "BYTES")]
    pub max_udp_reply: Option<usize>,
    /// Worker threads serving clients (0: one per CPU) [default: 1]. Read at
    /// start only.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter
    /// [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Transparent mode: catch local clients' traffic to 127.0.0.1:111 and
    /// [::1]:111 with an nftables table the kernel removes when the daemon
    /// exits (needs CAP_NET_ADMIN, Linux >= 5.12). rpcbind's unix socket
    /// must then be elsewhere (--rpcbind-socket) and the proxy listen on
    /// /run/rpcbind.sock.
    #[arg(long)]
    pub intercept: bool,
    /// The packet mark of the daemon's own connections to rpcbind, which the
    /// redirect lets through [default: 0x5250].
    #[arg(long, value_name = "MARK")]
    pub intercept_mark: Option<Mark>,
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
            log_level: self.log_level.clone(),
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            idle_timeout: self.idle_timeout,
            record_timeout: self.record_timeout,
            max_udp_reply: self.max_udp_reply,
            threads: self.threads,
            intercept: self.intercept.then_some(true),
            intercept_mark: self.intercept_mark,
        })
    }
}

/// Where the daemon's control socket is.
#[derive(Debug, Args)]
pub struct ControlArg {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_CONTROL)]
    pub control: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArg,
    /// One JSON object.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Prometheus text exposition format.
    #[arg(long)]
    pub prometheus: bool,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    #[command(flatten)]
    pub control: ControlArg,
    /// Only this program's entries.
    #[arg(long, value_name = "N")]
    pub program: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub control: ControlArg,
    /// WARNING at this many TIME_WAIT sockets involving port 111.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub warn_time_wait: usize,
    /// CRITICAL at this many.
    #[arg(long, value_name = "N", default_value_t = 400)]
    pub crit_time_wait: usize,
    /// WARNING below this cache hit ratio (0 to 1; checked once there were lookups).
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub min_hit_ratio: f64,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct QueryArgs {
    /// The proxy's unix socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/rpcbind-proxy/rpcbind.sock",
        global = true
    )]
    pub socket: PathBuf,
    /// The proxy's TCP/UDP address, for `getaddr` on an IP netid (rpcbind
    /// answers GETADDR by the transport the question arrives on).
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:1111",
        global = true
    )]
    pub inet: std::net::SocketAddr,
    /// The portmapper list, as `rpcinfo -p` prints it.
    #[arg(short = 'p', conflicts_with = "short")]
    pub portmap: bool,
    /// The registration summary, as `rpcinfo -s` prints it.
    #[arg(short = 's')]
    pub short: bool,
    #[command(subcommand)]
    pub lookup: Option<QueryLookup>,
}

#[derive(Debug, Subcommand)]
pub enum QueryLookup {
    /// The port of PROG VERS on tcp or udp (portmapper GETPORT).
    Getport {
        prog: u32,
        vers: u32,
        #[arg(value_parser = ["tcp", "udp"])]
        proto: String,
    },
    /// The universal address of PROG VERS on NETID (rpcbind GETADDR).
    Getaddr { prog: u32, vers: u32, netid: String },
}

/// `generate`: what to write (packaging runs it on the release binary).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, Subcommand)]
pub enum What {
    /// Man pages: rpcbind-proxy.1 and rpcbind-proxy-SUBCOMMAND.1 for each
    /// subcommand, into DIR (created if missing).
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Shell completions for bash (rpcbind-proxy.bash), zsh (_rpcbind-proxy)
    /// and fish (rpcbind-proxy.fish), into DIR (created if missing).
    Completions {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `intercept`: transparent mode under systemd.
#[derive(Debug, Args)]
pub struct InterceptArgs {
    #[command(subcommand)]
    pub action: InterceptAction,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(Debug, Subcommand)]
pub enum InterceptAction {
    /// Move rpcbind's unix socket aside, give /run/rpcbind.sock and [::1] to
    /// rpcbind-proxy.socket and restart the daemon with --intercept: local
    /// clients of port 111 and /run/rpcbind.sock then go through the proxy.
    /// Idempotent; no client is refused meanwhile.
    Enable,
    /// Undo `enable`: /run/rpcbind.sock back to rpcbind, the drop-ins
    /// removed, the daemon restarted on its defaults. Idempotent.
    Disable,
    /// Which parts of transparent mode are in place (exit 0 on, 3 off, 1
    /// partly on).
    Status,
}
