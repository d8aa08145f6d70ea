//! A stream loop taking clients in: accepting on the shared listening
//! sockets, admitting (connection limit, identity, row), keeping the loops
//! even, and adopting a client into the loop's epoll set.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Interest, Token};
use tracing::{debug, warn};

use crate::host::sockdiag::original_destination;
use crate::host::sys::{peer_cred, set_zero_linger};
use crate::proxy::attribution::{Identity, Transport};
use crate::proxy::limits::Owner;
use crate::proxy::policy::Peer;

use super::event_loop::{Listener, Loop, ACCEPT_PAUSE, ACCEPT_WARN_EVERY};
use super::inbox::{EvictSignal, Newcomer};
use super::stream::{Sock, Stream};

impl Loop {
    /// Accepts what waits on listener `i`.
    pub(super) fn accept(&mut self, i: usize) {
        loop {
            let Some(listening) = self.listeners.get_mut(i) else {
                return;
            };
            if listening.paused_until.is_some() {
                return;
            }
            let accepted = match &listening.listener {
                Some(Listener::Tcp(l)) => l.accept().map(|(s, a)| (Sock::tcp(s), Some(a))),
                Some(Listener::Unix { listener, .. }) => {
                    listener.accept().map(|(s, _)| (Sock::unix(s), None))
                }
                None => return,
            };
            match accepted {
                Ok((sock, addr)) => self.admit(sock, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    let now = self.now;
                    if self
                        .accept_warned
                        .is_none_or(|t| now >= t + ACCEPT_WARN_EVERY)
                    {
                        warn!(error = %e, "accept failed; pausing the listener {ACCEPT_PAUSE:?} (this warning repeats at most every {ACCEPT_WARN_EVERY:?})");
                        self.accept_warned = Some(now);
                    }
                    let until = now + ACCEPT_PAUSE;
                    listening.paused_until = Some(until);
                    self.next_check = self.next_check.min(until);
                    return;
                }
            }
        }
    }

    /// Takes in a client that was accepted: its identity, its place under
    /// the connection limit, its row, and a first read.
    fn admit(&mut self, sock: Sock, addr: Option<std::net::SocketAddr>) {
        let proxy = &self.proxy;
        let (peer, mut owner, mut local) = match (&sock, addr) {
            (Sock::Unix(s), _) => match peer_cred(s.as_fd()) {
                Ok((uid, gid, pid)) => {
                    let peer = Peer::Unix { uid, gid, pid };
                    (peer, Owner::of(&peer), None)
                }
                Err(e) => {
                    warn!(error = %e, "no peer credentials; dropping client");
                    return;
                }
            },
            (Sock::Tcp(s), Some(client)) => {
                // An RST on every close, whoever closes and why: no
                // TIME_WAIT on either side.
                if let Err(e) = set_zero_linger(s.as_fd()) {
                    debug!(error = %e, "cannot set SO_LINGER");
                }
                let local = s.local_addr().ok();
                let owner = local.map_or(Owner::OtherIp, |server| Owner::tcp(client, server));
                (Peer::Tcp(client), owner, local)
            }
            (Sock::Tcp(_), None) => return,
        };
        // The client side's port: a client of another host's rpcbind, whose
        // socket names that server (the one sock_diag and the connection
        // limit know it by). Anything else there is closed.
        let mut outbound = None;
        if let (Sock::Tcp(s), Peer::Tcp(client), Some(at)) = (&sock, peer, local) {
            if proxy.outbound.is_its_port(at) {
                let original = original_destination(s.as_fd()).ok().flatten();
                let Some(to) = proxy.outbound.destination(client, at, original) else {
                    debug!(peer = ?peer, "not redirected to the client side's port; closing");
                    return;
                };
                outbound = Some(Box::new(to));
                local = Some(to.server);
                owner = Owner::LocalTcp {
                    client,
                    server: to.server,
                };
            }
        }
        let Some(admitted) = proxy.limits.admit(owner) else {
            return;
        };
        if let Sock::Tcp(s) = &sock {
            let _ = s.set_nodelay(true);
        }
        // Who it is, asked now, while the client's socket surely exists.
        let identity = match (peer, local) {
            (Peer::Unix { uid, pid, .. }, _) => proxy.attribution.unix(pid, uid),
            (Peer::Tcp(client), Some(local)) => {
                proxy.attribution.tcp(client, local, proxy.rpcbind_port())
            }
            _ => Identity::unknown(Transport::Tcp),
        };
        let mut newcomer = Newcomer {
            sock,
            peer,
            outbound,
            tally: proxy.clients.tally(&identity),
            admitted,
            tracked: proxy.tasks.token(),
        };
        proxy.clients.opened();
        // Keep the loops even: whichever loop accepts a client (they race
        // for each one), it goes to the least busy. Clients that come
        // together would otherwise often land on one loop.
        let (least, fewest) = self
            .loads
            .iter()
            .enumerate()
            .map(|(i, l)| (i, l.load(Ordering::Relaxed)))
            .min_by_key(|&(_, l)| l)
            .unwrap_or((self.n, 0));
        if least != self.n && fewest < self.live {
            self.loads[least].fetch_add(1, Ordering::Relaxed);
            match self.inboxes[least].hand_over(newcomer) {
                Ok(()) => return,
                // That loop has ended: this one keeps the client.
                Err(back) => {
                    self.loads[least].fetch_sub(1, Ordering::Relaxed);
                    newcomer = back;
                }
            }
        }
        self.adopt(newcomer);
    }

    /// Takes a client in: a slot, the epoll set, its eviction signal, and a
    /// first read. Its slot, unless it was closed at once.
    pub(super) fn adopt(&mut self, newcomer: Newcomer) -> Option<usize> {
        let Newcomer {
            sock,
            peer,
            outbound,
            tally,
            admitted,
            tracked,
        } = newcomer;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        // Readable only: with WRITABLE too, every reply the client reads
        // frees send space and wakes the loop for nothing (an edge per
        // reply). It is asked for only while replies wait in `out`.
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&sock.fd()),
            Token(slot),
            Interest::READABLE,
        ) {
            warn!(error = %e, "cannot watch a client's socket; dropping it");
            self.free.push(slot);
            self.proxy.clients.closed();
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut c = Stream::new(sock, peer, id, tally, admitted, tracked, self.now);
        c.outbound = outbound.map(|to| *to);
        let signal = std::task::Waker::from(Arc::new(EvictSignal {
            inbox: self.inbox.clone(),
            slot,
            id,
        }));
        let evicted = c.admitted.wake_on_evict(&signal);
        self.conns[slot] = Some(c);
        self.live += 1;
        self.loads[self.n].store(self.live, Ordering::Relaxed);
        if evicted {
            self.close(slot);
            return None;
        }
        self.serve(slot);
        self.conns.get(slot)?.as_ref().map(|_| slot)
    }
}
