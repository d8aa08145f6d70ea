//! etc/config.toml, the commented example shipped as
//! /etc/rpcbind-proxy/config.toml, cannot drift from the real keys: as
//! shipped it parses (and changes nothing); with every `# key = value` line
//! uncommented it still parses, names every key the daemon knows, and
//! resolves to exactly the defaults.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rpcbind_proxy::config::{Config, FileConfig};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/config.toml")
}

/// `# key = value` → `key = value`; prose comments stay comments.
fn uncomment(text: &str) -> (String, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let mut out = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some((key, _)) = rest.split_once(" = ") {
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    keys.insert(key.to_owned());
                    out.push_str(rest);
                    out.push('\n');
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, keys)
}

/// The keys FileConfig accepts, read off serde's "unknown field" error
/// ("... expected one of `listen`, `rpcbind-socket`, ..."), so that a key
/// added to FileConfig without an example line fails here.
fn known_keys() -> BTreeSet<String> {
    let e = FileConfig::parse("no-such-key-at-all = 1\n", Path::new("probe")).unwrap_err();
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
    let file = FileConfig::load(&example()).unwrap();
    let shipped = Config::resolve(file, FileConfig::default()).unwrap();
    let defaults = Config::resolve(FileConfig::default(), FileConfig::default()).unwrap();
    assert_eq!(shipped, defaults);
}

#[test]
fn every_example_line_is_a_real_key_with_its_default() {
    let text = std::fs::read_to_string(example()).unwrap();
    let (uncommented, keys) = uncomment(&text);
    let file = FileConfig::parse(&uncommented, &example())
        .unwrap_or_else(|e| panic!("uncommented example: {e}\n{uncommented}"));
    assert_eq!(
        keys,
        known_keys(),
        "example keys (left) vs FileConfig's keys (right)"
    );
    let all_set = Config::resolve(file, FileConfig::default()).unwrap();
    let defaults = Config::resolve(FileConfig::default(), FileConfig::default()).unwrap();
    assert_eq!(all_set, defaults, "the example shows the defaults");
}
