//! `rpcbind-proxy generate man|completions DIR` on the real binary: a page
//! for the program and each visible subcommand, completions for bash, zsh
//! and fish, all made from the command-line definition. Needs no root; the
//! completion tests run the real bash, zsh and fish (scripts/deps installs
//! zsh and fish) and ask each what TAB offers.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

const BIN: &str = env!("CARGO_BIN_EXE_rpcbind-proxy");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("rbp-gen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn generate(what: &str, dir: &Path) {
    let out = Command::new(BIN)
        .args(["generate", what])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "generate {what}: {out:?}");
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn man_pages_cover_every_visible_subcommand() {
    // A directory that does not exist yet: generate creates it.
    let d = Dir::new("man");
    let dir = d.0.join("man8");
    generate("man", &dir);

    let main = read(dir.join("rpcbind-proxy.8"));
    assert!(
        main.starts_with(".ie") || main.contains(".TH"),
        "roff: {main}"
    );
    let subs: Vec<String> = rpcbind_proxy::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect();
    assert!(subs.iter().any(|s| s == "serve"), "{subs:?}");
    for sub in &subs {
        // roff escapes '-' as '\-'.
        assert!(
            main.contains(&format!("rpcbind\\-proxy\\-{sub}(8)")),
            "rpcbind-proxy.8 lists {sub}: {main}"
        );
        let page = read(dir.join(format!("rpcbind-proxy-{sub}.8")));
        assert!(page.contains(".SH NAME"), "{sub}: {page}");
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!(".TH rpcbind-proxy-{sub} 8 "))),
            "{sub}: {page}"
        );
        assert!(
            page.contains(".BR rpcbind\\-proxy (8)"),
            "{sub} points at the main page: {page}"
        );
    }

    let serve = read(dir.join("rpcbind-proxy-serve.8"));
    for flag in ["listen", "config", "rpcbind\\-socket", "upstream\\-timeout"] {
        assert!(
            serve.contains(&format!("\\-\\-{flag}")),
            "serve page has --{flag}"
        );
    }

    // The packaging subcommand stays out of the manual.
    assert!(!main.contains("generate"), "{main}");
    assert!(!dir.join("rpcbind-proxy-generate.8").exists());
    // No page is left in section 1.
    let in_1: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".8"))
        .collect();
    assert!(in_1.is_empty(), "{in_1:?}");
}

/// `man 8 rpcbind-proxy` is a daemon's manual, as Debian's rpcbind(8) is:
/// more than a copy of `--help`.
#[test]
fn the_main_page_is_a_daemons_page_in_section_8() {
    let d = Dir::new("man8");
    generate("man", &d.0);
    let main = read(d.0.join("rpcbind-proxy.8"));
    assert!(
        main.lines().any(|l| l.starts_with(".TH rpcbind-proxy 8 ")),
        "{main}"
    );
    let sections: Vec<&str> = main
        .lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|s| s.trim_matches('"'))
        .collect();
    let want = [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "FILES",
        "SIGNALS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "EXAMPLES",
        "SEE ALSO",
    ];
    // In this order (man-pages(7)), each once.
    let found: Vec<&str> = sections
        .iter()
        .copied()
        .filter(|s| want.contains(s))
        .collect();
    assert_eq!(found, want, "sections: {sections:?}");
    let see_also = main.split(".SH \"SEE ALSO\"").nth(1).unwrap();
    for page in ["rpcbind (8)", "rpcinfo (8)", "rpcbind\\-proxy\\-serve (8)"] {
        assert!(
            see_also.contains(&format!(".BR {page}")),
            "SEE ALSO {page}: {see_also}"
        );
    }
    for what in [
        "/etc/rpcbind\\-proxy/config.toml",
        "/run/rpcbind\\-proxy/rpcbind.sock",
        "SIGHUP",
        "SIGTERM",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
    ] {
        assert!(main.contains(what), "{what}: {main}");
    }
    // man(1) itself renders it without a warning, when man-db is here.
    if let Ok(out) = Command::new("man")
        .args(["--warnings", "-l", "-Tutf8"])
        .arg(d.0.join("rpcbind-proxy.8"))
        .env("MANWIDTH", "80")
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "man: {err}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let d = Dir::new("comp");
    generate("completions", &d.0);
    for name in ["rpcbind-proxy.bash", "_rpcbind-proxy", "rpcbind-proxy.fish"] {
        let script = read(d.0.join(name));
        assert!(script.contains("serve"), "{name} offers serve");
        assert!(script.contains("--listen"), "{name} offers --listen");
        assert!(!script.contains("generate"), "{name} hides generate");
    }
}

