//! systemd integration: readiness, status, watchdog and stop notifications
//! (sd_notify), and socket activation. Every call is a no-op when the daemon
//! is not run by systemd (NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS unset).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

use crate::sys::{adopt_socket, Inherited};

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Listeners are bound and the upstream was tried: clients may come.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// The daemon's loops are alive.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// A one-line summary for `systemctl status`.
pub fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
}

/// The watchdog interval systemd expects pings within, if enabled.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// The sockets systemd passed (LISTEN_FDS), each told apart by its own type
/// and family, so that a drop-in may change them freely. Must be called
/// while the process has a single thread: it unsets the variables.
pub fn inherited_sockets() -> std::io::Result<Vec<Inherited>> {
    sd_notify::listen_fds()?.map(adopt_socket).collect()
}
