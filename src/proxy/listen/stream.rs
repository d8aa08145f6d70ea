//! Stream clients (unix and TCP): one task per connection reads records,
//! answers them in order (calls may be pipelined, at most max-in-flight at
//! a time), counts them on the client's row, and closes so that no
//! TIME_WAIT is left behind.

use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tracing::debug;

use crate::protocol::rpc::{put_record, set_xid, RecordCodec, RecordError, MAX_CLIENT_RECORD};
use crate::proxy::attribution::{Identity, Transport};
use crate::proxy::clients::Tally;
use crate::proxy::limits::Admitted;
use crate::proxy::policy::Peer;
use crate::proxy::service::{Outcome, Proxy};

use super::READ_CHUNK;

/// Makes every close of a TCP client socket an RST instead of a FIN
/// (SO_LINGER {on, 0}). The side that sends the first FIN keeps a TIME_WAIT
/// socket for 60 s; after an RST neither side keeps one.
///
/// Set as soon as the connection is accepted, so that it holds on every
/// path: the client's EOF with every reply written (the client has read
/// them), and every close the proxy starts itself: bad framing, an
/// undecodable header, the idle and record timeouts, a write or read error,
/// the shutdown drain, a task dropped when the drain runs out of time, the
/// process exiting. The price: whatever the kernel has not sent yet is
/// discarded. A written reply that reached the client's receive queue stays
/// readable after the RST (on loopback that is at once); only a client that
/// stopped reading until its receive window closed can lose the tail.
fn reset_on_close(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        debug!(error = %e, "cannot set SO_LINGER");
    }
}

/// Closes a TCP client with an RST (see [`reset_on_close`]): for a
/// connection refused at the connection limit.
pub(super) fn close_without_time_wait(stream: TcpStream) {
    reset_on_close(&stream);
    drop(stream);
}

pub(super) async fn serve_tcp(
    stream: TcpStream,
    peer: Peer,
    admitted: Admitted,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
) {
    reset_on_close(&stream);
    // Who it is, asked now, while the client's socket surely exists.
    let id = match (peer, stream.local_addr()) {
        (Peer::Tcp(client), Ok(local)) => {
            proxy.attribution.tcp(client, local, proxy.rpcbind_port())
        }
        _ => Identity::unknown(Transport::Tcp),
    };
    let tally = proxy.clients.tally(&id);
    serve_stream(stream, peer, tally, admitted, proxy, shutdown).await;
}

pub(super) async fn serve_unix(
    stream: tokio::net::UnixStream,
    peer: Peer,
    admitted: Admitted,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
) {
    let id = match peer {
        Peer::Unix { uid, pid, .. } => proxy.attribution.unix(pid, uid),
        _ => Identity::unknown(Transport::Unix),
    };
    let tally = proxy.clients.tally(&id);
    serve_stream(stream, peer, tally, admitted, proxy, shutdown).await;
}

