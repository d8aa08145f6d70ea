//! `rpcbind-proxy generate man|completions DIR` on the real binary: a page
//! for the program and each visible subcommand, completions for bash, zsh
//! and fish, all made from the command-line definition. Needs no root.

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
    let dir = d.0.join("man1");
    generate("man", &dir);

    let main = read(dir.join("rpcbind-proxy.1"));
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
            main.contains(&format!("rpcbind\\-proxy\\-{sub}(1)")),
            "rpcbind-proxy.1 lists {sub}: {main}"
        );
        let page = read(dir.join(format!("rpcbind-proxy-{sub}.1")));
        assert!(page.contains(".SH NAME"), "{sub}: {page}");
    }

    let serve = read(dir.join("rpcbind-proxy-serve.1"));
    for flag in ["listen", "config", "rpcbind\\-socket", "upstream\\-timeout"] {
        assert!(
            serve.contains(&format!("\\-\\-{flag}")),
            "serve page has --{flag}"
        );
    }

    // The packaging subcommand stays out of the manual.
    assert!(!main.contains("generate"), "{main}");
    assert!(!dir.join("rpcbind-proxy-generate.1").exists());
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
    // The bash script at least parses.
    if let Ok(st) = Command::new("bash")
        .arg("-n")
        .arg(d.0.join("rpcbind-proxy.bash"))
        .status()
    {
        assert!(st.success(), "bash -n rpcbind-proxy.bash");
    }
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
