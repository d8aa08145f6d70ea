//! Serve options: defaults, overlaid by the TOML config file, overlaid by
//! command-line flags. Each setting is declared once, in [`Settings`];
//! this module resolves the layers into the effective [`Config`] and tells
//! a reload what changed and what of that needs a restart.

mod file;
mod settings;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};
use thiserror::Error;

use crate::proxy::cache::CacheConfig;
use crate::proxy::limits::LimitsConfig;
use crate::proxy::listen::ListenSpec;

pub use settings::*;

/// The effective configuration of `serve`; serialized, each setting under
/// its config key (which is how a reload tells what changed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(serialize_with = "as_text")]
    pub listen: Vec<ListenSpec>,
    /// Whether `listen` was set (a flag or the config file) to other than
    /// the defaults: a default listener whose address this host lacks is
    /// skipped, a listener asked for is not. The defaults written out are
    /// still the defaults (uncommenting the example changes nothing).
    #[serde(skip)]
    pub listen_set: bool,
    pub rpcbind_socket: PathBuf,
    pub rpcbind_port: u16,
    pub control: PathBuf,
    pub upstream_timeout: Duration,
    #[serde(flatten)]
    pub cache: CacheConfig,
    /// How often the registration list is compared (coherence).
    pub refresh: Duration,
    /// A level (error, warn, info, debug, trace) or a tracing filter.
    pub log_level: String,
    #[serde(flatten)]
    pub limits: LimitsConfig,
    /// Stream loop threads (unix and TCP clients); 0: one per CPU, at most
    /// [`MAX_AUTO_THREADS`].
    pub threads: usize,
    /// Transparent mode: redirect local traffic to port 111 here.
    pub intercept: bool,
    /// The mark of the daemon's own upstream sockets in transparent mode.
    pub intercept_mark: u32,
    /// Server mode: catch other hosts' traffic to port 111 on
    /// `remote_interface`.
    pub intercept_remote: bool,
    /// The interfaces server mode catches traffic on (none by default).
    pub remote_interface: Vec<String>,
    /// Client side: this host's TCP connections to other hosts' port 111
    /// go through the proxy.
    pub intercept_outbound: bool,
    /// Name the process, user and unit behind each client (reloadable).
    pub attribution: bool,
    /// Load the eBPF recorder for attribution (at start).
    pub attribution_ebpf: bool,
    /// Where `/metrics` is served over HTTP (off: None).
    #[serde(serialize_with = "metrics_text")]
    pub metrics: Option<std::net::SocketAddr>,
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
        why: String,
    },
    /// A value given on the command line.
    #[error("bad value for --{key}: {value} (expected {why})")]
    Flag {
        key: &'static str,
        value: String,
        why: String,
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

/// The value error of `key` (whose expected form is in [`expected`]).
fn bad(key: &'static str, value: impl ToString) -> ConfigError {
    ConfigError::Value {
        key,
        value: value.to_string(),
        why: expected(key).unwrap_or_else(|| "another value".into()),
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

/// Seconds as a positive, finite duration.
pub fn seconds(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 86400.0 * 365.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(bad(key, v))
    }
}

/// Seconds where zero is allowed (turns the feature off).
pub fn seconds_or_zero(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if v == 0.0 {
        Ok(Duration::ZERO)
    } else {
        seconds(key, v)
    }
}

/// A count within `range`.
fn count(
    key: &'static str,
    n: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(bad(key, n))
    }
}

/// When a changed setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// At the reload: applied to the running daemon.
    Reload,
    /// Only when the daemon starts again: a reload keeps the running value.
    Restart,
}

/// The settings a reload cannot change: they shaped what the daemon bound,
/// spawned or installed when it started. Every other setting is applied at
/// a reload.
pub const RESTART_ONLY: [&str; 12] = [
    "listen",
    "rpcbind-socket",
    "rpcbind-port",
    "control",
    "threads",
    "intercept",
    "intercept-mark",
    "intercept-remote",
    "remote-interface",
    "intercept-outbound",
    "attribution-ebpf",
    "metrics",
];

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The config key (the flag's name without `--`).
    pub key: String,
    pub takes: Takes,
}

