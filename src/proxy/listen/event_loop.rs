//! The stream loop: one thread that accepts the unix and TCP clients and
//! serves them all from one `epoll` set (through mio), so that a cached
//! lookup costs what it costs rpcbind: a wake-up, a read and a write.
//!
//! Why not a task per connection on the runtime: every answer then also
//! paid for a waker, the scheduler's queue, a task poll, a `select!` over
//! the connection's timers and shutdown signal, and the time driver's turn,
//! about twice the proxy's own work per hit. Here a readable socket is read
//! at once, a short read is taken as "drained" (the next bytes bring an
//! event), the hit is answered in the same turn, and timeouts are one sweep
//! when the earliest of them is due, not a timer per connection.
//!
//! What needs to wait (a call past the cache) is a task on the runtime; its
//! answer comes back through the loop's inbox (`inbox`), which wakes the
//! loop. So do evictions at the connection limit, clients handed over by
//! another loop, and shutdown. Taking clients in is `accept`.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, error, warn};

use crate::proxy::service::Proxy;

use super::inbox::{Inbox, Queue};
use super::stream::{Buffers, Closed, Stream, Turn};
use super::{Bound, UnixSocketFile, READ_CHUNK};

/// Tokens at and above this are listeners; below, client slots.
const LISTENERS: usize = 1 << 40;
const WAKER: Token = Token(usize::MAX);
/// Readiness events taken per wake-up.
const EVENTS: usize = 1024;
/// The longest the loop sleeps without looking at the clients' deadlines
/// (a reload may have shortened a timeout).
const SWEEP_AT_LEAST: Duration = Duration::from_secs(1);
/// How long a listener rests after accept failed (mostly: out of file
/// descriptors) rather than spin.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// One warning per this long about failing accepts.
pub(super) const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// The running loops, as the daemon holds them.
pub struct StreamLoop {
    loops: Vec<Handle>,
}

/// One loop's thread, from outside.
struct Handle {
    inbox: Arc<Inbox>,
    accepting: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for StreamLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLoop")
            .field("loops", &self.loops.len())
            .finish_non_exhaustive()
    }
}

