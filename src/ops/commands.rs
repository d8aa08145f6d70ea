//! The operator commands: `status`, `flush`, `check` talk to the daemon's
//! control socket; `query` asks rpcbind through the proxy and prints like
//! rpcinfo. Each fails at once, with one line naming the socket it tried,
//! when the daemon is not there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;

use crate::cli::{CheckArgs, FlushArgs, QueryArgs, QueryLookup, StatusArgs};
use crate::protocol::rpc::{self, AcceptStat, MAX_UPSTREAM_RECORD};
use crate::protocol::rpcb::{self, Mapping, Rpcb};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rpcbind-proxy: {msg}");
    ExitCode::FAILURE
}

/// Sends one request line to the control socket and returns the JSON answer.
pub fn control_request(path: &Path, line: &str) -> Result<Value, String> {
    let tried = |e: std::io::Error| format!("cannot reach the daemon at {}: {e}", path.display());
    let mut s = UnixStream::connect(path).map_err(tried)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(tried)?;
    let mut text = String::new();
    s.take(16 << 20).read_to_string(&mut text).map_err(tried)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("bad answer from the daemon at {}: {e}", path.display()))?;
    match v.get("error").and_then(Value::as_str) {
        Some(err) => Err(err.to_string()),
        None => Ok(v),
    }
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(0.0)
}

