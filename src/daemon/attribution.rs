//! Attribution's start: the eBPF recorder loaded where the kernel and the
//! daemon's capabilities allow, and one line saying how clients are named
//! (`attribution: ebpf`, `attribution: search (why)`, `attribution: off`),
//! and a second when cgroups cannot be named by file handle.

use tracing::{info, warn};

use crate::config::Config;
use crate::host::{bpf, cgroup};
use crate::proxy::attribution::Mode;
use crate::proxy::listen::ListenSpec;
use crate::proxy::service::Proxy;

/// Loads the recorder for rpcbind's port and the proxy's TCP and UDP ports
/// (`config.attribution_ebpf`, attribution on at start) and says the mode.
pub(super) fn start(config: &Config, specs: &[ListenSpec], proxy: &Proxy) {
    if !config.attribution {
        proxy.set_recorder(Err("attribution was off at start".into()));
        info!("attribution: off (attribution = false)");
        return;
    }
    let recorder = if config.attribution_ebpf {
        load(config, specs)
    } else {
        Err("attribution-ebpf = false".into())
    };
    proxy.set_recorder(recorder);
    match proxy.attribution_mode() {
        Mode::Ebpf(None) => info!("attribution: ebpf"),
        Mode::Ebpf(Some(note)) => info!("attribution: ebpf ({note})"),
        Mode::Search(why) => warn!("attribution: search ({why})"),
        Mode::Off => info!("attribution: off"),
    }
    // Units are named from a client's cgroup id: by file handle, or else by
    // a walk of the cgroup2 tree (slower for each new cgroup, same names).
    if let Err(why) = cgroup::file_handles() {
        warn!("attribution: cgroups named by a walk of the cgroup2 tree ({why})");
    }
}

fn load(config: &Config, specs: &[ListenSpec]) -> Result<bpf::Recorder, String> {
    let mut ports = vec![config.rpcbind_port];
    for spec in specs {
        if let ListenSpec::Tcp(a) | ListenSpec::Udp(a) = spec {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
    }
    ports.truncate(bpf::MAX_PORTS);
    let root = cgroup::cgroup2_mountpoint()
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?
        .ok_or("no cgroup2 hierarchy is mounted")?;
    bpf::Recorder::load(&root, &ports)
}