impl StreamLoop {
    /// Serves `listeners` (unix and TCP; a UDP one is refused) on `threads`
    /// loop threads of their own. Every loop watches every listener (the
    /// same socket); whichever accepts a client keeps it, so the less busy
    /// loop takes most newcomers. Calls past the cache run on `runtime`.
    pub fn start(
        listeners: Vec<Bound>,
        threads: usize,
        proxy: Arc<Proxy>,
        runtime: tokio::runtime::Handle,
    ) -> io::Result<StreamLoop> {
        let threads = threads.max(1);
        // Each loop gets its own descriptor of each listening socket; the
        // socket file (if the daemon made it) goes with the first loop's.
        let mut per_loop: Vec<Vec<Listener>> = (0..threads).map(|_| Vec::new()).collect();
        for bound in listeners {
            match bound {
                Bound::Tcp(l) => {
                    let l = l.into_std()?;
                    for mine in per_loop.iter_mut().skip(1) {
                        mine.push(Listener::Tcp(mio::net::TcpListener::from_std(
                            l.try_clone()?,
                        )));
                    }
                    per_loop[0].push(Listener::Tcp(mio::net::TcpListener::from_std(l)));
                }
                Bound::Unix(l, file) => {
                    let l = l.into_std()?;
                    for mine in per_loop.iter_mut().skip(1) {
                        mine.push(Listener::Unix {
                            listener: mio::net::UnixListener::from_std(l.try_clone()?),
                            _file: None,
                        });
                    }
                    per_loop[0].push(Listener::Unix {
                        listener: mio::net::UnixListener::from_std(l),
                        _file: file,
                    });
                }
                Bound::Udp(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a UDP socket is not served by the stream loop",
                    ))
                }
            }
        }
        let mut polls = Vec::with_capacity(threads);
        let mut inboxes = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKER)?;
            inboxes.push(Arc::new(Inbox {
                waker,
                queue: Mutex::new(Queue::default()),
                turns: AtomicU64::new(0),
            }));
            polls.push(poll);
        }
        let shared = Shared {
            loads: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            inboxes,
            proxy,
            runtime,
        };
        let mut loops = Vec::with_capacity(threads);
        for (n, (poll, listeners)) in polls.into_iter().zip(per_loop).enumerate() {
            let (accepting_tx, accepting_rx) = tokio::sync::oneshot::channel();
            let lp = Loop::new(n, poll, listeners, accepting_tx, &shared)?;
            std::thread::Builder::new()
                .name(format!("streams-{n}"))
                .spawn(move || {
                    let mut lp = lp;
                    // A loop that died would leave the stream listeners open
                    // and unanswered: better the whole daemon goes (systemd
                    // restarts it; in transparent mode the kernel drops the
                    // redirect with it).
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
                    if ran.is_err() {
                        error!("the stream loop panicked; aborting");
                        std::process::abort();
                    }
                })?;
            loops.push(Handle {
                inbox: shared.inboxes[n].clone(),
                accepting: Some(accepting_rx),
            });
        }
        Ok(StreamLoop { loops })
    }

    /// Stops accepting and reading: clients get the answers to the calls
    /// they have in flight, then are closed.
    pub fn stop(&self) {
        for l in &self.loops {
            l.inbox.push(|q| q.stop = true);
        }
    }

    /// How many times each loop has gone round, for the watchdog: a loop
    /// goes round at least once a second, so a count that stays put means
    /// it is stuck.
    pub fn turn_counter(&self) -> impl Fn() -> Vec<u64> + Send + 'static {
        let inboxes: Vec<Arc<Inbox>> = self.loops.iter().map(|l| l.inbox.clone()).collect();
        move || {
            inboxes
                .iter()
                .map(|i| i.turns.load(Ordering::Relaxed))
                .collect()
        }
    }

    /// Completes once every loop has closed its listeners.
    pub async fn stopped_accepting(&mut self) {
        for l in &mut self.loops {
            if let Some(rx) = l.accepting.take() {
                let _ = rx.await;
            }
        }
    }
}

pub(super) enum Listener {
    Tcp(mio::net::TcpListener),
    Unix {
        listener: mio::net::UnixListener,
        /// The socket file, removed when the listener closes (None:
        /// systemd's, or an abstract name).
        _file: Option<UnixSocketFile>,
    },
}

impl Listener {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix { listener, .. } => listener,
        }
    }
}

pub(super) struct Listening {
    /// None once closed (shutdown).
    pub(super) listener: Option<Listener>,
    /// Accept failed; try again at this time.
    pub(super) paused_until: Option<Instant>,
}

pub(super) struct Loop {
    /// This loop's index among the loops.
    pub(super) n: usize,
    pub(super) poll: Poll,
    pub(super) inbox: Arc<Inbox>,
    /// Every loop's inbox (this one's too), to hand a client over.
    pub(super) inboxes: Vec<Arc<Inbox>>,
    /// Every loop's client count, to keep them even.
    pub(super) loads: Arc<[AtomicUsize]>,
    pub(super) proxy: Arc<Proxy>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) listeners: Vec<Listening>,
    pub(super) accepting: Option<tokio::sync::oneshot::Sender<()>>,
    /// Clients by slot (their token).
    pub(super) conns: Vec<Option<Stream>>,
    pub(super) free: Vec<usize>,
    pub(super) live: usize,
    pub(super) next_id: u64,
    /// Clients whose turn ended with bytes possibly left to read.
    pub(super) ready: Vec<usize>,
    pub(super) bufs: Buffers,
    /// When the current wake-up began.
    pub(super) now: Instant,
    pub(super) second: u32,
    /// When to look at the clients' deadlines next.
    pub(super) next_check: Instant,
    pub(super) stopped: bool,
    pub(super) accept_warned: Option<Instant>,
    pub(super) turns: u64,
}

