//! Listeners: unix and TCP streams (record marking), served by the stream
//! loops (`event_loop`), and UDP datagrams, by threads of their own (`udp`).
//!
//! A stream client's records are answered in order (calls may be
//! pipelined). A TCP client is always closed with an RST, whoever ends the
//! connection and why, so that no TIME_WAIT is left behind on either side.
//!
//! Here: listener specs, binding and adopting; `event_loop` runs the loops,
//! `accept` takes clients in, `inbox` is how work reaches a loop, `stream`
//! serves a connection, `udp` a datagram socket.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket, UnixListener};

use crate::host::sys::Inherited;

mod accept;
mod event_loop;
mod inbox;
mod stream;
mod udp;

pub use event_loop::StreamLoop;
pub use udp::DatagramThreads;

/// Bytes read from a stream client at a time.
const READ_CHUNK: usize = 4096;
/// The largest datagram the proxy reads (the UDP maximum).
const MAX_DATAGRAM: usize = 65535;
/// Calls one UDP listener may have past the cache (waiting for rpcbind or a
/// fetch) at once; beyond it datagrams are dropped and counted
/// (`limits.udp_in_flight.dropped`), as a full socket buffer would drop
/// them. A UDP client retries; a flood of misses cannot pile up memory.
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
    pub why: String,
}

/// The most addresses one host name may stand for in a listen spec: a name
/// that resolves to more is most likely not the host's own.
const MAX_ADDRESSES_PER_NAME: usize = 16;

impl ListenSpec {
    /// The listeners a spec stands for. A literal address is one; a host
    /// name (`tcp:localhost:1112`) is resolved now, at start-up, and stands
    /// for every address it resolves to, as nginx's and sshd's listen
    /// addresses do: `localhost` is both 127.0.0.1 and ::1 on most hosts.
    /// An address of the name that this host does not have is left out
    /// while another is here.
    pub fn resolve(s: &str) -> Result<Vec<ListenSpec>, SpecError> {
        let err = |why: String| SpecError {
            spec: s.to_string(),
            why,
        };
        let Some(("tcp" | "udp", rest)) = s.split_once(':') else {
            return s.parse().map(|one| vec![one]);
        };
        let (host, port) = host_and_port(rest).map_err(err)?;
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![ListenSpec::of(s, SocketAddr::new(ip, port))]);
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let found = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| err(format!("cannot resolve host {host:?}: {e}")))?;
        for a in found.take(MAX_ADDRESSES_PER_NAME) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        // /etc/hosts names ::1 localhost on hosts that have no ::1: of
        // several addresses, those this host does not have are left out
        // (all of them kept if none is here, so that binding says why).
        let here: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| {
                !matches!(std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 0)),
                          Err(e) if no_such_address(&e))
            })
            .collect();
        if !here.is_empty() {
            addrs = here;
        }
        if addrs.is_empty() {
            return Err(err(format!("host {host:?} resolves to no address")));
        }
        Ok(addrs.into_iter().map(|a| ListenSpec::of(s, a)).collect())
    }

    /// A TCP or UDP listener on `addr`, by the transport `spec` names.
    fn of(spec: &str, addr: SocketAddr) -> ListenSpec {
        if spec.starts_with("udp:") {
            ListenSpec::Udp(addr)
        } else {
            ListenSpec::Tcp(addr)
        }
    }
}

/// `HOST:PORT` (an IPv6 address in brackets) split, the port checked.
fn host_and_port(rest: &str) -> Result<(&str, u16), String> {
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or("an IPv6 address needs its closing bracket, e.g. [::1]:1111")?;
            let port = after
                .strip_prefix(':')
                .ok_or("no port after the address, e.g. [::1]:1111")?;
            (host, port)
        }
        None => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or("no port: write HOST:PORT, e.g. 127.0.0.1:1111 or localhost:1111")?;
            if host.contains(':') {
                return Err("write an IPv6 address in brackets, e.g. [::1]:1111".into());
            }
            (host, port)
        }
    };
    if host.is_empty() {
        return Err("no host before the port, e.g. 127.0.0.1:1111".into());
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number from 0 to 65535"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port} out of range (0 to 65535)"))?;
    Ok((host, port))
}

impl FromStr for ListenSpec {
    type Err = SpecError;

    /// One listener, its address written as an IP address (a host name may
    /// stand for several: see [`ListenSpec::resolve`]).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err = |why: &str| SpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| err("no transport prefix"))?;
        let addr = || -> Result<SocketAddr, SpecError> {
            let (host, port) = host_and_port(rest).map_err(|why| SpecError {
                spec: s.to_string(),
                why,
            })?;
            let ip = host
                .parse()
                .map_err(|_| err("not an IP address (write IPv6 as [::1]:1111)"))?;
            Ok(SocketAddr::new(ip, port))
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

/// Whether binding failed because the address does not exist on this host
/// (no such address: EADDRNOTAVAIL; IPv6 off: EAFNOSUPPORT).
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

impl std::os::fd::AsRawFd for Bound {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Bound::Unix(l, _) => l.as_raw_fd(),
            Bound::Tcp(l) => l.as_raw_fd(),
            Bound::Udp(s) => s.as_raw_fd(),
        }
    }
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

/// Binds `spec`, one of the listeners `all`: a `[::]:PORT` listener is made
/// IPv6-only where `all` also has `0.0.0.0:PORT` of its transport (both
/// could not be bound otherwise: the IPv6 one would take IPv4 too).
pub async fn bind_among(spec: &ListenSpec, all: &[ListenSpec]) -> io::Result<Bound> {
    let v4_twin = |a: &SocketAddr| {
        let twin = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, a.port()));
        all.iter().any(|s| match (spec, s) {
            (ListenSpec::Tcp(_), ListenSpec::Tcp(b)) | (ListenSpec::Udp(_), ListenSpec::Udp(b)) => {
                *b == twin
            }
            _ => false,
        })
    };
    match spec {
        ListenSpec::Tcp(a) | ListenSpec::Udp(a)
            if a.is_ipv6() && a.ip().is_unspecified() && v4_twin(a) =>
        {
            bind_any_v6(matches!(spec, ListenSpec::Tcp(_)), a.port(), true)
        }
        _ => bind(spec).await,
    }
}

