//! Tidy: rules about the source tree that the compiler does not check, read
//! from the files as text (no root, no daemon, nothing built but this test):
//!
//! - the layers import only downward: protocol/ nothing of the crate but
//!   itself, host/ only protocol/, proxy/ never ops/ or daemon/;
//! - no source file cites a path outside the repository (a notes file, a
//!   checkout elsewhere) or an issue number: a reader of the repository
//!   cannot look either up;
//! - no file under src/ holds more than 600 lines of code (blank lines,
//!   comments and a trailing test module not counted);
//! - `unsafe` only under src/host/.
//!
//! Each failure names the file and line, so the message says what to fix.

mod citations;
mod rust;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use citations::citations;
use rust::{code_lines, crate_references, strip, tokens, Token};

/// Most lines of code a file under src/ may hold.
const MAX_CODE_LINES: usize = 600;

/// Where the sources are, relative to the repository's root.
const SOURCE_DIRS: [&str; 5] = ["src", "tests", "benches", "fuzz", "scripts"];

/// Not sources: build output and the fuzzers' inputs (binary).
const SKIPPED_DIRS: [&str; 4] = [
    "fuzz/target",
    "fuzz/corpus",
    "fuzz/artifacts",
    "fuzz/coverage",
];

/// This test's own files: the strings it looks for are in them (only their
/// comments are read for citations).
const THIS_TEST: &str = "tests/tidy/";

#[test]
fn layers_import_only_downward() {
    let mut problems = Vec::new();
    for f in sources().iter().filter(|f| is_lib_source(&f.path)) {
        let Some(module) = module_path(&f.path) else {
            continue;
        };
        let layer = module.first().map(String::as_str).unwrap_or("");
        for (line, top) in crate_references(&module, &strip(&f.text).code) {
            if let Some(rule) = layering_violation(layer, &top) {
                problems.push(format!("{}:{line}: uses crate::{top}: {rule}", f.path));
            }
        }
    }
    report("the layers import only downward", problems);
}

#[test]
fn no_source_cites_a_path_outside_the_repository_or_an_issue_number() {
    let root = repo();
    let known = repository_files(&root);
    let mut problems = Vec::new();
    for f in sources() {
        let text = if f.path.starts_with(THIS_TEST) {
            strip(&f.text).comments
        } else {
            f.text.clone()
        };
        for (i, line) in text.lines().enumerate() {
            let mut whys = citations(line, &f.path, &known);
            whys.dedup();
            for why in whys {
                problems.push(format!("{}:{}: {why}", f.path, i + 1));
            }
        }
    }
    report(
        "no source cites a path outside the repository or an issue number",
        problems,
    );
}

#[test]
fn no_source_file_has_more_than_600_lines_of_code() {
    let mut problems = Vec::new();
    for f in sources().iter().filter(|f| is_lib_source(&f.path)) {
        if f.path.ends_with("/tests.rs") {
            continue;
        }
        let n = code_lines(&f.text);
        if n > MAX_CODE_LINES {
            problems.push(format!(
                "{}:1: {n} lines of code (at most {MAX_CODE_LINES}; move a part to a file of its own, or the tests to a tests.rs submodule)",
                f.path
            ));
        }
    }
    report("no source file has more than 600 lines of code", problems);
}

#[test]
fn unsafe_only_in_host() {
    let mut problems = Vec::new();
    for f in sources().iter().filter(|f| f.path.ends_with(".rs")) {
        if f.path.starts_with("src/host/") {
            continue;
        }
        for (line, word) in tokens(&strip(&f.text).code) {
            if word == Token::Ident("unsafe".into()) {
                problems.push(format!(
                    "{}:{line}: `unsafe` outside src/host/ (the one place that talks to the kernel by hand)",
                    f.path
                ));
            }
        }
    }
    report("unsafe only in src/host/", problems);
}

