//! Every setting of `serve`, declared once: one field is both the
//! command-line flag and the config file key, its help states the default
//! and range from the constants below, which validation and the example
//! config's test use too.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::proxy::cache::CacheConfig;
use crate::proxy::limits::LimitsConfig;
use crate::proxy::listen::ListenSpec;

pub const DEFAULT_CONFIG: &str = "/etc/rpcbind-proxy/config.toml";
/// The default listeners. Those on an address the host does not have (no
/// `::1`, no `127.0.0.1`) are skipped, with one warning per address, as long
/// as another is bound; any other list (a flag, the config file) must bind
/// every listener.
pub const DEFAULT_LISTEN: [&str; 5] = [
    "unix:/run/rpcbind-proxy/rpcbind.sock",
    "tcp:127.0.0.1:1111",
    "udp:127.0.0.1:1111",
    "tcp:[::1]:1111",
    "udp:[::1]:1111",
];
pub const DEFAULT_RPCBIND_SOCKET: &str = "/run/rpcbind.sock";
pub const DEFAULT_RPCBIND_PORT: u16 = 111;
pub const DEFAULT_CONTROL: &str = "/run/rpcbind-proxy/control.sock";
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// The packet mark of the daemon's own sockets to rpcbind in transparent
/// mode ("RP" in ASCII): the redirect rules let marked packets through.
pub const DEFAULT_INTERCEPT_MARK: u32 = 0x5250;
/// The nftables table (family inet, not owned) that the daemon makes in
/// transparent mode to keep the kernel's NAT hooks on once its own table is
/// gone; it outlives the daemon and `intercept disable` removes it.
pub const NAT_KEEPER_TABLE: &str = "rpcbind_proxy_nat";
/// Stream loops, one per CPU (at most [`MAX_AUTO_THREADS`]): on the 2-core
/// machine the load harness runs on, two loops answered 1.05x the zero-work
/// floor's TCP hits against 0.73x for one (BENCHMARKS.md).
pub const DEFAULT_THREADS: usize = 0;
/// What "one per CPU" is capped at: every loop wakes for every new
/// connection (they share the listening sockets), so more loops cost each
/// connection more wake-ups than they save.
pub const MAX_AUTO_THREADS: usize = 4;
/// Bounds on counts that size things: a typo's extra zeros are refused.
pub const ENTRIES_RANGE: RangeInclusive<usize> = 1..=1 << 24;
pub const THREADS_RANGE: RangeInclusive<usize> = 0..=1024;
/// Calls a second per other host (0: no limit).
pub const REMOTE_RATE_RANGE: RangeInclusive<usize> = 0..=1_000_000;
/// `remote-in-flight`: 0 (no limit) to a host's share of a busy rpcbind.
pub const REMOTE_IN_FLIGHT_RANGE: RangeInclusive<usize> = 0..=65_536;
/// How many times a call's size a reply to another host's UDP call may be.
pub const AMPLIFICATION_RANGE: RangeInclusive<usize> = 1..=1000;
/// Below 512 a datagram could not hold a DUMP header; above 65507 it is no
/// longer one UDP/IPv4 datagram.
pub const UDP_REPLY_RANGE: RangeInclusive<usize> = 512..=65507;

