//! The few operations that need a raw syscall. Every `unsafe` block of the
//! crate lives here, each with its own `// SAFETY:` line.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to the unix socket at `path` with the effective uid and gid of a
/// caller, so that the server reads that identity with SO_PEERCRED.
///
/// Why: rpcbind decides who owns a registration from SO_PEERCRED. A proxy
/// that forwarded an unprivileged caller's SET/UNSET over its own root
/// connection would hand that caller rpcbind's `superuser`. Connecting as the
/// caller gives rpcbind the caller's identity, so every answer matches a
/// direct call.
///
/// The kernel records the credentials of the connecting *thread*. The raw
/// setresuid/setresgid syscalls (unlike glibc's wrappers, which change every
/// thread of the process) act on the calling thread only, so the switch is
/// made on a short-lived thread of its own that exits afterwards; no other
/// thread ever runs with the borrowed identity.
pub fn connect_unix_as(path: &Path, uid: u32, gid: u32) -> io::Result<UnixStream> {
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("connect-as".into())
        .spawn(move || -> io::Result<UnixStream> {
            // Group first: once the uid is no longer 0 the gid cannot change.
            // SAFETY: raw syscall with plain integer arguments; -1 (as u32::MAX)
            // leaves the real and saved ids unchanged. Affects this thread only.
            let rc = unsafe { libc::syscall(libc::SYS_setresgid, u32::MAX, gid, u32::MAX) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above, for the effective uid; the saved uid stays 0 but
            // the thread ends right after the connect and is never reused.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, uid, u32::MAX) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            UnixStream::connect(&path)
        })?
        .join()
        .map_err(|_| io::Error::other("connect-as thread panicked"))?
}
