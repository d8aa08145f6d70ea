//! Serve options: defaults, overlaid by the TOML config file, overlaid by
//! command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::proxy::cache::CacheConfig;
use crate::proxy::limits::LimitsConfig;
use crate::proxy::listen::ListenSpec;

pub const DEFAULT_CONFIG: &str = "/etc/rpcbind-proxy/config.toml";
/// The default listeners. The IPv6 loopback ones are skipped, with one
/// warning, on a host without `::1`.
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
pub const DEFAULT_UPSTREAM_TIMEOUT: f64 = 2.0;
pub const DEFAULT_TTL: f64 = 60.0;
pub const DEFAULT_NEGATIVE_TTL: f64 = 10.0;
pub const DEFAULT_MAX_ENTRIES: usize = 65536;
pub const DEFAULT_REFRESH: f64 = 1.0;
pub const DEFAULT_SERVE_STALE: f64 = 30.0;
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// The packet mark of the daemon's own sockets to rpcbind in transparent
/// mode ("RP" in ASCII): the redirect rules let marked packets through.
pub const DEFAULT_INTERCEPT_MARK: u32 = 0x5250;
/// Stream loops, one per CPU (at most [`MAX_AUTO_THREADS`]): on the 2-core
/// machine the load harness runs on, two loops answered 1.05x the zero-work
/// floor's TCP hits against 0.73x for one (BENCHMARKS.md).
pub const DEFAULT_THREADS: usize = 0;
/// What "one per CPU" is capped at: every loop wakes for every new
/// connection (they share the listening sockets), so more loops cost each
/// connection more wake-ups than they save.
pub const MAX_AUTO_THREADS: usize = 4;
/// Bounds on counts that size things: a typo's extra zeros are refused.
pub const MAX_MAX_ENTRIES: usize = 1 << 24;
pub const MAX_THREADS: usize = 1024;

/// The config file as written. Every key is optional; unknown keys are
/// refused so a typo never silently keeps a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<Vec<ListenSpec>>,
    pub rpcbind_socket: Option<PathBuf>,
    pub rpcbind_port: Option<u16>,
    pub control: Option<PathBuf>,
    pub upstream_timeout: Option<f64>,
    pub ttl: Option<f64>,
    pub negative_ttl: Option<f64>,
    pub max_entries: Option<usize>,
    pub refresh: Option<f64>,
    pub serve_stale: Option<f64>,
    pub log_level: Option<String>,
    pub max_connections: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub idle_timeout: Option<f64>,
    pub record_timeout: Option<f64>,
    pub max_udp_reply: Option<usize>,
    pub threads: Option<usize>,
    pub intercept: Option<bool>,
    pub intercept_mark: Option<Mark>,
    pub attribution: Option<bool>,
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

