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
/// One worker: a port-111 proxy answers ~100k lookups/s on one core (more
/// than rpcbind itself), and a single worker saves the cross-thread wake-ups
/// that cost a miss ~20 µs on the 2-core machine the load harness runs on.
pub const DEFAULT_THREADS: usize = 1;

/// The config file as written. Every key is optional; unknown keys are
/// refused so a typo never silently keeps a default.
#[derive(Debug, Default, Deserialize)]
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
    /// Runtime worker threads; 0: one per CPU.
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
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad value for {key}: {value} ({why})")]
    Value {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message spans lines; the brief wants one line.
            message: e.message().to_string(),
        })
    }
}

/// Seconds as a positive, finite duration.
pub fn seconds(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 86400.0 * 365.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError::Value {
            key,
            value: v.to_string(),
            why: "must be a positive number of seconds",
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
            why: "must be zero or a positive number of seconds",
        })
    }
}

impl Config {
    /// Builds the effective configuration: `flags` override `file`, which
    /// overrides the defaults.
    pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<Config, ConfigError> {
        let listen = match flags.listen.filter(|l| !l.is_empty()).or(file.listen) {
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
            rpcbind_port: flags
                .rpcbind_port
                .or(file.rpcbind_port)
                .unwrap_or(DEFAULT_RPCBIND_PORT),
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
                max_entries: flags
                    .max_entries
                    .or(file.max_entries)
                    .unwrap_or(DEFAULT_MAX_ENTRIES),
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
            log_level: flags
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string()),
            threads: flags.threads.or(file.threads).unwrap_or(DEFAULT_THREADS),
            intercept: flags.intercept.or(file.intercept).unwrap_or(false),
            intercept_mark: flags
                .intercept_mark
                .or(file.intercept_mark)
                .map_or(DEFAULT_INTERCEPT_MARK, |m| m.0),
            attribution: flags.attribution.or(file.attribution).unwrap_or(true),
            limits: {
                let d = LimitsConfig::default();
                LimitsConfig {
                    max_connections: flags
                        .max_connections
                        .or(file.max_connections)
                        .unwrap_or(d.max_connections),
                    max_in_flight: match flags.max_in_flight.or(file.max_in_flight) {
                        Some(0) => {
                            return Err(ConfigError::Value {
                                key: "max-in-flight",
                                value: "0".into(),
                                why: "must be at least 1",
                            })
                        }
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
                            return Err(ConfigError::Value {
                                key: "max-udp-reply",
                                value: n.to_string(),
                                why: "must be between 512 and 65507 bytes",
                            })
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
