//! The monitoring mixin (monitoring/) holds against promtool and a live
//! daemon:
//!
//! - `promtool check rules` accepts alerts.yml and rules.yml, and
//!   `promtool test rules` passes monitoring/tests/*.yml, in which every
//!   alert has a case that fires it and one that does not, and every
//!   recording rule a case of its own;
//! - every PromQL expression of the dashboard parses (promtool cannot query
//!   offline: the expressions, template variables filled in, go into a rule
//!   file that `promtool check rules` reads), and its datasource is a
//!   variable, never a fixed uid;
//! - every metric the dashboard and the rules name is one a real daemon in
//!   front of the real rpcbind exposes, but for the names of [`PENDING`].
//!
//! promtool comes from Debian's `prometheus` package, which scripts/deps
//! unpacks without installing it (an install would start a server). Its
//! absence fails these tests, naming scripts/deps.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::*;

/// Metrics the mixin names that the daemon does not expose yet: each must
/// leave this list in the change that makes the daemon expose it (the
/// live check fails on a name listed here that the daemon exposes).
const PENDING: &[&str] = &[];

/// Series Prometheus writes for every target itself, not the daemon.
const MADE_BY_PROMETHEUS: &[&str] = &["up"];

/// Where scripts/deps unpacks Debian's prometheus package.
const PROMTOOL_UNPACKED: &str = "/var/cache/rpcbind-proxy-deps/prometheus/usr/bin/promtool";

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// promtool: the one scripts/deps unpacked, else one on PATH.
fn promtool() -> PathBuf {
    if Path::new(PROMTOOL_UNPACKED).is_file() {
        return PROMTOOL_UNPACKED.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "promtool not found (neither {PROMTOOL_UNPACKED} nor on PATH): run `sudo scripts/deps`"
        )
    })
}

/// Runs promtool in monitoring/; Err holds what it printed when it failed.
fn promtool_run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "promtool {args:?} failed ({}):\n{text}",
            out.status
        ))
    }
}

fn unit_test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(monitoring().join("tests"))
        .expect("monitoring/tests")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .map(|n| format!("tests/{n}"))
        .collect();
    files.sort();
    files
}

/// The scrape the mixin is checked against.
async fn scrape(_sb: &Sandbox) -> String {
    support::http::scrape().await
}

// ---------------------------------------------------------------------------
// Reading the mixin's files
// ---------------------------------------------------------------------------

/// A rule of a rule file: `alert` or `record`, its name, its expression.
#[derive(Debug)]
struct Rule {
    kind: &'static str,
    name: String,
    expr: String,
}

/// The rules of a rule file. The files keep to two forms of `expr:`, one
/// line or a `|` block indented deeper; any other form fails here, as does
/// a rule without exactly one expression.
fn rules(file: &str) -> Vec<Rule> {
    let text = read(&monitoring().join(file));
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out: Vec<Rule> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        for kind in ["alert", "record"] {
            if let Some(name) = t.strip_prefix(&format!("{kind}:")) {
                out.push(Rule {
                    kind,
                    name: name.trim().to_owned(),
                    expr: String::new(),
                });
            }
        }
        let Some(rest) = t.strip_prefix("expr:").map(str::trim) else {
            continue;
        };
        let rule = out
            .last_mut()
            .unwrap_or_else(|| panic!("{file}:{}: expr before any rule", i + 1));
        assert!(rule.expr.is_empty(), "{file}: {} has two exprs", rule.name);
        rule.expr = if rest == "|" {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect();
            block.join("\n")
        } else {
            assert!(
                !rest.starts_with(['>', '"', '\'']),
                "{file}:{}: write expr as one line or a | block",
                i + 1
            );
            rest.to_owned()
        };
    }
    for r in &out {
        assert!(!r.expr.trim().is_empty(), "{file}: {} has no expr", r.name);
    }
    out
}