/// The settings of one layer: the config file as written, or the flags as
/// given. Every field is optional (unset: the layer below decides), so
/// defaults < file < flags; unknown keys are refused so that a typo never
/// silently keeps a default.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    // On the command line --listen is parsed after clap (see `ServeArgs`),
    // so that a bad spec is one start-up error like the others.
    #[arg(skip)]
    #[serde(default, deserialize_with = "listen_specs")]
    pub listen: Option<Vec<ListenSpec>>,
    #[arg(long, value_name = "PATH",
          help = with_default("rpcbind's unix socket", DEFAULT_RPCBIND_SOCKET))]
    pub rpcbind_socket: Option<PathBuf>,
    #[arg(long, value_name = "PORT", value_parser = port_arg,
          help = with_default("rpcbind's TCP and UDP port on loopback", DEFAULT_RPCBIND_PORT))]
    pub rpcbind_port: Option<u16>,
    #[arg(long, value_name = "PATH",
          help = with_default("The control socket (status, flush)", DEFAULT_CONTROL))]
    pub control: Option<PathBuf>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default("Seconds to wait for rpcbind before answering SYSTEM_ERR",
                              secs(DEFAULT_UPSTREAM_TIMEOUT)))]
    pub upstream_timeout: Option<f64>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default("Seconds a positive lookup answer is kept (0: not cached)",
                              secs(CacheConfig::DEFAULT.ttl)))]
    pub ttl: Option<f64>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default("Seconds a negative answer (not registered) is kept (0: not cached)",
                              secs(CacheConfig::DEFAULT.negative_ttl)))]
    pub negative_ttl: Option<f64>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default("Cache entries kept at most; least recently used are evicted beyond",
                              CacheConfig::DEFAULT.max_entries))]
    pub max_entries: Option<usize>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default(concat!("Seconds between registration-list comparisons: a change made ",
                                      "directly at rpcbind shows through the proxy within this time"),
                              secs(DEFAULT_REFRESH)))]
    pub refresh: Option<f64>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default(concat!("Seconds past expiry an entry may still be served while rpcbind ",
                                      "is unreachable (0: never)"),
                              secs(CacheConfig::DEFAULT.serve_stale)))]
    pub serve_stale: Option<f64>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default(concat!("Stream clients connected at once; at the limit a newcomer evicts ",
                                      "the longest-idle connection of the user holding the most"),
                              LimitsConfig::DEFAULT.max_connections))]
    pub max_connections: Option<usize>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default(concat!("Calls one stream client may have in flight before the proxy ",
                                      "stops reading from it"),
                              LimitsConfig::DEFAULT.max_in_flight))]
    pub max_in_flight: Option<usize>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default("Seconds a stream client may stay silent with nothing in flight",
                              secs(LimitsConfig::DEFAULT.idle_timeout)))]
    pub idle_timeout: Option<f64>,
    #[arg(long, value_name = "SECONDS", value_parser = seconds_arg, allow_negative_numbers = true,
          help = with_default("Seconds a client has to finish a record it started",
                              secs(LimitsConfig::DEFAULT.record_timeout)))]
    pub record_timeout: Option<f64>,
    #[arg(long, value_name = "BYTES", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default(concat!("The largest reply sent as one UDP datagram; bigger ones get ",
                                      "what rpcbind sends then"),
                              format!("{}, rpcbind's own", LimitsConfig::DEFAULT.max_udp_reply)))]
    pub max_udp_reply: Option<usize>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default(concat!("Server mode: a reply to another host's UDP call is at most N ",
                                      "times the call's size (a DUMP is the classic reflection); a ",
                                      "bigger one gets what a reply too large for UDP gets ",
                                      "(v2: nothing, v3/v4: SYSTEM_ERR)"),
                              LimitsConfig::DEFAULT.remote_udp_amplification))]
    pub remote_udp_amplification: Option<usize>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default(concat!("Server mode: calls a second each other host may make, with a ",
                                      "burst of twice that (0: no limit); beyond, a datagram is ",
                                      "dropped and a TCP connection closed"),
                              LimitsConfig::DEFAULT.remote_rate))]
    pub remote_rate: Option<usize>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = with_default(concat!("Server mode: calls each other host may have waiting for rpcbind ",
                                      "at once, over all its connections (0: no limit); beyond, a ",
                                      "datagram is dropped and a TCP connection closed"),
                              LimitsConfig::DEFAULT.remote_in_flight))]
    pub remote_in_flight: Option<usize>,
    #[arg(long, value_name = "N", value_parser = count_arg, allow_negative_numbers = true,
          help = format!("Threads serving unix and TCP clients, the stream loops (0: one per CPU, \
                          at most {MAX_AUTO_THREADS}) [default: {DEFAULT_THREADS}]. UDP clients \
                          and calls past the cache have one more thread. Read at start only"))]
    pub threads: Option<usize>,
    #[arg(long, value_name = "LEVEL", value_parser = LogLevelArg, hide_possible_values = true,
          help = with_default("Log level (error, warn, info, debug, trace) or a tracing filter",
                              DEFAULT_LOG_LEVEL))]
    pub log_level: Option<String>,
    // Set by the flag alone (`--intercept`, no value) or `intercept = true`.
    #[arg(long, num_args = 0, default_missing_value = "true",
          help = concat!("Transparent mode: catch local clients' traffic to 127.0.0.1:111 and ",
                         "[::1]:111 with an nftables table the kernel removes when the daemon exits ",
                         "(needs CAP_NET_ADMIN, Linux >= 5.12). rpcbind's unix socket must then be ",
                         "elsewhere (--rpcbind-socket) and the proxy listen on /run/rpcbind.sock"))]
    pub intercept: Option<bool>,
    #[arg(long, value_name = "MARK",
          help = with_default(concat!("The packet mark of the daemon's own connections to rpcbind, ",
                                      "which the redirect lets through"),
                              Mark(DEFAULT_INTERCEPT_MARK)))]
    pub intercept_mark: Option<Mark>,
    // Set by the flag alone (`--intercept-remote`) or `intercept-remote = true`.
    #[arg(long, num_args = 0, default_missing_value = "true",
          help = concat!("Server mode: catch other hosts' traffic to this host's port 111 arriving on ",
                         "the --remote-interface interfaces, in the same kernel-removed nftables ",
                         "table; the proxy answers them as rpcbind would and refuses their ",
                         "registrations. Read at start only"))]
    pub intercept_remote: Option<bool>,
    #[arg(long, value_name = "IF", value_parser = interface_arg,
          help = concat!("An interface whose port-111 traffic server mode catches (repeatable; ",
                         "none unless given: --intercept-remote needs at least one)"))]
    pub remote_interface: Option<Vec<String>>,
    // Set by the flag alone (`--intercept-outbound`) or `intercept-outbound = true`.
    #[arg(long, num_args = 0, default_missing_value = "true",
          help = concat!("Client side: catch this host's TCP connections to other hosts' port 111 ",
                         "in the same kernel-removed nftables table and send their calls over one ",
                         "persistent connection per server, closing each client with a reset (no ",
                         "TIME_WAIT, no reserved port held). Answers are not cached. Read at start only"))]
    pub intercept_outbound: Option<bool>,
    // On by default; off with `--no-attribution` or `attribution = false`.
    #[arg(long = "no-attribution", num_args = 0, default_missing_value = "false",
          help = concat!("Do not name the process, user and systemd unit behind each client ",
                         "(status and `top` then group clients by transport and uid only)"))]
    pub attribution: Option<bool>,
    // On by default; off with `--no-attribution-ebpf` or
    // `attribution-ebpf = false`.
    #[arg(long = "no-attribution-ebpf", num_args = 0, default_missing_value = "false",
          help = concat!("Name clients by searching /proc only, without the eBPF program that ",
                         "records who opens each client socket (which needs CAP_BPF and ",
                         "CAP_NET_ADMIN, Linux >= 5.7)"))]
    pub attribution_ebpf: Option<bool>,
    #[arg(long, value_name = "tcp:IP:PORT",
          help = concat!("Serve Prometheus metrics over HTTP at /metrics on this address, e.g. ",
                         "tcp:127.0.0.1:9111 (off unless set). Read at start only"))]
    pub metrics: Option<MetricsAddr>,
}

