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

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

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

/// This file: the strings it looks for are in it (only its comments are read
/// for citations).
const THIS_FILE: &str = "tests/tidy.rs";

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
        let text = if f.path == THIS_FILE {
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

// ---------------------------------------------------------------------------
// Reading Rust as text
// ---------------------------------------------------------------------------

/// A source split in two texts of the same shape (same lines, same
/// columns): `code` with comments blanked and the insides of string and
/// character literals replaced by `_`; `comments` with only the comments.
struct Stripped {
    code: String,
    comments: String,
}

fn strip(text: &str) -> Stripped {
    let s: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut comments = String::with_capacity(text.len());
    // Blank a char in both, keeping line breaks.
    let keep = |c: char, into_code: bool, code: &mut String, comments: &mut String| {
        if c == '\n' {
            code.push('\n');
            comments.push('\n');
        } else if into_code {
            code.push(c);
            comments.push(' ');
        } else {
            code.push(' ');
            comments.push(c);
        }
    };
    let literal = |c: char, code: &mut String, comments: &mut String| {
        if c == '\n' {
            code.push('\n');
            comments.push('\n');
        } else {
            code.push('_');
            comments.push(' ');
        }
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let prev_is_word = i > 0 && is_word(s[i - 1]);
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                keep(s[i], false, &mut code, &mut comments);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    keep('/', false, &mut code, &mut comments);
                    keep('*', false, &mut code, &mut comments);
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    keep('*', false, &mut code, &mut comments);
                    keep('/', false, &mut code, &mut comments);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    keep(s[i], false, &mut code, &mut comments);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&s, i).filter(|_| !prev_is_word) {
            // r"…", r#"…"#, br"…": no escapes, ends at a quote and as many #.
            while s[i] != '"' {
                keep(s[i], true, &mut code, &mut comments);
                i += 1;
            }
            keep('"', true, &mut code, &mut comments);
            i += 1;
            while i < s.len() {
                let closes = s[i] == '"' && (1..=hashes).all(|k| s.get(i + k) == Some(&'#'));
                if closes {
                    for _ in 0..=hashes {
                        keep(s[i], true, &mut code, &mut comments);
                        i += 1;
                    }
                    break;
                }
                literal(s[i], &mut code, &mut comments);
                i += 1;
            }
        } else if c == '"' {
            keep('"', true, &mut code, &mut comments);
            i += 1;
            while i < s.len() && s[i] != '"' {
                if s[i] == '\\' && i + 1 < s.len() {
                    literal(s[i], &mut code, &mut comments);
                    i += 1;
                }
                literal(s[i], &mut code, &mut comments);
                i += 1;
            }
            if i < s.len() {
                keep('"', true, &mut code, &mut comments);
                i += 1;
            }
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime.
            let end = if next == Some('\\') {
                (i + 2..s.len().min(i + 12)).find(|&j| s[j] == '\'')
            } else if s.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    keep('\'', true, &mut code, &mut comments);
                    for &ch in &s[i + 1..end] {
                        literal(ch, &mut code, &mut comments);
                    }
                    keep('\'', true, &mut code, &mut comments);
                    i = end + 1;
                }
                None => {
                    keep(c, true, &mut code, &mut comments);
                    i += 1;
                }
            }
        } else {
            keep(c, true, &mut code, &mut comments);
            i += 1;
        }
    }
    Stripped { code, comments }
}

/// At a raw string's start (`r"`, `r#"`, `br#"`), how many `#` it has.
fn raw_string_start(s: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if s.get(j) == Some(&'b') {
        j += 1;
    }
    if s.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|&&c| c == '#').count();
    (s.get(j + hashes) == Some(&'"')).then_some(hashes)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// The tokens of stripped code, each with its line (1-based).
