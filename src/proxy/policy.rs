//! Who may do what through the proxy, and which upstream answers which call.
//!
//! The invariant this module owns: a caller never gains privilege through the
//! proxy. rpcbind decides who owns a registration from the transport the call
//! arrives on (SO_PEERCRED on its unix socket, source address and port on
//! TCP/UDP); the proxy therefore sends a SET or UNSET to rpcbind only over a
//! connection on which rpcbind sees the same identity it would see if the
//! caller had called it directly.

use std::net::{IpAddr, SocketAddr};

use crate::protocol::rpc::AcceptStat;
use crate::protocol::rpcb::{Procedure, RpcbEntry};

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

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The netid rpcbind gives this transport (`local` for its unix socket).
    pub fn netid(self) -> &'static str {
        match self {
            Class::Unix => "local",
            other => other.name(),
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
    /// CALLIT, BCAST or INDIRECT over UDP: rpcbind refuses targets its
    /// `check_callit` forbids with AUTH_TOOWEAK; otherwise CALLIT and BCAST
    /// get silence and INDIRECT the verdict of `indirect_verdict`.
    RemoteCallUdp,
    /// AUTH_ERROR with AUTH_TOOWEAK: rpcbind's `check_access` declining a
    /// SET or UNSET from a non-loopback sender (measured: Debian's rpcbind
    /// answers a remote caller's SET/UNSET of every version, over TCP and
    /// UDP, from any port, so).
    Declined,
}

/// Decides where a call goes.
#[inline]
pub fn route(procedure: Procedure, peer: &Peer) -> Route {
    use Procedure::*;
    match procedure {
        // rpcbind runs without remote calls (Debian's default, no `-r`): over
        // streams it answers none of them; over UDP it answers only refusals
        // (and INDIRECT's lookup). They are the classic reflection vector;
        // the proxy never forwards them.
        CallIt | Bcast | Indirect if peer.is_datagram() => Route::Local(LocalAnswer::RemoteCallUdp),
        CallIt | Bcast | Indirect => Route::Local(LocalAnswer::NoReply),
        Set | Unset => registration_route(peer),
        p if p.depends_on_transport() => Route::Upstream(Class::of(peer)),
        _ => Route::Upstream(Class::Unix),
    }
}

/// rpcbind's `check_callit`: whether a remote call to `prog`/`procedure`
/// is allowed at all (a refusal is AUTH_TOOWEAK). NULL is always allowed;
/// rpcbind itself (outside insecure mode), mountd's MNT/UMNT, ypbind's
/// SETDOM and NIS's bulk lookups are not.
pub fn callit_allowed(prog: u32, procedure: u32) -> bool {
    const RPCBPROG: u32 = 100000;
    const YPPROG: u32 = 100004;
    const MOUNTPROG: u32 = 100005;
    const YPBINDPROG: u32 = 100007;
    if procedure == 0 {
        return true;
    }
    match prog {
        RPCBPROG => false,
        MOUNTPROG => !matches!(procedure, 1 | 3),
        YPBINDPROG => procedure != 2,
        YPPROG => !matches!(procedure, 3 | 4 | 5 | 8),
        _ => true,
    }
}

/// rpcbind's answer to INDIRECT over UDP, given its registrations: its
/// `find_service` takes the last entry of `prog` on the arrival netid, or the
/// first with the exact version; no entry is PROG_UNAVAIL, another version is
/// PROG_MISMATCH over that program's versions on the netid, and a match is
/// SYSTEM_ERR because Debian's rpcbind cannot make remote calls.
pub fn indirect_verdict(entries: &[RpcbEntry], prog: u32, vers: u32, netid: &[u8]) -> AcceptStat {
    let on_netid = || {
        entries
            .iter()
            .filter(move |e| e.prog == prog && e.netid.eq_ignore_ascii_case(netid))
    };
    if on_netid().any(|e| e.vers == vers) {
        return AcceptStat::SystemErr;
    }
    let low = on_netid().map(|e| e.vers).min();
    let high = on_netid().map(|e| e.vers).max();
    match (low, high) {
        (Some(low), Some(high)) => AcceptStat::ProgMismatch { low, high },
        _ => AcceptStat::ProgUnavail,
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
                Route::Local(LocalAnswer::Declined)
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
            Route::Local(LocalAnswer::Declined)
        );
    }

    #[test]
    fn class_index_is_the_position_in_all() {
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
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
    fn check_callit_matches_rpcbind() {
        assert!(callit_allowed(100000, 0));
        assert!(!callit_allowed(100000, 3));
        assert!(!callit_allowed(100005, 1));
        assert!(callit_allowed(100005, 2));
        assert!(!callit_allowed(100007, 2));
        assert!(!callit_allowed(100004, 8));
        assert!(callit_allowed(100003, 1));
    }

    #[test]
    fn indirect_follows_find_service() {
        let e = |prog, vers, netid: &str| RpcbEntry {
            prog,
            vers,
            netid: netid.into(),
            addr: vec![],
            owner: vec![],
        };
        let regs = [
            e(7, 1, "udp"),
            e(7, 3, "udp"),
            e(7, 2, "tcp"),
            e(8, 1, "tcp"),
        ];
        assert_eq!(indirect_verdict(&regs, 7, 3, b"udp"), AcceptStat::SystemErr);
        assert_eq!(indirect_verdict(&regs, 7, 3, b"UDP"), AcceptStat::SystemErr);
        assert_eq!(
            indirect_verdict(&regs, 7, 2, b"udp"),
            AcceptStat::ProgMismatch { low: 1, high: 3 }
        );
        assert_eq!(
            indirect_verdict(&regs, 8, 1, b"udp"),
            AcceptStat::ProgUnavail
        );
        assert_eq!(
            indirect_verdict(&regs, 9, 1, b"udp"),
            AcceptStat::ProgUnavail
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
            Route::Local(LocalAnswer::RemoteCallUdp)
        );
        assert_eq!(
            route(Procedure::CallIt, &tcp("127.0.0.1:1")),
            Route::Local(LocalAnswer::NoReply)
        );
    }
}
