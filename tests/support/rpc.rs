//! A small ONC RPC client written independently of the crate's own XDR code,
//! so that the tests check the proxy against a second reading of RFC 5531
//! (RPC), RFC 1833 (rpcbind) and RFC 1057 (portmapper) instead of against
//! itself.
//!
//! It builds CALL messages byte by byte, sends them over a unix or TCP stream
//! (record marking) or as one UDP datagram, and reads the reply record
//! (reassembling fragments). Every receive is bounded by [`REPLY_TIMEOUT`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket, UnixStream};
use tokio::time::Instant;

/// How long a caller waits for a reply before reporting [`Outcome::NoReply`].
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest reply record the client accepts (a sanity bound, far above rpcbind's).
const MAX_RECORD: usize = 4 << 20;
/// Last-fragment bit of a record-marking header.
const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Appends `msg` to `wire` as one record (a single last fragment), for
/// tests that write records to a socket themselves.
pub fn put_record(wire: &mut Vec<u8>, msg: &[u8]) {
    let len = u32::try_from(msg.len()).expect("a test record fits a record mark");
    wire.extend_from_slice(&(LAST_FRAGMENT | len).to_be_bytes());
    wire.extend_from_slice(msg);
}

pub const RPC_VERSION: u32 = 2;
pub const MSG_CALL: u32 = 0;
pub const MSG_REPLY: u32 = 1;

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;

/// Program number of portmapper / rpcbind.
pub const PMAP_PROG: u32 = 100_000;

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// Portmapper version 2 procedures (RFC 1057).
pub const PMAPPROC_NULL: u32 = 0;
pub const PMAPPROC_SET: u32 = 1;
pub const PMAPPROC_UNSET: u32 = 2;
pub const PMAPPROC_GETPORT: u32 = 3;
pub const PMAPPROC_DUMP: u32 = 4;
pub const PMAPPROC_CALLIT: u32 = 5;

/// rpcbind version 3 and 4 procedures (RFC 1833).
pub const RPCBPROC_NULL: u32 = 0;
pub const RPCBPROC_SET: u32 = 1;
pub const RPCBPROC_UNSET: u32 = 2;
pub const RPCBPROC_GETADDR: u32 = 3;
pub const RPCBPROC_DUMP: u32 = 4;
/// CALLIT in version 3, BCAST in version 4.
pub const RPCBPROC_CALLIT: u32 = 5;
pub const RPCBPROC_BCAST: u32 = 5;
pub const RPCBPROC_GETTIME: u32 = 6;
pub const RPCBPROC_UADDR2TADDR: u32 = 7;
pub const RPCBPROC_TADDR2UADDR: u32 = 8;
pub const RPCBPROC_GETVERSADDR: u32 = 9;
pub const RPCBPROC_INDIRECT: u32 = 10;
pub const RPCBPROC_GETADDRLIST: u32 = 11;
pub const RPCBPROC_GETSTAT: u32 = 12;

// ---------------------------------------------------------------------------
// XDR
// ---------------------------------------------------------------------------

/// Builds XDR-encoded bytes, one item at a time.
#[derive(Debug, Default, Clone)]
pub struct Xdr(Vec<u8>);

impl Xdr {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(self, v: bool) -> Self {
        self.u32(u32::from(v))
    }

    /// Variable-length opaque: length, bytes, zero padding to 4.
    pub fn opaque(self, bytes: &[u8]) -> Self {
        let len = u32::try_from(bytes.len()).expect("opaque too long");
        self.u32(len).fixed(bytes)
    }

    pub fn string(self, s: &str) -> Self {
        self.opaque(s.as_bytes())
    }

    /// Fixed-length opaque: bytes, zero padding to 4.
    pub fn fixed(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// Bytes exactly as given, no padding.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads XDR items from a byte slice.
#[derive(Debug, Clone)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "XDR: need {n} bytes at offset {}, have {}",
                    self.pos,
                    self.buf.len() - self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bool(&mut self) -> Result<bool, String> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("XDR: bad bool {v}")),
        }
    }

    pub fn opaque(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        let b = self.take(len)?.to_vec();
        self.take(len.next_multiple_of(4) - len)?;
        Ok(b)
    }

    pub fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.opaque()?).map_err(|e| format!("XDR: string not UTF-8: {e}"))
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self) -> Result<(), String> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(format!("XDR: {} trailing bytes", self.buf.len() - self.pos))
        }
    }
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