/// The metrics address as it is written (`tcp:127.0.0.1:9111`), or null.
fn metrics_text<S: Serializer>(
    addr: &Option<std::net::SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(a) => s.serialize_str(&format!("tcp:{a}")),
        None => s.serialize_none(),
    }
}

/// Listeners as they are written (`tcp:127.0.0.1:1111`).
fn as_text<S: Serializer>(specs: &[ListenSpec], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(specs.iter().map(ToString::to_string))
}

impl Config {
    /// The settings that can change with a reload, as one line for the log:
    /// `ttl 60s, negative-ttl 10s, ...`.
    pub fn summary(&self) -> String {
        use crate::proxy::logs::human;
        let l = &self.limits;
        let c = &self.cache;
        format!(
            "ttl {}, negative-ttl {}, serve-stale {}, max-entries {}, refresh {}, upstream-timeout {}, max-connections {}, max-in-flight {}, idle-timeout {}, record-timeout {}, max-udp-reply {} bytes, remote-udp-amplification {}, remote-rate {}/s, remote-in-flight {}, log-level {}",
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
            l.remote_udp_amplification,
            l.remote_rate,
            l.remote_in_flight,
            self.log_level,
        )
    }

    /// Each setting's effective value, by its config key.
    pub fn by_key(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            other => unreachable!("a Config is a JSON object: {other:?}"),
        }
    }

    /// The settings `new` changes, by key (in alphabetical order), each
    /// with when it takes effect.
    pub fn diff(&self, new: &Config) -> Vec<Change> {
        let new = new.by_key();
        self.by_key()
            .into_iter()
            .filter(|(key, value)| new.get(key) != Some(value))
            .map(|(key, _)| Change {
                takes: if RESTART_ONLY.contains(&key.as_str()) {
                    Takes::Restart
                } else {
                    Takes::Reload
                },
                key,
            })
            .collect()
    }

    /// The log line of a reload that changed settings which need a restart
    /// (None if it changed none): `listen, threads change only with a
    /// restart; kept the running values`.
    pub fn restart_needed(&self, new: &Config) -> Option<String> {
        let keys: Vec<String> = self
            .diff(new)
            .into_iter()
            .filter(|c| c.takes == Takes::Restart)
            .map(|c| c.key)
            .collect();
        match keys.len() {
            0 => None,
            1 => Some(format!(
                "{} changes only with a restart; kept the running value",
                keys[0]
            )),
            _ => Some(format!(
                "{} change only with a restart; kept the running values",
                keys.join(", ")
            )),
        }
    }

    /// Builds the effective configuration: `flags` override `file`, which
    /// overrides the defaults; every value is checked against its range.
    pub fn resolve(file: Settings, flags: Settings) -> Result<Config, ConfigError> {
        // The value of a setting: the flag's, else the file's.
        macro_rules! layered {
            ($field:ident) => {
                flags.$field.or(file.$field)
            };
        }
        let (cache, limits) = (CacheConfig::DEFAULT, LimitsConfig::DEFAULT);
        let secs =
            |key, value: Option<f64>, default| value.map_or(Ok(default), |v| seconds(key, v));
        let secs_or_zero = |key, value: Option<f64>, default| {
            value.map_or(Ok(default), |v| seconds_or_zero(key, v))
        };
        let defaults: Vec<ListenSpec> = DEFAULT_LISTEN
            .iter()
            .map(|s| s.parse().expect("default spec"))
            .collect();
        let listen = match layered!(listen) {
            // Nothing to serve on: refused rather than a daemon that says
            // ready and answers no one.
            Some(l) if l.is_empty() => return Err(bad("listen", "[]")),
            Some(l) => l,
            None => defaults.clone(),
        };
        let remote_interface = layered!(remote_interface).unwrap_or_default();
        for name in &remote_interface {
            interface_arg(name).map_err(|_| bad("remote-interface", format!("{name:?}")))?;
        }
        let intercept_remote = layered!(intercept_remote).unwrap_or(false);
        if intercept_remote && remote_interface.is_empty() {
            return Err(ConfigError::Value {
                key: "intercept-remote",
                value: "true".into(),
                why: "at least one remote-interface with it (server mode catches nothing unless told where)".into(),
            });
        }
        Ok(Config {
            listen_set: listen != defaults,
            listen,
            rpcbind_socket: layered!(rpcbind_socket)
                .unwrap_or_else(|| DEFAULT_RPCBIND_SOCKET.into()),
            rpcbind_port: match layered!(rpcbind_port) {
                Some(0) => return Err(bad("rpcbind-port", 0)),
                port => port.unwrap_or(DEFAULT_RPCBIND_PORT),
            },
            control: layered!(control).unwrap_or_else(|| DEFAULT_CONTROL.into()),
            upstream_timeout: secs(
                "upstream-timeout",
                layered!(upstream_timeout),
                DEFAULT_UPSTREAM_TIMEOUT,
            )?,
            cache: CacheConfig {
                ttl: secs_or_zero("ttl", layered!(ttl), cache.ttl)?,
                negative_ttl: secs_or_zero(
                    "negative-ttl",
                    layered!(negative_ttl),
                    cache.negative_ttl,
                )?,
                max_entries: layered!(max_entries).map_or(Ok(cache.max_entries), |n| {
                    count("max-entries", n, ENTRIES_RANGE)
                })?,
                serve_stale: secs_or_zero("serve-stale", layered!(serve_stale), cache.serve_stale)?,
            },
            refresh: secs("refresh", layered!(refresh), DEFAULT_REFRESH)?,
            log_level: {
                let level = layered!(log_level).unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
                check_log_level(&level)?;
                level
            },
            threads: layered!(threads)
                .map_or(Ok(DEFAULT_THREADS), |n| count("threads", n, THREADS_RANGE))?,
            intercept: layered!(intercept).unwrap_or(false),
            intercept_mark: layered!(intercept_mark).map_or(DEFAULT_INTERCEPT_MARK, |m| m.0),
            intercept_remote,
            remote_interface,
            intercept_outbound: layered!(intercept_outbound).unwrap_or(false),
            attribution: layered!(attribution).unwrap_or(true),
            attribution_ebpf: layered!(attribution_ebpf).unwrap_or(true),
            metrics: layered!(metrics).map(|m| m.0),
            limits: LimitsConfig {
                // 0 would refuse every client.
                max_connections: layered!(max_connections)
                    .map_or(Ok(limits.max_connections), |n| {
                        count("max-connections", n, 1..=usize::MAX)
                    })?,
                max_in_flight: layered!(max_in_flight).map_or(Ok(limits.max_in_flight), |n| {
                    count("max-in-flight", n, 1..=usize::MAX)
                })?,
                idle_timeout: secs("idle-timeout", layered!(idle_timeout), limits.idle_timeout)?,
                record_timeout: secs(
                    "record-timeout",
                    layered!(record_timeout),
                    limits.record_timeout,
                )?,
                max_udp_reply: layered!(max_udp_reply).map_or(Ok(limits.max_udp_reply), |n| {
                    count("max-udp-reply", n, UDP_REPLY_RANGE)
                })?,
                remote_udp_amplification: layered!(remote_udp_amplification)
                    .map_or(Ok(limits.remote_udp_amplification), |n| {
                        count("remote-udp-amplification", n, AMPLIFICATION_RANGE)
                    })?,
                remote_rate: layered!(remote_rate).map_or(Ok(limits.remote_rate), |n| {
                    count("remote-rate", n, REMOTE_RATE_RANGE).map(|n| n as u32)
                })?,
                remote_in_flight: layered!(remote_in_flight)
                    .map_or(Ok(limits.remote_in_flight), |n| {
                        count("remote-in-flight", n, REMOTE_IN_FLIGHT_RANGE)
                    })?,
            },
        })
    }
}

#[cfg(test)]
mod tests;

impl Config {
    /// What of the configuration the proxy itself takes, at start and at
    /// each reload.
    pub fn proxy_settings(&self) -> crate::proxy::service::Settings {
        crate::proxy::service::Settings {
            upstream_timeout: self.upstream_timeout,
            cache: self.cache,
            refresh: self.refresh,
            limits: self.limits,
            attribution: self.attribution,
        }
    }
}
