//! `rpcbind-proxy query`: ask rpcbind through the proxy and print as
//! `rpcinfo -p` / `rpcinfo -s` would.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;

use super::client::{fail, usage, IO_TIMEOUT};
use crate::cli::{QueryArgs, QueryLookup};
use crate::protocol::rpc::{self, AcceptStat, MAX_UPSTREAM_RECORD};
use crate::protocol::rpcb::{self, Mapping, Rpcb};

/// The proxy's unix socket that `query` asks by default.
const DEFAULT_SOCKET: &str = "/run/rpcbind-proxy/rpcbind.sock";

/// Where a query goes.
enum Via<'a> {
    Unix(&'a Path),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

/// Whether an rpcbind (or the proxy) answers a NULL call on the unix socket
/// at `path` within a couple of seconds: a socket file alone proves nothing
/// (a stopped rpcbind leaves it behind).
pub(crate) fn answers_null(path: &Path) -> bool {
    let exchange = || -> std::io::Result<Vec<u8>> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let call = rpc::encode_call(std::process::id() ^ 0x4e55_4c4c, rpcb::PROGRAM, 2, 0, &[]);
        stream_exchange(s, &call)
    };
    exchange().is_ok_and(|reply| {
        rpc::parse_reply(&reply).is_ok_and(|r| r.accept == Some(AcceptStat::Success))
    })
}

/// One call through the proxy; returns the procedure's results.
fn rpc_call(via: &Via<'_>, vers: u32, procedure: u32, args: &[u8]) -> Result<Vec<u8>, String> {
    let xid = std::process::id() ^ 0x5eed_0000;
    let call = rpc::encode_call(xid, rpcb::PROGRAM, vers, procedure, args);
    let reply = match via {
        Via::Unix(path) => {
            let at = format!("unix:{}", path.display());
            let s = UnixStream::connect(path).map_err(|e| unreachable_proxy(&at, &e))?;
            stream_exchange(s, &call).map_err(|e| not_rpc(&at, &e))?
        }
        Via::Tcp(addr) => {
            let at = format!("tcp:{addr}");
            let s = TcpStream::connect_timeout(addr, IO_TIMEOUT)
                .map_err(|e| unreachable_proxy(&at, &e))?;
            stream_exchange(s, &call).map_err(|e| not_rpc(&at, &e))?
        }
        Via::Udp(addr) => {
            let tried = |e: std::io::Error| format!("cannot query the proxy at udp:{addr}: {e}");
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .unwrap();
            let s = UdpSocket::bind(bind).map_err(tried)?;
            s.connect(addr).map_err(tried)?;
            s.set_read_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
            s.send(&call).map_err(tried)?;
            let mut buf = vec![0u8; 65536];
            let n = s.recv(&mut buf).map_err(tried)?;
            buf.truncate(n);
            buf
        }
    };
    let r = rpc::parse_reply(&reply).map_err(|e| format!("undecodable reply: {e}"))?;
    match r.accept {
        Some(AcceptStat::Success) => Ok(r.body.to_vec()),
        // What the proxy answers when rpcbind did not (not running, or not
        // within --upstream-timeout); rpcbind itself answers it to no lookup.
        Some(AcceptStat::SystemErr) => Err(format!(
            "the proxy at {} answered SYSTEM_ERR: it could not get an answer from rpcbind \
             (not running, or not answering in time); `rpcbind-proxy status` shows the upstream, \
             `rpcinfo -p` asks rpcbind directly",
            via.name()
        )),
        Some(other) => Err(format!("the proxy at {} answered {other:?}", via.name())),
        None => Err(format!("the proxy at {} denied the call", via.name())),
    }
}

impl Via<'_> {
    fn name(&self) -> String {
        match self {
            Via::Unix(p) => format!("unix:{}", p.display()),
            Via::Tcp(a) => format!("tcp:{a}"),
            Via::Udp(a) => format!("udp:{a}"),
        }
    }
}

/// Why nothing took the call at `at`: no socket, or nothing listening.
fn unreachable_proxy(at: &str, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no socket there",
        std::io::ErrorKind::ConnectionRefused => "connection refused",
        _ => return format!("cannot query the proxy at {at}: {e}"),
    };
    format!(
        "cannot query the proxy at {at}: {why}; is rpcbind-proxy running \
         (`systemctl status rpcbind-proxy.socket`), and listening there (--socket, --inet)?"
    )
}

/// A stream that took the call but sent no RPC reply back: most likely not
/// an RPC socket at all (the control socket, another service's port).
fn not_rpc(at: &str, e: &std::io::Error) -> String {
    let what = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "closed the connection without an RPC reply",
        std::io::ErrorKind::ConnectionReset => "reset the connection without an RPC reply",
        _ if e.to_string() == REPLY_TOO_LARGE => "answered with something that is not an RPC reply",
        _ => return format!("cannot query the proxy at {at}: {e}"),
    };
    format!(
        "{at} {what}: it is not an RPC socket (is it rpcbind-proxy's control socket? \
         `rpcbind-proxy status` reads that one); query asks the proxy's RPC socket, by default \
         unix:{DEFAULT_SOCKET} (--socket) and tcp:127.0.0.1:1111 (--inet)"
    )
}

