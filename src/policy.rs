//! Who may do what through the proxy, and which upstream answers which call.
//!
//! The invariant this module owns: a caller never gains privilege through the
//! proxy. rpcbind decides who owns a registration from the transport the call
//! arrives on (SO_PEERCRED on its unix socket, source address and port on
//! TCP/UDP); the proxy therefore sends a SET or UNSET to rpcbind only over a
//! connection on which rpcbind sees the same identity it would see if the
//! caller had called it directly.

use std::net::{IpAddr, SocketAddr};

use crate::rpcb::Procedure;

/// The client at the other end of a listener, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A unix-socket client, with its SO_PEERCRED credentials.
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl Peer {
    pub fn is_datagram(&self) -> bool {
        matches!(self, Peer::Udp(_))
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Unix { .. } => None,
            Peer::Tcp(a) | Peer::Udp(a) => Some(a.ip().to_canonical()),
        }
    }
}

/// An upstream transport class: one persistent connection to rpcbind each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Unix,
    Tcp4,
    Udp4,
    Tcp6,
    Udp6,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Unix,
        Class::Tcp4,
        Class::Udp4,
        Class::Tcp6,
        Class::Udp6,
    ];

    /// The class a client's own transport belongs to.
    pub fn of(peer: &Peer) -> Class {
        match peer {
            Peer::Unix { .. } => Class::Unix,
            Peer::Tcp(a) if a.ip().to_canonical().is_ipv4() => Class::Tcp4,
            Peer::Tcp(_) => Class::Tcp6,
            Peer::Udp(a) if a.ip().to_canonical().is_ipv4() => Class::Udp4,
            Peer::Udp(_) => Class::Udp6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Unix => "unix",
            Class::Tcp4 => "tcp",
            Class::Udp4 => "udp",
            Class::Tcp6 => "tcp6",
            Class::Udp6 => "udp6",
        }
    }
}

/// What to do with a well-formed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send over the shared connection of this class.
    Upstream(Class),
    /// Send over a connection to rpcbind's unix socket opened with this
    /// caller's uid and gid, so rpcbind records the caller as the owner.
    AsUser { uid: u32, gid: u32 },
    /// Answer here without asking rpcbind.
    Local(LocalAnswer),
}

/// Answers the proxy gives itself, each the one Debian's rpcbind gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAnswer {
    /// rpcbind sends nothing (remote calls are compiled out).
    NoReply,
    /// SYSTEM_ERR (INDIRECT over UDP).
    SystemErr,
    /// A SUCCESS reply carrying boolean false: a refused SET or UNSET.
    False,
}

/// Decides where a call goes.
pub fn route(procedure: Procedure, peer: &Peer) -> Route {
    use Procedure::*;
    match procedure {
        // Debian's rpcbind is built without remote calls: over streams it
        // sends no reply to any of them, over UDP only INDIRECT is answered,
        // with SYSTEM_ERR. They are the classic reflection vector; the proxy
        // never forwards them.
        CallIt | Bcast => Route::Local(LocalAnswer::NoReply),
        Indirect if peer.is_datagram() => Route::Local(LocalAnswer::SystemErr),
        Indirect => Route::Local(LocalAnswer::NoReply),
        Set | Unset => registration_route(peer),
        p if p.depends_on_transport() => Route::Upstream(Class::of(peer)),
        _ => Route::Upstream(Class::Unix),
    }
}

/// Where a SET or UNSET goes so that rpcbind sees the caller's identity.
fn registration_route(peer: &Peer) -> Route {
    match *peer {
        // uid 0 is `superuser` on rpcbind's unix socket, as on ours.
        Peer::Unix { uid: 0, .. } => Route::Upstream(Class::Unix),
        Peer::Unix { uid, gid, .. } => Route::AsUser { uid, gid },
        Peer::Tcp(a) | Peer::Udp(a) => {
            if !a.ip().to_canonical().is_loopback() {
                // rpcbind refuses registrations from other hosts.
                Route::Local(LocalAnswer::False)
            } else if a.port() < 1024 {
                // A loopback caller on a reserved port is `superuser` to
                // rpcbind; so is the proxy on its unix socket.
                Route::Upstream(Class::Unix)
            } else {
                // An unprivileged loopback caller: over the proxy's own
                // TCP/UDP connection (an ephemeral port) rpcbind sees the same
                // unprivileged identity, `unknown`.
                Route::Upstream(Class::of(peer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Peer {
        Peer::Tcp(s.parse().unwrap())
    }

    #[test]
    fn registrations_keep_the_callers_identity() {
        let set = Procedure::Set;
        assert_eq!(
            route(
                set,
                &Peer::Unix {
                    uid: 0,
                    gid: 0,
                    pid: None
                }
            ),
            Route::Upstream(Class::Unix)
        );
        assert_eq!(
            route(
                set,
                &Peer::Unix {
                    uid: 65534,
                    gid: 65534,
                    pid: Some(7)
                }
            ),
            Route::AsUser {
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(
            route(set, &tcp("127.0.0.1:700")),
            Route::Upstream(Class::Unix)
        );
        assert_eq!(
            route(Procedure::Unset, &tcp("127.0.0.1:40000")),
            Route::Upstream(Class::Tcp4)
        );
        assert_eq!(
            route(set, &Peer::Udp("127.0.0.1:40000".parse().unwrap())),
            Route::Upstream(Class::Udp4)
        );
        assert_eq!(
            route(set, &tcp("[::ffff:127.0.0.1]:40000")),
            Route::Upstream(Class::Tcp4)
        );
        assert_eq!(
            route(set, &tcp("[::1]:40000")),
            Route::Upstream(Class::Tcp6)
        );
        assert_eq!(
            route(set, &tcp("10.1.2.3:700")),
            Route::Local(LocalAnswer::False)
        );
    }

    #[test]
    fn transport_dependent_calls_follow_the_client() {
        let udp = Peer::Udp("127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            route(Procedure::GetAddr, &udp),
            Route::Upstream(Class::Udp4)
        );
        assert_eq!(
            route(Procedure::GetPort, &udp),
            Route::Upstream(Class::Unix)
        );
        assert_eq!(route(Procedure::Dump, &udp), Route::Upstream(Class::Unix));
        assert_eq!(
            route(Procedure::Taddr2Uaddr, &tcp("[::1]:9")),
            Route::Upstream(Class::Tcp6)
        );
    }

    #[test]
    fn remote_calls_are_never_forwarded() {
        let udp = Peer::Udp("127.0.0.1:5000".parse().unwrap());
        for p in [Procedure::CallIt, Procedure::Bcast, Procedure::Indirect] {
            assert!(matches!(route(p, &tcp("127.0.0.1:1")), Route::Local(_)));
            assert!(matches!(route(p, &udp), Route::Local(_)));
        }
        assert_eq!(
            route(Procedure::Indirect, &udp),
            Route::Local(LocalAnswer::SystemErr)
        );
    }
}
