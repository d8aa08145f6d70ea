//! Citations a reader of the repository cannot follow: an issue number, a
//! path outside the repository, a notes file it does not hold.

use std::collections::HashSet;
use std::path::{Component, Path};

use crate::repo;
use crate::rust::is_word;

/// What a line of `file` cites that a reader of the repository cannot look
/// up: an issue number, a path outside the repository, a notes file.
pub(crate) fn citations(line: &str, file: &str, known: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let lower = line.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    // The word issue (any case, maybe plural) then a number, maybe after a
    // hash sign or a slash (a tracker's address); a pull request's address.
    for (at, _) in lower.match_indices("issue") {
        if at > 0 && is_word(chars_at(&lower, at - 1)) {
            continue;
        }
        let rest = lower[at + "issue".len()..].trim_start_matches('s');
        let rest = rest.trim_start_matches([' ', '#', '/']);
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            out.push(format!("cites an issue number ({:?})", line.trim()));
        }
    }
    if lower.contains("/pull/") && digits_after(&lower, "/pull/") {
        out.push(format!("cites a pull request ({:?})", line.trim()));
    }
    // A hash sign at a word's start, then digits, then no more word.
    for (k, &c) in chars.iter().enumerate() {
        if c != '#' {
            continue;
        }
        let before_ok = k == 0 || chars[k - 1].is_whitespace() || "(,[".contains(chars[k - 1]);
        let digits = chars[k + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let after_ok = chars.get(k + 1 + digits).is_none_or(|&c| !is_word(c));
        if before_ok && digits > 0 && after_ok {
            out.push(format!("cites an issue number ({:?})", line.trim()));
        }
    }
    // A checkout or home directory elsewhere (a path that starts there).
    for outside in ["/work/", "/home/"] {
        let starts_there = line
            .match_indices(outside)
            .any(|(at, _)| at == 0 || !is_path_char(chars_at(line, at - 1)));
        if starts_there {
            out.push(format!("names a path outside the repository ({outside})"));
        }
    }
    // A relative path climbing up: must stay inside the repository and exist.
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    for (at, _) in line.match_indices("../") {
        let starts = at == 0 || !is_path_char(chars_at(line, at - 1));
        if !starts {
            continue;
        }
        let cited: String = line[at..]
            .chars()
            .take_while(|&c| is_path_char(c))
            .collect();
        let cited = cited.trim_end_matches(['.', ',']);
        match normalize(&dir.join(cited)) {
            None => out.push(format!("names {cited}, outside the repository")),
            Some(p) if !known.contains(&p) && !is_dir_in_repo(&p) => {
                out.push(format!("names {cited}, which is not in the repository"))
            }
            Some(_) => {}
        }
    }
    // A document or notes file by name (not a path on the running system,
    // which starts at /): it must be one of the repository's files.
    for word in line.split(|c: char| !is_path_char(c)) {
        let word = word.trim_end_matches(['.', ',']);
        let lower = word.to_lowercase();
        let name = word.rsplit('/').next().unwrap_or(word);
        let document = [".md", ".org", ".rst"]
            .iter()
            .any(|ext| lower.ends_with(ext))
            || (lower.contains("notes") && lower.ends_with(".txt"));
        if document
            && !word.starts_with('/')
            && !word.starts_with("../")
            && !known.contains(word)
            && !known.contains(name)
        {
            out.push(format!("names {word}, which is not in the repository"));
        }
    }
    // Notes cited without a file name.
    for cue in [
        "(notes,",
        "(notes)",
        "(notes:",
        "(notes;",
        "see notes",
        "see the notes",
        "in the notes",
    ] {
        if lower.contains(cue) {
            out.push(format!(
                "cites notes that are not in the repository ({:?})",
                line.trim()
            ));
        }
    }
    out
}

fn chars_at(s: &str, byte: usize) -> char {
    s[..=byte].chars().next_back().unwrap_or(' ')
}

fn digits_after(s: &str, pat: &str) -> bool {
    s.match_indices(pat)
        .any(|(at, _)| s[at + pat.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || "_-./".contains(c)
}

/// `a/b/../c` as `a/c`; None when it climbs above the root.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    Some(parts.join("/"))
}

fn is_dir_in_repo(rel: &str) -> bool {
    repo().join(rel).is_dir()
}

#[test]
fn citations_are_found() {
    let known: HashSet<String> = ["README.md", "src/lib.rs"].map(str::to_owned).into();
    let cites = |line: &str| !citations(line, "src/proxy/cache.rs", &known).is_empty();
    for bad in [
        "// as issue 12 found",
        "//! Issue #3 says",
        "/// (issues 4 and 5)",
        "// see #12.",
        "// fixed in (#7)",
        "// see github.com/o/r/issues/9",
        "// (../shared/rpcbind-notes.md)",
        "// in /work/main/x",
        "// rpcbind-notes.md, first table",
        "// (notes, first table)",
    ] {
        assert!(cites(bad), "not caught: {bad}");
    }
    for good in [
        "// README.md says how",
        "#[path = \"../../src/lib.rs\"]",
        "// an issue number is not cited here",
        "format!(\"{:#x}\", v); // #[derive]",
        "// /run/rpcbind.sock and /proc/self/fd",
        "let notes = 3;",
    ] {
        assert!(!cites(good), "wrongly caught: {good}");
    }
}
