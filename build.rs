//! Compiles the eBPF attribution program (bpf/attribution.bpf.c) with
//! clang into OUT_DIR; src/host/bpf.rs includes the object in the binary.
//! The program is self-contained (no kernel or libbpf headers): clang is the
//! only tool it needs (`CLANG` names another one).

use std::path::PathBuf;
use std::process::{exit, Command};

fn main() {
    let source = "bpf/attribution.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let Some(out) = std::env::var_os("OUT_DIR") else {
        eprintln!("build.rs: OUT_DIR is not set (run through cargo)");
        exit(1);
    };
    let object = PathBuf::from(out).join("attribution.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args([
            "-target", "bpf", "-O2", "-g0", "-Wall", "-Werror", "-c", source, "-o",
        ])
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("build.rs: {clang} failed ({s}) compiling {source}");
            exit(1);
        }
        Err(e) => {
            eprintln!(
                "build.rs: cannot run {clang} ({e}): clang builds the eBPF attribution program; \
                 install it (apt-get install clang, or run scripts/deps) or name it in CLANG"
            );
            exit(1);
        }
    }
}
