//! Listeners: unix and TCP streams (record marking) and UDP datagrams.
//!
//! Each accepted stream gets a task that reads records, answers them in
//! order (calls may be pipelined), and closes. A TCP client is always closed
//! with an RST, whoever ends the connection and why, so that no TIME_WAIT is
//! left behind on either side.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixListener};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tracing::{debug, warn};

use crate::host::sys::Inherited;
use crate::protocol::rpc::{put_record, set_xid, RecordCodec, RecordError, MAX_CLIENT_RECORD};
use crate::proxy::attribution::{Identity, Transport};
use crate::proxy::clients::Tally;
use crate::proxy::limits::{Admitted, Owner};
use crate::proxy::policy::Peer;
use crate::proxy::service::{Outcome, Proxy};

/// Bytes read from a stream client at a time.
const READ_CHUNK: usize = 4096;
/// The largest datagram the proxy reads (the UDP maximum).
const MAX_DATAGRAM: usize = 65535;
/// Calls one UDP listener may have past the cache (waiting for rpcbind or a
/// fetch) at once; beyond it datagrams are dropped and counted
/// (`limits.udp_in_flight.dropped`), as a full socket buffer would drop them. A UDP
/// client retries; a flood of misses cannot pile up tasks and memory.
pub const UDP_MAX_IN_FLIGHT: usize = 256;

/// A listener specification: `unix:PATH`, `tcp:HOST:PORT` or `udp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ListenSpec {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad listen spec {spec:?}: {why} (expected unix:PATH, unix:@NAME, tcp:HOST:PORT or udp:HOST:PORT)")]
pub struct SpecError {
    pub spec: String,
    pub why: &'static str,
}

impl FromStr for ListenSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err = |why| SpecError {
            spec: s.to_string(),
            why,
        };
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| err("no transport prefix"))?;
        let addr = || -> Result<SocketAddr, SpecError> {
            rest.parse::<SocketAddr>()
                .map_err(|_| err("not an IP address and port (write IPv6 as [::1]:1111)"))
        };
        match kind {
            "unix" if rest.starts_with('/') => Ok(ListenSpec::Unix(PathBuf::from(rest))),
            // An abstract socket name (libtirpc >= 1.3.4 tries
            // @/run/rpcbind.sock before the path).
            "unix" if rest.len() > 1 && rest.len() <= 107 && rest.starts_with('@') => {
                Ok(ListenSpec::Unix(PathBuf::from(rest)))
            }
            "unix" => Err(err(
                "the unix socket path must be absolute (or @NAME, an abstract name of at most 106 bytes)",
            )),
            "tcp" => Ok(ListenSpec::Tcp(addr()?)),
            "udp" => Ok(ListenSpec::Udp(addr()?)),
            _ => Err(err("unknown transport")),
        }
    }
}