type Pending = Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// Reads records, answers them in order, and closes (how a close goes out
/// is the stream's own: see [`reset_on_close`] for TCP). On shutdown it
/// stops reading, answers what is in flight, and closes.
///
/// The read side is a plain loop over the record codec rather than a
/// `FramedRead`, so that the task sees partial records arrive: a client that
/// starts a record must finish it within the record timeout, and one that
/// sends nothing (with nothing in flight) is closed after the idle timeout.
async fn serve_stream<S>(
    stream: S,
    peer: Peer,
    tally: Arc<Tally>,
    admitted: Admitted,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _connected = proxy.clients.connected();
    let limits = &proxy.limits;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut codec = RecordCodec::new(MAX_CLIENT_RECORD);
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut replies: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut out = BytesMut::new();
    let mut eof = false;
    let mut last_activity = Instant::now();
    let mut partial_since: Option<Instant> = None;
    // Whole records are buffered that the in-flight limit holds back.
    let mut held = false;
    // One timer and one shutdown future for the connection's life, not one
    // per loop round: the timer is moved only when it fires early or a
    // partial record needs an earlier deadline.
    let client = Client {
        proxy: &proxy,
        peer,
        tally: &tally,
    };
    let timer = tokio::time::sleep(limits.idle_timeout());
    tokio::pin!(timer);
    let stop = shutdown.changed();
    tokio::pin!(stop);
    // Told when the connection is evicted at the connection limit.
    let evicted = admitted.evicted();
    tokio::pin!(evicted);
    loop {
        let max_in_flight = limits.max_in_flight();
        tokio::select! {
            read = rd.read_buf(&mut inbuf), if !eof && !held && replies.len() < max_in_flight => {
                match read {
                    Ok(0) => eof = true,
                    Ok(_) => {
                        let now = Instant::now();
                        last_activity = now;
                        admitted.touch(now);
                        held = match take_records(&mut codec, &mut inbuf, &mut replies, &mut out, &client, max_in_flight) {
                            Ok(held) => held,
                            Err(e) => {
                                debug!(?peer, error = %e, "bad framing; closing");
                                return;
                            }
                        };
                        if !out.is_empty() {
                            if wr.write_all(&out).await.is_err() {
                                break;
                            }
                            out.clear();
                        }
                        if replies.len() >= max_in_flight {
                            limits.in_flight_reached.fetch_add(1, Ordering::Relaxed);
                        }
                        admitted.set_busy(!replies.is_empty());
                        // Whole records held back by the in-flight limit
                        // are the proxy's wait, not the client's.
                        partial_since = match (!held && codec.is_mid_record(&inbuf), partial_since) {
                            (false, _) => None,
                            (true, Some(t)) => Some(t),
                            (true, None) => {
                                let due = now + limits.record_timeout();
                                if due < timer.deadline() {
                                    timer.as_mut().reset(due);
                                }
                                Some(now)
                            }
                        };
                        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                            inbuf.reserve(READ_CHUNK);
                        }
                    }
                    Err(_) => break,
                }
            },
            _ = &mut stop, if !eof => eof = true,
            () = &mut evicted, if !eof || !replies.is_empty() => {
                debug!(?peer, "evicted at the connection limit; closing");
                break;
            },
            Some(outcome) = replies.next(), if !replies.is_empty() => {
                last_activity = Instant::now();
                admitted.touch(last_activity);
                if !append_reply(&mut out, outcome) {
                    break;
                }
                // A place came free: the next record the limit held back
                // goes now (max-in-flight holds exactly, however many
                // records one read brought).
                if held {
                    held = match take_records(&mut codec, &mut inbuf, &mut replies, &mut out, &client, max_in_flight) {
                        Ok(held) => held,
                        Err(e) => {
                            debug!(?peer, error = %e, "bad framing; closing");
                            break;
                        }
                    };
                    if !held && codec.is_mid_record(&inbuf) && partial_since.is_none() {
                        partial_since = Some(last_activity);
                        let due = last_activity + limits.record_timeout();
                        if due < timer.deadline() {
                            timer.as_mut().reset(due);
                        }
                    }
                }
                admitted.set_busy(!replies.is_empty());
                if !out.is_empty() {
                    if wr.write_all(&out).await.is_err() {
                        break;
                    }
                    out.clear();
                }
            },
            () = &mut timer, if !eof || !replies.is_empty() => {
                let now = Instant::now();
                let due = match partial_since {
                    Some(t) => t + limits.record_timeout(),
                    None if replies.is_empty() => last_activity + limits.idle_timeout(),
                    // Waiting for rpcbind is bounded by the upstream timeout.
                    None => now + limits.idle_timeout(),
                };
                if now < due {
                    timer.as_mut().reset(due);
                } else {
                    let counter = if partial_since.is_some() {
                        &limits.record_timeouts
                    } else {
                        &limits.idle_closed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    debug!(?peer, partial = partial_since.is_some(), "closing a client that took too long");
                    break;
                }
            },
            else => break,
        }
    }
    // Dropping `rd` and `wr` closes the stream.
}

/// A connection's client: where its calls go, who it is, and its row.
#[derive(Clone, Copy)]
struct Client<'a> {
    proxy: &'a Arc<Proxy>,
    peer: Peer,
    tally: &'a Tally,
}

/// Takes the buffered records while fewer than `max_in_flight` calls are in
/// flight: cache hits are answered into `out` right here, while nothing
/// earlier is still pending (replies go out in order), and written together;
/// the rest queue in `replies`. True when it stopped at the limit with bytes
/// still buffered (there may be whole records among them).
fn take_records(
    codec: &mut RecordCodec,
    inbuf: &mut BytesMut,
    replies: &mut FuturesOrdered<Pending>,
    out: &mut BytesMut,
    client: &Client<'_>,
    max_in_flight: usize,
) -> Result<bool, RecordError> {
    let Client { proxy, peer, tally } = *client;
    while replies.len() < max_in_flight {
        let Some(record) = codec.decode(inbuf)? else {
            return Ok(false);
        };
        tally.count(proxy.clients.now());
        let now = if replies.is_empty() {
            proxy.answer_now(&record, peer)
        } else {
            None
        };
        match now {
            Some(outcome) => {
                append_reply(out, outcome);
            }
            None => {
                let proxy = proxy.clone();
                replies.push_back(Box::pin(async move { proxy.handle(record, peer).await }));
            }
        }
    }
    Ok(!inbuf.is_empty())
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
