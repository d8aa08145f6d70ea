//! systemd integration: readiness and stop notifications (sd_notify). A
//! no-op when the daemon is not run by systemd (NOTIFY_SOCKET unset).

use sd_notify::NotifyState;
use tracing::debug;

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Listeners are bound and the upstream was tried: clients may come.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}
