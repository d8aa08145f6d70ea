//! One stream client (unix or TCP), as the stream loop drives it: reads
//! records, answers them in order (calls may be pipelined, at most
//! max-in-flight at a time), counts them on the client's row, and closes so
//! that no TIME_WAIT is left behind.
//!
//! Nothing here blocks or waits: the loop calls [`Stream::run`] when the
//! socket is readable or writable, when an answer from rpcbind arrives, and
//! at shutdown, and `run` does all that can be done now and returns. A cached
//! hit is answered inside `run`, in the same wake-up as its read: that is
//! the hot path, one read and one write per lookup. A call the cache cannot
//! answer becomes a task on the runtime, whose outcome comes back through
//! the loop's inbox ([`Stream::answered`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::protocol::rpc::{put_record, set_xid, RecordCodec, MAX_CLIENT_RECORD};
use crate::proxy::clients::Tally;
use crate::proxy::limits::{Admitted, Limits};
use crate::proxy::outbound::Destination;
use crate::proxy::policy::Peer;
use crate::proxy::service::{Outcome, Proxy};

/// Reads at most this many times per wake-up before letting the other
/// clients have their turn (the client stays on the loop's ready list).
const READS_PER_TURN: usize = 16;
/// At shutdown, how long a client that connected but has not sent its
/// first call yet is still read: it was accepted (often just before the
/// stop) and is about to write; closed unread, its call would be lost
/// where the next daemon, taking over the listeners, would have answered.
pub(super) const FIRST_CALL_GRACE: Duration = Duration::from_millis(500);

/// A client's socket, shared with the task answering its call past the
/// cache when that task may write the reply itself (see
/// [`Stream::take_record`]).
pub(super) enum Sock {
    Tcp(Arc<std::net::TcpStream>),
    Unix(Arc<std::os::unix::net::UnixStream>),
}

impl Sock {
    pub(super) fn tcp(s: mio::net::TcpStream) -> Sock {
        Sock::Tcp(Arc::new(s.into()))
    }

    pub(super) fn unix(s: mio::net::UnixStream) -> Sock {
        Sock::Unix(Arc::new(s.into()))
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&**s).read(buf),
            Sock::Unix(s) => (&**s).read(buf),
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&**s).write(buf),
            Sock::Unix(s) => (&**s).write(buf),
        }
    }

    fn share(&self) -> Sock {
        match self {
            Sock::Tcp(s) => Sock::Tcp(s.clone()),
            Sock::Unix(s) => Sock::Unix(s.clone()),
        }
    }

    /// Whether a task still holds the socket (it then outlives the loop's
    /// close, and stays in the epoll set unless taken out).
    pub(super) fn is_shared(&self) -> bool {
        match self {
            Sock::Tcp(s) => Arc::strong_count(s) > 1,
            Sock::Unix(s) => Arc::strong_count(s) > 1,
        }
    }

    /// The descriptor, for the loop's epoll set.
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// An answer to a call past the cache, as it comes back to the loop.
pub(super) enum Answer {
    /// The loop writes it.
    Outcome(Outcome),
    /// The task wrote the reply itself; these bytes of it are left to write.
    Written(BytesMut),
}

/// Why a client was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// Its EOF, with every reply written; or the shutdown drain.
    Done,
    /// Bad framing, a read or write error, or an answer that closes.
    Error,
}

/// What a client's turn knows of the loop.
pub(super) struct Turn<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub runtime: &'a tokio::runtime::Handle,
    pub inbox: &'a Arc<super::inbox::Inbox>,
    /// The client's slot in the loop (with [`Stream::id`], the address of
    /// an answer).
    pub slot: usize,
    /// The wake-up's time, read once for every client it serves.
    pub now: Instant,
    /// The current second, for the client's row.
    pub second: u32,
}

/// The loop's buffers, lent to each client in turn.
pub(super) struct Buffers {
    /// Bytes read land here first; only a partial record is kept per client.
    pub rbuf: Box<[u8]>,
    /// The records being decoded, when the client keeps nothing of its own.
    pub work: BytesMut,
    /// The replies being written.
    pub wbuf: BytesMut,
}