/// A TCP (`stream`) or UDP listener on `[::]:port`, IPv6 only or taking
/// IPv4 too (`host::sys::bind_any_v6`).
fn bind_any_v6(stream: bool, port: u16, v6only: bool) -> io::Result<Bound> {
    let fd = crate::host::sys::bind_any_v6(stream, port, v6only)?;
    Ok(if stream {
        Bound::Tcp(TcpListener::from_std(std::net::TcpListener::from(fd))?)
    } else {
        Bound::Udp(UdpSocket::from_std(std::net::UdpSocket::from(fd))?)
    })
}

/// Server mode's listeners when the configured ones do not serve the
/// network: TCP and UDP on `[::]:port` taking IPv4 as well, or on
/// `0.0.0.0:port` where this host has no IPv6.
pub fn bind_remote(port: u16) -> io::Result<Vec<(ListenSpec, Bound)>> {
    let dual = |stream| bind_any_v6(stream, port, false);
    match (dual(true), dual(false)) {
        (Ok(tcp), Ok(udp)) => {
            let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            Ok(vec![
                (ListenSpec::Tcp(any), tcp),
                (ListenSpec::Udp(any), udp),
            ])
        }
        (Err(e), _) | (_, Err(e)) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let any: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
            let tcp = std::net::TcpListener::bind(any)?;
            let udp = std::net::UdpSocket::bind(any)?;
            tcp.set_nonblocking(true)?;
            udp.set_nonblocking(true)?;
            Ok(vec![
                (
                    ListenSpec::Tcp(any),
                    Bound::Tcp(TcpListener::from_std(tcp)?),
                ),
                (ListenSpec::Udp(any), Bound::Udp(UdpSocket::from_std(udp)?)),
            ])
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `0.0.0.0:P` and `[::]:P` listed together both bind (the IPv6 one
    /// made IPv6-only), and each takes its family's connections.
    #[test]
    fn both_wildcards_of_one_port_bind_together() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let port = std::net::TcpListener::bind("0.0.0.0:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let all: Vec<ListenSpec> = [format!("tcp:0.0.0.0:{port}"), format!("tcp:[::]:{port}")]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            let mut bound = Vec::new();
            for spec in &all {
                bound.push(bind_among(spec, &all).await.expect("both bind"));
            }
            assert!(matches!(bound[1], Bound::Tcp(_)));
        });
    }

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
            let e = ListenSpec::resolve(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn a_port_out_of_range_is_said_so() {
        for spec in [
            "tcp:127.0.0.1:99999",
            "udp:[::1]:65536",
            "tcp:localhost:70000",
        ] {
            let e = ListenSpec::resolve(spec).unwrap_err().to_string();
            assert!(
                e.contains(spec)
                    && e.contains("out of range (0 to 65535)")
                    && e.contains("tcp:HOST:PORT"),
                "{e}"
            );
        }
        let e = ListenSpec::resolve("tcp:127.0.0.1:x1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"x1\" is not a number"), "{e}");
        let e = ListenSpec::resolve("tcp:::1:1111").unwrap_err().to_string();
        assert!(e.contains("[::1]:1111"), "{e}");
    }

    /// A host name stands for every address it resolves to (localhost: the
    /// loopback addresses /etc/hosts gives it).
    #[test]
    fn a_host_name_is_every_address_it_resolves_to() {
        let specs = ListenSpec::resolve("tcp:localhost:1112").unwrap();
        assert!(
            specs.contains(&ListenSpec::Tcp("127.0.0.1:1112".parse().unwrap())),
            "{specs:?}"
        );
        assert!(
            specs.iter().all(
                |s| matches!(s, ListenSpec::Tcp(a) if a.ip().is_loopback() && a.port() == 1112)
            ),
            "{specs:?}"
        );
        let udp = ListenSpec::resolve("udp:localhost:1112").unwrap();
        assert!(
            udp.iter().all(|s| matches!(s, ListenSpec::Udp(_))),
            "{udp:?}"
        );
        assert_eq!(
            ListenSpec::resolve("tcp:[::1]:5").unwrap(),
            vec![ListenSpec::Tcp("[::1]:5".parse().unwrap())]
        );
        let e = ListenSpec::resolve("tcp:no-such-host.invalid:1111")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot resolve host \"no-such-host.invalid\""),
            "{e}"
        );
    }
}
