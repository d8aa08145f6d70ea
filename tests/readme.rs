//! The README as a newcomer reads it: what it shows must work as shown, and
//! it must not send the reader anywhere they cannot go.
//!
//! - Its C example is a whole program: built with the compile line the
//!   README gives, run in a sandbox against the proxy, it prints the port.
//! - Its shell example (bash, as it says) gets a GETPORT reply from the
//!   proxy whose last 4 bytes are 111, every time (an earlier `printf | nc
//!   -q1` got nothing in most runs: netcat half-closes, and the proxy's
//!   reset after the reply loses it).
//! - It names no file outside the repository and no issue number, keeps the
//!   sections other parts of the project point at, and leaves the benchmark
//!   tables to BENCHMARKS.md.
//!
//! The two examples run the real rpcbind and proxy (tests/support): root.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of every fenced block opened with ```` ```lang ````.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line.trim_end() == open => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => out.push(current.take().unwrap()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

/// The one block of `lang`.
fn block(lang: &str) -> String {
    let all = blocks(&readme(), lang);
    assert_eq!(all.len(), 1, "README: one ```{lang} block");
    all.into_iter().next().unwrap()
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.' && c != '/')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_refers_to_nothing_outside_the_repository() {
    let text = readme();
    assert!(!text.contains("../"), "README links outside the repository");
    let w = words(&text.to_lowercase());
    for pair in w.windows(2) {
        let is_number = pair[1].trim_end_matches('.').parse::<u32>().is_ok();
        assert!(
            !(pair[0] == "issue" && is_number),
            "README mentions an issue number: {} {}",
            pair[0],
            pair[1]
        );
    }
    for section in [
        "## Get going",
        "## Install",
        "## Uninstall",
        "## Transparent mode",
        "## Troubleshooting",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(section)),
            "README has a section {section:?}"
        );
    }
    // The benchmark tables and methodology live in BENCHMARKS.md.
    assert!(
        !text.contains("| transport |"),
        "a benchmark table in the README"
    );
    assert!(
        text.contains("(BENCHMARKS.md)"),
        "the README links BENCHMARKS.md"
    );
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("BENCHMARKS.md")
        .is_file());
}

/// The compile line the README gives for its C example.
fn compile_line() -> String {
    let sh = blocks(&readme(), "sh");
    sh.iter()
        .flat_map(|b| b.lines().map(str::to_owned).collect::<Vec<_>>())
        .find(|l| l.starts_with("gcc "))
        .expect("README: a `gcc ...` line in a ```sh block")
}

#[test]
fn the_readme_c_example_builds_and_asks_the_proxy() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-c.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("getport.c"), block("c")).unwrap();
    // The README's own line, run by a shell in the directory of the file it
    // names, with warnings on.
    let line = compile_line();
    assert!(
        line.contains("pkg-config --cflags --libs libtirpc"),
        "{line}"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{line} -Wall -Wextra -Werror"))
        .current_dir(&dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{line}: {}{} (scripts/deps installs gcc, pkg-config and libtirpc-dev)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join("getport");
    run(move |sb| async move {
        let out = sb.run_in_ns(&[bin.to_str().unwrap()]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.starts_with("program 100000 version 2 tcp: port 111\n"),
            "{stdout}"
        );
        // It asked the proxy, not rpcbind.
        let requests = sb.status().await["requests"]["total"].as_u64();
        assert_eq!(requests, Some(2), "{stdout}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_readme_shell_example_gets_port_111_from_the_proxy() {
    let script = block("bash");
    assert!(script.contains("/dev/tcp/127.0.0.1/1111"), "{script}");
    run(move |sb| async move {
        let out = sb.run_in_ns(&["bash", "-c", &script]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        let bytes: Vec<&str> = stdout.split_whitespace().collect();
        assert!(bytes.len() >= 28, "a whole reply: {out:?}");
        assert_eq!(
            bytes[bytes.len() - 4..],
            ["00", "00", "00", "6f"],
            "{stdout}"
        );
        let requests = sb.status().await["requests"]["total"].as_u64();
        assert_eq!(requests, Some(1));
    });
}
