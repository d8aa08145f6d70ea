//! Compiles the eBPF attribution program (bpf/attribution.bpf.c) with
//! clang into OUT_DIR; src/host/bpf.rs includes the objects in the binary.
//! The program is self-contained (no kernel or libbpf headers): clang is the
//! only tool it needs (`CLANG` names another one). Two builds: with the
//! command recorded in the kernel, and without it (NO_COMM), for kernels
//! that allow bpf_get_current_comm to cgroup programs only with
//! CAP_PERFMON.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const SOURCE: &str = "bpf/attribution.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let Some(out) = std::env::var_os("OUT_DIR") else {
        eprintln!("build.rs: OUT_DIR is not set (run through cargo)");
        exit(1);
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    for (name, defines) in [
        ("attribution.bpf.o", &[][..]),
        ("attribution-nocomm.bpf.o", &["-DNO_COMM"][..]),
    ] {
        compile(&clang, defines, &PathBuf::from(&out).join(name));
    }
}

fn compile(clang: &str, defines: &[&str], object: &Path) {
    let status = Command::new(clang)
        .args(["-target", "bpf", "-O2", "-g0", "-Wall", "-Werror"])
        .args(defines)
        .args(["-c", SOURCE, "-o"])
        .arg(object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("build.rs: {clang} failed ({s}) compiling {SOURCE}");
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
