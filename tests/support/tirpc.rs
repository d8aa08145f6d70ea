//! The libtirpc test client (`tests/clients/tirpc_client.c`): real, unmodified
//! libtirpc making the calls NFS tools and daemons make (`clnt_create`,
//! `rpcb_getaddr`, `pmap_getport`, `rpcb_set`, `svc_create`, ...), so the
//! tests can check the proxy against the client library itself and not only
//! against the hand-built calls of [`super::rpc`].
//!
//! [`tirpc_client`] compiles it once per test binary. Its modes and output
//! lines are documented at the top of the C file and in its usage message.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The C source, in the crate's tests.
pub const TIRPC_CLIENT_SRC: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/tirpc_client.c");

const DEPS_HINT: &str = "install gcc, pkg-config and libtirpc-dev: scripts/deps";

/// Path of the compiled libtirpc client, building it on first use in this
/// test binary (into `CARGO_TARGET_TMPDIR`). Panics with the compiler's
/// output if it cannot be built.
///
/// Test binaries run concurrently and each builds its own copy: it is
/// compiled under a name of its own, then renamed over `tirpc_client`, so
/// no process ever runs (or sees) a half-written executable.
pub fn tirpc_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build().unwrap_or_else(|e| panic!("building {TIRPC_CLIENT_SRC}: {e}")))
}

fn build() -> Result<PathBuf, String> {
    let flags = pkg_config_libtirpc()?;
    compile_c("tirpc_client", TIRPC_CLIENT_SRC, &flags)
}

/// Compiles the C program `source` with `flags` into `CARGO_TARGET_TMPDIR`
/// as `name`: under a name of its own first, then renamed, so that a
/// concurrent test binary never runs a half-written executable.
pub fn compile_c(name: &str, source: &str, flags: &[String]) -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = dir.join(name);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));

    let mut gcc = Command::new("gcc");
    // -pthread: before glibc 2.34 (Debian 11) pthreads is a library of
    // its own, and the client's threads need it.
    gcc.args(["-O2", "-Wall", "-Wextra", "-pthread", "-o"])
        .arg(&tmp)
        .arg(source)
        .args(flags);
    let result = gcc.output().map_err(|e| spawn_error("gcc", &e))?;
    if !result.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "{gcc:?} failed ({}); {DEPS_HINT}\n{}{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    // Readable and runnable by every uid: tests run it as nobody too.
    let renamed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .and_then(|()| fs::rename(&tmp, &out));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(format!("installing {}: {e}", out.display()));
    }
    Ok(out)
}

/// `pkg-config --cflags --libs libtirpc`, split into arguments.
fn pkg_config_libtirpc() -> Result<Vec<String>, String> {
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libtirpc"])
        .output()
        .map_err(|e| spawn_error("pkg-config", &e))?;
    if !out.status.success() {
        return Err(format!(
            "`pkg-config --cflags --libs libtirpc` failed ({}); {DEPS_HINT}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn spawn_error(program: &str, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        format!("`{program}` not found; {DEPS_HINT}")
    } else {
        format!("running `{program}`: {e}; {DEPS_HINT}")
    }
}