/// Where `/metrics` is served: `tcp:IP:PORT`, the listener syntax with the
/// one transport HTTP takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MetricsAddr(pub std::net::SocketAddr);

impl std::str::FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MetricsAddr, String> {
        let bad = |why: &str| {
            format!(
                "bad metrics address {s:?}: {why} (expected tcp:IP:PORT, e.g. tcp:127.0.0.1:9111)"
            )
        };
        // The listener syntax, read by its own parser (its reasons: no
        // prefix, a port out of range, IPv6 without brackets, ...).
        match s.parse::<ListenSpec>() {
            Ok(ListenSpec::Tcp(a)) if a.port() == 0 => Err(bad("port 0")),
            Ok(ListenSpec::Tcp(a)) => Ok(MetricsAddr(a)),
            Ok(_) => Err(bad("HTTP is served over TCP only")),
            Err(e) => Err(bad(&e.why)),
        }
    }
}

impl TryFrom<String> for MetricsAddr {
    type Error = String;
    fn try_from(s: String) -> Result<MetricsAddr, String> {
        s.parse()
    }
}

/// `--log-level`: any text (a tracing filter such as `rpcbind_proxy=debug`
/// is checked with the file's value), but the levels are its possible
/// values, so that every shell's completion offers them instead of file
/// names.
#[derive(Debug, Clone, Copy)]
struct LogLevelArg;

impl clap::builder::TypedValueParser for LogLevelArg {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["error", "warn", "info", "debug", "trace", "off"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// The file's `listen`: each spec, a host name resolved to every address it
/// has (as on the command line).
fn listen_specs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<ListenSpec>>, D::Error> {
    let mut specs = Vec::new();
    for s in Vec::<String>::deserialize(d)? {
        specs.extend(ListenSpec::resolve(&s).map_err(serde::de::Error::custom)?);
    }
    Ok(Some(specs))
}

/// A flag's help with its default, as clap would print it.
fn with_default(help: &str, default: impl Display) -> String {
    format!("{help} [default: {default}]")
}

/// Whole seconds as the user writes them (`60`, not `60s` or `60.0`).
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A value on the command line that is not even of the right kind, named
/// by clap; the range is checked later with the file's values, so that
/// both say the same.
pub(crate) fn parsed<T: std::str::FromStr>(s: &str, expected: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| expected.to_string())
}

fn seconds_arg(s: &str) -> Result<f64, String> {
    parsed(s, "expected a number of seconds, e.g. 2 or 0.5")
}

/// A count (connections, entries, bytes, threads) on the command line.
pub(crate) fn count_arg(s: &str) -> Result<usize, String> {
    parsed(s, "expected a whole number, 0 or more, e.g. 4096")
}

/// A network interface name as Linux takes one (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, without `/`, `:` or white space.
pub fn interface_arg(s: &str) -> Result<String, String> {
    let valid = (1..IFNAMSIZ).contains(&s.len())
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "bad interface name {s:?}: expected a network interface's name, 1 to 15 characters without '/', ':' or spaces, e.g. eth0"
        ))
    }
}

