//! The raw syscalls that belong to no other host module, and the one pair
//! of socket-option helpers every module of `host` uses. `unsafe` is allowed
//! only in `host/` (this file and a few others), each block with its own
//! `// SAFETY:` line.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A C type that socket options carry.
///
/// # Safety
/// Only for plain data with no pointers, for which all-zero bytes, and any
/// bytes the kernel writes, are a valid value.
pub(crate) unsafe trait OptionValue: Copy {}

macro_rules! option_values {
    ($($t:ty),*) => {$(
        // SAFETY: an integer or a libc struct of integers and byte arrays.
        unsafe impl OptionValue for $t {}
    )*};
}

option_values!(
    libc::c_int,
    u32,
    u64,
    libc::ucred,
    libc::linger,
    libc::timeval,
    libc::sockaddr_storage
);

/// setsockopt of one plain-data value.
pub(crate) fn setsockopt<T: OptionValue>(
    fd: impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised T of size_of::<T>()
    // bytes that the kernel only reads; a bad descriptor is only an error.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// getsockopt of one plain-data value: the value (all zero where the
/// kernel wrote nothing) and the length the kernel says it wrote, at most
/// the size of T.
pub(crate) fn getsockopt<T: OptionValue>(
    fd: impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    // SAFETY: OptionValue types are plain data for which all-zero bytes
    // are a valid value.
    let mut value: T = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is valid for writes of size_of::<T>() bytes and `len`
    // says so; any bytes the kernel writes are a valid T (OptionValue); a
    // bad descriptor is only an error.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((value, (len as usize).min(mem::size_of::<T>())))
}

/// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux
/// 5.14 or later); `None` before.
pub fn netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let probe = std::os::unix::net::UnixDatagram::unbound().ok()?;
    let (cookie, len) =
        getsockopt::<u64>(probe.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE).ok()?;
    (len == 8 && cookie != 0).then_some(cookie)
}

/// SO_MARK on a socket before it connects (needs CAP_NET_ADMIN): its
/// packets then skip transparent mode's redirect (`meta mark M return`).
pub fn set_mark(fd: BorrowedFd<'_>, mark: u32) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &mark)
}

/// Connects to the unix socket at `path` with the effective uid and gid of a
/// caller, so that the server reads that identity with SO_PEERCRED.
///
/// Why: rpcbind decides who owns a registration from SO_PEERCRED. A proxy
/// that forwarded an unprivileged caller's SET/UNSET over its own root
/// connection would hand that caller rpcbind's `superuser`. Connecting as the
/// caller gives rpcbind the caller's identity, so every answer matches a
/// direct call.
///
/// The kernel records the credentials of the connecting *thread*. The raw
/// setresuid/setresgid syscalls (unlike glibc's wrappers, which change every
/// thread of the process) act on the calling thread only, so the switch is
/// made on a short-lived thread of its own that exits afterwards; no other
/// thread ever runs with the borrowed identity.
pub fn connect_unix_as(path: &Path, uid: u32, gid: u32) -> io::Result<UnixStream> {
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("connect-as".into())
        .spawn(move || -> io::Result<UnixStream> {
            // Group first: once the uid is no longer 0 the gid cannot change.
            // SAFETY: raw syscall with plain integer arguments; -1 (as u32::MAX)
            // leaves the real and saved ids unchanged. Affects this thread only.
            let rc = unsafe { libc::syscall(libc::SYS_setresgid, u32::MAX, gid, u32::MAX) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above, for the effective uid; the saved uid stays 0 but
            // the thread ends right after the connect and is never reused.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, uid, u32::MAX) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            UnixStream::connect(&path)
        })?
        .join()
        .map_err(|_| io::Error::other("connect-as thread panicked"))?
}

/// A socket inherited from systemd (socket activation), told apart by its
/// own type and family, not by position or name.
#[derive(Debug)]
pub enum Inherited {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// Takes ownership of a listening socket systemd passed as `fd`.
pub fn adopt_socket(fd: std::os::fd::RawFd) -> io::Result<Inherited> {
    use std::os::fd::FromRawFd;
    let int = |opt| getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, opt).map(|(v, _)| v);
    let kind = int(libc::SO_TYPE)?;
    let family = int(libc::SO_DOMAIN)?;
    let listening = int(libc::SO_ACCEPTCONN)? != 0;
    let unsupported = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited fd {fd} is not a listening unix/TCP socket or a UDP socket (family {family}, type {kind})"),
        )
    };
    let inet = family == libc::AF_INET || family == libc::AF_INET6;
    // SAFETY (all three): systemd passed this descriptor to us (LISTEN_FDS),
    // it is open, and nothing else in the process owns it; ownership moves
    // into the returned socket, which closes it when dropped.
    Ok(match kind {
        libc::SOCK_STREAM if listening && family == libc::AF_UNIX => {
            Inherited::Unix(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
        }
        libc::SOCK_STREAM if listening && inet => {
            Inherited::Tcp(unsafe { std::net::TcpListener::from_raw_fd(fd) })
        }
        libc::SOCK_DGRAM if inet => Inherited::Udp(unsafe { std::net::UdpSocket::from_raw_fd(fd) }),
        _ => return Err(unsupported()),
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Restores the default SIGPIPE action (terminate) that the Rust runtime
/// replaced with "ignore": an operator command whose output goes to a
/// closed pipe (`status | head -1`) then ends quietly, as Unix tools do,
/// instead of panicking on the write. Not for the daemon, which must
/// survive a client that goes away.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory
    // effects; called once at start, before any thread is spawned.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A unix stream peer's credentials (SO_PEERCRED): uid, gid and pid (None
/// when the kernel has no pid for it, as for a peer in another pid
/// namespace).
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, Option<i32>)> {
    let (cred, len) = getsockopt::<libc::ucred>(fd, libc::SOL_SOCKET, libc::SO_PEERCRED)?;
    if len != mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short answer",
        ));
    }
    Ok((cred.uid, cred.gid, (cred.pid > 0).then_some(cred.pid)))
}

