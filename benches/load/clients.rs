//! The load clients: RPC and record helpers, the client threads that drive
//! a target, and the rows they measure.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use rpcbind_proxy::protocol::rpc::{self, AcceptStat, OpaqueAuth};
use rpcbind_proxy::protocol::rpcb::{self, Mapping, Rpcb};
use rpcbind_proxy::protocol::xdr::Reader;

use crate::table::Row;
use crate::{
    FLOOR_PORT, FLOOR_PROCESS_PORT, FLOOR_PROCESS_SOCK, FLOOR_SOCK, MAIN, MISS, NOATTR,
    RPCBIND_PORT, RPCBIND_SOCK, SEARCH, TEST_PORT, TEST_PROG, TEST_VERS,
};

// ---------------------------------------------------------------------------
// RPC helpers
// ---------------------------------------------------------------------------

pub(crate) fn getport_call(xid: u32, prog: u32) -> BytesMut {
    let mut args = BytesMut::new();
    Mapping {
        prog,
        vers: TEST_VERS,
        prot: rpcb::IPPROTO_TCP,
        port: 0,
    }
    .encode(&mut args);
    rpc::encode_call(xid, rpcb::PROGRAM, 2, 3, &args)
}

pub(crate) fn framed(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    rpc::put_record(&mut b, payload);
    b.to_vec()
}

/// One call over a fresh connection to a unix socket; the reply record.
fn unix_call(path: &str, call: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connecting to {path}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(&framed(call)).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark)
            .map_err(|e| format!("reading from {path}: {e}"))?;
        let mark = u32::from_be_bytes(mark);
        let start = reply.len();
        reply.resize(start + (mark & 0x7fff_ffff) as usize, 0);
        s.read_exact(&mut reply[start..])
            .map_err(|e| format!("reading from {path}: {e}"))?;
        if mark & 0x8000_0000 != 0 {
            return Ok(reply);
        }
    }
}

pub(crate) fn success_body(reply: &[u8]) -> Result<&[u8], String> {
    let r = rpc::parse_reply(reply).map_err(|e| e.to_string())?;
    if r.accept != Some(AcceptStat::Success) {
        return Err(format!("reply not SUCCESS: {:?}", r.accept));
    }
    Ok(r.body)
}

/// Registers at rpcbind: v3 SET over its unix socket, as root (superuser).
pub(crate) fn register(prog: u32, vers: u32, netid: &str, addr: &str) -> Result<(), String> {
    let mut args = BytesMut::new();
    Rpcb {
        prog,
        vers,
        netid: netid.as_bytes(),
        addr: addr.as_bytes(),
        owner: b"superuser",
    }
    .encode(&mut args);
    let reply = unix_call(
        RPCBIND_SOCK,
        &rpc::encode_call(7, rpcb::PROGRAM, 3, 1, &args),
    )?;
    match success_body(&reply)? {
        [0, 0, 0, 1, ..] => Ok(()),
        _ => Err(format!("rpcbind refused SET {prog} {vers} {netid}")),
    }
}

/// rpcbind's reply to GETPORT of the test program, as the clients must see
/// it from every target (byte for byte after the XID).
pub(crate) fn expected_reply() -> Result<Vec<u8>, String> {
    let reply = unix_call(RPCBIND_SOCK, &getport_call(1, TEST_PROG))?;
    let body = success_body(&reply)?;
    if body != TEST_PORT.to_be_bytes() {
        return Err(format!("GETPORT at rpcbind answered {body:?}"));
    }
    let built = rpc::accepted_reply(
        1,
        OpaqueAuth::NONE,
        AcceptStat::Success,
        &TEST_PORT.to_be_bytes(),
    );
    if built[..] != reply[..] {
        return Err("rpcbind's GETPORT reply differs from the floor's".into());
    }
    Ok(reply)
}

