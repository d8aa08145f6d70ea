//! systemd integration: readiness, status, watchdog and stop notifications
//! (sd_notify), and socket activation. Every call is a no-op when the daemon
//! is not run by systemd (NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS unset).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::debug;

use crate::host::sys::{adopt_socket, Inherited};

/// Sends one notification without ever blocking the caller.
///
/// Why not `sd_notify::notify`: it sends on a blocking socket, and a
/// notification socket nobody reads (a wedged manager, a test harness that
/// stopped listening after READY=1) fills up and then blocks the runtime
/// worker that sends the next STATUS= line, which stops the whole daemon
/// (seen in the soak run with one worker). A full socket now loses the
/// message instead: STATUS= and WATCHDOG=1 are sent again a few seconds
/// later anyway.
pub fn send_nonblocking(socket: &str, message: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

fn notify(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_nonblocking(&socket.to_string_lossy(), message) {
        debug!(error = %e, message, "sd_notify failed");
    }
}

/// Listeners are bound and the upstream was tried: clients may come.
pub fn ready() {
    notify("READY=1");
}

pub fn reloading() {
    notify("RELOADING=1");
}

pub fn stopping() {
    notify("STOPPING=1");
}

/// The daemon's loops are alive.
pub fn watchdog() {
    notify("WATCHDOG=1");
}

/// A one-line summary for `systemctl status`.
pub fn status(line: &str) {
    notify(&format!("STATUS={}", line.replace('\n', " ")));
}

/// The watchdog interval systemd expects pings within, if enabled.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// The sockets systemd passed, by their use.
#[derive(Debug, Default)]
pub struct Passed {
    /// The lookup listeners.
    pub listeners: Vec<Inherited>,
    /// The `/metrics` listener: the TCP listener named `metrics`
    /// (`FileDescriptorName=metrics`).
    pub metrics: Option<std::net::TcpListener>,
}

/// The name that marks a passed socket as the `/metrics` listener.
pub const METRICS_FD_NAME: &str = "metrics";

/// The sockets systemd passed (LISTEN_FDS), each told apart by its own type
/// and family, so that a drop-in may change them freely; the one named
/// [`METRICS_FD_NAME`] serves `/metrics`. Must be called while the process
/// has a single thread: it unsets the variables.
pub fn inherited_sockets() -> io::Result<Passed> {
    let mut passed = Passed::default();
    for (fd, name) in sd_notify::listen_fds_with_names(true)? {
        match adopt_socket(fd)? {
            Inherited::Tcp(l) if name == METRICS_FD_NAME && passed.metrics.is_none() => {
                passed.metrics = Some(l);
            }
            socket => passed.listeners.push(socket),
        }
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_socket_nobody_reads_never_blocks_the_sender() {
        let dir = std::env::temp_dir().join(format!("rbp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let unread = UnixDatagram::bind(&path).unwrap();
        let path = path.to_str().unwrap();
        // Far more than a socket buffer holds; the sender must come back
        // every time (with WouldBlock once the buffer is full).
        let mut refused = 0;
        for i in 0..20_000 {
            if send_nonblocking(path, &format!("STATUS=line {i}")).is_err() {
                refused += 1;
            }
        }
        assert!(
            refused > 0,
            "the buffer never filled: the test proves nothing"
        );
        let mut buf = [0u8; 64];
        let n = unread.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=line 0");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