/// What every loop holds a handle to.
struct Shared {
    inboxes: Vec<Arc<Inbox>>,
    loads: Arc<[AtomicUsize]>,
    proxy: Arc<Proxy>,
    runtime: tokio::runtime::Handle,
}

impl Loop {
    fn new(
        n: usize,
        poll: Poll,
        listeners: Vec<Listener>,
        accepting: tokio::sync::oneshot::Sender<()>,
        shared: &Shared,
    ) -> io::Result<Loop> {
        let mut held = Vec::with_capacity(listeners.len());
        for (i, mut l) in listeners.into_iter().enumerate() {
            poll.registry()
                .register(l.source(), Token(LISTENERS + i), Interest::READABLE)?;
            held.push(Listening {
                listener: Some(l),
                paused_until: None,
            });
        }
        let now = Instant::now();
        Ok(Loop {
            n,
            poll,
            inbox: shared.inboxes[n].clone(),
            inboxes: shared.inboxes.clone(),
            loads: shared.loads.clone(),
            second: shared.proxy.clients.now(),
            proxy: shared.proxy.clone(),
            runtime: shared.runtime.clone(),
            listeners: held,
            accepting: Some(accepting),
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_id: 0,
            ready: Vec::new(),
            bufs: Buffers {
                rbuf: vec![0; READ_CHUNK].into_boxed_slice(),
                work: BytesMut::with_capacity(READ_CHUNK),
                wbuf: BytesMut::with_capacity(READ_CHUNK),
            },
            now,
            next_check: now + SWEEP_AT_LEAST,
            stopped: false,
            accept_warned: None,
            turns: 0,
        })
    }