/// Lookups rpcbind itself served (GETPORT, GETADDR, GETVERSADDR,
/// GETADDRLIST) since it started: its own counters (v4 GETSTAT), as
/// `rpcinfo -m` shows them.
fn rpcbind_lookups() -> Result<u64, String> {
    let reply = unix_call(
        RPCBIND_SOCK,
        &rpc::encode_call(3, rpcb::PROGRAM, 4, 12, &[]),
    )?;
    let body = success_body(&reply)?;
    let mut r = Reader::new(body);
    let e = |e: rpcbind_proxy::protocol::xdr::XdrError| format!("GETSTAT reply: {e}");
    let mut total = 0u64;
    for vers in [2, 3, 4] {
        let mut info = [0u32; 13];
        for v in &mut info {
            *v = r.u32().map_err(e)?;
        }
        total += u64::from(info[3]); // GETPORT (v2) / GETADDR (v3, v4)
        if vers == 4 {
            total += u64::from(info[9]) + u64::from(info[11]); // GETVERSADDR, GETADDRLIST
        }
        r.u32().map_err(e)?; // setinfo
        r.u32().map_err(e)?; // unsetinfo
        while r.bool().map_err(e)? {
            // rpcbs_addrlist: prog, vers, success, failure, netid
            for _ in 0..4 {
                r.u32().map_err(e)?;
            }
            r.string(1024).map_err(e)?;
        }
        while r.bool().map_err(e)? {
            // rpcbs_rmtcalllist: prog, vers, proc, success, failure, indirect, netid
            for _ in 0..6 {
                r.u32().map_err(e)?;
            }
            r.string(1024).map_err(e)?;
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Unix,
    Tcp,
    Udp,
}

impl Transport {
    pub(crate) const ALL: [Transport; 3] = [Transport::Unix, Transport::Tcp, Transport::Udp];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One connection per client thread for the whole row.
    Persistent,
    /// Connect, call, read, close (the client closes first, like libtirpc).
    OneShot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Rpcbind,
    Proxy,
    /// The floor in its own process: the yardstick.
    Floor,
    /// The floor in the bench process, beside the client threads.
    FloorInProcess,
    /// The proxy with its cache off: every lookup is a miss.
    Miss,
    /// The proxy with attribution off.
    NoAttribution,
    /// The proxy naming clients by the /proc search only.
    SearchAttribution,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Rpcbind => "rpcbind",
            Target::Proxy => "proxy",
            Target::Floor => "floor",
            Target::FloorInProcess => "floor, in-process",
            Target::Miss => "proxy, miss",
            Target::NoAttribution => "proxy, no attribution",
            Target::SearchAttribution => "proxy, search only",
        }
    }

    fn endpoint(self, t: Transport) -> Endpoint {
        let (sock, port): (PathBuf, u16) = match self {
            Target::Rpcbind => (RPCBIND_SOCK.into(), RPCBIND_PORT),
            Target::Proxy => (MAIN.sock(), MAIN.port),
            Target::Floor => (FLOOR_PROCESS_SOCK.into(), FLOOR_PROCESS_PORT),
            Target::FloorInProcess => (FLOOR_SOCK.into(), FLOOR_PORT),
            Target::Miss => (MISS.sock(), MISS.port),
            Target::NoAttribution => (NOATTR.sock(), NOATTR.port),
            Target::SearchAttribution => (SEARCH.sock(), SEARCH.port),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match t {
            Transport::Unix => Endpoint::Unix(sock),
            Transport::Tcp => Endpoint::Tcp(addr),
            Transport::Udp => Endpoint::Udp(addr),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Endpoint {
    pub(crate) fn connect(&self) -> io::Result<Conn> {
        let timeout = Some(Duration::from_secs(2));
        Ok(match self {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(timeout)?;
                Conn::Unix(s)
            }
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(timeout)?;
                Conn::Tcp(s)
            }
            Endpoint::Udp(a) => {
                let s = UdpSocket::bind(("127.0.0.1", 0))?;
                s.connect(a)?;
                // A lost datagram costs this much, counted as an error.
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Conn::Udp(s)
            }
        })
    }
}

/// Reads one record-marked reply into `buf`; returns its length.
fn read_record(s: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        if have >= 4 {
            let len = (u32::from_be_bytes(buf[..4].try_into().unwrap()) & 0x7fff_ffff) as usize;
            if 4 + len > buf.len() {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if have >= 4 + len {
                return Ok(4 + len);
            }
        }
    }
}

impl Conn {
    /// One call; the reply must be `expected` (after the XID) with `xid`.
    pub(crate) fn call(
        &mut self,
        framed_call: &[u8],
        xid: u32,
        expected: &[u8],
        buf: &mut [u8],
    ) -> io::Result<()> {
        let reply = match self {
            Conn::Unix(s) => {
                s.write_all(framed_call)?;
                let n = read_record(s, buf)?;
                &buf[4..n]
            }
            Conn::Tcp(s) => {
                s.write_all(framed_call)?;
                let n = read_record(s, buf)?;
                &buf[4..n]
            }
            Conn::Udp(s) => {
                s.send(&framed_call[4..])?;
                loop {
                    let n = s.recv(buf)?;
                    // A late answer to an earlier (timed out) call: skip it.
                    if n >= 4 && buf[..4] == xid.to_be_bytes() {
                        break &buf[..n];
                    }
                }
            }
        };
        if reply.len() != expected.len()
            || reply[..4] != xid.to_be_bytes()
            || reply[4..] != expected[4..]
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong reply"));
        }
        Ok(())
    }
}

/// What the client threads of one row measured.
#[derive(Debug, Default)]
pub(crate) struct Load {
    lookups: u64,
    errors: u64,
    secs: f64,
    /// Latencies in nanoseconds, sorted.
    lat: Vec<u32>,
}

impl Load {
    /// Lookups answered per second over the row.
    pub(crate) fn rate(&self) -> f64 {
        self.lookups as f64 / self.secs.max(1e-9)
    }

    /// Adds another window's figures (as many clients) to these: the rate
    /// and percentiles over both.
    pub(crate) fn absorb(&mut self, other: Load) {
        self.lookups += other.lookups;
        self.errors += other.errors;
        self.secs += other.secs;
        self.lat.extend(other.lat);
        self.lat.sort_unstable();
    }

    /// Calls that failed (timed out, wrong reply, connection refused).
    pub(crate) fn errors(&self) -> u64 {
        self.errors
    }

    pub(crate) fn percentile_us(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len() - 1);
        f64::from(self.lat[i]) / 1000.0
    }
}

