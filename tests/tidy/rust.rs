//! Reading Rust as text: comments and literals told apart from code, the
//! code cut into tokens, the crate's modules a file names, its lines of
//! code.

/// A source split in two texts of the same shape (same lines, same
/// columns): `code` with comments blanked and the insides of string and
/// character literals replaced by `_`; `comments` with only the comments.
pub(crate) struct Stripped {
    pub(crate) code: String,
    pub(crate) comments: String,
}

pub(crate) fn strip(text: &str) -> Stripped {
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

pub(crate) fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// The tokens of stripped code, each with its line (1-based).
pub(crate) fn tokens(code: &str) -> Vec<(usize, Token)> {
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
pub(crate) fn crate_references(module: &[String], code: &str) -> Vec<(usize, String)> {
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
pub(crate) fn code_lines(text: &str) -> usize {
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