/// An opaque_auth (credential or verifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Sys {
        stamp: u32,
        machine: String,
        uid: u32,
        gid: u32,
        gids: Vec<u32>,
    },
    /// Any flavor with any body, for malformed or unknown credentials.
    Raw {
        flavor: u32,
        body: Vec<u8>,
    },
}

impl Auth {
    /// A well-formed AUTH_SYS credential.
    pub fn sys(uid: u32, gid: u32) -> Self {
        Auth::Sys {
            stamp: 0x1234_5678,
            machine: "testhost".into(),
            uid,
            gid,
            gids: vec![gid],
        }
    }

    fn encode(&self, x: Xdr) -> Xdr {
        match self {
            Auth::None => x.u32(AUTH_NONE).opaque(&[]),
            Auth::Sys {
                stamp,
                machine,
                uid,
                gid,
                gids,
            } => {
                let mut body = Xdr::new()
                    .u32(*stamp)
                    .string(machine)
                    .u32(*uid)
                    .u32(*gid)
                    .u32(u32::try_from(gids.len()).unwrap());
                for g in gids {
                    body = body.u32(*g);
                }
                x.u32(AUTH_SYS).opaque(&body.into_bytes())
            }
            Auth::Raw { flavor, body } => x.u32(*flavor).opaque(body),
        }
    }
}

static XID: AtomicU32 = AtomicU32::new(0);

/// A fresh transaction id: unique within the test process, and different
/// between runs so that stale replies can never match.
pub fn next_xid() -> u32 {
    let seq = XID.fetch_add(1, Ordering::Relaxed);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    // Mix the seed only into the high bits so consecutive calls never collide.
    (seed & 0xfff0_0000) ^ seq
}

/// One RPC CALL message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub xid: u32,
    pub rpcvers: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: Auth,
    pub verf: Auth,
    /// Already XDR-encoded procedure arguments.
    pub args: Vec<u8>,
}

impl Call {
    pub fn new(prog: u32, vers: u32, proc_: u32, args: impl Into<Vec<u8>>) -> Self {
        Self {
            xid: next_xid(),
            rpcvers: RPC_VERSION,
            prog,
            vers,
            proc_,
            cred: Auth::None,
            verf: Auth::None,
            args: args.into(),
        }
    }

    /// A call to portmapper/rpcbind itself (program 100000).
    pub fn rpcb(vers: u32, proc_: u32, args: impl Into<Vec<u8>>) -> Self {
        Self::new(PMAP_PROG, vers, proc_, args)
    }

    pub fn with_cred(mut self, cred: Auth) -> Self {
        self.cred = cred;
        self
    }

    pub fn with_rpcvers(mut self, rpcvers: u32) -> Self {
        self.rpcvers = rpcvers;
        self
    }