/// Drives `ep` with `clients` threads for `dur` (at least `min_calls` calls
/// per thread), each asking GETPORT of the test program in a loop.
pub(crate) fn drive(
    ep: &Endpoint,
    mode: Mode,
    clients: usize,
    dur: Duration,
    expected: &[u8],
    min_calls: u64,
) -> Result<Load, String> {
    let barrier = Barrier::new(clients + 1);
    let results: Vec<(u64, u64, Duration, Vec<u32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|id| {
                let barrier = &barrier;
                scope.spawn(move || client(ep, mode, id as u32, barrier, dur, expected, min_calls))
            })
            .collect();
        barrier.wait();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut load = Load::default();
    for (n, errors, elapsed, lat) in results {
        load.lookups += n;
        load.errors += errors;
        load.secs = load.secs.max(elapsed.as_secs_f64());
        load.lat.extend(lat);
    }
    load.lat.sort_unstable();
    Ok(load)
}

fn client(
    ep: &Endpoint,
    mode: Mode,
    id: u32,
    barrier: &Barrier,
    dur: Duration,
    expected: &[u8],
    min_calls: u64,
) -> (u64, u64, Duration, Vec<u32>) {
    let mut call = framed(&getport_call(0, TEST_PROG));
    let mut buf = vec![0u8; 65536];
    let mut lat = Vec::with_capacity(1 << 16);
    let (mut n, mut errors) = (0u64, 0u64);
    let mut conn = match mode {
        Mode::Persistent => ep.connect().ok(),
        Mode::OneShot => None,
    };
    barrier.wait();
    let start = Instant::now();
    let deadline = start + dur;
    let mut xid = id << 24;
    loop {
        xid = xid.wrapping_add(1);
        call[4..8].copy_from_slice(&xid.to_be_bytes());
        let t0 = Instant::now();
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => ep.connect(),
        }
        .and_then(|mut c| {
            c.call(&call, xid, expected, &mut buf)?;
            Ok(c)
        });
        let t1 = Instant::now();
        match result {
            Ok(c) => {
                n += 1;
                lat.push((t1 - t0).as_nanos().min(u128::from(u32::MAX)) as u32);
                if mode == Mode::Persistent {
                    conn = Some(c);
                }
                // One-shot: `c` dropped here, the client closes first.
            }
            Err(_) => {
                errors += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if t1 >= deadline && n >= min_calls {
            return (n, errors, t1 - start, lat);
        }
        if errors > 1000 && n == 0 {
            return (n, errors, t1 - start, lat);
        }
    }
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) transport: Transport,
    pub(crate) mode: Mode,
    pub(crate) target: Target,
    pub(crate) clients: usize,
    dur: Duration,
}