/// Every visible subcommand path (`serve`, `query getport`, ...) with the
/// long options clap accepts there (its own and the global ones it
/// inherits).
fn subcommand_options() -> Vec<(Vec<String>, Vec<String>)> {
    fn walk(
        cmd: &clap::Command,
        path: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, Vec<String>)>,
    ) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            path.push(sub.get_name().to_owned());
            let longs = sub
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long())
                .map(|l| format!("--{l}"))
                .collect();
            out.push((path.clone(), longs));
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut cmd = rpcbind_proxy::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut Vec::new(), &mut out);
    assert!(
        out.iter().any(|(p, _)| p == &["query", "getport"]),
        "{out:?}"
    );
    out
}

/// What TAB offers after `rpcbind-proxy WORDS... CURRENT` in `shell`, one
/// match a line (fish adds a tab and the description: cut off).
fn offered(shell: &str, dir: &Path, words: &[String], current: &str) -> Vec<String> {
    let line = format!("rpcbind-proxy {} {current}", words.join(" "));
    let mut cmd = Command::new("timeout");
    cmd.arg("30");
    match shell {
        // As bash's programmable completion calls the function: COMP_WORDS,
        // COMP_CWORD, then (command, word being completed, previous word).
        "bash" => {
            let script = dir.join("rpcbind-proxy.bash");
            let mut all = vec!["rpcbind-proxy".to_owned()];
            all.extend(words.iter().cloned());
            let quoted: Vec<String> = all.iter().map(|w| format!("'{w}'")).collect();
            let prev = all.last().unwrap().clone();
            cmd.args(["bash", "--norc", "--noprofile", "-c"])
                .arg(format!(
                    "source '{}'; COMP_WORDS=({} '{current}'); COMP_CWORD={}; COMP_LINE='{line}'; \
                 COMP_POINT=${{#COMP_LINE}}; _rpcbind__proxy rpcbind-proxy '{current}' '{prev}'; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                    script.display(),
                    quoted.join(" "),
                    all.len(),
                ));
        }
        "zsh" => {
            let harness =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/completion/zsh-complete.zsh");
            cmd.args(["zsh", "-f"]).arg(harness).arg(dir).arg(&line);
        }
        "fish" => {
            let script = dir.join("rpcbind-proxy.fish");
            cmd.args(["fish", "--no-config", "-c"]).arg(format!(
                "source '{}'; complete -C '{line}'",
                script.display()
            ));
        }
        _ => unreachable!(),
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shell}: {e} (scripts/deps installs bash, zsh and fish)"));
    assert!(
        out.status.success(),
        "{shell} on {line:?}: {out:?} (scripts/deps installs bash, zsh and fish)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// TAB after a subcommand and `--` offers every long option of that
/// subcommand. (bash's script, as clap_complete writes it for a binary
/// named with a '-', completed only subcommand names.)
fn completes_every_subcommands_options(shell: &str) {
    let d = Dir::new(&format!("tab-{shell}"));
    generate("completions", &d.0);
    let top = offered(shell, &d.0, &[], "");
    for sub in ["serve", "status", "flush", "check", "query"] {
        assert!(
            top.iter().any(|o| o == sub),
            "{shell}: `rpcbind-proxy <TAB>` offers {sub}: {top:?}"
        );
    }
    assert!(!top.iter().any(|o| o == "generate"), "{shell}: {top:?}");
    let mut missing = Vec::new();
    for (path, longs) in subcommand_options() {
        let got = offered(shell, &d.0, &path, "--");
        for long in &longs {
            if !got.contains(long) {
                missing.push(format!("{} {long}", path.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "{shell} does not offer: {missing:?}");
    // A prefix narrows the list, as a user types it: `serve --t<TAB>`.
    let got = offered(shell, &d.0, &["serve".to_owned()], "--t");
    assert_eq!(
        got.iter().filter(|o| !o.starts_with("--t")).count(),
        0,
        "{shell}: {got:?}"
    );
    for want in ["--ttl", "--threads"] {
        assert!(
            got.iter().any(|o| o == want),
            "{shell}: serve --t<TAB> offers {want}: {got:?}"
        );
    }
}

#[test]
fn bash_completes_every_subcommands_options() {
    completes_every_subcommands_options("bash");
}

#[test]
fn zsh_completes_every_subcommands_options() {
    completes_every_subcommands_options("zsh");
}

#[test]
fn fish_completes_every_subcommands_options() {
    completes_every_subcommands_options("fish");
}

#[test]
fn an_unwritable_directory_is_one_line_naming_it() {
    let d = Dir::new("bad");
    std::fs::create_dir_all(&d.0).unwrap();
    // A regular file where the directory should be.
    let file = d.0.join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(BIN)
        .args(["generate", "man"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains(file.to_str().unwrap()), "{err:?}");
}

/// `serve --log-level <TAB>` offers the levels in every shell, not the
/// file names of the current directory.
fn completes_log_levels(shell: &str) {
    let d = Dir::new(&format!("level-{shell}"));
    generate("completions", &d.0);
    let words = ["serve".to_owned(), "--log-level".to_owned()];
    let got = offered(shell, &d.0, &words, "");
    for level in ["error", "warn", "info", "debug", "trace"] {
        assert!(
            got.iter().any(|o| o == level),
            "{shell}: serve --log-level <TAB> offers {level}: {got:?}"
        );
    }
    let got = offered(shell, &d.0, &words, "de");
    assert_eq!(got, ["debug"], "{shell}: serve --log-level de<TAB>");
}

#[test]
fn bash_completes_log_levels() {
    completes_log_levels("bash");
}

#[test]
fn zsh_completes_log_levels() {
    completes_log_levels("zsh");
}

#[test]
fn fish_completes_log_levels() {
    completes_log_levels("fish");
}

/// rpcbind-proxy(8) points at every command's page; the intercept page says
/// what a failure leaves and how to recover.
#[test]
fn every_page_is_in_see_also_and_intercept_says_how_to_recover() {
    let d = Dir::new("seealso");
    generate("man", &d.0);
    let main = read(d.0.join("rpcbind-proxy.8"));
    let see_also = main.split(".SH \"SEE ALSO\"").nth(1).unwrap();
    let mut cmd = rpcbind_proxy::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = format!(".BR rpcbind\\-proxy\\-{} (8)", sub.get_name());
        assert!(
            see_also.contains(&page),
            "SEE ALSO lacks {page}: {see_also}"
        );
    }
    let intercept = read(d.0.join("rpcbind-proxy-intercept.8"));
    let section = intercept
        .split(".SH \"FAILURES AND RECOVERY\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no FAILURES AND RECOVERY: {intercept}"));
    for what in [
        "enable fails midway",
        "undoes every change it made",
        "the kernel\nremoves it",
        "rpcbind\\-proxy intercept status",
        "rpcbind\\-proxy intercept disable",
    ] {
        assert!(section.contains(what), "{what}: {section}");
    }
    // Before SEE ALSO, as man-pages(7) orders them.
    assert!(section.contains(".SH \"SEE ALSO\""), "{section}");
}