fn tokens(code: &str) -> Vec<(usize, Token)> {
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_word(c) {
            let start = i;
            while i < s.len() && is_word(s[i]) {
                i += 1;
            }
            out.push((line, Token::Ident(s[start..i].iter().collect())));
        } else if c == ':' && s.get(i + 1) == Some(&':') {
            out.push((line, Token::Path));
            i += 2;
        } else {
            out.push((line, Token::Punct(c)));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&(usize, Token)>) -> Option<&str> {
    match t {
        Some((_, Token::Ident(s))) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&(usize, Token)>, want: &Token) -> bool {
    t.is_some_and(|(_, t)| t == want)
}

/// Every module of the crate that the code of module `module` names, as
/// (line, top-level module): `crate::a::b`, `crate::{a, b::c}`, `super::x`
/// resolved against the module (inline `mod name { … }` blocks counted),
/// in `use` items and in paths in code alike. References to the module's
/// own top-level module are included; `$crate` and `pub(crate)`,
/// `pub(super)`, `pub(in …)` are not references.
fn crate_references(module: &[String], code: &str) -> Vec<(usize, String)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    // Inline modules open at this point: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        match &toks[i].1 {
            Token::Punct('{') => {
                depth += 1;
                i += 1;
                continue;
            }
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            Token::Ident(w) if w == "mod" => {
                if let (Some(name), true) = (
                    ident(toks.get(i + 1)),
                    is(toks.get(i + 2), &Token::Punct('{')),
                ) {
                    inline.push((name.to_owned(), depth + 1));
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        let starts_path =
            !is(prev, &Token::Path) && !is(prev, &Token::Punct('$')) && ident(prev) != Some("in");
        let word = ident(toks.get(i));
        if !starts_path || !is(toks.get(i + 1), &Token::Path) {
            i += 1;
            continue;
        }
        let base: Vec<String> = match word {
            Some("crate") => {
                i += 2;
                Vec::new()
            }
            Some("super") => {
                let mut here: Vec<String> = module.to_vec();
                here.extend(inline.iter().map(|(n, _)| n.clone()));
                while ident(toks.get(i)) == Some("super") && is(toks.get(i + 1), &Token::Path) {
                    here.pop();
                    i += 2;
                }
                here
            }
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some(top) = base.first().cloned() {
            out.push((toks[i.min(toks.len() - 1)].0, top));
        } else {
            heads(&toks, &mut i, &mut out);
        }
    }
    out
}

/// After `crate::`: the first segment of the path, or of each path in a
/// `{ … }` group (nested groups too), pushed with its line; `i` moves past
/// what was read.
fn heads(toks: &[(usize, Token)], i: &mut usize, out: &mut Vec<(usize, String)>) {
    match toks.get(*i) {
        Some((line, Token::Ident(w))) => {
            out.push((*line, w.clone()));
            *i += 1;
        }
        Some((line, Token::Punct('*'))) => {
            out.push((*line, "*".into()));
            *i += 1;
        }
        Some((_, Token::Punct('{'))) => {
            *i += 1;
            // One element: its head, then skip to the `,` or `}` at this level.
            loop {
                match toks.get(*i) {
                    None => return,
                    Some((_, Token::Punct('}'))) => {
                        *i += 1;
                        return;
                    }
                    Some((_, Token::Punct(','))) => *i += 1,
                    Some(_) => {
                        heads(toks, i, out);
                        let mut level = 0usize;
                        while let Some((_, t)) = toks.get(*i) {
                            match t {
                                Token::Punct('{') => level += 1,
                                Token::Punct('}') if level == 0 => break,
                                Token::Punct('}') => level -= 1,
                                Token::Punct(',') if level == 0 => break,
                                _ => {}
                            }
                            *i += 1;
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Why a module of layer `layer` may not name the crate's module `top`.
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
        _ => None,
    }
}

/// Lines of code: not blank and not only a comment, a trailing
/// `#[cfg(test)] mod tests { … }` left out.
fn code_lines(text: &str) -> usize {
    let code = strip(text).code;
    let lines: Vec<&str> = code.lines().collect();
    let end = test_module_start(&lines).unwrap_or(lines.len());
    lines[..end].iter().filter(|l| !l.trim().is_empty()).count()
}

/// The line of `#[cfg(test)]` that opens a `mod tests { … }` running to the
/// end of the file, if there is one.
fn test_module_start(lines: &[&str]) -> Option<usize> {
    let last = lines.iter().rposition(|l| !l.trim().is_empty())?;
    if lines[last].trim() != "}" {
        return None;
    }
    let cfg = lines[..last]
        .iter()
        .rposition(|l| l.trim() == "#[cfg(test)]")?;
    let opens = lines[cfg + 1..last]
        .iter()
        .find(|l| !l.trim().is_empty())?
        .trim();
    // Its braces must close exactly at the last line.
    let body: String = lines[cfg + 1..=last].join("\n");
    let mut depth = 0i64;
    let mut closed_at_end = false;
    for (k, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    closed_at_end = body[k + 1..].trim().is_empty();
                    break;
                }
            }
            _ => {}
        }
    }
    let is_tests = opens.starts_with("mod tests") || opens.starts_with("pub(crate) mod tests");
    (is_tests && closed_at_end).then_some(cfg)
}

// ---------------------------------------------------------------------------
// Citations
// ---------------------------------------------------------------------------

/// What a line of `file` cites that a reader of the repository cannot look
/// up: an issue number, a path outside the repository, a notes file.
fn citations(line: &str, file: &str, known: &HashSet<String>) -> Vec<String> {
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

// ---------------------------------------------------------------------------
// The rules' own checks: each catches what it is for
// ---------------------------------------------------------------------------

fn refs(module: &str, code: &str) -> Vec<(usize, String)> {
    let module: Vec<String> = module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    crate_references(&module, &strip(code).code)
}

#[test]
fn crate_references_are_found_in_groups_paths_and_super() {
    let code = "use crate::{protocol::rpc, proxy::{cache, service}};\n\
                // use crate::ops; (a comment)\n\
                let s = \"crate::daemon\";\n\
                fn f() { crate::cli::run(); }\n\
                pub(crate) fn g() {}\n\
                pub(in crate::host) fn h() {}\n";
    assert_eq!(
        refs("host::sys", code),
        [
            (1, "protocol".to_owned()),
            (1, "proxy".to_owned()),
            (4, "cli".to_owned())
        ]
    );
    // super:: from protocol::rpc stays in protocol; once more leaves it.
    assert_eq!(
        refs("protocol::rpc", "use super::xdr;"),
        [(1, "protocol".to_owned())]
    );
    assert_eq!(
        refs("protocol::rpc", "use super::super::config;"),
        [(1, "config".to_owned())]
    );
    // Inside an inline module, super:: is the file's module.
    assert_eq!(
        refs(
            "protocol",
            "mod tests {\n use super::rpc;\n}\nuse super::ops;"
        ),
        [(2, "protocol".to_owned()), (4, "ops".to_owned())]
    );
    assert_eq!(
        layering_violation("proxy", "ops"),
        layering_violation("proxy", "daemon")
    );
    assert!(layering_violation("proxy", "host").is_none());
    assert!(layering_violation("host", "protocol").is_none());
    assert!(layering_violation("host", "config").is_some());
    assert!(layering_violation("protocol", "host").is_some());
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

#[test]
fn lines_of_code_leave_out_comments_blanks_and_the_trailing_tests() {
    let text = "//! doc\n\nfn a() {\n    // note\n    let s = \"x\n y\";\n}\n\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
    assert_eq!(code_lines(text), 4);
    let not_trailing = "#[cfg(test)]\nmod tests {\n}\nfn b() {}\n";
    assert_eq!(code_lines(not_trailing), 4);
}

#[test]
fn unsafe_is_found_in_code_only() {
    let code = strip("// unsafe here is prose\nlet s = \"unsafe\";\nunsafe { f() }\n").code;
    let found: Vec<usize> = tokens(&code)
        .into_iter()
        .filter(|(_, t)| *t == Token::Ident("unsafe".into()))
        .map(|(l, _)| l)
        .collect();
    assert_eq!(found, [3]);
}