/// Linux's interface name size, terminating NUL included.
pub const IFNAMSIZ: usize = 16;

/// A port on the command line (0 is refused with the file's value).
fn port_arg(s: &str) -> Result<u16, String> {
    parsed(s, "expected a port number from 1 to 65535")
}

/// A packet mark (SO_MARK): a decimal or 0x-prefixed hexadecimal u32, not 0
/// (0 is every unmarked packet's mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct Mark(pub u32);

impl std::str::FromStr for Mark {
    type Err = String;
    fn from_str(s: &str) -> Result<Mark, String> {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => s.parse(),
        };
        match parsed {
            Ok(0) | Err(_) => Err(format!(
                "bad intercept mark {s:?}: expected a non-zero 32-bit number, decimal or 0x-hex (e.g. 0x5250)"
            )),
            Ok(m) => Ok(Mark(m)),
        }
    }
}

impl TryFrom<toml::Value> for Mark {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Mark, String> {
        match v {
            toml::Value::Integer(n) => u32::try_from(n)
                .ok()
                .filter(|&n| n != 0)
                .map(Mark)
                .ok_or_else(|| format!("bad intercept-mark {n}: expected 1 to 4294967295")),
            toml::Value::String(s) => s.parse(),
            other => Err(format!(
                "bad intercept-mark {other}: expected a number or a string such as \"0x5250\""
            )),
        }
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The valid log levels, as said when one is not.
pub const LOG_LEVELS: &str = "a level (error, warn, info, debug, trace, off) or a tracing filter directive such as rpcbind_proxy=debug,info";

/// What each key takes, as said when a value is not that; the ranges are
/// the ones validation applies.
pub fn expected(key: &str) -> Option<String> {
    let (entries, threads, udp) = (ENTRIES_RANGE, THREADS_RANGE, UDP_REPLY_RANGE);
    Some(match key {
        "listen" => "a non-empty list of \"unix:PATH\", \"unix:@NAME\", \"tcp:HOST:PORT\" or \"udp:HOST:PORT\" strings (HOST: an IP address, IPv6 in brackets, or a name)".into(),
        "rpcbind-socket" | "control" => "an absolute path in quotes, e.g. \"/run/rpcbind.sock\"".into(),
        "rpcbind-port" => "a port number from 1 to 65535, e.g. 111".into(),
        "upstream-timeout" | "refresh" | "idle-timeout" | "record-timeout" => {
            "a positive number of seconds without a unit, e.g. 2 or 0.5".into()
        }
        "ttl" | "negative-ttl" => {
            "a number of seconds without a unit, e.g. 60 or 0.5; 0 turns caching of these answers off".into()
        }
        "serve-stale" => "a number of seconds without a unit, e.g. 30; 0: never".into(),
        "max-entries" => format!(
            "a whole number from {} to {} (to turn the cache off, set ttl and negative-ttl to 0)",
            entries.start(),
            entries.end()
        ),
        "max-connections" | "max-in-flight" => "a whole number, 1 or more".into(),
        "max-udp-reply" => format!("a number of bytes from {} to {}", udp.start(), udp.end()),
        "remote-rate" => format!(
            "a whole number of calls a second from {} (no limit) to {}",
            REMOTE_RATE_RANGE.start(),
            REMOTE_RATE_RANGE.end()
        ),
        "remote-in-flight" => format!(
            "a whole number of calls from {} (no limit) to {}",
            REMOTE_IN_FLIGHT_RANGE.start(),
            REMOTE_IN_FLIGHT_RANGE.end()
        ),
        "remote-udp-amplification" => format!(
            "a whole number from {} to {} (times the call's size)",
            AMPLIFICATION_RANGE.start(),
            AMPLIFICATION_RANGE.end()
        ),
        "threads" => format!(
            "a whole number from {} (one per CPU, at most {MAX_AUTO_THREADS}) to {}",
            threads.start(),
            threads.end()
        ),
        "log-level" => LOG_LEVELS.into(),
        "intercept" | "intercept-remote" | "attribution" | "attribution-ebpf" => "true or false".into(),
        "remote-interface" => "a list of interface names in quotes, each 1 to 15 characters without '/', ':' or spaces, e.g. [\"eth0\"]".into(),
        "metrics" => "a \"tcp:IP:PORT\" string, e.g. \"tcp:127.0.0.1:9111\"".into(),
        "intercept-mark" => "a non-zero 32-bit number, decimal or a \"0x...\" hex string".into(),
        _ => return None,
    })
}