/// What `stream_exchange` says of a record mark beyond any reply's size
/// (text, not RPC, on the socket).
const REPLY_TOO_LARGE: &str = "reply too large";

/// Writes one record and reads one (reassembling fragments, bounded).
pub(crate) fn stream_exchange<S: Read + Write>(mut s: S, call: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut rec = BytesMut::new();
    rpc::put_record(&mut rec, call);
    s.write_all(&rec)?;
    let mut out = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark)?;
        let mark = u32::from_be_bytes(mark);
        let len = (mark & 0x7fff_ffff) as usize;
        if out.len() + len > MAX_UPSTREAM_RECORD {
            return Err(std::io::Error::other(REPLY_TOO_LARGE));
        }
        let start = out.len();
        out.resize(start + len, 0);
        s.read_exact(&mut out[start..])?;
        if mark & 0x8000_0000 != 0 {
            return Ok(out);
        }
    }
}

/// The RPC program database, as rpcinfo reads it (getrpcbyname).
const ETC_RPC: &str = "/etc/rpc";
/// The most of it read: the real one is a few kilobytes.
const ETC_RPC_MAX: u64 = 1 << 20;

/// The text of /etc/rpc (empty if it cannot be read), at most
/// [`ETC_RPC_MAX`] bytes.
fn etc_rpc() -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(ETC_RPC) {
        let _ = f.take(ETC_RPC_MAX).read_to_string(&mut text);
    }
    text
}

/// Each line of /etc/rpc: the program number with its name and aliases.
fn rpc_entries(text: &str) -> impl Iterator<Item = (u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut w = line.split_whitespace();
        let name = w.next()?;
        let num = w.next()?.parse().ok()?;
        Some((num, std::iter::once(name).chain(w).collect()))
    })
}

/// Program names from /etc/rpc, as rpcinfo prints them.
fn rpc_names() -> BTreeMap<u32, String> {
    let text = etc_rpc();
    let mut names = BTreeMap::new();
    for (n, words) in rpc_entries(&text) {
        names.entry(n).or_insert_with(|| words[0].to_string());
    }
    names
}

/// A program on the command line: a number, or a name (or alias) from
/// /etc/rpc as rpcinfo takes it (`nfs`, `mountd`).
pub fn program_arg(s: &str) -> Result<u32, String> {
    program_in(s, &etc_rpc())
}

fn program_in(s: &str, etc_rpc: &str) -> Result<u32, String> {
    if let Ok(n) = s.trim().parse() {
        return Ok(n);
    }
    rpc_entries(etc_rpc)
        .find(|(_, words)| words.contains(&s))
        .map(|(n, _)| n)
        .ok_or_else(|| {
            format!(
                "expected a program number (e.g. 100003) or a program name from {ETC_RPC} (e.g. nfs)"
            )
        })
}

/// `rpcinfo -p`'s table for a v2 DUMP.
pub fn format_portmap(list: &[Mapping], names: &BTreeMap<u32, String>) -> String {
    let mut o = String::from("   program vers proto   port  service\n");
    for m in list {
        let _ = write!(o, "{:>10}{:>5}", m.prog, m.vers);
        match m.prot {
            rpcb::IPPROTO_UDP => o.push_str("   udp"),
            rpcb::IPPROTO_TCP => o.push_str("   tcp"),
            other => {
                let _ = write!(o, "{other:>6}");
            }
        }
        let _ = write!(o, "{:>7}", m.port);
        match names.get(&m.prog) {
            Some(n) => {
                let _ = writeln!(o, "  {n}");
            }
            None => o.push('\n'),
        }
    }
    o
}

/// `rpcinfo -s`'s table for a v3/v4 DUMP: one row per program, versions and
/// netids in rpcinfo's (prepending) order, the first entry's owner.
pub fn format_short(list: &[rpcb::RpcbEntry], names: &BTreeMap<u32, String>) -> String {
    struct Row {
        prog: u32,
        owner: String,
        versions: Vec<u32>,
        netids: Vec<String>,
    }
    let mut rows: Vec<Row> = Vec::new();
    for e in list {
        let i = match rows.iter().position(|r| r.prog == e.prog) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    prog: e.prog,
                    owner: String::from_utf8_lossy(&e.owner).into_owned(),
                    versions: Vec::new(),
                    netids: Vec::new(),
                });
                rows.len() - 1
            }
        };
        let r = &mut rows[i];
        if !r.versions.contains(&e.vers) {
            r.versions.insert(0, e.vers);
        }
        let netid = String::from_utf8_lossy(&e.netid).into_owned();
        if !r.netids.contains(&netid) {
            r.netids.insert(0, netid);
        }
    }
    let mut o =
        String::from("   program version(s) netid(s)                         service     owner\n");
    for r in rows {
        let versions: Vec<String> = r.versions.iter().map(u32::to_string).collect();
        let name = names.get(&r.prog).map_or("-", String::as_str);
        let _ = writeln!(
            o,
            "{:>10}  {:<10}{:<32} {name:<10}  {}",
            r.prog,
            versions.join(","),
            r.netids.join(","),
            r.owner
        );
    }
    o
}

