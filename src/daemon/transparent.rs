//! Transparent mode's start-up decisions: which unix path the proxy stands
//! in for, and which redirect rules the listeners at hand allow.

use tracing::warn;

use crate::config::{Config, NAT_KEEPER_TABLE};
use crate::host::netfilter::{self, InterceptRules, Redirect};
use crate::proxy::listen::ListenSpec;

use super::error::StartError;

/// The nftables table of transparent mode (family inet).
pub const INTERCEPT_TABLE: &str = "rpcbind_proxy";

/// Makes the NAT keeper before the redirect table (see ARCHITECTURE.md,
/// "The order of a death"). Without it a client whose connection the
/// daemon held when it died may wait for ever; the redirect still works,
/// so a failure is said and start-up goes on.
pub(super) fn keep_nat_hooks() {
    if let Err(e) = netfilter::keep_nat_hooks(NAT_KEEPER_TABLE) {
        warn!(
            table = %format!("inet {NAT_KEEPER_TABLE}"),
            error = %e,
            "cannot keep the NAT hooks beyond this process: if it dies, a client connected to it may wait until its own timeout"
        );
    }
}

/// rpcbind's abstract name (libtirpc >= 1.3.4 and the kernel try it first).
const ABSTRACT_RPCBIND_SOCKET: &str = "@/run/rpcbind.sock";

/// The name of rpcbind's usual unix socket when the proxy listens there in
/// its place (transparent mode), so answers name it instead of the path
/// rpcbind moved to: its abstract name if the proxy holds it, else its
/// path. Refuses a configuration that would have the proxy forward to
/// itself.
pub(super) fn stand_in_socket(
    specs: &[ListenSpec],
    config: &Config,
) -> Result<Option<std::path::PathBuf>, StartError> {
    let unix: Vec<&std::path::Path> = specs
        .iter()
        .filter_map(|s| match s {
            ListenSpec::Unix(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    if unix.contains(&config.rpcbind_socket.as_path()) {
        return Err(StartError::SelfLoop(config.rpcbind_socket.clone()));
    }
    // rpcbind names its abstract name in its own `local` entries when it
    // has one (rpcbind 1.2.7 with both): so does the proxy when it holds it.
    let usual = std::path::Path::new(crate::config::DEFAULT_RPCBIND_SOCKET);
    let abstract_name = std::path::Path::new(ABSTRACT_RPCBIND_SOCKET);
    Ok([abstract_name, usual]
        .into_iter()
        .find(|p| unix.contains(p))
        .map(std::path::Path::to_path_buf))
}

/// The redirect rules for the listeners at hand: IPv4 needs a TCP and a UDP
/// listener on 127.0.0.1; IPv6 is redirected when there are both on [::1].
pub(super) fn intercept_rules(
    specs: &[ListenSpec],
    mark: u32,
) -> Result<InterceptRules, StartError> {
    let port = |want: fn(&ListenSpec) -> Option<std::net::SocketAddr>, ip: std::net::IpAddr| {
        specs
            .iter()
            .filter_map(want)
            .find(|a| a.ip() == ip)
            .map(|a| a.port())
    };
    let tcp = |s: &ListenSpec| match s {
        ListenSpec::Tcp(a) => Some(*a),
        _ => None,
    };
    let udp = |s: &ListenSpec| match s {
        ListenSpec::Udp(a) => Some(*a),
        _ => None,
    };
    let family = |ip: std::net::IpAddr| match (port(tcp, ip), port(udp, ip)) {
        (Some(tcp_port), Some(udp_port)) => Some(Redirect { tcp_port, udp_port }),
        _ => None,
    };
    let ipv4 = family(std::net::Ipv4Addr::LOCALHOST.into());
    let ipv6 = family(std::net::Ipv6Addr::LOCALHOST.into());
    if ipv4.is_none() {
        return Err(StartError::InterceptListeners);
    }
    if ipv6.is_none() {
        warn!("no tcp and udp listeners on [::1]: clients of [::1]:111 are not intercepted");
    }
    if !specs
        .iter()
        .any(|s| *s == ListenSpec::Unix(crate::config::DEFAULT_RPCBIND_SOCKET.into()))
    {
        warn!(
            "no listener on {}: its clients (registrations, rpcinfo without a host) still reach rpcbind directly",
            crate::config::DEFAULT_RPCBIND_SOCKET
        );
    }
    Ok(InterceptRules {
        table: INTERCEPT_TABLE.to_string(),
        mark,
        ipv4,
        ipv6,
    })
}