    /// The same call with a new XID (for sending it again).
    pub fn fresh(&self) -> Self {
        Self {
            xid: next_xid(),
            ..self.clone()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let x = Xdr::new()
            .u32(self.xid)
            .u32(MSG_CALL)
            .u32(self.rpcvers)
            .u32(self.prog)
            .u32(self.vers)
            .u32(self.proc_);
        let x = self.cred.encode(x);
        self.verf.encode(x).raw(&self.args).into_bytes()
    }
}

/// PMAP v2 `mapping` {prog, vers, prot, port}.
pub fn pmap_args(prog: u32, vers: u32, prot: u32, port: u32) -> Vec<u8> {
    Xdr::new()
        .u32(prog)
        .u32(vers)
        .u32(prot)
        .u32(port)
        .into_bytes()
}

/// rpcbind v3/v4 `rpcb` {prog, vers, netid, addr, owner}.
pub fn rpcb_args(prog: u32, vers: u32, netid: &str, addr: &str, owner: &str) -> Vec<u8> {
    Xdr::new()
        .u32(prog)
        .u32(vers)
        .string(netid)
        .string(addr)
        .string(owner)
        .into_bytes()
}

/// CALLIT / BCAST / INDIRECT arguments {prog, vers, proc, args}.
pub fn callit_args(prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    Xdr::new()
        .u32(prog)
        .u32(vers)
        .u32(proc_)
        .opaque(args)
        .into_bytes()
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// What came back for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reply with the call's XID: the bytes after the 4-byte XID.
    Reply(Vec<u8>),
    /// Nothing within [`REPLY_TIMEOUT`].
    NoReply,
    /// The peer closed (or reset) the connection before a reply came.
    Closed,
    /// The call could not be made (connect failed, ICMP unreachable, ...).
    Error(String),
}

/// A parsed reply message (after the XID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// MSG_ACCEPTED, SUCCESS: the procedure's results.
    Success(Vec<u8>),
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
    /// MSG_DENIED, RPC_MISMATCH.
    RpcMismatch {
        low: u32,
        high: u32,
    },
    /// MSG_DENIED, AUTH_ERROR with its auth_stat.
    AuthError(u32),
}

/// Parses the bytes after the XID of a reply record.
pub fn parse_reply(after_xid: &[u8]) -> Result<Reply, String> {
    let mut r = XdrReader::new(after_xid);
    let mtype = r.u32()?;
    if mtype != MSG_REPLY {
        return Err(format!("msg_type {mtype}, not REPLY"));
    }
    match r.u32()? {
        0 => {
            let _verf_flavor = r.u32()?;
            let _verf_body = r.opaque()?;
            let reply = match r.u32()? {
                0 => Reply::Success(r.rest().to_vec()),
                1 => Reply::ProgUnavail,
                2 => Reply::ProgMismatch {
                    low: r.u32()?,
                    high: r.u32()?,
                },
                3 => Reply::ProcUnavail,
                4 => Reply::GarbageArgs,
                5 => Reply::SystemErr,
                s => return Err(format!("accept_stat {s}")),
            };
            if !matches!(reply, Reply::Success(_)) {
                r.finish()?;
            }
            Ok(reply)
        }
        1 => {
            let reply = match r.u32()? {
                0 => Reply::RpcMismatch {
                    low: r.u32()?,
                    high: r.u32()?,
                },
                1 => Reply::AuthError(r.u32()?),
                s => return Err(format!("reject_stat {s}")),
            };
            r.finish()?;
            Ok(reply)
        }
        s => Err(format!("reply_stat {s}")),
    }
}

impl Outcome {
    pub fn reply(&self) -> Option<Result<Reply, String>> {
        match self {
            Outcome::Reply(b) => Some(parse_reply(b)),
            _ => None,
        }
    }

    /// The results of an accepted SUCCESS reply.
    pub fn results(&self) -> Option<Vec<u8>> {
        match self.reply() {
            Some(Ok(Reply::Success(r))) => Some(r),
            _ => None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.results().is_some()
    }

    /// The results of a SUCCESS reply, or a panic naming what came instead.
    pub fn expect_results(&self, what: &str) -> Vec<u8> {
        self.results()
            .unwrap_or_else(|| panic!("{what}: expected a SUCCESS reply, got {self}"))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::NoReply => write!(f, "no reply"),
            Outcome::Closed => write!(f, "connection closed"),
            Outcome::Error(e) => write!(f, "error: {e}"),
            Outcome::Reply(b) => match parse_reply(b) {
                Ok(Reply::Success(res)) => {
                    write!(f, "SUCCESS ({} bytes) {}", res.len(), hex_short(&res))
                }
                Ok(other) => write!(f, "{other:?}"),
                Err(e) => write!(f, "unparsable reply ({e}) {}", hex_short(b)),
            },
        }
    }
}

