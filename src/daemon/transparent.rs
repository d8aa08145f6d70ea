//! Transparent mode's start-up decisions: which unix path the proxy stands
//! in for, and which redirect rules the listeners at hand allow.

use tracing::warn;

use crate::config::{Config, NAT_KEEPER_TABLE};
use crate::host::netfilter::{self, InterceptRules, OutboundRedirect, Redirect, RemoteRedirect};
use crate::proxy::listen::{self, Bound, ListenSpec};

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

/// The port server mode's listeners take when the configured ones do not
/// serve the network (`tcp:[::]:1112`, `udp:[::]:1112`, both families).
pub(super) const REMOTE_PORT: u16 = 1112;

/// The port the client side's listeners take (`tcp:127.0.0.1:1113`,
/// `tcp:[::1]:1113`): the daemon's own, never one of the listen list.
pub(super) const OUTBOUND_PORT: u16 = 1113;

/// The redirect table for the listeners at hand, when transparent mode,
/// server mode or the client side is on. Transparent mode: IPv4 needs a TCP and a UDP listener
/// on 127.0.0.1; IPv6 is redirected when there are both on [::1]. Server
/// mode: see [`remote_redirect`].
/// `guard`: server mode's own listening port, when the daemon bound it
/// (other hosts may reach it only through the redirect). `outbound`: the
/// client side's redirect, for the families whose listener is bound.
pub(super) fn intercept_rules(
    specs: &[ListenSpec],
    config: &Config,
    guard: Option<u16>,
    outbound: Option<OutboundRedirect>,
) -> Result<Option<InterceptRules>, StartError> {
    if !config.intercept && !config.intercept_remote && outbound.is_none() {
        return Ok(None);
    }
    let (ipv4, ipv6) = if config.intercept {
        local_redirects(specs)?
    } else {
        (None, None)
    };
    let remote = if config.intercept_remote {
        let Some(remote) = remote_redirect(specs, &config.remote_interface) else {
            return Err(StartError::RemoteListeners);
        };
        Some(RemoteRedirect { guard, ..remote })
    } else {
        None
    };
    Ok(Some(InterceptRules {
        table: INTERCEPT_TABLE.to_string(),
        mark: config.intercept_mark,
        ipv4,
        ipv6,
        remote,
        outbound,
    }))
}

/// The port of a TCP and of a UDP listener on `ip`, when there are both.
fn pair_on(specs: &[ListenSpec], ip: std::net::IpAddr) -> Option<Redirect> {
    let port = |udp: bool| {
        specs.iter().find_map(|s| match s {
            ListenSpec::Tcp(a) if !udp && a.ip() == ip => Some(a.port()),
            ListenSpec::Udp(a) if udp && a.ip() == ip => Some(a.port()),
            _ => None,
        })
    };
    Some(Redirect {
        tcp_port: port(false)?,
        udp_port: port(true)?,
    })
}

/// Server mode's redirect: to a TCP and UDP listener pair on `0.0.0.0`
/// (IPv4) and on `[::]` (IPv6, and IPv4 where there is no `0.0.0.0` pair:
/// a `[::]` socket takes IPv4 unless made IPv6-only). None: no such pair,
/// nothing to send the network to.
pub(super) fn remote_redirect(
    specs: &[ListenSpec],
    interfaces: &[String],
) -> Option<RemoteRedirect> {
    let v4 = pair_on(specs, std::net::Ipv4Addr::UNSPECIFIED.into());
    let v6 = pair_on(specs, std::net::Ipv6Addr::UNSPECIFIED.into());
    let ipv4 = v4.or(v6);
    ipv4.map(|ipv4| RemoteRedirect {
        interfaces: interfaces.to_vec(),
        ipv4: Some(ipv4),
        ipv6: v6,
        guard: None,
    })
}

/// Transparent mode's redirects for IPv4 and IPv6 loopback.
fn local_redirects(
    specs: &[ListenSpec],
) -> Result<(Option<Redirect>, Option<Redirect>), StartError> {
    let ipv4 = pair_on(specs, std::net::Ipv4Addr::LOCALHOST.into());
    let ipv6 = pair_on(specs, std::net::Ipv6Addr::LOCALHOST.into());
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
    Ok((ipv4, ipv6))
}

/// The client side's listeners (`tcp:127.0.0.1:1113`, and `tcp:[::1]:1113`
/// where this host has IPv6 loopback) and the redirect to them; None when
/// the client side is off.
pub(super) async fn outbound_listeners(
    config: &Config,
) -> Result<Option<(Vec<(ListenSpec, Bound)>, OutboundRedirect)>, StartError> {
    if !config.intercept_outbound {
        return Ok(None);
    }
    let mut listeners = Vec::new();
    let mut redirect = OutboundRedirect {
        ipv4: false,
        ipv6: false,
        port: OUTBOUND_PORT,
    };
    let at = [
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ];
    for ip in at {
        let spec = ListenSpec::Tcp((ip, OUTBOUND_PORT).into());
        match listen::bind(&spec).await {
            Ok(bound) => {
                if ip.is_ipv4() {
                    redirect.ipv4 = true;
                } else {
                    redirect.ipv6 = true;
                }
                listeners.push((spec, bound));
            }
            Err(e) if ip.is_ipv6() && listen::no_such_address(&e) => {
                warn!("no IPv6 loopback: the client side catches IPv4 servers only");
            }
            Err(source) => return Err(StartError::Listen { spec, source }),
        }
    }
    Ok(Some((listeners, redirect)))
}
