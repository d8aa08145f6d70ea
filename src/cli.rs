//! The command line: one binary, subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FileConfig, Mark, DEFAULT_CONFIG};
use crate::proxy::listen::{ListenSpec, SpecError};

#[derive(Debug, Parser)]
#[command(
    name = "rpcbind-proxy",
    version,
    about = "A caching, multiplexing proxy in front of rpcbind",
    after_help = "Each command's options: rpcbind-proxy COMMAND --help (e.g. rpcbind-proxy serve --help)."
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
    /// Who is asking, live (like top): clients by rate, with their unit,
    /// command and user; `q` quits.
    Top(TopArgs),
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
    #[arg(long, value_name = "PORT", value_parser = port_arg)]
    pub rpcbind_port: Option<u16>,
    /// The control socket (status, flush) [default:
    /// /run/rpcbind-proxy/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Seconds to wait for rpcbind before answering SYSTEM_ERR [default: 2].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub upstream_timeout: Option<f64>,
    /// Seconds a positive lookup answer is kept (0: not cached) [default: 60].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub ttl: Option<f64>,
    /// Seconds a negative answer (not registered) is kept (0: not cached)
    /// [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub negative_ttl: Option<f64>,
    /// Cache entries kept at most; least recently used are evicted beyond
    /// [default: 65536].
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true)]
    pub max_entries: Option<usize>,
    /// Seconds between registration-list comparisons: a change made directly
    /// at rpcbind shows through the proxy within this time [default: 1].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub refresh: Option<f64>,
    /// Seconds past expiry an entry may still be served while rpcbind is
    /// unreachable (0: never) [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub serve_stale: Option<f64>,
    /// Stream clients connected at once; at the limit a newcomer evicts the
    /// longest-idle connection of the user holding the most [default: 4096].
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true)]
    pub max_connections: Option<usize>,
    /// Calls one stream client may have in flight before the proxy stops
    /// reading from it [default: 64].
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true)]
    pub max_in_flight: Option<usize>,
    /// Seconds a stream client may stay silent with nothing in flight
    /// [default: 120].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub idle_timeout: Option<f64>,
    /// Seconds a client has to finish a record it started [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true)]
    pub record_timeout: Option<f64>,
    /// The largest reply sent as one UDP datagram; bigger ones get what
    /// rpcbind sends then [default: 9000, rpcbind's own].
    #[arg(long, value_name = "BYTES", value_parser = count_arg, allow_negative_numbers = true)]
    pub max_udp_reply: Option<usize>,
    /// Threads serving unix and TCP clients, the stream loops (0: one per
    /// CPU, at most 4) [default: 0]. UDP clients and calls past the cache
    /// have one more thread. Read at start only.
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true)]
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
    /// Do not name the process, user and systemd unit behind each client
    /// (status and `top` then group clients by transport and uid only).
    #[arg(long)]
    pub no_attribution: bool,
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
            attribution: self.no_attribution.then_some(false),
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
    /// WARNING at this many TIME_WAIT sockets involving port 111 (at most
    /// --crit-time-wait).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = count_arg, allow_negative_numbers = true)]
    pub warn_time_wait: usize,
    /// CRITICAL at this many.
    #[arg(long, value_name = "N", default_value_t = 400, value_parser = count_arg, allow_negative_numbers = true)]
    pub crit_time_wait: usize,
    /// WARNING below this cache hit ratio (0 to 1), judged over the daemon's
    /// last 5 minutes once they hold --min-lookups lookups.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = ratio_arg, allow_negative_numbers = true)]
    pub min_hit_ratio: f64,
    /// Lookups the recent window must hold before its hit ratio is judged:
    /// a fresh or quiet daemon's ratio says nothing yet.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = count_arg, allow_negative_numbers = true)]
    pub min_lookups: usize,
}

impl CheckArgs {
    /// Refuses thresholds that make no sense together: one line naming the
    /// values and the valid form.
    pub fn validate(&self) -> Result<(), String> {
        if self.warn_time_wait > self.crit_time_wait {
            return Err(format!(
                "--warn-time-wait {} is above --crit-time-wait {}: the warning threshold must be at most the critical one",
                self.warn_time_wait, self.crit_time_wait
            ));
        }
        Ok(())
    }
}

// The options are global: they go before or after the subcommand
// (`query --socket P getport ...` and `query getport ... --socket P`).
#[derive(Debug, Args)]
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
        /// Program number, e.g. 100003 (nfs).
        prog: u32,
        /// Version number.
        vers: u32,
        /// Transport protocol.
        #[arg(value_parser = ["tcp", "udp"])]
        proto: String,
    },
    /// The universal address of PROG VERS on NETID (rpcbind GETADDR).
    Getaddr {
        /// Program number, e.g. 100003 (nfs).
        prog: u32,
        /// Version number.
        vers: u32,
        /// Network id: tcp, udp, tcp6, udp6 (asked over --inet) or local (over --socket).
        netid: String,
    },
}

/// `generate`: what to write (packaging runs it on the release binary).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, Subcommand)]
pub enum What {
    /// Man pages: rpcbind-proxy.8 and rpcbind-proxy-SUBCOMMAND.8 for each
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

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub control: ControlArg,
    /// Print this many frames as plain text and exit (the default when
    /// standard output is not a terminal: 1).
    #[arg(short = 'n', long = "iterations", value_name = "N")]
    pub iterations: Option<u32>,
    /// Seconds between frames.
    #[arg(short = 'd', long = "delay", value_name = "SECONDS", default_value_t = 1.0,
          value_parser = delay)]
    pub delay: f64,
}

