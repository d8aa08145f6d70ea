//! Which processes hold a socket, read from /proc/PID/fd links
//! (`socket:[INODE]`). Reading another user's links needs root (or
//! CAP_SYS_PTRACE); a process whose links cannot be read is reported as
//! such, never as "does not hold it".
//!
//! Also the proxy's own CPU time ([`own_cpu_time`]), by which the search
//! for a socket's process is budgeted.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::time::Duration;

/// At most this many descriptors of one process are looked at (its
/// RLIMIT_NOFILE can be far above what is open; /proc lists only the open
/// ones).
const FDS_PER_PROCESS_MAX: usize = 1 << 20;
/// At most this many /proc entries are looked at (pid_max is at most 2^22).
const PROCESSES_MAX: usize = 1 << 22;

/// Whether process `pid` holds a descriptor whose link reads `want`
/// (`socket:[INODE]`); `Err` when its descriptors cannot be read (gone, or
/// not permitted).
pub(crate) fn holds_link(pid: u32, want: &str) -> io::Result<bool> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))?;
    Ok(dir
        .take(FDS_PER_PROCESS_MAX)
        .filter_map(Result::ok)
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want)))
}

/// The sockets process `pid` holds (its descriptors whose link reads
/// `socket:[INODE]`) as (descriptor, inode), at most `max` of them; `Err`
/// when its descriptors cannot be read (gone, or not permitted). One read
/// of the table names every socket in it, so a caller can remember them
/// all from one look.
pub fn socket_inodes(pid: u32, max: usize) -> io::Result<Vec<(u32, u64)>> {
    let path = CString::new(format!("/proc/{pid}/fd")).expect("no NUL in a path of digits");
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is an open directory descriptor we own; fdopendir takes
    // it over (closedir below closes it), or fails and leaves it ours.
    let dir = unsafe { libc::fdopendir(fd) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut found = Vec::new();
    let mut link = [0u8; 64];
    for _ in 0..FDS_PER_PROCESS_MAX {
        if found.len() >= max {
            break;
        }
        // SAFETY: `dir` is a valid DIR stream until closedir below; the
        // entry readdir returns is valid until the next readdir or closedir,
        // and is only read before either.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name of an entry readdir returned is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes().first() == Some(&b'.') {
            continue;
        }
        // SAFETY: `dir` is open, `name` is NUL-terminated and `link` is a
        // writable buffer of the length passed; readlinkat writes at most
        // that many bytes and returns how many.
        let n = unsafe {
            libc::readlinkat(
                libc::dirfd(dir),
                name.as_ptr(),
                link.as_mut_ptr().cast(),
                link.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else { continue };
        let fd = name.to_str().ok().and_then(|f| f.parse::<u32>().ok());
        let inode = std::str::from_utf8(&link[..n.min(link.len())])
            .ok()
            .and_then(socket_inode);
        if let (Some(fd), Some(inode)) = (fd, inode) {
            found.push((fd, inode));
        }
    }
    // SAFETY: `dir` came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(dir) };
    Ok(found)
}

/// The socket inode behind descriptor `fd` of process `pid`, if that
/// descriptor is open and a socket: one readlink, a few microseconds,
/// where reading the whole table costs several times that.
pub fn fd_socket(pid: u32, fd: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    socket_inode(link.to_str()?)
}

/// The inode of a `socket:[INODE]` link text.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// CPU time this process has used so far, all its threads together
/// (CLOCK_PROCESS_CPUTIME_ID); zero if the clock cannot be read.
pub fn own_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread has used so far (CLOCK_THREAD_CPUTIME_ID):
/// what a piece of work cost, not counting the time the thread waited for
/// a CPU; zero if the clock cannot be read.
pub fn thread_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes
    // it, and reports an unknown clock as an error.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Whether process `pid` holds socket `inode`.
pub fn holds(pid: u32, inode: u64) -> io::Result<bool> {
    holds_link(pid, &format!("socket:[{inode}]"))
}

/// The processes that hold socket `inode`, each with its command
/// (/proc/PID/comm), and how many processes could not be looked at (not
/// permitted: run as root to see them all).
pub fn holders(inode: u64) -> io::Result<(Vec<(u32, String)>, usize)> {
    let want = format!("socket:[{inode}]");
    let mut found = Vec::new();
    let mut hidden = 0;
    for entry in std::fs::read_dir("/proc")?.take(PROCESSES_MAX) {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match holds_link(pid, &want) {
            Ok(true) => {
                let comm = super::cgroup::command(pid).unwrap_or_else(|| "-".into());
                found.push((pid, comm));
            }
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => hidden += 1,
            Err(_) => {} // exited meanwhile
        }
    }
    Ok((found, hidden))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn this_process_holds_its_own_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let me = std::process::id();
        assert!(holds(me, inode).unwrap());
        assert!(!holds(me, inode + 1_000_000).unwrap());
        let (who, _) = holders(inode).unwrap();
        assert!(who.iter().any(|(pid, _)| *pid == me), "{who:?}");
        let all = socket_inodes(me, usize::MAX).unwrap();
        assert!(all.contains(&(fd as u32, inode)), "{all:?}");
        assert!(socket_inodes(me, 0).unwrap().is_empty());
        assert!(socket_inodes(u32::MAX, 8).is_err());
        let fd = u32::try_from(fd).unwrap();
        assert_eq!(fd_socket(me, fd), Some(inode));
        assert_eq!(fd_socket(me, 0).filter(|&i| i == inode), None);
        assert_eq!(fd_socket(u32::MAX, fd), None);
    }

    #[test]
    fn socket_links_are_parsed_strictly() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("socket:[12"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = own_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(own_cpu_time() >= before + Duration::from_millis(10), "{x}");
        assert!(thread_cpu_time() >= Duration::from_millis(10));
    }
}