/// Hex in 4-byte words.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2 + bytes.len() / 4);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Hex of at most the first 64 bytes.
pub fn hex_short(bytes: &[u8]) -> String {
    if bytes.len() <= 64 {
        hex(bytes)
    } else {
        format!("{} ...(+{} bytes)", hex(&bytes[..64]), bytes.len() - 64)
    }
}

/// One entry of an rpcbind v3/v4 DUMP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RpcbEntry {
    pub prog: u32,
    pub vers: u32,
    pub netid: String,
    pub addr: String,
    pub owner: String,
}

/// Decodes the results of a v3/v4 DUMP (an XDR optional-data list of `rpcb`).
pub fn decode_rpcb_list(results: &[u8]) -> Result<Vec<RpcbEntry>, String> {
    let mut r = XdrReader::new(results);
    let mut out = Vec::new();
    while r.bool()? {
        out.push(RpcbEntry {
            prog: r.u32()?,
            vers: r.u32()?,
            netid: r.string()?,
            addr: r.string()?,
            owner: r.string()?,
        });
    }
    r.finish()?;
    Ok(out)
}

/// One entry of a PMAP v2 DUMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PmapEntry {
    pub prog: u32,
    pub vers: u32,
    pub prot: u32,
    pub port: u32,
}

/// Decodes the results of a v2 DUMP.
pub fn decode_pmap_list(results: &[u8]) -> Result<Vec<PmapEntry>, String> {
    let mut r = XdrReader::new(results);
    let mut out = Vec::new();
    while r.bool()? {
        out.push(PmapEntry {
            prog: r.u32()?,
            vers: r.u32()?,
            prot: r.u32()?,
            port: r.u32()?,
        });
    }
    r.finish()?;
    Ok(out)
}

/// Decodes a single XDR bool result (SET / UNSET).
pub fn decode_bool(results: &[u8]) -> Result<bool, String> {
    let mut r = XdrReader::new(results);
    let b = r.bool()?;
    r.finish()?;
    Ok(b)
}

/// Decodes a single u32 result (GETPORT, GETTIME).
pub fn decode_u32(results: &[u8]) -> Result<u32, String> {
    let mut r = XdrReader::new(results);
    let v = r.u32()?;
    r.finish()?;
    Ok(v)
}

/// Decodes a single string result (GETADDR, GETVERSADDR, TADDR2UADDR).
pub fn decode_string(results: &[u8]) -> Result<String, String> {
    let mut r = XdrReader::new(results);
    let s = r.string()?;
    r.finish()?;
    Ok(s)
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

/// Where to send a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

impl Endpoint {
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            Endpoint::Unix(p) => Some(p),
            _ => None,
        }
    }
}

/// A byte stream the client can run record marking over.
pub trait StreamIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> StreamIo for T {}

/// An open client connection: a record-marked stream or a connected UDP socket.
pub enum Conn {
    Stream(Box<dyn StreamIo>),
    Dgram(UdpSocket),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conn::Stream(_) => f.write_str("Conn::Stream"),
            Conn::Dgram(s) => write!(f, "Conn::Dgram({:?})", s.local_addr()),
        }
    }
}

/// End of a stream read that produced no record.
enum StreamEnd {
    Closed,
    Error(String),
}

