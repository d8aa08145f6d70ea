//! Server mode's link-local clients: rpcbind answers a GETADDR from an IPv6
//! link-local caller with its own link-local address on the caller's
//! interface (its `addrmerge` compares the caller's scope with each
//! interface's), which it cannot do for a call over the proxy's loopback
//! connection. Such a client's address-dependent calls go instead over a
//! connection to rpcbind from the server's own link-local address on the
//! client's interface: rpcbind sees a caller with the client's scope, and
//! answers as it would answer the client.
//!
//! One connection per (transport class, interface), made when first needed,
//! at most [`MAX_LINKS`]; beyond, the class's loopback connection (as
//! before: the answer may name another interface's address).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::proxy::policy::{Class, Peer};
use crate::proxy::upstream::{Target, Upstream};

/// Interfaces with a connection of their own at most.
pub const MAX_LINKS: usize = 64;

/// The connections to rpcbind from this host's link-local addresses.
#[derive(Debug)]
pub struct LinkLocalUpstreams {
    port: u16,
    mark: Option<u32>,
    links: Mutex<HashMap<(Class, u32), Arc<Upstream>>>,
}

impl LinkLocalUpstreams {
    pub fn new(port: u16, mark: Option<u32>) -> LinkLocalUpstreams {
        LinkLocalUpstreams {
            port,
            mark,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// Applies a reload's upstream timeout to the connections made so far.
    pub fn set_timeout(&self, timeout: Duration) {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        for up in links.values() {
            up.set_timeout(timeout);
        }
    }

    /// The connection a call of `peer`'s bound for `class` takes, when the
    /// peer is another host on an IPv6 link-local address; None otherwise
    /// (the class's own connection). A new one waits `timeout` for rpcbind.
    pub fn for_peer(&self, class: Class, peer: &Peer, timeout: Duration) -> Option<Arc<Upstream>> {
        let (Peer::Tcp(SocketAddr::V6(client)) | Peer::Udp(SocketAddr::V6(client))) = peer else {
            return None;
        };
        if !matches!(class, Class::Tcp6 | Class::Udp6) || !is_link_local(client.ip()) {
            return None;
        }
        let scope = client.scope_id();
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(up) = links.get(&(class, scope)) {
            return Some(up.clone());
        }
        if links.len() >= MAX_LINKS {
            return None;
        }
        let own = own_address_towards(*client)?;
        let at = SocketAddr::V6(SocketAddrV6::new(own, self.port, 0, scope));
        let target = match class {
            Class::Tcp6 => Target::Tcp(at),
            _ => Target::Udp(at),
        };
        let up = Arc::new(Upstream::new(target, timeout).with_mark(self.mark));
        links.insert((class, scope), up.clone());
        Some(up)
    }
}

/// fe80::/10.
pub fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// This host's address the kernel would send to `client` from: its
/// link-local address on the client's interface (a UDP socket's connect
/// sends nothing).
fn own_address_towards(client: SocketAddrV6) -> Option<Ipv6Addr> {
    let probe = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok()?;
    probe
        .connect(SocketAddrV6::new(*client.ip(), 9, 0, client.scope_id()))
        .ok()?;
    match probe.local_addr().ok()?.ip() {
        IpAddr::V6(ip) if is_link_local(&ip) => Some(ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_link_local_ipv6_peers_of_the_ipv6_classes_take_a_link() {
        let links = LinkLocalUpstreams::new(111, None);
        let t = Duration::from_secs(1);
        let v4 = Peer::Tcp(([169, 254, 1, 2], 700).into());
        let ula = Peer::Tcp("[fd51:1::2]:700".parse().unwrap());
        assert!(links.for_peer(Class::Tcp4, &v4, t).is_none());
        assert!(links.for_peer(Class::Tcp6, &ula, t).is_none());
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        // Loopback has no link-local address: no link, the class's own.
        let ll = Peer::Tcp("[fe80::2%1]:700".parse().unwrap());
        assert!(links.for_peer(Class::Tcp4, &ll, t).is_none());
    }
}
