//! The daemon's `/metrics` over HTTP and rpcbind's own counters: the
//! exposition a real scrape gets (promtool's lint clean), the counters
//! read from rpcbind compared with what Debian's `rpcinfo -m` prints
//! against the same rpcbind, the endpoint's bounds against idle and
//! oversized clients while lookups go on, and NULL answered without
//! rpcbind only while rpcbind answers.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{self, metrics_addr, METRICS};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_metrics(extra: &[&str]) -> Options {
    let mut proxy_args = vec!["--metrics".to_string(), METRICS.to_string()];
    proxy_args.extend(extra.iter().map(|s| s.to_string()));
    Options {
        proxy_args,
        ..Options::default()
    }
}

/// `rpcinfo -m`'s procedure tables: (version, procedure) → calls, the
/// names as rpcinfo spells them.
fn rpcinfo_tables(out: &str) -> BTreeMap<(u32, String), u64> {
    let mut tables = BTreeMap::new();
    let mut version = 0;
    let mut names: Option<Vec<String>> = None;
    for line in out.lines() {
        if let Some(v) = line
            .split("(version ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|v| v.parse().ok())
        {
            version = v;
            names = None;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || line.contains("statistics") {
            names = None;
            continue;
        }
        // A count, or `succeeded/calls` for SET, UNSET, GETPORT/GETADDR
        // and CALLIT: the calls are compared.
        let calls = |w: &str| w.rsplit('/').next().and_then(|c| c.parse::<u64>().ok());
        match &names {
            Some(n) if words.iter().all(|w| calls(w).is_some()) => {
                for (name, count) in n.iter().zip(&words) {
                    tables.insert((version, name.clone()), calls(count).unwrap());
                }
                names = None;
            }
            _ if words.iter().all(|w| {
                w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            }) =>
            {
                names = Some(words.iter().map(|w| w.to_string()).collect());
            }
            _ => names = None,
        }
    }
    tables
}

/// Our names for rpcinfo's abbreviations.
fn rpcinfo_name(ours: &str) -> &str {
    match ours {
        "GETTIME" => "TIME",
        "UADDR2TADDR" => "U2T",
        "TADDR2UADDR" => "T2U",
        "GETVERSADDR" => "VERADDR",
        "INDIRECT" => "INDRECT",
        "GETADDRLIST" => "GETLIST",
        "BCAST" => "CALLIT",
        other => other,
    }
}

#[test]
fn a_scrape_gets_the_exposition_and_rpcbinds_counters_match_rpcinfo() {
    // One refresh round only (at start): rpcbind's DUMP count stays still
    // between the two readings compared.
    run_with(with_metrics(&["--refresh", "3600"]), |sb| async move {
        // What rpcbind counts: lookups found and not, a SET, an UNSET that
        // fails, straight at rpcbind; and lookups through the proxy.
        assert!(sb.rpcbind_set(600100, 1, "tcp", "127.0.0.1.8.1").await);
        // Registered already: refused.
        assert!(!sb.rpcbind_set(600100, 1, "tcp", "127.0.0.1.8.2").await);
        for prog in [100000, 600100, 600101] {
            sb.call(Target::Direct, Transport::Tcp, &getport_call(prog))
                .await;
            sb.call(Target::Proxy, Transport::Tcp, &getport_call(prog))
                .await;
        }

        let get = http::request(metrics_addr(), "GET", "/metrics").await;
        assert_eq!(get.status, 200, "{get:?}");
        assert_eq!(
            get.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        for want in [
            "# TYPE rpcbind_proxy_requests_total counter",
            "rpcbind_proxy_rpcbind_up 1",
            "rpcbind_proxy_build_info{version=\"",
            "rpcbind_proxy_rpcbind_calls_total{version=\"2\",procedure=\"GETPORT\"}",
            "rpcbind_proxy_rpcbind_registrations_total{version=\"4\",procedure=\"SET\",result=\"failure\"} 1",
            "rpcbind_proxy_rpcbind_address_lookups_total{version=\"2\",program=\"600101\",program_version=\"1\",netid=\"tcp\",result=\"failure\"}",
        ] {
            assert!(get.body.contains(want), "no {want:?} in:\n{}", get.body);
        }
        // The exposition is what Prometheus' own lint accepts.
        let checked = promtool_check(&get.body);
        assert!(checked.is_ok(), "{}", checked.unwrap_err());

        // HEAD: the same headers, no body; other methods and paths refused.
        let head = http::request(metrics_addr(), "HEAD", "/metrics").await;
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        assert_eq!(
            http::request(metrics_addr(), "POST", "/metrics")
                .await
                .status,
            405
        );
        assert_eq!(
            http::request(metrics_addr(), "GET", "/nothing")
                .await
                .status,
            404
        );

        // Differential: the counters as the status has them, then rpcinfo
        // -m against rpcbind itself; between the two only rpcinfo's own
        // GETSTAT is new.
        let status = sb.status().await;
        let ours = &status["rpcbind"]["counters"];
        assert!(ours.is_object(), "no counters: {status:#}");
        let out = sb.run_rpcinfo(&["-m"]).await;
        assert!(out.status.success(), "rpcinfo -m: {out:?}");
        let printed = String::from_utf8_lossy(&out.stdout);
        let theirs = rpcinfo_tables(&printed);
        assert!(
            theirs.len() >= 28,
            "rpcinfo -m not read: {theirs:?}\n{printed}"
        );
        let mut compared = 0;
        for c in ours["calls"].as_array().unwrap() {
            let version = c["version"].as_u64().unwrap() as u32;
            let name = rpcinfo_name(c["procedure"].as_str().unwrap()).to_string();
            let mut count = c["count"].as_u64().unwrap();
            if (version, name.as_str()) == (4, "GETSTAT") {
                count += 1;
            }
            assert_eq!(
                theirs.get(&(version, name.clone())),
                Some(&count),
                "v{version} {name}: rpcinfo -m printed\n{printed}\nthe status has {ours:#}"
            );
            compared += 1;
        }
        assert_eq!(compared, 6 + 9 + 13);
        // rpcinfo's lookup table: prog vers netid success failure.
        let lookups: Vec<Value> = ours["lookups"].as_array().unwrap().clone();
        let row = |prog: u64| {
            lookups
                .iter()
                .find(|l| l["program"] == prog && l["version"] == 2)
                .map(|l| {
                    (
                        l["success"].as_u64().unwrap(),
                        l["failure"].as_u64().unwrap(),
                    )
                })
        };
        // GETPORT of each: once directly, once as the proxy's miss.
        assert_eq!(row(600100), Some((2, 0)), "{ours:#}");
        assert_eq!(row(600101), Some((0, 2)), "{ours:#}");
        for (prog, (s, f)) in [(600100, (2, 0)), (600101, (0, 2))] {
            let line = format!("{prog}");
            let printed_row = printed
                .lines()
                .find(|l| l.split_whitespace().next() == Some(line.as_str()))
                .unwrap_or_else(|| panic!("no {prog} row in rpcinfo -m:\n{printed}"));
            let w: Vec<&str> = printed_row.split_whitespace().collect();
            assert_eq!(
                (w[3], w[4]),
                (&*s.to_string(), &*f.to_string()),
                "{printed_row}"
            );
        }
        // The text status says it in one line.
        let text = sb.status_printed(&[]).await;
        assert!(
            text.contains("rpcbind      up; its own counters: calls "),
            "{text}"
        );
    });
}

fn promtool_path() -> String {
    let unpacked = "/var/cache/rpcbind-proxy-deps/prometheus/usr/bin/promtool";
    if std::path::Path::new(unpacked).is_file() {
        unpacked.into()
    } else {
        "promtool".into()
    }
}

/// `promtool check metrics` on an exposition (its lint of names, types,
/// help and labels).
fn promtool_check(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool_path())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}: run `sudo scripts/deps`"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn idle_and_oversized_scrapers_cannot_hold_the_endpoint_or_slow_lookups() {
    run_with(with_metrics(&[]), |sb| async move {
        // Eight connections that never send a request: every slot taken.
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(
                tokio::net::TcpStream::connect(metrics_addr())
                    .await
                    .unwrap(),
            );
        }
        // Wait until the daemon holds all eight (each accepted in turn).
        let mut ninth = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // A newcomer beyond the bound is closed at once, without an
            // answer.
            let got = http::exchange(
                metrics_addr(),
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            match got {
                Ok(b) if !b.is_empty() => tokio::time::sleep(Duration::from_millis(20)).await,
                other => {
                    ninth = Some(other);
                    break;
                }
            }
        }
        assert!(
            ninth.is_some(),
            "a ninth scraper was still served with eight idle ones connected"
        );
        // Lookups go on meanwhile.
        let t = Instant::now();
        for _ in 0..20 {
            let out = sb
                .call(Target::Proxy, Transport::Tcp, &getport_call(100000))
                .await;
            out.expect_results("GETPORT while the metrics endpoint is full");
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        // The idle ones are closed by the header timeout (5 s), which
        // frees the endpoint.
        for mut s in idle {
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "an idle scraper was not closed within 10 s: {r:?}"
            );
        }
        assert!(http::scrape()
            .await
            .contains("rpcbind_proxy_requests_total"));
        // Headers beyond the bound: refused (431) or closed, never read
        // on and on.
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..2000 {
            big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(20)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let mut s = tokio::net::TcpStream::connect(metrics_addr())
            .await
            .unwrap();
        let _ = s.write_all(&big).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("an oversized request was neither answered nor closed in 10 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "oversized headers got: {answer}"
        );
    });
}

/// NULL calls rpcbind counted, every version, read from rpcbind itself.
async fn rpcbind_nulls(sb: &Sandbox) -> u64 {
    let call = Call::rpcb(4, RPCBPROC_GETSTAT, vec![]);
    let out = sb.call(Target::Direct, Transport::Unix, &call).await;
    let stats = rpcbind_proxy::protocol::rpcb_stat::decode_stats(&out.expect_results("GETSTAT"))
        .expect("rpcbind's GETSTAT decodes");
    stats.iter().map(|v| u64::from(v.calls[0])).sum()
}

#[test]
fn null_is_answered_here_only_while_rpcbind_answers() {
    run(|mut sb| async move {
        let null = Call::rpcb(2, RPCBPROC_NULL, vec![]);
        let before = rpcbind_nulls(&sb).await;
        for transport in [Transport::Tcp, Transport::Udp, Transport::Unix] {
            for _ in 0..5 {
                let out = sb.call(Target::Proxy, transport, &null).await;
                out.expect_results("NULL through the proxy");
                // Byte for byte what rpcbind answers (after the XID).
                let direct = sb.call(Target::Direct, transport, &null).await;
                assert_eq!(out, direct, "NULL over {transport:?}");
            }
        }
        // The direct NULLs above (15) reached rpcbind; the proxy's did not.
        assert_eq!(rpcbind_nulls(&sb).await, before + 15);
        assert_eq!(sb.status().await["requests"]["pings_answered"], 15);

        // rpcbind gone: a ping through the proxy must not say it is alive.
        sb.kill_rpcbind().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while sb.status().await["rpcbind"]["up"] == true {
            assert!(
                Instant::now() < deadline,
                "the proxy still thinks rpcbind is up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = sb.call(Target::Proxy, Transport::Tcp, &null).await;
        assert!(
            !out.is_success(),
            "a ping through the proxy succeeded with rpcbind dead: {out:?}"
        );
    });
}