/// A delay between 0.1 and 3600 seconds.
fn delay(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.1..=3600.0).contains(&d) => Ok(d),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// A number of seconds on the command line; the range is checked with the
/// config file's value (`config::seconds`), so both say the same.
fn seconds_arg(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| "expected a number of seconds, e.g. 2 or 0.5".to_string())
}

/// A count (connections, entries, bytes, threads) on the command line.
fn count_arg(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| "expected a whole number, 0 or more, e.g. 4096".to_string())
}

/// A port on the command line (0 is refused with the file's value).
fn port_arg(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| "expected a port number from 1 to 65535".to_string())
}

/// A ratio from 0 to 1.
fn ratio_arg(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| "expected a ratio from 0 to 1, e.g. 0.5".to_string())
}

/// The parsed command line, or the process ends: help and version print as
/// clap prints them; every mistake is one line on stderr naming the bad
/// argument and what is expected (clap's exit status 2 for usage errors).
pub fn or_exit(parsed: Result<Cli, clap::Error>) -> Cli {
    use clap::error::ErrorKind;
    match parsed {
        Ok(cli) => cli,
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) if std::env::args().nth(1).as_deref() == Some("check") => {
            // A monitoring plugin's usage error is UNKNOWN, said on stdout
            // (what the monitoring system shows).
            println!("UNKNOWN: {}", one_line(&e));
            std::process::exit(3)
        }
        Err(e) => {
            eprintln!("rpcbind-proxy: {}", one_line(&e));
            std::process::exit(e.exit_code())
        }
    }
}

/// clap's error as one line: the message and its tips, without the usage
/// block.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines
        .next()
        .unwrap_or("bad command line")
        .trim_start_matches("error: ")
        .to_string();
    for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
        out.push_str("; ");
        out.push_str(tip);
    }
    out.push_str(" (see --help)");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rpcbind-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn query_options_go_before_or_after_the_subcommand() {
        for args in [
            &["query", "--socket", "/p", "getport", "100003", "3", "tcp"][..],
            &["query", "getport", "100003", "3", "tcp", "--socket", "/p"],
            &["query", "--inet", "127.0.0.1:2", "getaddr", "1", "2", "tcp"],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Query(q) = cli.command else {
                panic!("{args:?}")
            };
            assert!(q.lookup.is_some(), "{args:?}");
            if args.contains(&"--socket") {
                assert_eq!(q.socket, PathBuf::from("/p"));
            }
        }
        let Command::Query(q) = parse(&["query", "-p", "--socket", "/p"]).unwrap().command else {
            panic!()
        };
        assert!(q.portmap && q.lookup.is_none());
    }

    /// Every option of every subcommand is in that subcommand's --help;
    /// `generate` (packaging only) stays out of the top-level help.
    #[test]
    fn help_lists_every_option() {
        let mut top = Cli::command();
        let top_help = top.render_help().to_string();
        assert!(!top_help.contains("generate"), "{top_help}");
        assert!(top_help.contains("COMMAND --help"), "{top_help}");
        let mut seen = 0;
        for sub in top.get_subcommands_mut() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut subs: Vec<clap::Command> = vec![sub.clone()];
            subs.extend(sub.get_subcommands().cloned());
            for mut cmd in subs {
                let help = cmd.render_help().to_string();
                for arg in cmd.get_arguments() {
                    if let Some(long) = arg.get_long() {
                        assert!(
                            help.contains(&format!("--{long}")),
                            "{} --help lacks --{long}:\n{help}",
                            cmd.get_name()
                        );
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 25, "{seen}");
        let serve = top
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        for flag in ["--max-udp-reply", "--threads", "--log-level"] {
            assert!(serve.contains(flag), "{serve}");
        }
    }

    #[test]
    fn a_negative_number_is_a_value_in_either_spelling() {
        for args in [&["serve", "--ttl", "-1"][..], &["serve", "--ttl=-1"]] {
            let Command::Serve(s) = parse(args).unwrap().command else {
                panic!()
            };
            assert_eq!(s.ttl, Some(-1.0), "{args:?}");
        }
        for args in [
            &["serve", "--max-connections", "-1"][..],
            &["serve", "--max-connections=-1"],
        ] {
            let e = parse(args).unwrap_err();
            let line = one_line(&e);
            assert!(
                line.contains("'-1'")
                    && line.contains("--max-connections")
                    && line.contains("whole number"),
                "{line}"
            );
        }
    }

    #[test]
    fn check_thresholds_are_refused_when_out_of_range_or_crossed() {
        let e = parse(&["check", "--min-hit-ratio", "1.5"]).unwrap_err();
        let line = one_line(&e);
        assert!(line.contains("1.5") && line.contains("0 to 1"), "{line}");
        let Command::Check(c) = parse(&[
            "check",
            "--warn-time-wait",
            "500",
            "--crit-time-wait",
            "100",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let e = c.validate().unwrap_err();
        assert!(e.contains("500") && e.contains("100"), "{e}");
        let Command::Check(c) = parse(&["check"]).unwrap().command else {
            panic!()
        };
        assert!(c.validate().is_ok());
    }
}
