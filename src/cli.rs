//! The command line: one binary, subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{count_arg, Settings, DEFAULT_CONFIG, DEFAULT_LISTEN};
use crate::proxy::listen::{ListenSpec, SpecError};

/// The exit status of a usage or configuration error: a bad flag, a bad
/// value (on the command line or in the config file), an unreadable config
/// file. clap exits with it for what it refuses itself, and every command
/// exits with it for what is refused after clap, so that a script tells
/// "fix the command or the file" (2) from "it failed" (1).
pub const EXIT_USAGE: u8 = 2;
/// The exit status of a failure at run time: a port in use, a daemon that
/// cannot be reached, a host that refused a change.
pub const EXIT_FAILURE: u8 = 1;

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
    #[arg(long, value_name = "FILE",
          help = format!("TOML config file (default: {DEFAULT_CONFIG} when it exists)"))]
    pub config: Option<PathBuf>,
    // Parsed after clap so that a bad spec is one line naming it, like every
    // other start-up error.
    #[arg(long, value_name = "SPEC",
          help = format!("Listener: unix:PATH, tcp:HOST:PORT or udp:HOST:PORT (HOST: an IP address, \
                          IPv6 in brackets, or a name, resolved at start-up to every address it \
                          has). Repeatable; any --listen replaces all the defaults ({})",
                          DEFAULT_LISTEN.join(", ")))]
    pub listen: Vec<String>,
    /// Check the configuration (the file and these flags) and exit: 0 and
    /// one line when it is good, else the error and the exit status (2)
    /// start-up would give. Binds nothing and needs no privilege beyond
    /// reading the file.
    #[arg(long)]
    pub check_config: bool,
    /// Every other setting, each a flag and a config key.
    #[command(flatten)]
    pub settings: Settings,
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
    pub fn as_layer(&self) -> Result<Settings, SpecError> {
        let mut listen: Vec<ListenSpec> = Vec::new();
        for spec in &self.listen {
            listen.extend(ListenSpec::resolve(spec)?);
        }
        Ok(Settings {
            listen: (!listen.is_empty()).then_some(listen),
            ..self.settings.clone()
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
        /// Program number or name from /etc/rpc, e.g. 100003 or nfs.
        #[arg(value_parser = crate::ops::query::program_arg)]
        prog: u32,
        /// Version number.
        vers: u32,
        /// Transport protocol.
        #[arg(value_parser = ["tcp", "udp"])]
        proto: String,
    },
    /// The universal address of PROG VERS on NETID (rpcbind GETADDR).
    Getaddr {
        /// Program number or name from /etc/rpc, e.g. 100003 or nfs.
        #[arg(value_parser = crate::ops::query::program_arg)]
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
    /// With --remote, server mode too; with --outbound, the client side.
    /// Idempotent; no client is refused
    /// meanwhile.
    Enable(EnableArgs),
    /// Undo `enable`: /run/rpcbind.sock back to rpcbind, the drop-ins
    /// removed, the daemon restarted on its defaults. Idempotent.
    Disable,
    /// Which parts of transparent mode are in place (exit 0 on, 3 off, 1
    /// partly on).
    Status,
    /// Hand /run/rpcbind.sock back to rpcbind while the daemon is down (the
    /// unix fail-safe).
    ///
    /// The service runs it after every stop: unless the daemon stopped
    /// cleanly ($SERVICE_RESULT `success`), /run/rpcbind.sock becomes
    /// rpcbind's live socket again in one rename (the proxy's socket keeps a
    /// second name), so unix clients reach rpcbind while the daemon is down;
    /// a second failure before the daemon was ready stops
    /// rpcbind-proxy.socket. Without systemd, run it when the daemon exits.
    /// Does nothing with transparent mode off; idempotent.
    FailOpen,
    /// Point /run/rpcbind.sock at rpcbind-proxy again after `fail-open`.
    ///
    /// The service runs it once the daemon is ready. Idempotent.
    Reclaim,
}

/// `intercept enable`'s options: the whole of what is wanted (enabling
/// again without --remote turns server mode off, without --outbound the
/// client side).
#[derive(Debug, Default, Args)]
pub struct EnableArgs {
    /// Server mode as well: other hosts' port-111 traffic arriving on this
    /// interface goes through the proxy too (repeatable; the daemon runs
    /// with --intercept-remote --remote-interface IF)
    #[arg(long = "remote", value_name = "IF", value_parser = crate::config::interface_arg)]
    pub remote: Vec<String>,
    /// The client side as well: this host's TCP lookups at other hosts'
    /// rpcbind go through the proxy too (the daemon runs with
    /// --intercept-outbound)
    #[arg(long)]
    pub outbound: bool,
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

    /// `query` asks the proxy where `serve` listens by default.
    #[test]
    fn query_defaults_are_the_default_listeners() {
        let Command::Query(q) = parse(&["query", "-p"]).unwrap().command else {
            panic!()
        };
        let unix = format!("unix:{}", q.socket.display());
        let tcp = format!("tcp:{}", q.inet);
        assert!(DEFAULT_LISTEN.contains(&unix.as_str()), "{unix}");
        assert!(DEFAULT_LISTEN.contains(&tcp.as_str()), "{tcp}");
    }

    #[test]
    fn a_negative_number_is_a_value_in_either_spelling() {
        for args in [&["serve", "--ttl", "-1"][..], &["serve", "--ttl=-1"]] {
            let Command::Serve(s) = parse(args).unwrap().command else {
                panic!()
            };
            assert_eq!(s.settings.ttl, Some(-1.0), "{args:?}");
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