    fn run(&mut self) {
        let _in_runtime = self.runtime.enter();
        let mut events = Events::with_capacity(EVENTS);
        let mut turn_ready = Vec::new();
        loop {
            let timeout = if self.ready.is_empty() {
                self.next_check.saturating_duration_since(self.now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(error = %e, "the stream loop cannot wait for events; aborting");
                std::process::abort();
            }
            self.now = Instant::now();
            self.second = self.proxy.clients.now();
            self.turns += 1;
            self.inbox.turns.store(self.turns, Ordering::Relaxed);
            let mut inbox = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => inbox = true,
                    Token(t) if t >= LISTENERS => self.accept(t - LISTENERS),
                    Token(slot) => {
                        if let Some(Some(c)) = self.conns.get_mut(slot) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                c.readable = true;
                            }
                            self.serve(slot);
                        }
                    }
                }
            }
            if inbox {
                self.take_inbox();
            }
            if !self.ready.is_empty() {
                std::mem::swap(&mut turn_ready, &mut self.ready);
                for slot in turn_ready.drain(..) {
                    self.serve(slot);
                }
            }
            if self.now >= self.next_check {
                self.sweep();
            }
            if self.stopped && self.live == 0 {
                // Ends only with nothing handed to it still waiting; from
                // then on a hand-over is refused (the sender keeps the
                // client), so none is left behind.
                let mut q = self
                    .inbox
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if q.adopt.is_empty() {
                    q.ended = true;
                    debug!("stream loop: every client is closed");
                    return;
                }
            }
        }
    }

    /// Gives the client in `slot` its turn; closes it if it is done.
    pub(super) fn serve(&mut self, slot: usize) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        let turn = Turn {
            proxy: &self.proxy,
            runtime: &self.runtime,
            inbox: &self.inbox,
            slot,
            now: self.now,
            second: self.second,
        };
        match c.run(&turn, &mut self.bufs) {
            Ok(()) => {
                if c.blocked_on_write() != c.watching_writable {
                    let interest = if c.blocked_on_write() {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if let Err(e) = self.poll.registry().reregister(
                        &mut SourceFd(&c.sock.fd()),
                        Token(slot),
                        interest,
                    ) {
                        warn!(error = %e, "cannot watch a client's socket; dropping it");
                        self.close(slot);
                        return;
                    }
                    c.watching_writable = c.blocked_on_write();
                }
                let limits = &self.proxy.limits;
                if c.wants_more(limits) {
                    self.ready.push(slot);
                }
                if let Some((due, _)) = c.deadline(limits) {
                    self.next_check = self.next_check.min(due);
                }
            }
            Err(why) => {
                if why == Closed::Error {
                    debug!(peer = ?c.peer, "closing a client (bad framing, an error, or an answer that closes)");
                }
                self.close(slot);
            }
        }
    }

    pub(super) fn close(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::take) {
            // Dropping the socket closes it (a TCP client with an RST:
            // SO_LINGER 0 was set when it was accepted), which also takes it
            // out of the epoll set; unless a task writing a reply still
            // holds it: then it is taken out here, so that its events never
            // reach the client that gets this slot next.
            if c.sock.is_shared() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&c.sock.fd()));
            }
            drop(c);
            self.free.push(slot);
            self.live -= 1;
            self.loads[self.n].store(self.live, Ordering::Relaxed);
            self.proxy.clients.closed();
        }
    }

    fn take_inbox(&mut self) {
        let q = std::mem::take(
            &mut *self
                .inbox
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut answered: Vec<usize> = Vec::with_capacity(q.answers.len());
        for (slot, id, seq, outcome) in q.answers {
            if let Some(Some(c)) = self.conns.get_mut(slot) {
                if c.id == id {
                    c.answered(seq, outcome);
                    answered.push(slot);
                }
            }
        }
        answered.sort_unstable();
        answered.dedup();
        for slot in answered {
            self.serve(slot);
        }
        for (slot, id) in q.evicted {
            if let Some(Some(c)) = self.conns.get(slot) {
                if c.id == id && c.admitted.is_evicted() {
                    debug!(peer = ?c.peer, "evicted at the connection limit; closing");
                    self.close(slot);
                }
            }
        }
        for newcomer in q.adopt {
            if let Some(slot) = self.adopt(newcomer) {
                if self.stopped {
                    // Handed over as the daemon stopped: its calls in
                    // flight answered, then closed, as the others.
                    if let Some(Some(c)) = self.conns.get_mut(slot) {
                        c.stop(self.now);
                    }
                    self.serve(slot);
                }
            }
        }
        if q.stop && !self.stopped {
            self.stop();
        }
    }

    /// Shutdown: the listeners close (their files go), and every client
    /// stops being read and is closed once its calls in flight are answered
    /// (one that has sent no call yet is read for its first, for at most
    /// `FIRST_CALL_GRACE`).
    fn stop(&mut self) {
        self.stopped = true;
        for l in &mut self.listeners {
            if let Some(mut listener) = l.listener.take() {
                let _ = self.poll.registry().deregister(listener.source());
            }
        }
        if let Some(tx) = self.accepting.take() {
            let _ = tx.send(());
        }
        for slot in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(slot) {
                c.stop(self.now);
                self.serve(slot);
            }
        }
    }

    /// Closes the clients past their deadline, resumes paused listeners,
    /// and sets when to look again.
    fn sweep(&mut self) {
        let now = self.now;
        self.next_check = now + SWEEP_AT_LEAST;
        for i in 0..self.listeners.len() {
            match self.listeners[i].paused_until {
                Some(t) if t <= now => {
                    self.listeners[i].paused_until = None;
                    self.accept(i);
                }
                Some(t) => self.next_check = self.next_check.min(t),
                None => {}
            }
        }
        let limits = &self.proxy.limits;
        let mut expired = Vec::new();
        for (slot, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            match c.deadline(limits) {
                // Shutdown's grace for a first call ran out: not a limit.
                Some((due, _)) if due <= now && c.waiting_first_call() => expired.push(slot),
                Some((due, record)) if due <= now => {
                    let counter = if record {
                        &limits.record_timeouts
                    } else {
                        &limits.idle_closed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    debug!(peer = ?c.peer, partial = record, "closing a client that took too long");
                    expired.push(slot);
                }
                Some((due, _)) => self.next_check = self.next_check.min(due),
                None => {}
            }
        }
        for slot in expired {
            self.close(slot);
        }
    }
}