/// Whether an I/O error means the peer closed the connection: EOF, or a
/// reset or broken pipe when the read or write raced the peer's close.
pub fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Writes `bytes` to a stream the peer may close at any moment (the proxy
/// closing a client it has given up on). `Ok(true)`: written; `Ok(false)`:
/// the peer had closed the connection. A write racing the peer's close fails
/// with BrokenPipe (unix) or ConnectionReset/BrokenPipe (TCP): an expected
/// outcome, not a failure of the test; the caller then checks the close
/// itself (e.g. with [`time_to_close`]).
pub async fn write_unless_closed<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    bytes: &[u8],
) -> io::Result<bool> {
    match s.write_all(bytes).await {
        Ok(()) => Ok(true),
        Err(e) if is_closed(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads (and discards) until the peer closes the stream, by EOF or by a
/// reset; how long that took. Panics if it is still open after `limit`.
pub async fn time_to_close<S: AsyncRead + Unpin + ?Sized>(s: &mut S, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) if is_closed(&e) => return start.elapsed(),
            Ok(Err(e)) => panic!("reading until the peer closes: {e}"),
            Err(_) => panic!("the peer did not close the connection within {limit:?}"),
        }
    }
}

fn io_outcome(e: &io::Error) -> Outcome {
    if is_closed(e) {
        Outcome::Closed
    } else {
        Outcome::Error(e.to_string())
    }
}

async fn read_record(io: &mut (dyn StreamIo + '_)) -> Result<Vec<u8>, StreamEnd> {
    let mut record = Vec::new();
    loop {
        let mut hdr = [0u8; 4];
        if let Err(e) = io.read_exact(&mut hdr).await {
            return Err(if is_closed(&e) {
                StreamEnd::Closed
            } else {
                StreamEnd::Error(e.to_string())
            });
        }
        let hdr = u32::from_be_bytes(hdr);
        let len = (hdr & !LAST_FRAGMENT) as usize;
        if record.len() + len > MAX_RECORD {
            return Err(StreamEnd::Error(format!(
                "reply record larger than {MAX_RECORD} bytes"
            )));
        }
        let start = record.len();
        record.resize(start + len, 0);
        if let Err(e) = io.read_exact(&mut record[start..]).await {
            return Err(if is_closed(&e) {
                StreamEnd::Closed
            } else {
                StreamEnd::Error(e.to_string())
            });
        }
        if hdr & LAST_FRAGMENT != 0 {
            return Ok(record);
        }
    }
}

impl Conn {
    pub async fn connect(ep: &Endpoint) -> io::Result<Conn> {
        Ok(match ep {
            Endpoint::Unix(p) => Conn::Stream(Box::new(UnixStream::connect(p).await?)),
            Endpoint::Tcp(a) => Conn::Stream(Box::new(TcpStream::connect(a).await?)),
            Endpoint::Udp(a) => {
                let s = UdpSocket::bind(SocketAddr::new(local_ip_for(a), 0)).await?;
                s.connect(a).await?;
                Conn::Dgram(s)
            }
        })
    }

    /// Wraps an already connected stream (e.g. a TCP socket bound to a chosen port).
    pub fn stream(io: impl StreamIo + 'static) -> Conn {
        Conn::Stream(Box::new(io))
    }

    /// Wraps a blocking std unix stream (as returned by `connect_unix_as`).
    pub fn from_std_unix(s: std::os::unix::net::UnixStream) -> io::Result<Conn> {
        s.set_nonblocking(true)?;
        Ok(Conn::stream(UnixStream::from_std(s)?))
    }

    /// Sends one message: a single-fragment record on a stream, one datagram on UDP.
    pub async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.send_fragments(&[msg]).await
    }

    /// Sends a message split into the given fragments (record marking on a
    /// stream; on UDP the fragments are concatenated into one datagram).
    pub async fn send_fragments(&mut self, frags: &[&[u8]]) -> io::Result<()> {
        match self {
            Conn::Stream(io) => {
                let mut buf = Vec::new();
                for (i, frag) in frags.iter().enumerate() {
                    let mut hdr = u32::try_from(frag.len()).unwrap();
                    if i + 1 == frags.len() {
                        hdr |= LAST_FRAGMENT;
                    }
                    buf.extend_from_slice(&hdr.to_be_bytes());
                    buf.extend_from_slice(frag);
                }
                io.write_all(&buf).await?;
                io.flush().await
            }
            Conn::Dgram(s) => {
                let msg: Vec<u8> = frags.concat();
                s.send(&msg).await.map(drop)
            }
        }
    }

    /// Waits up to [`REPLY_TIMEOUT`] for the reply carrying `xid`, skipping
    /// any other reply.
    pub async fn recv(&mut self, xid: u32) -> Outcome {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let wanted = xid.to_be_bytes();
        let wait = async {
            match self {
                Conn::Stream(io) => loop {
                    match read_record(io.as_mut()).await {
                        Ok(rec) if rec.len() >= 4 && rec[..4] == wanted => {
                            return Outcome::Reply(rec[4..].to_vec())
                        }
                        Ok(_) => continue,
                        Err(StreamEnd::Closed) => return Outcome::Closed,
                        Err(StreamEnd::Error(e)) => return Outcome::Error(e),
                    }
                },
                Conn::Dgram(s) => {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        match s.recv(&mut buf).await {
                            Ok(n) if n >= 4 && buf[..4] == wanted => {
                                return Outcome::Reply(buf[4..n].to_vec())
                            }
                            Ok(_) => continue,
                            Err(e) => return Outcome::Error(e.to_string()),
                        }
                    }
                }
            }
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .unwrap_or(Outcome::NoReply)
    }

    /// Sends `msg` (which should start with `xid`) and waits for the reply.
    pub async fn exchange(&mut self, msg: &[u8], xid: u32) -> Outcome {
        match self.send(msg).await {
            Ok(()) => self.recv(xid).await,
            Err(e) => io_outcome(&e),
        }
    }

    pub async fn call(&mut self, call: &Call) -> Outcome {
        self.exchange(&call.encode(), call.xid).await
    }
}