/// SO_LINGER {on, 0}: closing the socket then sends an RST, and neither
/// side keeps a TIME_WAIT socket.
pub fn set_zero_linger(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// Time since boot from CLOCK_MONOTONIC_COARSE: the clock's value as of
/// the last timer tick (a few milliseconds old at most), read without the
/// hardware counter `Instant::now` reads, so much cheaper. For counting in
/// whole seconds on the request path. Falls back to CLOCK_MONOTONIC (the
/// clock of `Instant`) on a kernel without the coarse one.
pub fn coarse_monotonic() -> std::time::Duration {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only
        // writes it, and reports an unknown clock as an error.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| {
            std::time::Duration::new(
                u64::try_from(ts.tv_sec).unwrap_or(0),
                u32::try_from(ts.tv_nsec).unwrap_or(0),
            )
        })
    };
    read(libc::CLOCK_MONOTONIC_COARSE)
        .or_else(|| read(libc::CLOCK_MONOTONIC))
        .unwrap_or_default()
}

/// A socket on `[::]:port`, IPv6 only (`v6only`) or taking IPv4 too,
/// whatever the host's `net.ipv6.bindv6only` says (server mode's
/// listeners take both families on one socket per protocol): TCP
/// (listening, SO_REUSEADDR as tokio's own listeners) or UDP, non-blocking
/// and close-on-exec.
pub fn bind_any_v6(stream: bool, port: u16, v6only: bool) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let kind = if stream {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    setsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IPV6,
        libc::IPV6_V6ONLY,
        &libc::c_int::from(v6only),
    )?;
    if stream {
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, &1)?;
    }
    // SAFETY: sockaddr_in6 is plain data; all zeroes is the wildcard `::`.
    let mut addr: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = port.to_be();
    // SAFETY: `addr` is a live sockaddr_in6 and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in6).cast(),
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen() on our own descriptor; no pointers.
    if stream && unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_coarse_clock_keeps_up_with_instant_within_a_tick() {
        let (c0, i0) = (coarse_monotonic(), Instant::now());
        std::thread::sleep(Duration::from_millis(60));
        let (c1, i1) = (coarse_monotonic(), Instant::now());
        let coarse = c1 - c0;
        let fine = i1 - i0;
        assert!(c0 > Duration::ZERO);
        // A tick is 1 to 10 ms (HZ 1000 to 100); allow two.
        assert!(
            coarse + Duration::from_millis(20) >= fine
                && coarse <= fine + Duration::from_millis(20),
            "coarse {coarse:?}, Instant {fine:?}"
        );
    }
}
