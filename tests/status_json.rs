//! The status is one type, `proxy::status::Status`: a live daemon's
//! `status --json` reads into it and writes back to the same JSON (a field
//! renamed, added or dropped on either side fails here, instead of being
//! shown as 0), with the keys and number types it had before the type
//! existed (`tests/golden/status.json`, taken from a daemon in transparent
//! mode then, with a remote and an `other` client row added). The text,
//! Prometheus, `top` and `check` renderings of that fixture are held
//! byte for byte by `tests/golden/status_renderings.txt`.

mod support;

use std::collections::BTreeSet;

use rpcbind_proxy::cli::{CheckArgs, ControlArg};
use rpcbind_proxy::ops::{check, text, top};
use rpcbind_proxy::proxy::status::prometheus;
use rpcbind_proxy::proxy::status::Status;
use serde_json::{json, Value};
use support::*;

fn golden(name: &str) -> String {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture() -> Value {
    serde_json::from_str(&golden("status.json")).expect("the fixture is JSON")
}

/// Reads `v` into the type and writes it back; the two must be the same
/// JSON value (keys, nesting, number types: 1 and 1.0 differ).
fn round_trip(v: &Value) -> Status {
    let status: Status = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("the status does not read into the type: {e}\n{v:#}"));
    let back = serde_json::to_value(&status).expect("the type writes JSON");
    let (before, after) = (shape(v), shape(&back));
    assert_eq!(
        before.symmetric_difference(&after).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys or number types differ after the round trip"
    );
    assert_eq!(&back, v, "the round trip changed a value");
    status
}

/// Every key path with the type of its value (`null` left out, so that an
/// optional value set or not is the same shape); arrays' elements merged.
fn shape(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: &str, out: &mut BTreeSet<String>) {
        let kind = match v {
            Value::Null => return,
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_u64() => "u64",
            Value::Number(n) if n.is_i64() => "i64",
            Value::Number(_) => "f64",
            Value::String(_) => "string",
            Value::Array(a) => {
                for x in a {
                    walk(x, &format!("{path}[]"), out);
                }
                "array"
            }
            Value::Object(m) => {
                for (k, x) in m {
                    walk(x, &format!("{path}/{k}"), out);
                }
                "object"
            }
        };
        out.insert(format!("{path}: {kind}"));
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

#[test]
fn a_live_status_reads_into_the_type_and_writes_back_unchanged() {
    let opts = Options {
        transparent: true,
        ..Options::default()
    };
    run_with(opts, |sb| async move {
        // Traffic on every transport, to the proxy and redirected to it,
        // hits and misses: every part of the status has rows.
        assert!(sb.rpcbind_set(600001, 1, "tcp", "0.0.0.0.8.1").await);
        for t in [Transport::Unix, Transport::Tcp, Transport::Udp] {
            for _ in 0..3 {
                sb.call(Target::Proxy, t, &getport_call(600001)).await;
                sb.call(Target::Direct, t, &getport_call(600002)).await;
            }
        }
        let out = sb
            .run_in_ns(&[PROXY_BIN, "status", "--json", "--control", CONTROL_SOCK])
            .await;
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        let v: Value = serde_json::from_str(&text).expect("one JSON object");
        let status = round_trip(&v);
        // The bytes the daemon sends: sorted keys, one line.
        assert_eq!(
            format!("{}\n", serde_json::to_value(&status).unwrap()),
            text
        );
        assert!(!status.lookups.is_empty() && !status.clients.top.is_empty());
        assert!(status.upstream.latency_p50_us.is_some());
        assert!(status.intercept.active() && !status.intercept.rules().is_empty());
        // The keys and number types the status had before it was a type,
        // but for the optional keys of client rows and the hosts held back
        // (server mode's), which this traffic has none of.
        let before: BTreeSet<String> = shape(&fixture())
            .into_iter()
            .filter(|k| {
                !k.starts_with("/clients/top[]/address")
                    && !k.starts_with("/clients/top[]/other")
                    && !k.starts_with("/limits/remote_rate/offenders[]")
            })
            .collect();
        assert_eq!(
            shape(&v).symmetric_difference(&before).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "the status's keys differ from tests/golden/status.json"
        );
    });
}

#[test]
fn the_fixture_and_each_variant_read_into_the_type_and_write_back_unchanged() {
    for (name, v) in variants(&fixture()) {
        let s = round_trip(&v);
        assert_eq!(s.version, "0.1.0", "{name}");
    }
}

#[test]
fn a_status_with_a_field_renamed_or_missing_does_not_read() {
    let mut renamed = fixture();
    let hits = renamed["cache"]
        .as_object_mut()
        .unwrap()
        .remove("hits")
        .unwrap();
    renamed["cache"]["hit"] = hits;
    assert!(serde_json::from_value::<Status>(renamed).is_err());
}

/// Variants of the fixture that reach every branch of the renderings.
fn variants(v: &Value) -> Vec<(&'static str, Value)> {
    let mut quiet = v.clone();
    quiet["intercept"] = json!({"enabled": false});
    quiet["upstream"]["latency_p50_us"] = json!(null);
    quiet["upstream"]["latency_p99_us"] = json!(null);
    quiet["lookups"] = json!([]);
    quiet["clients"]["top"] = json!([]);
    quiet["clients"]["rest"] = json!({"per_second_10s": -0.0, "requests": 0, "rows": 0});
    let mut stopping = v.clone();
    stopping["intercept"] = json!({"enabled": true, "active": false, "mark": "0x5250"});
    let mut unreadable = v.clone();
    unreadable["intercept"] = json!({"enabled": true, "active": true, "table": "inet rpcbind_proxy", "error": "no such table"});
    let mut down = v.clone();
    down["upstream"]["classes"]["unix"]["connected"] = json!(false);
    down["cache"]["recent"]["lookups"] = json!(3);
    down["rpcbind"] = json!({"up": false});
    vec![
        ("full", v.clone()),
        ("quiet", quiet),
        ("stopping", stopping),
        ("unreadable", unreadable),
        ("down", down),
    ]
}

#[test]
fn every_rendering_of_the_fixture_is_byte_for_byte_as_before() {
    let args = CheckArgs {
        control: ControlArg {
            control: "/x".into(),
        },
        warn_time_wait: 10,
        crit_time_wait: 100,
        min_hit_ratio: 0.5,
        min_lookups: 5,
    };
    let mut out = String::new();
    for (name, v) in variants(&fixture()) {
        let s: Status = serde_json::from_value(v).unwrap();
        out += &format!("==== {name}: status\n{}", text::human(&s));
        out += &format!(
            "==== {name}: status --prometheus\n{}",
            prometheus::prometheus(&s)
        );
        out += &format!("==== {name}: top\n{}", top::frame(&s));
        out += &format!(
            "==== {name}: check\n{}\n",
            check::check_verdict(Ok(s), &args).1
        );
    }
    if std::env::var_os("BLESS").is_some() {
        // BLESS=1: the renderings as they are now become the golden file
        // (review its diff before committing).
        let path = format!(
            "{}/tests/golden/status_renderings.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(&path, &out).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let want = golden("status_renderings.txt");
    if out != want {
        let line = out
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(out.lines().count().min(want.lines().count()));
        panic!(
            "renderings differ from tests/golden/status_renderings.txt from line {}:\n{}",
            line + 1,
            out.lines()
                .skip(line)
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