/// The effective configuration of `serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<ListenSpec>,
    pub rpcbind_socket: PathBuf,
    pub rpcbind_port: u16,
    pub control: PathBuf,
    pub upstream_timeout: Duration,
    pub cache: CacheConfig,
    /// How often the registration list is compared (coherence).
    pub refresh: Duration,
    /// A level (error, warn, info, debug, trace) or a tracing filter.
    pub log_level: String,
    pub limits: LimitsConfig,
    /// Stream loop threads (unix and TCP clients); 0: one per CPU, at most
    /// [`MAX_AUTO_THREADS`].
    pub threads: usize,
    /// Transparent mode: redirect local traffic to port 111 here.
    pub intercept: bool,
    /// The mark of the daemon's own upstream sockets in transparent mode.
    pub intercept_mark: u32,
    /// Name the process, user and unit behind each client (reloadable).
    pub attribution: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Where in the file, which key when one can be told, and why.
    #[error("bad config file {path} line {line}, column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("bad value for {key}: {value} (expected {why})")]
    Value {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    /// A value given on the command line.
    #[error("bad value for --{key}: {value} (expected {why})")]
    Flag {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

impl ConfigError {
    /// The same error, said of the command-line flag of that name.
    pub fn as_flag(self) -> ConfigError {
        match self {
            ConfigError::Value { key, value, why } => ConfigError::Flag { key, value, why },
            other => other,
        }
    }
}

/// The valid log levels, as said when one is not.
pub const LOG_LEVELS: &str = "a level (error, warn, info, debug, trace, off) or a tracing filter directive such as rpcbind_proxy=debug,info";

/// What each key takes, as said when a value is not that.
pub fn expected(key: &str) -> Option<&'static str> {
    Some(match key {
        "listen" => "a non-empty list of \"unix:PATH\", \"unix:@NAME\", \"tcp:HOST:PORT\" or \"udp:HOST:PORT\" strings",
        "rpcbind-socket" | "control" => "an absolute path in quotes, e.g. \"/run/rpcbind.sock\"",
        "rpcbind-port" => "a port number from 1 to 65535, e.g. 111",
        "upstream-timeout" | "refresh" | "idle-timeout" | "record-timeout" => {
            "a positive number of seconds without a unit, e.g. 2 or 0.5"
        }
        "ttl" | "negative-ttl" => {
            "a number of seconds without a unit, e.g. 60 or 0.5; 0 turns caching of these answers off"
        }
        "serve-stale" => "a number of seconds without a unit, e.g. 30; 0: never",
        "max-entries" => "a whole number from 1 to 16777216 (to turn the cache off, set ttl and negative-ttl to 0)",
        "max-connections" | "max-in-flight" => "a whole number, 1 or more",
        "max-udp-reply" => "a number of bytes from 512 to 65507",
        "threads" => "a whole number from 0 (one per CPU, at most 4) to 1024",
        "log-level" => LOG_LEVELS,
        "intercept" | "attribution" => "true or false",
        "intercept-mark" => "a non-zero 32-bit number, decimal or a \"0x...\" hex string",
        _ => return None,
    })
}

/// The value error of `key` (whose expected form is in [`expected`]).
fn bad(key: &'static str, value: impl ToString) -> ConfigError {
    ConfigError::Value {
        key,
        value: value.to_string(),
        why: expected(key).unwrap_or("another value"),
    }
}

/// Refuses a log level that would silence the daemon: every comma-separated
/// directive must be a level or `target=level` (a bare word is a target
/// filter to tracing, so `bogus` would log nothing at all).
pub fn check_log_level(level: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let ok = !level.trim().is_empty()
        && level.split(',').all(|d| {
            let d = d.trim();
            d.contains('=') || d.contains('[') || LEVELS.contains(&d.to_ascii_lowercase().as_str())
        })
        && tracing_subscriber::EnvFilter::try_new(level).is_ok();
    if ok {
        Ok(())
    } else {
        Err(bad("log-level", format!("{level:?}")))
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    /// Parses and checks the file on its own, so that a bad value is named
    /// with its line (flags are checked when they are laid over it).
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let key = key_at(text, at);
            located(path, text, at, describe(e.message(), key))
        })?;
        match Config::resolve(file.clone(), FileConfig::default()) {
            Ok(_) => Ok(file),
            Err(ConfigError::Value { key, value, why }) => {
                let at = key_line(text, key).unwrap_or(0);
                Err(located(
                    path,
                    text,
                    at,
                    format!("{key} = {value}: expected {why}"),
                ))
            }
            Err(e) => Err(e),
        }
    }
}

/// A parse error at byte `at` of `text`, with its line and column.
fn located(path: &Path, text: &str, at: usize, message: String) -> ConfigError {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    ConfigError::Parse {
        path: path.to_owned(),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message,
    }
}

/// toml's message on one line, naming the key and, for a value of the wrong
/// type or range, the form the key takes instead of serde's type name.
fn describe(message: &str, key: Option<&str>) -> String {
    let message = message.trim().replace('\n', "; ");
    let Some(key) = key else {
        return message;
    };
    if message.contains(&format!("`{key}`")) {
        // "unknown field `x`, expected one of ...", "duplicate key `x`".
        return message;
    }
    match (message.split_once(", expected "), expected(key)) {
        (Some((what, _)), Some(form)) => format!("{key}: {what}, expected {form}"),
        _ => format!("{key}: {message}"),
    }
}

/// The key whose value holds byte `at`: the nearest `key =` at or above it
/// within the same table (a list may span lines).
fn key_at(text: &str, at: usize) -> Option<&str> {
    let upto = &text[..text[at.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| at + i)];
    for line in upto.lines().rev() {
        let line = line.trim_start();
        if line.starts_with('[') {
            return None;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Some(k);
            }
        }
    }
    None
}