impl TryFrom<String> for ListenSpec {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenSpec::Tcp(a) => write!(f, "tcp:{a}"),
            ListenSpec::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

impl ListenSpec {
    /// A TCP or UDP listener on [::1].
    pub fn is_ipv6_loopback(&self) -> bool {
        matches!(self, ListenSpec::Tcp(a) | ListenSpec::Udp(a) if a.ip() == std::net::Ipv6Addr::LOCALHOST)
    }
}

/// Whether binding failed because the address does not exist on this host
/// (no IPv6 loopback: EADDRNOTAVAIL; IPv6 off: EAFNOSUPPORT).
pub fn no_such_address(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
    )
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub enum Bound {
    /// With the file to remove on exit, unless systemd owns it.
    Unix(UnixListener, Option<UnixSocketFile>),
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Removes the socket file the daemon created when dropped (clean exit).
#[derive(Debug)]
pub struct UnixSocketFile(PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds one listener. Errors name the spec and the reason.
pub async fn bind(spec: &ListenSpec) -> io::Result<Bound> {
    match spec {
        ListenSpec::Unix(path) => match abstract_name(path) {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
                l.set_nonblocking(true)?;
                // No file: nothing to remove at exit.
                Ok(Bound::Unix(UnixListener::from_std(l)?, None))
            }
            None => bind_unix(path).await,
        },
        ListenSpec::Tcp(addr) => Ok(Bound::Tcp(TcpListener::bind(addr).await?)),
        ListenSpec::Udp(addr) => Ok(Bound::Udp(UdpSocket::bind(addr).await?)),
    }
}

/// The abstract name of a `unix:@NAME` spec (NAME without the `@`).
fn abstract_name(path: &Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().strip_prefix(b"@")
}

/// Binds a unix stream socket at `path`: creates the directory, replaces a
/// stale socket file (refusing a live one), mode 0666; the file is removed
/// when the returned guard drops.
pub async fn bind_unix_socket(path: &Path) -> io::Result<(UnixListener, UnixSocketFile)> {
    match bind_unix(path).await? {
        Bound::Unix(l, Some(g)) => Ok((l, g)),
        _ => unreachable!("bind_unix binds unix sockets and keeps their files"),
    }
}

async fn bind_unix(path: &Path) -> io::Result<Bound> {
    if let Some(dir) = path.parent() {
        ensure_socket_dir(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        // A socket file nobody answers on is stale (a crash); one that
        // answers belongs to a running instance.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let guard = UnixSocketFile(path.to_owned());
    // 0666 like rpcbind's own socket: any local user may look things up.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(Bound::Unix(listener, Some(guard)))
}

/// A missing directory for a socket is created only under /run (the
/// runtime directory, e.g. /run/rpcbind-proxy, empty after every boot);
/// anywhere else it is most likely a typo, refused rather than created.
fn ensure_socket_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.starts_with("/run") && dir != Path::new("/run") {
        return std::fs::create_dir_all(dir);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "directory {} does not exist (only directories under /run are created)",
            dir.display()
        ),
    ))
}

/// A listener systemd passed (socket activation), ready to serve, with the
/// spec it amounts to. Its socket file, if any, is systemd's to remove.
pub fn adopt(socket: Inherited) -> io::Result<(ListenSpec, Bound)> {
    Ok(match socket {
        Inherited::Unix(l) => {
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            let path = match addr.as_pathname() {
                Some(p) => p.to_path_buf(),
                None => {
                    use std::os::linux::net::SocketAddrExt;
                    use std::os::unix::ffi::OsStrExt;
                    match addr.as_abstract_name() {
                        Some(name) => {
                            let mut p = b"@".to_vec();
                            p.extend_from_slice(name);
                            PathBuf::from(std::ffi::OsStr::from_bytes(&p))
                        }
                        None => PathBuf::from("(unnamed)"),
                    }
                }
            };
            (
                ListenSpec::Unix(path),
                Bound::Unix(UnixListener::from_std(l)?, None),
            )
        }
        Inherited::Tcp(l) => {
            l.set_nonblocking(true)?;
            (
                ListenSpec::Tcp(l.local_addr()?),
                Bound::Tcp(TcpListener::from_std(l)?),
            )
        }
        Inherited::Udp(s) => {
            s.set_nonblocking(true)?;
            (
                ListenSpec::Udp(s.local_addr()?),
                Bound::Udp(UdpSocket::from_std(s)?),
            )
        }
    })
}

/// Serves a bound listener until `shutdown` turns true.
pub async fn serve(bound: Bound, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    match bound {
        Bound::Unix(listener, _guard) => loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let peer = match stream.peer_cred() {
                            Ok(c) => Peer::Unix { uid: c.uid(), gid: c.gid(), pid: c.pid() },
                            Err(e) => { warn!(error = %e, "no peer credentials; dropping client"); continue; }
                        };
                        let Some(admitted) = proxy.limits.admit(Owner::of(&peer)) else {
                            continue;
                        };
                        proxy.tasks.spawn(serve_unix(stream, peer, admitted, proxy.clone(), shutdown.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                _ = shutdown.changed() => return,
            }
        },
        Bound::Tcp(listener) => loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, addr)) => {
                        let owner = match stream.local_addr() {
                            Ok(server) => Owner::tcp(addr, server),
                            Err(_) => Owner::OtherIp,
                        };
                        let Some(admitted) = proxy.limits.admit(owner) else {
                            close_without_time_wait(stream);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        proxy.tasks.spawn(serve_tcp(stream, Peer::Tcp(addr), admitted, proxy.clone(), shutdown.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                _ = shutdown.changed() => return,
            }
        },
        Bound::Udp(socket) => serve_udp(Arc::new(socket), proxy, shutdown).await,
    }
}

/// Accept fails mostly for lack of descriptors; back off briefly rather than
/// spin.
async fn accept_failed(e: io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

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
fn close_without_time_wait(stream: TcpStream) {
    reset_on_close(&stream);
    drop(stream);
}

async fn serve_tcp(
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

async fn serve_unix(
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

/// Who sent a datagram: identified once per source address and kept for a
/// few seconds (a UDP client has no connection to hang its identity on; a
/// source port is reused by the next socket only after this one closed).
struct UdpSources {
    local: Option<SocketAddr>,
    seen: lru::LruCache<SocketAddr, (Instant, Arc<Tally>)>,
}

impl UdpSources {
    /// Sources remembered at once.
    const CAPACITY: usize = 4096;
    /// How long an identification holds.
    const FRESH: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(socket: &UdpSocket) -> UdpSources {
        UdpSources {
            local: socket.local_addr().ok(),
            seen: lru::LruCache::new(
                std::num::NonZeroUsize::new(Self::CAPACITY).expect("non-zero"),
            ),
        }
    }

    fn tally(&mut self, from: SocketAddr, proxy: &Proxy) -> Arc<Tally> {
        let now = Instant::now();
        if let Some((at, t)) = self.seen.get(&from) {
            if now.duration_since(*at) < Self::FRESH {
                return t.clone();
            }
        }
        let id = match self.local {
            Some(local) => proxy.attribution.udp(from, local, proxy.rpcbind_port()),
            None => Identity::unknown(Transport::Udp),
        };
        let t = proxy.clients.tally(&id);
        self.seen.put(from, (now, t.clone()));
        t
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = BytesMut::with_capacity(MAX_DATAGRAM);
    let mut sources = UdpSources::new(&socket);
    // Calls that went past the cache, answered by this task itself (no task
    // per datagram), at most UDP_MAX_IN_FLIGHT at a time.
    let mut pending: FuturesUnordered<UdpPending> = FuturesUnordered::new();
    loop {
        // In this order: answers that are done leave `pending` before a
        // datagram is turned away for its being full.
        let (n, from) = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                // The drain waits for these as for any client's task.
                if !pending.is_empty() {
                    proxy.tasks.spawn(async move { while pending.next().await.is_some() {} });
                }
                return;
            }
            Some(()) = pending.next(), if !pending.is_empty() => continue,
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => { debug!(error = %e, "udp receive failed"); continue; }
            },
        };
        sources.tally(from, &proxy).count(proxy.clients.now());
        // Cache hits are answered inline: no task, no copy of the request.
        if let Some(Outcome::Shared(reply, xid)) = proxy.answer_now(&buf[..n], Peer::Udp(from)) {
            out.clear();
            out.extend_from_slice(&reply);
            set_xid(&mut out, xid);
            if let Err(e) = socket.send_to(&out, from).await {
                debug!(%from, error = %e, "udp send failed");
            }
            continue;
        }
        if pending.len() >= UDP_MAX_IN_FLIGHT {
            // As a full socket buffer would: the client retries.
            proxy.limits.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let record = BytesMut::from(&buf[..n]);
        pending.push(Box::pin(answer_datagram(
            socket.clone(),
            proxy.clone(),
            record,
            from,
        )));
    }
}

type UdpPending = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Answers one datagram that missed the cache.
async fn answer_datagram(
    socket: Arc<UdpSocket>,
    proxy: Arc<Proxy>,
    record: BytesMut,
    from: SocketAddr,
) {
    let sent = match proxy.handle(record, Peer::Udp(from)).await {
        Outcome::Reply(reply) => socket.send_to(&reply, from).await,
        Outcome::Shared(reply, xid) => {
            let mut dg = BytesMut::from(&reply[..]);
            set_xid(&mut dg, xid);
            socket.send_to(&dg, from).await
        }
        Outcome::NoReply | Outcome::Close => return,
    };
    if let Err(e) = sent {
        debug!(%from, error = %e, "udp send failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_bad_ones() {
        assert_eq!(
            "unix:/run/x.sock".parse(),
            Ok(ListenSpec::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            "unix:@/run/rpcbind.sock".parse(),
            Ok(ListenSpec::Unix("@/run/rpcbind.sock".into()))
        );
        assert!("unix:@".parse::<ListenSpec>().is_err());
        assert_eq!(
            "tcp:127.0.0.1:1111".parse(),
            Ok(ListenSpec::Tcp("127.0.0.1:1111".parse().unwrap()))
        );
        assert_eq!(
            "udp:[::1]:1111".parse(),
            Ok(ListenSpec::Udp("[::1]:1111".parse().unwrap()))
        );
        for bad in [
            "tcp:localhost",
            "sctp:1.2.3.4:5",
            "unix:rel.sock",
            "1111",
            "udp:1.2.3.4",
        ] {
            let e = bad.parse::<ListenSpec>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