impl Spec {
    pub(crate) fn new(
        transport: Transport,
        mode: Mode,
        target: Target,
        clients: usize,
        dur: Duration,
    ) -> Spec {
        Spec {
            transport,
            mode,
            target,
            clients,
            dur,
        }
    }

    pub(crate) fn mode_name(&self) -> &'static str {
        match (self.mode, self.transport) {
            (Mode::Persistent, Transport::Udp) => "datagrams",
            (Mode::Persistent, _) => "persistent",
            (Mode::OneShot, _) => "conn/lookup",
        }
    }

    pub(crate) fn label(&self) -> String {
        format!(
            "{} {} {} x{}",
            self.transport.name(),
            self.mode_name(),
            self.target.name(),
            self.clients
        )
    }
}

pub(crate) fn run_row(spec: Spec, expected: &[u8], proxy_pid: Option<u32>) -> Result<Row, String> {
    let before_tw = time_wait_sockets();
    let before_served = rpcbind_lookups()?;
    let load = drive(
        &spec.target.endpoint(spec.transport),
        spec.mode,
        spec.clients,
        spec.dur,
        expected,
        1,
    )?;
    settle_tcp();
    // TIME_WAIT sockets live 60 s, so the namespace still holds those of
    // earlier rows (and some of them expire during this one): a plain count,
    // or a difference of counts, would mix rows up. Each socket is
    // identified by its address pair instead, and only those in TIME_WAIT
    // now that were not before the row are this row's. (Against rpcbind the
    // count stays below one per lookup: with the kernel's default
    // tcp_tw_reuse=2 a new loopback connect may take over a TIME_WAIT
    // socket's port pair, ending it early. libtirpc's root clients bind a
    // reserved port explicitly, where that does not happen.)
    let time_wait = time_wait_sockets().difference(&before_tw).count();
    let rpcbind_served = rpcbind_lookups()? - before_served;
    let proxy_hwm_kib = proxy_pid.and_then(|p| proc_status_kib(p, "VmHWM"));
    let row = Row {
        spec,
        lookups: load.lookups,
        errors: load.errors,
        rate: load.rate(),
        p50: load.percentile_us(0.50),
        p99: load.percentile_us(0.99),
        time_wait,
        rpcbind_served,
        proxy_hwm_kib,
    };
    if !crate::quiet() {
        eprintln!(
            "load: {:<41} {:>9.0}/s p50 {:>7.1} µs p99 {:>7.1} µs, {} errors",
            spec.label(),
            row.rate,
            row.p50,
            row.p99,
            row.errors
        );
    }
    Ok(row)
}

/// /proc/net/tcp states.
const TCP_TIME_WAIT: &str = "06";
const TCP_CLOSING_STATES: [&str; 5] = ["04", "05", "08", "09", "0B"];

/// (local, remote, state) of every TCP socket of this network namespace.
fn tcp_sockets() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 {
                out.push((f[1].to_owned(), f[2].to_owned(), f[3].to_owned()));
            }
        }
    }
    out
}

pub(crate) fn time_wait_sockets() -> HashSet<(String, String)> {
    tcp_sockets()
        .into_iter()
        .filter(|(_, _, st)| st == TCP_TIME_WAIT)
        .map(|(l, r, _)| (l, r))
        .collect()
}

/// Waits (at most 2 s) until no TCP socket is half-way through closing, so
/// that the ones bound for TIME_WAIT are there.
pub(crate) fn settle_tcp() {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && tcp_sockets()
            .iter()
            .any(|(_, _, st)| TCP_CLOSING_STATES.contains(&st.as_str()))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