pub fn query(args: QueryArgs) -> ExitCode {
    let unix = Via::Unix(&args.socket);
    let result = match (&args.lookup, args.portmap, args.short) {
        (Some(_), true, _) | (Some(_), _, true) => {
            return usage("-p and -s list everything; give them without getport or getaddr")
        }
        (None, true, _) => rpc_call(&unix, 2, 4, &[])
            .and_then(|b| rpcb::decode_pmaplist(&b).map_err(|e| e.to_string()))
            .map(|l| format_portmap(&l, &rpc_names())),
        (None, _, true) => rpc_call(&unix, 4, 4, &[])
            .and_then(|b| rpcb::decode_rpcblist(&b).map_err(|e| e.to_string()))
            .map(|l| format_short(&l, &rpc_names())),
        (Some(QueryLookup::Getport { prog, vers, proto }), ..) => {
            let prot = if proto == "udp" {
                rpcb::IPPROTO_UDP
            } else {
                rpcb::IPPROTO_TCP
            };
            let mut a = BytesMut::new();
            Mapping {
                prog: *prog,
                vers: *vers,
                prot,
                port: 0,
            }
            .encode(&mut a);
            rpc_call(&unix, 2, 3, &a).and_then(|b| match b.get(..4) {
                Some([0, 0, 0, 0]) => Err(format!(
                    "program {prog} version {vers} is not registered on {proto}"
                )),
                Some(p) => Ok(format!(
                    "{}\n",
                    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
                )),
                None => Err("short GETPORT reply".into()),
            })
        }
        (Some(QueryLookup::Getaddr { prog, vers, netid }), ..) => {
            // rpcbind answers GETADDR by the transport the call arrives on.
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, args.inet.port()));
            let via = match netid.as_str() {
                "tcp" => Via::Tcp(args.inet),
                "udp" => Via::Udp(args.inet),
                "tcp6" => Via::Tcp(v6),
                "udp6" => Via::Udp(v6),
                _ => Via::Unix(&args.socket),
            };
            let mut a = BytesMut::new();
            Rpcb {
                prog: *prog,
                vers: *vers,
                netid: netid.as_bytes(),
                addr: b"",
                owner: b"",
            }
            .encode(&mut a);
            rpc_call(&via, 4, 3, &a).and_then(|b| match rpcb::decode_string_reply(&b) {
                Ok([]) => Err(format!(
                    "program {prog} version {vers} is not registered on {netid}"
                )),
                Ok(addr) => Ok(format!("{}\n", String::from_utf8_lossy(addr))),
                Err(e) => Err(e.to_string()),
            })
        }
        (None, false, false) => return usage("say what to query: -p, -s, getport or getaddr"),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_numbers_or_names_and_aliases_from_etc_rpc() {
        let etc = "# comment\nportmapper\t100000\tportmap sunrpc rpcbind\nnfs 100003 nfsprog # x\n";
        assert_eq!(program_in("100003", etc), Ok(100003));
        assert_eq!(program_in("nfs", etc), Ok(100003));
        assert_eq!(program_in("rpcbind", etc), Ok(100000));
        let e = program_in("nsf", etc).unwrap_err();
        assert!(e.contains("/etc/rpc") && e.contains("100003"), "{e}");
    }

    #[test]
    fn rpcinfo_formats() {
        let names = BTreeMap::from([(100000, "portmapper".to_string())]);
        let pm = [Mapping {
            prog: 100000,
            vers: 4,
            prot: 6,
            port: 111,
        }];
        assert_eq!(
            format_portmap(&pm, &names),
            "   program vers proto   port  service\n    100000    4   tcp    111  portmapper\n"
        );
        let e = |vers, netid: &str| rpcb::RpcbEntry {
            prog: 100000,
            vers,
            netid: netid.into(),
            addr: vec![],
            owner: b"superuser".to_vec(),
        };
        let list = [
            e(4, "tcp6"),
            e(3, "tcp6"),
            e(4, "tcp"),
            e(2, "tcp"),
            e(4, "local"),
        ];
        assert_eq!(
            format_short(&list, &names),
            "   program version(s) netid(s)                         service     owner\n    100000  2,3,4     local,tcp,tcp6                   portmapper  superuser\n"
        );
    }
}
