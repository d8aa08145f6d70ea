//! Private namespaces, for the tests and the benches (which include this
//! file by path, as benches/soak.rs includes the whole of tests/support): a
//! network namespace with its own loopback, so 127.0.0.1:111 is never the
//! machine's, and, for a process of its own, a mount namespace with a tmpfs
//! on /run, so /run/rpcbind.sock is never the machine's either.
#![allow(dead_code)]

use std::process::{Command, Stdio};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Moves the calling thread into a new network namespace and brings `lo`
/// up. Only this thread, and the children it spawns, are affected.
pub fn enter_netns() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    loopback_up()
}

/// Moves the calling process into new network and mount namespaces, with a
/// tmpfs on /run and `lo` up; every thread and child from now on lives in
/// them. unshare(CLONE_NEWNS) refuses a multi-threaded process: call it
/// before any thread starts.
pub fn enter_netns_with_private_run() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNET | CLONE_NEWNS): {e}"))?;
    // Nothing mounted here may leak back to the machine.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on /run: {e}"))?;
    loopback_up()
}

/// `ip link set lo up`, in the caller's network namespace (a child inherits
/// the spawning thread's).
fn loopback_up() -> Result<(), String> {
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `ip link set lo up` (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip link set lo up` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