/// The address a client socket binds before it calls `target`: loopback
/// for a loopback target (the tests' usual caller), otherwise the
/// unspecified address of its family (the kernel picks the source that
/// routes there, as for a client on another host).
pub fn local_ip_for(target: &SocketAddr) -> IpAddr {
    match (target.ip().is_loopback(), target.is_ipv4()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => Ipv4Addr::UNSPECIFIED.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Connects to a TCP or UDP endpoint from a reserved source port (< 1024),
/// as a root libtirpc client does (bindresvport: 600-1023, then 512-599,
/// without SO_REUSEADDR, so a port still in TIME_WAIT is in use).
pub async fn connect_from_reserved_port(ep: &Endpoint) -> io::Result<Conn> {
    let mut last = io::Error::other("no reserved port available");
    for port in (600..1024).chain(512..600) {
        let attempt: io::Result<Conn> = match ep {
            Endpoint::Tcp(addr) => {
                async {
                    let local = SocketAddr::new(local_ip_for(addr), port);
                    let sock = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    sock.bind(local)?;
                    Ok(Conn::stream(sock.connect(*addr).await?))
                }
                .await
            }
            Endpoint::Udp(addr) => {
                async {
                    let sock = UdpSocket::bind(SocketAddr::new(local_ip_for(addr), port)).await?;
                    sock.connect(addr).await?;
                    Ok(Conn::Dgram(sock))
                }
                .await
            }
            Endpoint::Unix(_) => return Err(io::Error::other("a unix endpoint has no ports")),
        };
        match attempt {
            Ok(conn) => return Ok(conn),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
                ) =>
            {
                last = e
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Opens a fresh connection, makes one call, waits for its reply, closes.
pub async fn call_once(ep: &Endpoint, call: &Call) -> Outcome {
    send_once(ep, &[&call.encode()], call.xid).await
}

/// Opens a fresh connection, sends `frags` as one message, waits for a reply
/// carrying `xid`, closes.
pub async fn send_once(ep: &Endpoint, frags: &[&[u8]], xid: u32) -> Outcome {
    let mut conn = match Conn::connect(ep).await {
        Ok(c) => c,
        Err(e) => return Outcome::Error(format!("connect {ep}: {e}")),
    };
    match conn.send_fragments(frags).await {
        Ok(()) => conn.recv(xid).await,
        Err(e) => io_outcome(&e),
    }
}