/// One mutex-poisoning policy: a lock that a panicking thread left
/// poisoned is taken over (`unwrap_or_else(PoisonError::into_inner)`), never
/// unwrapped into a second panic. Every lock in the daemon guards counters,
/// tables or a socket whose state each critical section leaves whole, and a
/// panic in one call must cost that call, not every thread after it.
#[test]
fn a_poisoned_lock_is_taken_over_not_unwrapped() {
    let mut problems = Vec::new();
    for f in sources()
        .iter()
        .filter(|f| f.path.starts_with("src/") && f.path.ends_with(".rs"))
    {
        let code: String = strip(&f.text)
            .code
            .chars()
            .filter(|c| !c.is_whitespace() || *c == '\n')
            .collect();
        for (n, line) in code.lines().enumerate() {
            // `.lock()` at a line's end continues on the next one.
            let next = code.lines().nth(n + 1).unwrap_or("");
            let joined = format!("{line}{next}");
            let unwrapped = line.match_indices(".lock()").any(|(i, _)| {
                let rest = &joined[i + ".lock()".len()..];
                rest.starts_with(".unwrap()") || rest.starts_with(".expect(")
            });
            if unwrapped {
                problems.push(format!(
                    "{}:{}: a std lock unwrapped; take a poisoned one over with .unwrap_or_else(PoisonError::into_inner)",
                    f.path,
                    n + 1
                ));
            }
        }
    }
    report("a poisoned lock is taken over", problems);
}

// ---------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------

struct Source {
    /// Relative to the repository's root, with `/`.
    path: String,
    text: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under [`SOURCE_DIRS`], sorted by path.
fn sources() -> Vec<Source> {
    let root = repo();
    let mut out = Vec::new();
    for dir in SOURCE_DIRS {
        walk(&root, &root.join(dir), &mut |path, rel| {
            // Binary files are not sources.
            if let Ok(text) = fs::read_to_string(path) {
                out.push(Source {
                    path: rel.to_owned(),
                    text,
                });
            }
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(
        out.iter().any(|f| f.path == "src/lib.rs"),
        "tidy found no sources under {}",
        root.display()
    );
    out
}

/// Every file of the repository (build output and version control left
/// out), by relative path and by name: what a citation may name.
fn repository_files(root: &Path) -> HashSet<String> {
    let mut known = HashSet::new();
    walk(root, root, &mut |_, rel| {
        known.insert(rel.to_owned());
        if let Some(name) = rel.rsplit('/').next() {
            known.insert(name.to_owned());
        }
    });
    known
}

fn walk(root: &Path, dir: &Path, each: &mut dyn FnMut(&Path, &str)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = relative(root, &path);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || rel == "target" || SKIPPED_DIRS.contains(&rel.as_str()) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(root, &path, each),
            Ok(t) if t.is_file() => each(&path, &rel),
            _ => {}
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// A file of the library crate (src/main.rs is a crate of its own that
/// uses the library, as any client would).
fn is_lib_source(path: &str) -> bool {
    path.starts_with("src/") && path.ends_with(".rs") && path != "src/main.rs"
}

/// The module a file of src/ holds: src/lib.rs is the root, src/a/mod.rs
/// and src/a.rs are `a`, src/a/b.rs is `a::b`.
fn module_path(path: &str) -> Option<Vec<String>> {
    let rel = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    Some(parts)
}

fn report(rule: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "tidy: {rule}: {} problem(s):\n{}\n",
        problems.len(),
        problems.join("\n")
    );
}

fn layering_violation(layer: &str, top: &str) -> Option<&'static str> {
    match layer {
        "protocol" if top != "protocol" => {
            Some("protocol/ imports nothing of the crate (it is the wire format, alone)")
        }
        "host" if top != "host" && top != "protocol" => {
            Some("host/ imports only protocol/ (it wraps the kernel, under the proxy)")
        }
        "proxy" if top == "ops" || top == "daemon" || top == "*" => {
            Some("proxy/ never imports ops/ or daemon/ (they are built on it)")
        }
        "ops" if top == "daemon" => {
            Some("ops/ never imports daemon/ (the operator's commands talk to it over its socket)")
        }
        "daemon" if top == "ops" => {
            Some("daemon/ never imports ops/ (the operator's commands are clients, not part of it)")
        }
        _ => None,
    }
}

/// Lines of code: not blank and not only a comment, a trailing
/// `#[cfg(test)] mod tests { … }` left out.

#[test]
fn the_layers_rule_knows_the_layers() {
    assert_eq!(
        layering_violation("proxy", "ops"),
        layering_violation("proxy", "daemon")
    );
    assert!(layering_violation("proxy", "host").is_none());
    assert!(layering_violation("host", "protocol").is_none());
    assert!(layering_violation("host", "config").is_some());
    assert!(layering_violation("protocol", "host").is_some());
    assert!(layering_violation("ops", "daemon").is_some());
    assert!(layering_violation("daemon", "ops").is_some());
    assert!(layering_violation("daemon", "proxy").is_none());
}