/// Every PromQL expression of the dashboard, with where it stands: the
/// panels' targets and the query variables (`label_values(EXPR, label)`
/// gives EXPR), template variables filled in as Grafana would.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let here = match (m.get("title"), m.get("refId")) {
                    (_, Some(Value::String(r))) => format!("{at} target {r}"),
                    (Some(Value::String(t)), _) => format!("panel {t:?}"),
                    _ => at.to_owned(),
                };
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push((here.clone(), e.clone()));
                }
                for x in m.values() {
                    walk(x, &here, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], "", &mut out);
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .expect("a query variable's query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map_or(q, |(e, _)| e);
            out.push((format!("variable {}", var["name"]), inner.to_owned()));
        }
    }
    out.into_iter()
        .map(|(at, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("${instance}", "a:9111")
                .replace("$instance", "a:9111");
            assert!(!e.contains('$'), "{at}: a template variable left: {e}");
            (at, e)
        })
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&monitoring().join("dashboard.json")))
        .expect("dashboard.json is JSON")
}

/// The metric names an expression selects: identifiers outside strings,
/// label matchers and ranges that are not functions, aggregations,
/// keywords or the labels of by/without/on/ignoring/group_*.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const WORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    // The index just past the string that opens at `i`.
    let string_end = |mut i: usize| {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        assert!(i < b.len(), "unclosed string in {expr}");
        i + 1
    };
    // The index just past the bracket that closes the one at `i`, strings
    // inside skipped.
    let close = |mut i: usize, open: u8, shut: u8| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = string_end(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unclosed {} in {expr}", open as char)
    };
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = string_end(i),
            b'{' => i = close(i, b'{', b'}'),
            b'[' => i = close(i, b'[', b']'),
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut next = i;
                while next < b.len() && b[next].is_ascii_whitespace() {
                    next += 1;
                }
                let call = b.get(next) == Some(&b'(');
                if LABEL_LISTS.contains(&word) {
                    if call {
                        i = close(next, b'(', b')');
                    }
                } else if !call && !WORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    out.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn the_names_in_an_expression_are_its_metrics() {
    let names = metric_names(
        r#"sum by (instance, "x") (rate(a_total{l="}b c", m=~"$x"}[5m] offset 1h)) / on(instance) group_left(z) topk(10, b:rec:rate5m > 0.5e3) and c unless max without (w) (d) or bool count(e)"#,
    );
    let want: BTreeSet<String> = ["a_total", "b:rec:rate5m", "c", "d", "e"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}

#[test]
fn the_rule_files_are_valid() {
    let out = promtool_run(&["check", "rules", "alerts.yml", "rules.yml"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_fires_and_holds_in_its_unit_tests_and_every_recording_rule_is_tested() {
    let files = unit_test_files();
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    promtool_run(&args).unwrap_or_else(|e| panic!("{e}"));

    // For each alert, the cases that expect it (`exp_alerts:` and a list)
    // and those that expect it silent (`exp_alerts: []`).
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut tested_exprs = BTreeSet::new();
    for f in &files {
        let text = read(&monitoring().join(f));
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(name) = l.strip_prefix("alertname:") {
                let c = cases.entry(name.trim().to_owned()).or_default();
                match lines.get(i + 1).copied() {
                    Some("exp_alerts: []") => c.1 += 1,
                    Some("exp_alerts:") => c.0 += 1,
                    other => panic!("{f}: alertname {name} followed by {other:?}, not exp_alerts"),
                }
            }
            if let Some(e) = l.strip_prefix("- expr:") {
                tested_exprs.insert(e.trim().to_owned());
            }
        }
    }
    let mut missing = Vec::new();
    for rule in rules("alerts.yml") {
        let (fires, silent) = cases.get(&rule.name).copied().unwrap_or_default();
        if fires == 0 || silent == 0 {
            missing.push(format!(
                "{}: {fires} firing, {silent} silent cases",
                rule.name
            ));
        }
    }
    for rule in rules("rules.yml") {
        if !tested_exprs.contains(&rule.name) {
            missing.push(format!("{}: no promql_expr_test", rule.name));
        }
    }
    assert!(
        missing.is_empty(),
        "untested rules:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_dashboard_expression_parses() {
    let exprs = dashboard_exprs(&dashboard());
    assert!(exprs.len() >= 30, "only {} expressions found", exprs.len());
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(n, (_, e))| json!({ "record": format!("dashboard_expression_{n}"), "expr": e }))
        .collect();
    // JSON is YAML: promtool reads it as a rule file.
    let file = std::env::temp_dir().join(format!(
        "rpcbind-proxy-dashboard-{}.yml",
        std::process::id()
    ));
    let doc = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, doc.to_string()).unwrap();
    let result = promtool_run(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    if let Err(e) = result {
        let index: Vec<String> = exprs
            .iter()
            .enumerate()
            .map(|(n, (at, _))| format!("dashboard_expression_{n}: {at}"))
            .collect();
        panic!("{e}\n{}", index.join("\n"));
    }
}

#[test]
fn the_dashboard_takes_its_datasource_and_instance_from_variables() {
    let dash = dashboard();
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    assert_eq!(
        var("instance").expect("an instance variable")["type"],
        "query"
    );
    fn walk(v: &Value, bad: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    let uid = ds.get("uid").unwrap_or(ds);
                    if uid != "${datasource}" {
                        bad.push(ds.to_string());
                    }
                }
                m.values().for_each(|x| walk(x, bad));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    walk(&dash, &mut bad);
    assert!(bad.is_empty(), "datasources not from the variable: {bad:?}");
    for (at, e) in dashboard_exprs(&dash) {
        if !at.starts_with("variable") {
            assert!(
                e.contains("instance=~\"a:9111\""),
                "{at} ignores $instance: {e}"
            );
        }
    }
}

#[test]
fn the_mixin_names_only_metrics_a_live_daemon_exposes() {
    let opts = Options {
        proxy_args: vec!["--metrics".into(), support::http::METRICS.into()],
        ..Options::default()
    };
    run_with(opts, |sb| async move {
        sb.call(Target::Proxy, Transport::Tcp, &getport_call(100000))
            .await;
        let text = scrape(&sb).await;
        let exposed: BTreeSet<String> = text
            .lines()
            .filter_map(|l| match l.strip_prefix("# TYPE ") {
                Some(rest) => rest.split_whitespace().next(),
                None if l.starts_with('#') => None,
                None => l.split(['{', ' ']).next(),
            })
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        assert!(exposed.len() >= 20, "a short scrape:\n{text}");
        let (alerts, recorded) = (rules("alerts.yml"), rules("rules.yml"));
        let own: BTreeSet<&str> = recorded.iter().map(|r| r.name.as_str()).collect();
        let mut named: BTreeMap<String, String> = BTreeMap::new();
        let exprs = alerts
            .iter()
            .chain(&recorded)
            .map(|r| (format!("{} {}", r.kind, r.name), r.expr.clone()))
            .chain(dashboard_exprs(&dashboard()));
        for (at, e) in exprs {
            for name in metric_names(&e) {
                named.entry(name).or_insert(at.clone());
            }
        }
        assert!(
            named.len() >= 25,
            "only {} names found: {named:?}",
            named.len()
        );
        let mut unknown = Vec::new();
        for (name, at) in &named {
            let known = exposed.contains(name)
                || own.contains(name.as_str())
                || PENDING.contains(&name.as_str())
                || MADE_BY_PROMETHEUS.contains(&name.as_str());
            if !known {
                unknown.push(format!("{name} (in {at})"));
            }
        }
        assert!(
            unknown.is_empty(),
            "metrics the daemon does not expose:\n{}\nit exposes:\n{text}",
            unknown.join("\n")
        );
        let landed: Vec<&&str> = PENDING.iter().filter(|n| exposed.contains(**n)).collect();
        assert!(
            landed.is_empty(),
            "exposed now, take out of PENDING: {landed:?}"
        );
    });
}