/// The byte offset of the line that sets `key`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some((k, _)) = line.split_once('=') {
            if k.trim().trim_matches('"') == key {
                return Some(offset + (line.len() - line.trim_start().len()));
            }
        }
        offset += line.len();
    }
    None
}

/// Seconds as a positive, finite duration.
pub fn seconds(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 86400.0 * 365.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Value {
            key,
            value: v.to_string(),
            why: expected(key).unwrap_or("a positive number of seconds"),
        })
    }
}

/// Seconds where zero is allowed (turns the feature off).
pub fn seconds_or_zero(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v == 0.0 {
        Ok(Duration::ZERO)
    } else {
        seconds(key, v).map_err(|_| ConfigError::Value {
            key,
            value: v.to_string(),
            why: expected(key).unwrap_or("zero or a positive number of seconds"),
        })
    }
}

impl Config {
    /// The settings that can change with a reload, as one line for the log:
    /// `ttl 60s, negative-ttl 10s, ...`.
    pub fn summary(&self) -> String {
        use crate::proxy::logs::human;
        let l = &self.limits;
        let c = &self.cache;
        format!(
            "ttl {}, negative-ttl {}, serve-stale {}, max-entries {}, refresh {}, upstream-timeout {}, max-connections {}, max-in-flight {}, idle-timeout {}, record-timeout {}, max-udp-reply {} bytes, log-level {}",
            human(c.ttl),
            human(c.negative_ttl),
            human(c.serve_stale),
            c.max_entries,
            human(self.refresh),
            human(self.upstream_timeout),
            l.max_connections,
            l.max_in_flight,
            human(l.idle_timeout),
            human(l.record_timeout),
            l.max_udp_reply,
            self.log_level,
        )
    }

