//! Which processes hold a socket, read from /proc/PID/fd links
//! (`socket:[INODE]`). Reading another user's links needs root (or
//! CAP_SYS_PTRACE); a process whose links cannot be read is reported as
//! such, never as "does not hold it".

use std::io;

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
    }
}