pub(super) struct Stream {
    pub sock: Sock,
    pub peer: Peer,
    /// The client side: the server every call of this client goes to
    /// (nothing answered here, no host's rate: the client is this host's).
    pub outbound: Option<Destination>,
    /// Unique for the loop's life: an answer for a slot's earlier client is
    /// dropped.
    pub id: u64,
    tally: Arc<Tally>,
    pub admitted: Admitted,
    /// Shutdown waits for the client (see `Proxy::tasks`).
    _tracked: TaskTrackerToken,
    codec: RecordCodec,
    /// Bytes of a record not yet complete (or held back by max-in-flight);
    /// empty, without an allocation, between records.
    inbuf: BytesMut,
    /// Reply bytes the socket would not take yet (the client is not reading).
    out: BytesMut,
    /// The calls past the cache, in order: None until answered.
    pending: VecDeque<Option<Answer>>,
    /// The sequence number of `pending[0]`.
    first_seq: u64,
    /// The socket may have bytes: a readable event came and no read since
    /// found it empty.
    pub readable: bool,
    /// No more reads: the client's EOF, or shutdown.
    pub eof: bool,
    /// The socket is watched for writable too (only while `out` waits).
    pub watching_writable: bool,
    last_activity: Instant,
    /// A call was taken from this client (answered or not).
    called: bool,
    /// Shutdown came before the client's first call: it is read until
    /// then, for its first call only.
    first_call_by: Option<Instant>,
    /// Since when a record has been part-received (not counting whole
    /// records the in-flight limit holds back: that wait is the proxy's).
    partial_since: Option<Instant>,
}

impl Stream {
    pub(super) fn new(
        sock: Sock,
        peer: Peer,
        id: u64,
        tally: Arc<Tally>,
        admitted: Admitted,
        tracked: TaskTrackerToken,
        now: Instant,
    ) -> Stream {
        Stream {
            sock,
            peer,
            outbound: None,
            id,
            tally,
            admitted,
            _tracked: tracked,
            codec: RecordCodec::new(MAX_CLIENT_RECORD),
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            pending: VecDeque::new(),
            first_seq: 0,
            // Try a read at once: a client usually writes its call right
            // after connecting, and it may be there already.
            readable: true,
            eof: false,
            watching_writable: false,
            last_activity: now,
            called: false,
            first_call_by: None,
            partial_since: None,
        }
    }

    /// Shutdown: no more reads (the calls in flight are answered, then the
    /// client is closed), except for a client that has not sent its first
    /// call yet, which has [`FIRST_CALL_GRACE`] to send it.
    pub(super) fn stop(&mut self, now: Instant) {
        if self.called || !self.inbuf.is_empty() {
            self.eof = true;
        } else {
            self.first_call_by = Some(now + FIRST_CALL_GRACE);
        }
    }

    /// Waiting, at shutdown, for the first call of a client that has sent
    /// none: closing it then is not an idle timeout.
    pub(super) fn waiting_first_call(&self) -> bool {
        self.first_call_by.is_some() && !self.eof
    }

    /// The answer to call `seq` came back from the runtime.
    pub(super) fn answered(&mut self, seq: u64, answer: Answer) {
        if let Some(at) = seq.checked_sub(self.first_seq) {
            if let Some(slot) = self.pending.get_mut(at as usize) {
                *slot = Some(answer);
            }
        }
    }

    /// When the client is to be closed for taking too long (None: it waits
    /// for rpcbind, which the upstream timeout bounds), and whether that is
    /// the record timeout.
    pub(super) fn deadline(&self, limits: &Limits) -> Option<(Instant, bool)> {
        if let Some(t) = self.first_call_by {
            return Some((t, false));
        }
        if let Some(t) = self.partial_since {
            return Some((t + limits.record_timeout(), true));
        }
        if !self.pending.is_empty() {
            return None;
        }
        // Idle, or not reading its replies (`out` waits).
        Some((self.last_activity + limits.idle_timeout(), false))
    }

    /// Replies wait for the socket to take them.
    pub(super) fn blocked_on_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether the client's turn ended with reads left to do (it goes on the
    /// loop's ready list).
    pub(super) fn wants_more(&self, limits: &Limits) -> bool {
        self.readable
            && !self.eof
            && self.out.is_empty()
            && self.pending.len() < limits.max_in_flight()
    }

