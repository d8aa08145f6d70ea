//! Reloading (SIGHUP): what a new configuration changes in the running
//! proxy, and what only a restart can.

use tracing::{info, warn};

use crate::config::Config;
use crate::proxy::service::Proxy;

/// Applies a reloaded configuration: TTLs, limits, timeouts and the refresh
/// period change in place and the cache is kept. Listeners, sockets and
/// paths need a restart.
pub(super) fn apply(proxy: &Proxy, running: &Config, new: &Config) {
    proxy.reconfigure(new.proxy_settings());
    if let Some(line) = running.restart_needed(new) {
        warn!("{line}");
    }
    info!("configuration reloaded: {}", new.summary());
}