    /// Builds the effective configuration: `flags` override `file`, which
    /// overrides the defaults.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<Config, ConfigError> {
        let listen = match flags.listen.filter(|l| !l.is_empty()).or(file.listen) {
            // Nothing to serve on: refused rather than a daemon that says
            // ready and answers no one.
            Some(l) if l.is_empty() => return Err(bad("listen", "[]")),
            Some(l) => l,
            None => DEFAULT_LISTEN
                .iter()
                .map(|s| s.parse().expect("default spec"))
                .collect(),
        };
        Ok(Config {
            listen,
            rpcbind_socket: flags
                .rpcbind_socket
                .or(file.rpcbind_socket)
                .unwrap_or_else(|| DEFAULT_RPCBIND_SOCKET.into()),
            rpcbind_port: match flags.rpcbind_port.or(file.rpcbind_port) {
                Some(0) => return Err(bad("rpcbind-port", 0)),
                Some(p) => p,
                None => DEFAULT_RPCBIND_PORT,
            },
            control: flags
                .control
                .or(file.control)
                .unwrap_or_else(|| DEFAULT_CONTROL.into()),
            upstream_timeout: seconds(
                "upstream-timeout",
                flags
                    .upstream_timeout
                    .or(file.upstream_timeout)
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
            )?,
            cache: CacheConfig {
                ttl: seconds_or_zero("ttl", flags.ttl.or(file.ttl).unwrap_or(DEFAULT_TTL))?,
                negative_ttl: seconds_or_zero(
                    "negative-ttl",
                    flags
                        .negative_ttl
                        .or(file.negative_ttl)
                        .unwrap_or(DEFAULT_NEGATIVE_TTL),
                )?,
                max_entries: match flags.max_entries.or(file.max_entries) {
                    Some(n) if !(1..=MAX_MAX_ENTRIES).contains(&n) => {
                        return Err(bad("max-entries", n))
                    }
                    Some(n) => n,
                    None => DEFAULT_MAX_ENTRIES,
                },
                serve_stale: seconds_or_zero(
                    "serve-stale",
                    flags
                        .serve_stale
                        .or(file.serve_stale)
                        .unwrap_or(DEFAULT_SERVE_STALE),
                )?,
            },
            refresh: seconds(
                "refresh",
                flags.refresh.or(file.refresh).unwrap_or(DEFAULT_REFRESH),
            )?,
            log_level: {
                let level = flags
                    .log_level
                    .or(file.log_level)
                    .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
                check_log_level(&level)?;
                level
            },
            threads: match flags.threads.or(file.threads) {
                Some(n) if n > MAX_THREADS => return Err(bad("threads", n)),
                Some(n) => n,
                None => DEFAULT_THREADS,
            },
            intercept: flags.intercept.or(file.intercept).unwrap_or(false),
            intercept_mark: flags
                .intercept_mark
                .or(file.intercept_mark)
                .map_or(DEFAULT_INTERCEPT_MARK, |m| m.0),
            attribution: flags.attribution.or(file.attribution).unwrap_or(true),
            limits: {
                let d = LimitsConfig::default();
                LimitsConfig {
                    max_connections: match flags.max_connections.or(file.max_connections) {
                        // 0 would refuse every client.
                        Some(0) => return Err(bad("max-connections", 0)),
                        Some(n) => n,
                        None => d.max_connections,
                    },
                    max_in_flight: match flags.max_in_flight.or(file.max_in_flight) {
                        Some(0) => return Err(bad("max-in-flight", 0)),
                        Some(n) => n,
                        None => d.max_in_flight,
                    },
                    idle_timeout: match flags.idle_timeout.or(file.idle_timeout) {
                        Some(v) => seconds("idle-timeout", v)?,
                        None => d.idle_timeout,
                    },
                    record_timeout: match flags.record_timeout.or(file.record_timeout) {
                        Some(v) => seconds("record-timeout", v)?,
                        None => d.record_timeout,
                    },
                    max_udp_reply: match flags.max_udp_reply.or(file.max_udp_reply) {
                        Some(n) if !(512..=65507).contains(&n) => {
                            return Err(bad("max-udp-reply", n))
                        }
                        Some(n) => n,
                        None => d.max_udp_reply,
                    },
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = FileConfig::parse("listen = []\nttl-seconds = 5\n", Path::new("/etc/x.toml"))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ttl-seconds") && msg.contains("/etc/x.toml"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let file = FileConfig::parse(
            "listen = [\"tcp:127.0.0.1:2222\"]\nrpcbind-port = 1111\nupstream-timeout = 0.5\n",
            Path::new("f"),
        )
        .unwrap();
        let flags = FileConfig {
            rpcbind_port: Some(112),
            ..Default::default()
        };
        let c = Config::resolve(file, flags).unwrap();
        assert_eq!(c.listen, vec!["tcp:127.0.0.1:2222".parse().unwrap()]);
        assert_eq!(c.rpcbind_port, 112);
        assert_eq!(c.upstream_timeout, Duration::from_millis(500));
        assert_eq!(c.rpcbind_socket, PathBuf::from(DEFAULT_RPCBIND_SOCKET));
        let d = Config::resolve(FileConfig::default(), FileConfig::default()).unwrap();
        assert_eq!(d.listen.len(), 5);
        assert_eq!((d.intercept, d.intercept_mark), (false, 0x5250));
    }

    #[test]
    fn intercept_marks_parse_in_decimal_and_hex() {
        let c = FileConfig::parse(
            "intercept = true\nintercept-mark = \"0x10\"\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(
            (c.intercept, c.intercept_mark),
            (Some(true), Some(Mark(16)))
        );
        let c = FileConfig::parse("intercept-mark = 21072\n", Path::new("f")).unwrap();
        assert_eq!(c.intercept_mark, Some(Mark(0x5250)));
        assert_eq!("0x5250".parse::<Mark>(), Ok(Mark(0x5250)));
        for bad in ["0", "0x", "-1", "4294967296", "mark"] {
            let e = bad.parse::<Mark>().unwrap_err();
            assert!(e.contains(bad) && e.contains("0x5250"), "{e}");
        }
        let e = FileConfig::parse("intercept-mark = 0\n", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("intercept-mark"), "{e}");
    }

    fn resolve_flags(flags: FileConfig) -> Result<Config, ConfigError> {
        Config::resolve(FileConfig::default(), flags).map_err(ConfigError::as_flag)
    }

    #[test]
    fn log_levels_that_would_log_nothing_are_refused() {
        for good in [
            "info",
            "DEBUG",
            "off",
            "rpcbind_proxy=debug,info",
            "warn,rpcbind_proxy::proxy=trace",
        ] {
            check_log_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["bogus", "", "info,bogus", "rpcbind_proxy=loud", "verbose"] {
            let e = resolve_flags(FileConfig {
                log_level: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(&format!("{bad:?}"))
                    && e.contains("--log-level")
                    && e.contains("error, warn, info, debug, trace"),
                "{e}"
            );
        }
    }

    #[test]
    fn nonsense_values_are_refused_with_the_valid_range() {
        let cases: [(FileConfig, &str, &str); 6] = [
            (
                FileConfig {
                    max_connections: Some(0),
                    ..Default::default()
                },
                "--max-connections: 0",
                "1 or more",
            ),
            (
                FileConfig {
                    max_entries: Some(0),
                    ..Default::default()
                },
                "--max-entries: 0",
                "ttl and negative-ttl to 0",
            ),
            (
                FileConfig {
                    ttl: Some(-1.0),
                    ..Default::default()
                },
                "--ttl: -1",
                "0 turns caching",
            ),
            (
                FileConfig {
                    rpcbind_port: Some(0),
                    ..Default::default()
                },
                "--rpcbind-port: 0",
                "1 to 65535",
            ),
            (
                FileConfig {
                    threads: Some(100_000),
                    ..Default::default()
                },
                "--threads: 100000",
                "to 1024",
            ),
            (
                FileConfig {
                    max_in_flight: Some(0),
                    ..Default::default()
                },
                "--max-in-flight: 0",
                "1 or more",
            ),
        ];
        for (flags, value, range) in cases {
            let e = resolve_flags(flags).unwrap_err().to_string();
            assert!(e.contains(value) && e.contains(range), "{e}");
        }
        // 0 stays the documented "not cached" for the TTLs.
        let c = resolve_flags(FileConfig {
            ttl: Some(0.0),
            negative_ttl: Some(0.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.cache.ttl, c.cache.negative_ttl),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn file_errors_name_the_file_line_key_and_form_in_one_line() {
        let f = Path::new("/etc/x.toml");
        let cases = [
            ("ttl = 5\nupstream-timeout = \"30s\"\n", "line 2, column 20", "upstream-timeout: invalid type: string \"30s\", expected a positive number of seconds"),
            ("listen = []\n", "line 1, column 1", "listen = []: expected a non-empty list"),
            ("ttl = 1\n\nmax-entries = 0\n", "line 3, column 1", "max-entries = 0: expected a whole number from 1"),
            ("[x\nttl = 1\n", "line 1, column 3", "invalid table header; expected"),
            ("listen = [\n  \"tcp:127.0.0.1:1\",\n  \"tcp:nowhere\",\n]\n", "line 1, column 10", "listen: bad listen spec \"tcp:nowhere\""),
            ("rpcbind-port = 70000\n", "line 1, column 16", "rpcbind-port: invalid value: integer `70000`, expected a port number from 1 to 65535"),
            ("log-level = \"bogus\"\n", "line 1", "log-level = \"bogus\": expected a level"),
        ];
        for (text, at, what) in cases {
            let e = FileConfig::parse(text, f).unwrap_err().to_string();
            assert!(!e.contains('\n'), "one line: {e}");
            assert!(
                e.starts_with("bad config file /etc/x.toml ") && e.contains(at) && e.contains(what),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn the_settings_summary_reads_like_the_config_file() {
        let c = Config::resolve(FileConfig::default(), FileConfig::default()).unwrap();
        assert_eq!(
            c.summary(),
            "ttl 1m, negative-ttl 10s, serve-stale 30s, max-entries 65536, refresh 1s, upstream-timeout 2s, max-connections 4096, max-in-flight 64, idle-timeout 2m, record-timeout 10s, max-udp-reply 9000 bytes, log-level info"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = FileConfig::parse("listen = [\"tcp:nowhere\"]", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("tcp:nowhere"), "{e}");
        let flags = FileConfig {
            upstream_timeout: Some(-1.0),
            ..Default::default()
        };
        let e = Config::resolve(FileConfig::default(), flags).unwrap_err();
        assert!(e.to_string().contains("upstream-timeout"), "{e}");
        let flags = FileConfig {
            refresh: Some(0.0),
            ..Default::default()
        };
        let e = Config::resolve(FileConfig::default(), flags).unwrap_err();
        assert!(e.to_string().contains("refresh"), "{e}");
        let flags = FileConfig {
            serve_stale: Some(0.0),
            ttl: Some(300.0),
            ..Default::default()
        };
        let c = Config::resolve(FileConfig::default(), flags).unwrap();
        assert_eq!(c.cache.serve_stale, Duration::ZERO);
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(10));
    }
}