    /// Does everything that can be done now: replies ready in order go out,
    /// records read go to the cache or the runtime, and the socket is read
    /// while it has bytes, the in-flight limit allows, and the client reads
    /// its replies. Ok: keep the client; Err: close it.
    pub(super) fn run(&mut self, t: &Turn<'_>, b: &mut Buffers) -> Result<(), Closed> {
        let limits = &t.proxy.limits;
        let max = limits.max_in_flight();
        b.wbuf.clear();
        let mut reads = 0;
        loop {
            self.take_answers(&mut b.wbuf, t.now)?;
            // Records read earlier that the limit held back.
            if !self.inbuf.is_empty() && self.pending.len() < max {
                self.take_buffered(&mut b.wbuf, t, max)?;
            }
            self.flush(&mut b.wbuf, t.now)?;
            if !self.out.is_empty() {
                // Wait for the client to read (a writable event).
                break;
            }
            if self.called && self.first_call_by.is_some() {
                // Shutdown: its first call is in; nothing more is read.
                self.eof = true;
            }
            if self.eof {
                if self.pending.is_empty() {
                    return Err(Closed::Done);
                }
                break;
            }
            if !self.readable || self.pending.len() >= max || reads == READS_PER_TURN {
                break;
            }
            reads += 1;
            let n = match self.sock.read(&mut b.rbuf) {
                Ok(0) => {
                    self.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Closed::Error),
            };
            // A short read emptied the socket: the next bytes bring an
            // event, so no read to see EAGAIN (and no wake-up for it).
            if n < b.rbuf.len() {
                self.readable = false;
            }
            self.last_activity = t.now;
            self.admitted.touch(tokio::time::Instant::from_std(t.now));
            if self.inbuf.is_empty() {
                // The common case: whole one-fragment records, taken where
                // they were read, without a copy.
                let mut at = 0;
                while self.pending.len() < max {
                    let Some(len) = self.codec.whole(&b.rbuf[at..n]) else {
                        break;
                    };
                    let record = &b.rbuf[at + 4..at + 4 + len];
                    at += 4 + len;
                    self.take_record(record, &mut b.wbuf, t);
                }
                if at < n {
                    // The rest (a partial record, fragments, records the
                    // limit holds back) goes through the decoder; only what
                    // it leaves is kept, in the client's own buffer.
                    b.work.clear();
                    b.work.extend_from_slice(&b.rbuf[at..n]);
                    let taken = self.take_records(&mut b.work, &mut b.wbuf, t, max);
                    if !b.work.is_empty() {
                        self.inbuf = BytesMut::from(&b.work[..]);
                    }
                    taken?;
                }
            } else {
                self.inbuf.extend_from_slice(&b.rbuf[..n]);
                self.take_buffered(&mut b.wbuf, t, max)?;
            }
            if self.pending.len() >= max {
                limits
                    .in_flight_reached
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.admitted.set_busy(!self.pending.is_empty());
        // A part-received record must be finished in time; whole records
        // held back by the limit, or the rest of a record left unread while
        // the client does not read its replies, are not the client's delay
        // in sending.
        let mid_record = self.out.is_empty()
            && self.pending.len() < max
            && self.codec.is_mid_record(&self.inbuf);
        self.partial_since = mid_record.then(|| self.partial_since.unwrap_or(t.now));
        Ok(())
    }

    /// Moves the answers at the head of the queue, in order, into `wbuf`.
    fn take_answers(&mut self, wbuf: &mut BytesMut, now: Instant) -> Result<(), Closed> {
        let mut answered = false;
        while let Some(Some(_)) = self.pending.front() {
            let Some(Some(answer)) = self.pending.pop_front() else {
                unreachable!("the front was just seen answered");
            };
            self.first_seq += 1;
            answered = true;
            match answer {
                Answer::Outcome(outcome) => {
                    if !append_reply(wbuf, outcome) {
                        return Err(Closed::Error);
                    }
                }
                Answer::Written(rest) => wbuf.extend_from_slice(&rest),
            }
        }
        if answered {
            // Idle from now on, as far as the connection limit's choice of
            // whom to evict goes.
            self.last_activity = now;
            self.admitted.touch(tokio::time::Instant::from_std(now));
        }
        Ok(())
    }

    /// Takes whole records from the client's own buffer (see
    /// [`Stream::take_records`]).
    fn take_buffered(
        &mut self,
        wbuf: &mut BytesMut,
        t: &Turn<'_>,
        max: usize,
    ) -> Result<(), Closed> {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        let taken = self.take_records(&mut inbuf, wbuf, t, max);
        self.inbuf = inbuf;
        taken
    }

    /// Takes whole records from `src` while fewer than `max` calls are in
    /// flight.
    fn take_records(
        &mut self,
        src: &mut BytesMut,
        wbuf: &mut BytesMut,
        t: &Turn<'_>,
        max: usize,
    ) -> Result<(), Closed> {
        while self.pending.len() < max {
            let record = match self.codec.decode(src) {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(peer = ?self.peer, error = %e, "bad framing; closing");
                    return Err(Closed::Error);
                }
            };
            if self.outbound.is_none() && !t.proxy.admits_call(&self.peer) {
                tracing::debug!(peer = ?self.peer, "over its host's rate; closing");
                return Err(Closed::Error);
            }
            self.take_record(&record, wbuf, t);
        }
        Ok(())
    }

    /// One call: with nothing in flight a cached hit is answered into `wbuf`
    /// at once; anything else queues behind, as a task on the runtime (so
    /// that replies go out in order).
    fn take_record(&mut self, record: &[u8], wbuf: &mut BytesMut, t: &Turn<'_>) {
        self.called = true;
        self.tally.count(t.second);
        if self.pending.is_empty() && self.outbound.is_none() {
            if let Some(outcome) = t.proxy.answer_now(record, self.peer) {
                append_reply(wbuf, outcome);
                return;
            }
        }
        // With nothing before it to write (no call in flight, no reply
        // waiting or being gathered), nothing will be written to this
        // client until this call is answered: the task may then write the
        // reply itself, sparing the client a hand-over back to the loop.
        let direct = (self.pending.is_empty() && self.out.is_empty() && wbuf.is_empty())
            .then(|| self.sock.share());
        let seq = self.first_seq + self.pending.len() as u64;
        self.pending.push_back(None);
        let (proxy, inbox, peer) = (t.proxy.clone(), t.inbox.clone(), self.peer);
        let (slot, id, outbound) = (t.slot, self.id, self.outbound);
        let record = BytesMut::from(record);
        t.proxy.tasks.spawn_on(
            async move {
                let outcome = match outbound {
                    // A server that gives no answer: the client is reset,
                    // as a connection to an unreachable server would be.
                    Some(to) => proxy
                        .outbound
                        .forward(&record, to)
                        .await
                        .map_or(Outcome::Close, Outcome::Reply),
                    None => proxy.handle(record, peer).await,
                };
                let answer = match (direct, outcome) {
                    (Some(sock), o @ (Outcome::Reply(_) | Outcome::Shared(..))) => {
                        let mut reply = BytesMut::new();
                        append_reply(&mut reply, o);
                        // On an error the loop's own write meets it and closes.
                        let n = write_some(&sock, &reply).unwrap_or(0);
                        let _ = reply.split_to(n);
                        Answer::Written(reply)
                    }
                    (_, o) => Answer::Outcome(o),
                };
                inbox.answer(slot, id, seq, answer);
            },
            t.runtime,
        );
    }

    /// Writes what waits in `out`, then `wbuf`; what the socket does not
    /// take stays in `out`.
    fn flush(&mut self, wbuf: &mut BytesMut, now: Instant) -> Result<(), Closed> {
        if !self.out.is_empty() {
            self.out.extend_from_slice(wbuf);
            wbuf.clear();
            let n = write_some(&self.sock, &self.out)?;
            let _ = self.out.split_to(n);
            if self.out.is_empty() {
                // Give the memory back: an idle client holds no buffer.
                self.out = BytesMut::new();
            }
        } else if !wbuf.is_empty() {
            let n = write_some(&self.sock, wbuf)?;
            if n < wbuf.len() {
                self.out = BytesMut::from(&wbuf[n..]);
            }
            wbuf.clear();
        } else {
            return Ok(());
        }
        self.last_activity = now;
        Ok(())
    }
}

/// Writes as much of `buf` as the socket takes now.
fn write_some(sock: &Sock, buf: &[u8]) -> Result<usize, Closed> {
    let mut done = 0;
    while done < buf.len() {
        match sock.write(&buf[done..]) {
            Ok(0) => return Err(Closed::Error),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Closed::Error),
        }
    }
    Ok(done)
}

/// Appends an outcome's reply, record-marked, to `out`; false to close.
fn append_reply(out: &mut BytesMut, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Reply(reply) => put_record(out, &reply),
        Outcome::Shared(reply, xid) => {
            let at = out.len() + 4;
            put_record(out, &reply);
            set_xid(&mut out[at..], xid);
        }
        Outcome::NoReply => {}
        Outcome::Close => return false,
    }
    true
}
