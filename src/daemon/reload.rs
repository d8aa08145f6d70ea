//! Reloading (SIGHUP): what a new configuration changes in the running
//! proxy, and what only a restart can.

use tracing::{info, warn};

use crate::config::Config;
use crate::proxy::service::Proxy;

/// Applies a reloaded configuration: TTLs, limits, timeouts and the refresh
/// period change in place and the cache is kept. Listeners, sockets and
/// paths need a restart.
pub(super) fn apply(proxy: &Proxy, running: &Config, new: &Config) {
    proxy.reconfigure(new.upstream_timeout, new.cache, new.refresh, new.limits);
    proxy.attribution.set_enabled(new.attribution);
    if (
        &new.listen,
        &new.control,
        &new.rpcbind_socket,
        new.rpcbind_port,
        (new.intercept, new.intercept_mark),
    ) != (
        &running.listen,
        &running.control,
        &running.rpcbind_socket,
        running.rpcbind_port,
        (running.intercept, running.intercept_mark),
    ) {
        warn!("listen, control, rpcbind addresses and intercept change only with a restart");
    }
    info!("configuration reloaded: {}", new.summary());
}