pub fn status(args: StatusArgs) -> ExitCode {
    let v = match control_request(&args.control.control, "status") {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let out = if args.json {
        format!("{v}\n")
    } else if args.prometheus {
        prometheus(&v)
    } else {
        human(&v)
    };
    print!("{out}");
    ExitCode::SUCCESS
}

/// The status for people: aligned, the hit ratio first.
pub fn human(v: &Value) -> String {
    let mut o = String::new();
    let row = |o: &mut String, label: &str, text: String| {
        let _ = writeln!(o, "{label:<12} {text}");
    };
    row(
        &mut o,
        "hit ratio",
        format!(
            "{:.1}%  (hits {}, negative hits {}, coalesced {}, misses {})",
            f(v, "/cache/hit_ratio") * 100.0,
            u(v, "/cache/hits"),
            u(v, "/cache/negative_hits"),
            u(v, "/cache/coalesced"),
            u(v, "/cache/misses")
        ),
    );
    row(
        &mut o,
        "cache",
        format!(
            "{} of {} entries; ttl {}s, negative {}s, refresh {}s; evictions {}, expirations {}, invalidations {}, stale served {}",
            u(v, "/cache/entries"),
            u(v, "/cache/max_entries"),
            f(v, "/cache/ttl_seconds"),
            f(v, "/cache/negative_ttl_seconds"),
            f(v, "/cache/refresh_seconds"),
            u(v, "/cache/evictions"),
            u(v, "/cache/expirations"),
            u(v, "/cache/invalidations/total"),
            u(v, "/cache/stale_served")
        ),
    );
    let classes = v
        .pointer("/upstream/classes")
        .and_then(Value::as_object)
        .map(|m| {
            ["unix", "tcp", "udp", "tcp6", "udp6"]
                .iter()
                .filter_map(|c| m.get(*c).map(|x| (c, x)))
                .map(|(c, x)| {
                    let up = x.get("connected").and_then(Value::as_bool).unwrap_or(false);
                    format!("{c} {}", if up { "up" } else { "-" })
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let us = |p: &str| match v.pointer(p).and_then(Value::as_u64) {
        Some(x) => format!("<{x}us"),
        None => "-".into(),
    };
    row(
        &mut o,
        "upstream",
        format!(
            "{classes}; calls {}, in flight {}, timeouts {}, errors {}, p50 {}, p99 {}",
            u(v, "/upstream/calls"),
            u(v, "/upstream/in_flight"),
            u(v, "/upstream/timeouts"),
            u(v, "/upstream/errors"),
            us("/upstream/latency_p50_us"),
            us("/upstream/latency_p99_us")
        ),
    );
    let procs = v
        .pointer("/requests/by_procedure")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{} v{} {}",
                        p["procedure"].as_str().unwrap_or("?"),
                        p["version"],
                        p["count"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    row(
        &mut o,
        "requests",
        format!("{} total; {procs}", u(v, "/requests/total")),
    );
    row(
        &mut o,
        "clients",
        format!(
            "{} connected, {} in all",
            u(v, "/clients/connected"),
            u(v, "/clients/total")
        ),
    );
    row(
        &mut o,
        "time_wait",
        format!(
            "{} on port 111, {} on the proxy's ports",
            u(v, "/time_wait/port_111"),
            u(v, "/time_wait/proxy_ports")
        ),
    );
    row(
        &mut o,
        "daemon",
        format!(
            "version {}, up {}s",
            v["version"].as_str().unwrap_or("?"),
            u(v, "/uptime_seconds")
        ),
    );
    let listeners: Vec<&str> = v["listeners"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    row(&mut o, "listeners", listeners.join(" "));
    let n = |x: &Value| x.as_u64().map_or("-".to_string(), |v| v.to_string());
    if let Some(lookups) = v["lookups"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            o,
            "\nlookups         program vers netid        hits     misses"
        );
        for l in lookups.iter().take(20) {
            let _ = writeln!(
                o,
                "             {:>10} {:>4} {:<6} {:>10} {:>10}",
                n(&l["program"]),
                n(&l["version"]),
                l["netid"].as_str().unwrap_or("?"),
                n(&l["hits"]),
                n(&l["misses"])
            );
        }
    }
    if let Some(top) = v
        .pointer("/clients/top")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        let _ = writeln!(
            o,
            "\ntop clients  transport who                               uid   requests"
        );
        for c in top {
            let who = match c["transport"].as_str() {
                Some("unix") => format!(
                    "pid {} {}",
                    n(&c["pid"]),
                    c["command"].as_str().unwrap_or("?")
                ),
                _ => format!("{}:{}", c["address"].as_str().unwrap_or("?"), n(&c["port"])),
            };
            let _ = writeln!(
                o,
                "             {:<9} {who:<31} {:>5} {:>10}",
                c["transport"].as_str().unwrap_or("?"),
                n(&c["uid"]),
                n(&c["requests"])
            );
        }
    }
    o
}

/// The status in Prometheus text exposition format.
pub fn prometheus(v: &Value) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(o, "# HELP rpcbind_proxy_{name} {help}");
        let _ = writeln!(o, "# TYPE rpcbind_proxy_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(o, "rpcbind_proxy_{name}{labels} {value}");
        }
    };
    let one = |p: &str| vec![(String::new(), f(v, p).max(u(v, p) as f64))];
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        one("/uptime_seconds"),
    );
    metric(
        "requests_total",
        "counter",
        "Calls received.",
        one("/requests/total"),
    );
    let by_proc = v
        .pointer("/requests/by_procedure")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        format!(
                            "{{version=\"{}\",procedure=\"{}\"}}",
                            p["version"],
                            p["procedure"].as_str().unwrap_or("")
                        ),
                        p["count"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "procedure_requests_total",
        "counter",
        "Calls per procedure.",
        by_proc,
    );
    for (name, path, help) in [
        (
            "cache_hits_total",
            "/cache/hits",
            "Lookups answered from the cache.",
        ),
        (
            "cache_negative_hits_total",
            "/cache/negative_hits",
            "Lookups answered 'not registered' from the cache.",
        ),
        (
            "cache_misses_total",
            "/cache/misses",
            "Lookups sent to rpcbind.",
        ),
        (
            "cache_coalesced_total",
            "/cache/coalesced",
            "Lookups that waited for another client's identical miss.",
        ),
        (
            "cache_evictions_total",
            "/cache/evictions",
            "Entries evicted beyond max-entries.",
        ),
        (
            "cache_expirations_total",
            "/cache/expirations",
            "Entries expired.",
        ),
        (
            "cache_stale_served_total",
            "/cache/stale_served",
            "Expired entries served while rpcbind was unreachable.",
        ),
        (
            "upstream_calls_total",
            "/upstream/calls",
            "Calls sent to rpcbind.",
        ),
        (
            "upstream_connects_total",
            "/upstream/connects",
            "Connections opened to rpcbind.",
        ),
        (
            "upstream_timeouts_total",
            "/upstream/timeouts",
            "Calls rpcbind did not answer in time.",
        ),
        (
            "upstream_errors_total",
            "/upstream/errors",
            "Calls that failed for a lost or refused connection.",
        ),
        (
            "clients_total",
            "/clients/total",
            "Stream clients accepted.",
        ),
    ] {
        metric(name, "counter", help, one(path));
    }
    for (name, path, help) in [
        (
            "cache_hit_ratio",
            "/cache/hit_ratio",
            "Lookups answered without asking rpcbind, of all lookups.",
        ),
        ("cache_entries", "/cache/entries", "Entries in the cache."),
        (
            "cache_max_entries",
            "/cache/max_entries",
            "The cache's size limit.",
        ),
        (
            "upstream_in_flight",
            "/upstream/in_flight",
            "Calls sent to rpcbind and not yet answered.",
        ),
        (
            "clients_connected",
            "/clients/connected",
            "Stream clients connected now.",
        ),
    ] {
        metric(name, "gauge", help, one(path));
    }
    let inv = ["refresh", "registration", "flush"]
        .iter()
        .map(|r| {
            (
                format!("{{reason=\"{r}\"}}"),
                u(v, &format!("/cache/invalidations/{r}")) as f64,
            )
        })
        .collect();
    metric(
        "cache_invalidations_total",
        "counter",
        "Entries dropped because registrations changed or on request.",
        inv,
    );
    let classes = v
        .pointer("/upstream/classes")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(c, x)| {
                    (
                        format!("{{class=\"{c}\"}}"),
                        if x["connected"].as_bool() == Some(true) {
                            1.0
                        } else {
                            0.0
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "upstream_connected",
        "gauge",
        "Whether the connection of each transport class is open.",
        classes,
    );
    let lat = ["p50", "p99"]
        .iter()
        .filter_map(|q| {
            v.pointer(&format!("/upstream/latency_{q}_us"))
                .and_then(Value::as_f64)
                .map(|x| (format!("{{quantile=\"0.{}\"}}", &q[1..]), x / 1e6))
        })
        .collect();
    metric(
        "upstream_latency_seconds",
        "gauge",
        "Upper bound of the latency quantile of calls to rpcbind.",
        lat,
    );
    let lookups = v["lookups"]
        .as_array()
        .map(|a| {
            a.iter()
                .flat_map(|l| {
                    ["hits", "misses"].into_iter().map(move |r| {
                        (
                            format!(
                                "{{program=\"{}\",version=\"{}\",netid=\"{}\",result=\"{}\"}}",
                                l["program"],
                                l["version"],
                                l["netid"].as_str().unwrap_or(""),
                                r.trim_end_matches('s')
                            ),
                            l[r].as_f64().unwrap_or(0.0),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "lookups_total",
        "counter",
        "Lookups per program, version and netid.",
        lookups,
    );
    let tw = vec![
        (
            "{port=\"111\"}".to_string(),
            u(v, "/time_wait/port_111") as f64,
        ),
        (
            "{port=\"proxy\"}".to_string(),
            u(v, "/time_wait/proxy_ports") as f64,
        ),
    ];
    metric(
        "time_wait_sockets",
        "gauge",
        "TCP sockets in TIME_WAIT involving rpcbind's port or the proxy's.",
        tw,
    );
    o
}

pub fn flush(args: FlushArgs) -> ExitCode {
    let line = match args.program {
        Some(p) => format!("flush {p}"),
        None => "flush".to_string(),
    };
    match control_request(&args.control.control, &line) {
        Ok(v) => {
            match args.program {
                Some(p) => println!("flushed {} entries of program {p}", u(&v, "/flushed")),
                None => println!("flushed {} entries", u(&v, "/flushed")),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Nagios plugin exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

/// The check's verdict and its one line of output.
pub fn check_verdict(status: Result<Value, String>, args: &CheckArgs) -> (CheckState, String) {
    let v = match status {
        Ok(v) => v,
        Err(e) => return (CheckState::Critical, format!("CRITICAL: {e}")),
    };
    if v.pointer("/cache/hit_ratio").is_none() {
        return (
            CheckState::Unknown,
            "UNKNOWN: the daemon's status has no hit ratio".into(),
        );
    }
    let mut state = CheckState::Ok;
    let mut problems = Vec::new();
    let connected = v
        .pointer("/upstream/classes/unix/connected")
        .and_then(Value::as_bool)
        == Some(true);
    if !connected {
        state = state.max(CheckState::Critical);
        problems.push("rpcbind not connected".to_string());
    }
    let tw = u(&v, "/time_wait/port_111") as usize;
    if tw >= args.crit_time_wait {
        state = state.max(CheckState::Critical);
        problems.push(format!(
            "{tw} TIME_WAIT on port 111 (>= {})",
            args.crit_time_wait
        ));
    } else if tw >= args.warn_time_wait {
        state = state.max(CheckState::Warning);
        problems.push(format!(
            "{tw} TIME_WAIT on port 111 (>= {})",
            args.warn_time_wait
        ));
    }
    let ratio = f(&v, "/cache/hit_ratio");
    let lookups = u(&v, "/cache/hits") + u(&v, "/cache/negative_hits") + u(&v, "/cache/misses");
    if lookups > 0 && ratio < args.min_hit_ratio {
        state = state.max(CheckState::Warning);
        problems.push(format!("hit ratio {ratio:.3} below {}", args.min_hit_ratio));
    }
    let label = match state {
        CheckState::Ok => "OK",
        CheckState::Warning => "WARNING",
        CheckState::Critical => "CRITICAL",
        CheckState::Unknown => "UNKNOWN",
    };
    let summary = if problems.is_empty() {
        format!(
            "hit ratio {:.1}%, rpcbind connected, {tw} TIME_WAIT on port 111",
            ratio * 100.0
        )
    } else {
        problems.join(", ")
    };
    let perf = format!(
        "hit_ratio={ratio:.4};{};;0;1 time_wait_111={tw};{};{};0 upstream_connected={} cache_entries={} requests={}c",
        args.min_hit_ratio,
        args.warn_time_wait,
        args.crit_time_wait,
        u8::from(connected),
        u(&v, "/cache/entries"),
        u(&v, "/requests/total"),
    );
    (state, format!("{label}: {summary} | {perf}"))
}

pub fn check(args: CheckArgs) -> ExitCode {
    let (state, line) = check_verdict(control_request(&args.control.control, "status"), &args);
    println!("{line}");
    ExitCode::from(state as u8)
}

// ---------------------------------------------------------------------------
// query

/// Where a query goes.
enum Via<'a> {
    Unix(&'a Path),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

/// One call through the proxy; returns the procedure's results.
fn rpc_call(via: &Via<'_>, vers: u32, procedure: u32, args: &[u8]) -> Result<Vec<u8>, String> {
    let xid = std::process::id() ^ 0x5eed_0000;
    let call = rpc::encode_call(xid, rpcb::PROGRAM, vers, procedure, args);
    let reply = match via {
        Via::Unix(path) => {
            let tried =
                |e: std::io::Error| format!("cannot query the proxy at {}: {e}", path.display());
            let s = UnixStream::connect(path).map_err(tried)?;
            stream_exchange(s, &call).map_err(tried)?
        }
        Via::Tcp(addr) => {
            let tried = |e: std::io::Error| format!("cannot query the proxy at tcp:{addr}: {e}");
            let s = TcpStream::connect_timeout(addr, IO_TIMEOUT).map_err(tried)?;
            stream_exchange(s, &call).map_err(tried)?
        }
        Via::Udp(addr) => {
            let tried = |e: std::io::Error| format!("cannot query the proxy at udp:{addr}: {e}");
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .unwrap();
            let s = UdpSocket::bind(bind).map_err(tried)?;
            s.connect(addr).map_err(tried)?;
            s.set_read_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
            s.send(&call).map_err(tried)?;
            let mut buf = vec![0u8; 65536];
            let n = s.recv(&mut buf).map_err(tried)?;
            buf.truncate(n);
            buf
        }
    };
    let r = rpc::parse_reply(&reply).map_err(|e| format!("undecodable reply: {e}"))?;
    match r.accept {
        Some(AcceptStat::Success) => Ok(r.body.to_vec()),
        Some(other) => Err(format!("RPC: {other:?}")),
        None => Err("RPC: call denied".into()),
    }
}

/// Writes one record and reads one (reassembling fragments, bounded).
fn stream_exchange<S: Read + Write>(mut s: S, call: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut rec = BytesMut::new();
    rpc::put_record(&mut rec, call);
    s.write_all(&rec)?;
    let mut out = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark)?;
        let mark = u32::from_be_bytes(mark);
        let len = (mark & 0x7fff_ffff) as usize;
        if out.len() + len > MAX_UPSTREAM_RECORD {
            return Err(std::io::Error::other("reply too large"));
        }
        let start = out.len();
        out.resize(start + len, 0);
        s.read_exact(&mut out[start..])?;
        if mark & 0x8000_0000 != 0 {
            return Ok(out);
        }
    }
}

/// Program names from /etc/rpc, as rpcinfo prints them.
fn rpc_names() -> BTreeMap<u32, String> {
    let text = std::fs::read_to_string("/etc/rpc").unwrap_or_default();
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut w = line.split_whitespace();
        if let (Some(name), Some(num)) = (w.next(), w.next()) {
            if let Ok(n) = num.parse() {
                names.entry(n).or_insert_with(|| name.to_string());
            }
        }
    }
    names
}

/// `rpcinfo -p`'s table for a v2 DUMP.
pub fn format_portmap(list: &[Mapping], names: &BTreeMap<u32, String>) -> String {
    let mut o = String::from("   program vers proto   port  service\n");
    for m in list {
        let _ = write!(o, "{:>10}{:>5}", m.prog, m.vers);
        match m.prot {
            rpcb::IPPROTO_UDP => o.push_str("   udp"),
            rpcb::IPPROTO_TCP => o.push_str("   tcp"),
            other => {
                let _ = write!(o, "{other:>6}");
            }
        }
        let _ = write!(o, "{:>7}", m.port);
        match names.get(&m.prog) {
            Some(n) => {
                let _ = writeln!(o, "  {n}");
            }
            None => o.push('\n'),
        }
    }
    o
}

/// `rpcinfo -s`'s table for a v3/v4 DUMP: one row per program, versions and
/// netids in rpcinfo's (prepending) order, the first entry's owner.
pub fn format_short(list: &[rpcb::RpcbEntry], names: &BTreeMap<u32, String>) -> String {
    struct Row {
        prog: u32,
        owner: String,
        versions: Vec<u32>,
        netids: Vec<String>,
    }
    let mut rows: Vec<Row> = Vec::new();
    for e in list {
        let i = match rows.iter().position(|r| r.prog == e.prog) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    prog: e.prog,
                    owner: String::from_utf8_lossy(&e.owner).into_owned(),
                    versions: Vec::new(),
                    netids: Vec::new(),
                });
                rows.len() - 1
            }
        };
        let r = &mut rows[i];
        if !r.versions.contains(&e.vers) {
            r.versions.insert(0, e.vers);
        }
        let netid = String::from_utf8_lossy(&e.netid).into_owned();
        if !r.netids.contains(&netid) {
            r.netids.insert(0, netid);
        }
    }
    let mut o =
        String::from("   program version(s) netid(s)                         service     owner\n");
    for r in rows {
        let versions: Vec<String> = r.versions.iter().map(u32::to_string).collect();
        let name = names.get(&r.prog).map_or("-", String::as_str);
        let _ = writeln!(
            o,
            "{:>10}  {:<10}{:<32} {name:<10}  {}",
            r.prog,
            versions.join(","),
            r.netids.join(","),
            r.owner
        );
    }
    o
}

pub fn query(args: QueryArgs) -> ExitCode {
    let unix = Via::Unix(&args.socket);
    let result = match (&args.lookup, args.portmap, args.short) {
        (None, true, _) => rpc_call(&unix, 2, 4, &[])
            .and_then(|b| rpcb::decode_pmaplist(&b).map_err(|e| e.to_string()))
            .map(|l| format_portmap(&l, &rpc_names())),
        (None, _, true) => rpc_call(&unix, 4, 4, &[])
            .and_then(|b| rpcb::decode_rpcblist(&b).map_err(|e| e.to_string()))
            .map(|l| format_short(&l, &rpc_names())),
        (Some(QueryLookup::Getport { prog, vers, proto }), ..) => {
            let prot = if proto == "udp" {
                rpcb::IPPROTO_UDP
            } else {
                rpcb::IPPROTO_TCP
            };
            let mut a = BytesMut::new();
            Mapping {
                prog: *prog,
                vers: *vers,
                prot,
                port: 0,
            }
            .encode(&mut a);
            rpc_call(&unix, 2, 3, &a).and_then(|b| match b.get(..4) {
                Some([0, 0, 0, 0]) => Err(format!(
                    "program {prog} version {vers} is not registered on {proto}"
                )),
                Some(p) => Ok(format!(
                    "{}\n",
                    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
                )),
                None => Err("short GETPORT reply".into()),
            })
        }
        (Some(QueryLookup::Getaddr { prog, vers, netid }), ..) => {
            // rpcbind answers GETADDR by the transport the call arrives on.
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, args.inet.port()));
            let via = match netid.as_str() {
                "tcp" => Via::Tcp(args.inet),
                "udp" => Via::Udp(args.inet),
                "tcp6" => Via::Tcp(v6),
                "udp6" => Via::Udp(v6),
                _ => Via::Unix(&args.socket),
            };
            let mut a = BytesMut::new();
            Rpcb {
                prog: *prog,
                vers: *vers,
                netid: netid.as_bytes(),
                addr: b"",
                owner: b"",
            }
            .encode(&mut a);
            rpc_call(&via, 4, 3, &a).and_then(|b| match rpcb::decode_string_reply(&b) {
                Ok([]) => Err(format!(
                    "program {prog} version {vers} is not registered on {netid}"
                )),
                Ok(addr) => Ok(format!("{}\n", String::from_utf8_lossy(addr))),
                Err(e) => Err(e.to_string()),
            })
        }
        (None, false, false) => Err("say what to query: -p, -s, getport or getaddr".into()),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args() -> CheckArgs {
        CheckArgs {
            control: crate::cli::ControlArg {
                control: "/x".into(),
            },
            warn_time_wait: 10,
            crit_time_wait: 100,
            min_hit_ratio: 0.5,
        }
    }

    fn status(connected: bool, tw: u64, ratio: f64, hits: u64) -> Value {
        json!({
            "cache": {"hit_ratio": ratio, "hits": hits, "negative_hits": 0, "misses": 1, "entries": 3},
            "upstream": {"classes": {"unix": {"connected": connected}}},
            "time_wait": {"port_111": tw},
            "requests": {"total": 9},
        })
    }

    #[test]
    fn check_states_follow_nagios_conventions() {
        let a = args();
        let (s, line) = check_verdict(Ok(status(true, 0, 0.9, 9)), &a);
        assert_eq!(s, CheckState::Ok);
        assert!(
            line.starts_with("OK: ") && line.contains(" | hit_ratio=0.9000;"),
            "{line}"
        );
        assert_eq!(
            check_verdict(Ok(status(true, 10, 0.9, 9)), &a).0,
            CheckState::Warning
        );
        assert_eq!(
            check_verdict(Ok(status(true, 100, 0.9, 9)), &a).0,
            CheckState::Critical
        );
        assert_eq!(
            check_verdict(Ok(status(true, 0, 0.1, 9)), &a).0,
            CheckState::Warning
        );
        assert_eq!(
            check_verdict(Ok(status(false, 0, 0.9, 9)), &a).0,
            CheckState::Critical
        );
        let (s, line) = check_verdict(Err("cannot reach the daemon at /x: refused".into()), &a);
        assert_eq!(s, CheckState::Critical);
        assert!(line.starts_with("CRITICAL: cannot reach the daemon at /x"));
        assert_eq!(check_verdict(Ok(json!({})), &a).0, CheckState::Unknown);
    }

    #[test]
    fn rpcinfo_formats() {
        let names = BTreeMap::from([(100000, "portmapper".to_string())]);
        let pm = [Mapping {
            prog: 100000,
            vers: 4,
            prot: 6,
            port: 111,
        }];
        assert_eq!(
            format_portmap(&pm, &names),
            "   program vers proto   port  service\n    100000    4   tcp    111  portmapper\n"
        );
        let e = |vers, netid: &str| rpcb::RpcbEntry {
            prog: 100000,
            vers,
            netid: netid.into(),
            addr: vec![],
            owner: b"superuser".to_vec(),
        };
        let list = [
            e(4, "tcp6"),
            e(3, "tcp6"),
            e(4, "tcp"),
            e(2, "tcp"),
            e(4, "local"),
        ];
        assert_eq!(
            format_short(&list, &names),
            "   program version(s) netid(s)                         service     owner\n    100000  2,3,4     local,tcp,tcp6                   portmapper  superuser\n"
        );
    }
}
