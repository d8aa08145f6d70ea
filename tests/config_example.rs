//! etc/config.toml, the commented example shipped as
//! /etc/rpcbind-proxy/config.toml, cannot drift from the settings'
//! declaration: as shipped it parses (and changes nothing); with every
//! `# key = value` line uncommented it still parses, names every key the
//! daemon knows, and resolves to exactly the defaults; each default it shows
//! is the one `serve --help` states, and the ranges its prose gives are the
//! ones validation applies. A reload compares the same keys.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use rpcbind_proxy::config::{
    Config, Settings, DEFAULT_LISTEN, ENTRIES_RANGE, MAX_AUTO_THREADS, RESTART_ONLY,
    UDP_REPLY_RANGE,
};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/config.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example()).unwrap()
}

/// `# key = value` → `key = value`; prose comments stay comments. Also the
/// (key, value) pairs uncommented.
fn uncomment(text: &str) -> (String, Vec<(String, String)>) {
    let mut pairs = Vec::new();
    let mut out = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some((key, value)) = rest.split_once(" = ") {
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    pairs.push((key.to_owned(), value.to_owned()));
                    out.push_str(rest);
                    out.push('\n');
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, pairs)
}

/// The keys Settings accepts, read off serde's "unknown field" error
/// ("... expected one of `listen`, `rpcbind-socket`, ..."), so that a key
/// added to Settings without an example line fails here.
fn known_keys() -> BTreeSet<String> {
    let e = Settings::parse("no-such-key-at-all = 1\n", Path::new("probe")).unwrap_err();
    let msg = e.to_string();
    let list = msg
        .split_once("expected one of")
        .or_else(|| msg.split_once("expected"))
        .unwrap_or_else(|| panic!("unexpected error text: {msg}"))
        .1;
    let keys: BTreeSet<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(keys.contains("listen"), "{msg}");
    keys
}

#[test]
fn the_example_as_shipped_parses_and_changes_nothing() {
    let file = Settings::load(&example()).unwrap();
    let shipped = Config::resolve(file, Settings::default()).unwrap();
    let defaults = Config::resolve(Settings::default(), Settings::default()).unwrap();
    assert_eq!(shipped, defaults);
}

#[test]
fn every_example_line_is_a_real_key_with_its_default() {
    let (uncommented, pairs) = uncomment(&example_text());
    let file = Settings::parse(&uncommented, &example())
        .unwrap_or_else(|e| panic!("uncommented example: {e}\n{uncommented}"));
    let keys: BTreeSet<String> = pairs.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        known_keys(),
        "example keys (left) vs Settings' keys (right)"
    );
    let mut all_set = Config::resolve(file, Settings::default()).unwrap();
    // The one opt-in key: off by default, its example line shows the
    // address to use.
    assert_eq!(all_set.metrics, Some(([127, 0, 0, 1], 9111).into()));
    all_set.metrics = None;
    let defaults = Config::resolve(Settings::default(), Settings::default()).unwrap();
    assert_eq!(all_set, defaults, "the example shows the defaults");
}

/// A reload compares the effective settings key by key: every key of the
/// file is one of them, and each it cannot apply is a real key.
#[test]
fn a_reload_compares_every_setting_by_its_key() {
    let defaults = Config::resolve(Settings::default(), Settings::default()).unwrap();
    let compared: BTreeSet<String> = defaults.by_key().keys().cloned().collect();
    assert_eq!(compared, known_keys(), "reload (left) vs Settings (right)");
    for key in RESTART_ONLY {
        assert!(compared.contains(key), "{key}");
    }
}

/// The default a `serve` flag's help states (`[default: X]` or `[default:
/// X, why]`), if it states one.
fn help_default(flag: &str) -> Option<String> {
    let cli = rpcbind_proxy::cli::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let arg = serve.get_arguments().find(|a| a.get_long() == Some(flag))?;
    let help = arg.get_help()?.to_string();
    let (_, rest) = help.split_once("[default: ")?;
    let end = rest.find([']', ',']).unwrap();
    Some(rest[..end].to_owned())
}

#[test]
fn the_defaults_in_the_help_are_the_examples() {
    let (_, pairs) = uncomment(&example_text());
    let mut checked = 0;
    for (key, value) in pairs {
        let Some(stated) = help_default(&key) else {
            continue;
        };
        let value = value.trim_matches('"');
        let same = match (stated.parse::<f64>(), value.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => stated == value,
        };
        assert!(same, "--{key} --help says {stated}, the example {value}");
        checked += 1;
    }
    assert!(checked >= 15, "{checked} defaults checked");
    // --listen's help lists the default listeners in its prose.
    let listen = rpcbind_proxy::cli::Cli::command()
        .find_subcommand("serve")
        .unwrap()
        .get_arguments()
        .find(|a| a.get_long() == Some("listen"))
        .unwrap()
        .get_help()
        .unwrap()
        .to_string();
    assert!(listen.contains(&DEFAULT_LISTEN.join(", ")), "{listen}");
}

#[test]
fn the_ranges_the_example_states_are_the_ones_checked() {
    // The prose as read, its comment lines joined.
    let text = example_text().replace("\n# ", " ");
    for stated in [
        format!("({} to {})", ENTRIES_RANGE.start(), ENTRIES_RANGE.end()),
        format!(
            "({} to {} bytes)",
            UDP_REPLY_RANGE.start(),
            UDP_REPLY_RANGE.end()
        ),
        format!("(0: one per CPU, at most {MAX_AUTO_THREADS})"),
        format!(
            "own limit is {} bytes",
            rpcbind_proxy::proxy::limits::LimitsConfig::DEFAULT.max_udp_reply
        ),
    ] {
        assert!(text.contains(&stated), "etc/config.toml states {stated:?}");
    }
    // A value just outside each stated range is refused.
    for bad in [
        format!("max-entries = {}", ENTRIES_RANGE.end() + 1),
        format!("max-udp-reply = {}", UDP_REPLY_RANGE.start() - 1),
    ] {
        assert!(Settings::parse(&bad, &example()).is_err(), "{bad}");
    }
}
