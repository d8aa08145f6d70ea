//! cgroup v2 and /proc lookups that name the process, command and systemd
//! unit behind a socket, each bounded and without walking the cgroup tree
//! or all of /proc.
//!
//! - [`cgroup_path_by_id`]: a cgroup v2 id (from `sockdiag`'s
//!   INET_DIAG_CGROUP_ID) to its path, by opening it through a kernfs file
//!   handle on the cgroup2 mount (open_by_handle_at, CAP_DAC_READ_SEARCH);
//!   where file handles are refused (no capability, or a seccomp filter as
//!   nspawn's and Docker's default ones), by a bounded walk of the cgroup2
//!   tree comparing directory inode numbers ([`file_handles`] says which,
//!   and why).
//! - [`unit_of`]: the systemd unit a cgroup path belongs to.
//! - [`pid_of_socket`]: the process holding a socket inode, searched among
//!   the pids of one cgroup only.
//! - [`process_cgroup`], [`command`]: /proc/PID/cgroup's `0::` line, comm.
//! - [`newest_first`]: pids in the order they were handed out, newest first.
//!
//! Whatever cannot be known (the cgroup or process is gone, no cgroup v2 is
//! mounted) is `None`, never a guess.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::privileges::{Privileges, CAP_DAC_READ_SEARCH};

/// `FILEID_KERNFS` (include/linux/exportfs.h): a kernfs node by its 64-bit
/// id, which for a cgroup is its cgroup id.
const FILEID_KERNFS: libc::c_int = 0xfe;
/// Upper bound on the bytes read from /proc/self/mountinfo.
const MOUNTINFO_MAX: u64 = 4 * 1024 * 1024;
/// Upper bound on the bytes read from /proc/PID/cgroup (one line per
/// hierarchy, each a path of at most PATH_MAX).
const PROC_CGROUP_MAX: u64 = 64 * 1024;
/// Directories of the cgroup2 tree one walk looks at, at most.
const WALK_MAX: usize = 20_000;
/// Walks of the cgroup2 tree started within one second, at most (each
/// cgroup id a walk did not find costs one).
const WALKS_PER_SECOND: u32 = 10;
/// How long the last pid handed out is trusted for ordering processes.
const LAST_PID_EVERY: Duration = Duration::from_millis(100);

/// The cgroup2 mount this process sees.
#[derive(Debug)]
struct Cgroup2Mount {
    /// Where it is mounted (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified
    /// on a hybrid host).
    mountpoint: PathBuf,
    /// The cgroup the mount's root is (mountinfo's root field; "/" unless
    /// it is a bind mount of a subtree or seen from a cgroup namespace).
    root: String,
    /// A read-only descriptor of the mountpoint for open_by_handle_at.
    fd: OwnedFd,
}

/// The cached mount; looked up again only while none was found.
static MOUNT: Mutex<Option<Arc<Cgroup2Mount>>> = Mutex::new(None);

fn mount() -> io::Result<Option<Arc<Cgroup2Mount>>> {
    let mut cached = MOUNT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = cached.as_ref() {
        return Ok(Some(m.clone()));
    }
    let mut text = String::new();
    File::open("/proc/self/mountinfo")?
        .take(MOUNTINFO_MAX)
        .read_to_string(&mut text)?;
    let Some((mountpoint, root)) = find_cgroup2(&text) else {
        return Ok(None);
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF).
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&mountpoint)?;
    let m = Arc::new(Cgroup2Mount {
        mountpoint,
        root,
        fd: OwnedFd::from(file),
    });
    *cached = Some(m.clone());
    Ok(Some(m))
}

/// The first cgroup2 mount in a mountinfo text: (mountpoint, root).
fn find_cgroup2(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split_whitespace();
        let _id = f.next()?;
        let _parent = f.next()?;
        let _dev = f.next()?;
        let root = unescape(f.next()?);
        let mountpoint = unescape(f.next()?);
        Some((PathBuf::from(mountpoint), root))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(oct) = b.get(i + 1..i + 4) {
                if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let v = oct.iter().fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mountpoint this process sees (cached after the first
/// success); `None` without a cgroup2 mount.
pub fn cgroup2_mountpoint() -> io::Result<Option<PathBuf>> {
    Ok(mount()?.map(|m| m.mountpoint.clone()))
}

/// The path (relative to the cgroup2 hierarchy's root, starting with "/",
/// as in /proc/PID/cgroup) of the cgroup v2 with id `id`.
///
/// No tree walk: opens the cgroup directory with open_by_handle_at on the
/// cached cgroup2 mount with a kernfs file handle (type FILEID_KERNFS,
/// 8 bytes: the id) and reads the descriptor's path back from
/// /proc/self/fd (about 8 µs). Needs CAP_DAC_READ_SEARCH: `Err` with EPERM
/// without it, also for root (checked on Linux 6.18), so a unit with a
/// reduced CapabilityBoundingSet must keep it. Cgroup ids are not reused
/// while the system runs, so callers may cache the answer per id.
///
/// Where file handles are refused (EPERM without the capability or under a
/// seccomp filter, ENOSYS or EOPNOTSUPP from a filter or an old kernel),
/// the tree is walked instead: a cgroup2 directory's inode number is its
/// cgroup id, and readdir gives it without a stat. The walk's map is kept,
/// so one walk answers for every cgroup that existed then; an id it did not
/// have starts another, at most 10 a second.
///
/// `Ok(None)`: no cgroup2 mount, no cgroup with that id (removed since:
/// ESTALE), or one outside what this process's mount shows.
pub fn cgroup_path_by_id(id: u64) -> io::Result<Option<String>> {
    let Some(m) = mount()? else {
        return Ok(None);
    };
    match by_handle(&m, id) {
        Err(e) if handles_refused(&e) => Ok(by_walk(&m, id)),
        other => other,
    }
}

/// Whether open_by_handle_at's error means file handles cannot be used at
/// all (as opposed to this id being gone).
fn handles_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EACCES | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// The cgroup path of `id` by its kernfs file handle.
fn by_handle(m: &Cgroup2Mount, id: u64) -> io::Result<Option<String>> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: libc::c_uint,
        handle_type: libc::c_int,
        id: [u8; 8],
    }
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: `handle` is a struct file_handle header followed by exactly the
    // `handle_bytes` (8) bytes it announces, valid for reads and writes for
    // the call; the mount fd is open for as long as `m` lives. The result is
    // checked before use.
    let raw = unsafe {
        libc::open_by_handle_at(
            m.fd.as_raw_fd(),
            (&mut handle as *mut KernfsHandle).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESTALE | libc::ENOENT | libc::ENOTDIR) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `raw` is a descriptor open_by_handle_at just returned; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let link = match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    drop(fd);
    Ok(relative_path(&m.mountpoint, &m.root, &link))
}

/// The last walk of the tree: when it started, and id → cgroup path.
#[derive(Debug)]
struct Walked {
    /// The current second's start and the walks started in it.
    second: (Instant, u32),
    paths: HashMap<u64, String>,
}

static WALKED: Mutex<Option<Walked>> = Mutex::new(None);

/// The cgroup path of `id` from the last walk of the tree, or from a new
/// walk if the last one did not have it and the rate allows.
fn by_walk(m: &Cgroup2Mount, id: u64) -> Option<String> {
    let mut walked = WALKED.lock().unwrap_or_else(PoisonError::into_inner);
    let w = walked.get_or_insert_with(|| Walked {
        second: (Instant::now(), 0),
        paths: HashMap::new(),
    });
    if let Some(p) = w.paths.get(&id) {
        return Some(p.clone());
    }
    if w.second.0.elapsed() >= Duration::from_secs(1) {
        w.second = (Instant::now(), 0);
    }
    if w.second.1 >= WALKS_PER_SECOND {
        return None;
    }
    w.second.1 += 1;
    w.paths = walk(m, WALK_MAX);
    w.paths.get(&id).cloned()
}

/// Every cgroup under the mount (at most `max`), by id, breadth first.
fn walk(m: &Cgroup2Mount, max: usize) -> HashMap<u64, String> {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let root = m.root.trim_end_matches('/').to_owned();
    let mut paths = HashMap::new();
    let Ok(top) = std::fs::metadata(&m.mountpoint) else {
        return paths;
    };
    let top_path = if root.is_empty() {
        "/".to_owned()
    } else {
        root
    };
    paths.insert(top.ino(), top_path.clone());
    let mut queue = std::collections::VecDeque::from([(m.mountpoint.clone(), top_path)]);
    while let Some((dir, path)) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            if paths.len() >= max {
                return paths;
            }
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            paths.insert(e.ino(), child.clone());
            queue.push_back((e.path(), child));
        }
    }
    paths
}

/// Whether cgroups can be named by file handle here, probed once (on the
/// cgroup2 mount's own root); `Err` says why not, in words for the log.
/// Without them names still come, from a walk of the cgroup2 tree (see
/// [`cgroup_path_by_id`]), at the cost of one walk per new cgroup.
pub fn file_handles() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe_file_handles).clone()
}

fn probe_file_handles() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = match mount() {
        Ok(Some(m)) => m,
        Ok(None) => return Err("no cgroup2 hierarchy is mounted".into()),
        Err(e) => return Err(format!("cannot read /proc/self/mountinfo: {e}")),
    };
    let id = std::fs::metadata(&m.mountpoint)
        .map_err(|e| format!("cannot stat {}: {e}", m.mountpoint.display()))?
        .ino();
    match by_handle(&m, id) {
        Ok(_) => Ok(()),
        Err(e) => Err(refusal(&e, Privileges::own())),
    }
}

/// Why open_by_handle_at failed with `e`, given this process's privileges:
/// a missing capability, or a seccomp filter (the capability is there, a
/// filter is installed and the call was still refused).
fn refusal(e: &io::Error, own: Privileges) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) if !own.has(CAP_DAC_READ_SEARCH) => {
            "open_by_handle_at needs CAP_DAC_READ_SEARCH".into()
        }
        Some(libc::EPERM | libc::EACCES | libc::ENOSYS) if own.seccomp_filter => {
            "open_by_handle_at forbidden by seccomp".into()
        }
        _ => format!("open_by_handle_at failed: {e}"),
    }
}

/// A path under the mountpoint as the cgroup path ("/a/b"); `None` for
/// anything else (a deleted directory, a path outside the mount).
fn relative_path(mountpoint: &Path, root: &str, link: &Path) -> Option<String> {
    let rest = link.strip_prefix(mountpoint).ok()?;
    let rest = rest.to_str()?;
    if rest.ends_with(" (deleted)") {
        return None;
    }
    let root = root.trim_end_matches('/');
    Some(match (root.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => format!("/{rest}"),
        (false, true) => root.to_owned(),
        (false, false) => format!("{root}/{rest}"),
    })
}

/// The systemd unit of a cgroup path: its last component ending in
/// `.service` or `.scope` (`/system.slice/cron.service` → `cron.service`,
/// `/user.slice/user-1000.slice/session-3.scope` → `session-3.scope`,
/// `/system.slice/foo.service/x` → `foo.service`). `None` when there is
/// none (the root, a slice, a cgroup not made by systemd).
pub fn unit_of(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .split('/')
        .rev()
        .find(|c| {
            c.strip_suffix(".service")
                .or_else(|| c.strip_suffix(".scope"))
                .is_some_and(|stem| !stem.is_empty())
        })
        .map(str::to_owned)
}

fn read_bounded(path: &Path, max: u64) -> io::Result<Option<String>> {
    let mut text = String::new();
    let res = File::open(path).and_then(|f| f.take(max).read_to_string(&mut text));
    match res {
        Ok(_) => Ok(Some(text)),
        // The process is gone (ENOENT), or became a zombie / exited while we
        // read (ESRCH).
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A small /proc file (at most 64 bytes) in one read: a comm, a number.
/// `None` when it cannot be read (the process is gone).
fn read_small(path: &str) -> Option<String> {
    let mut buf = [0u8; 64];
    let n = File::open(path).and_then(|mut f| f.read(&mut buf)).ok()?;
    std::str::from_utf8(&buf[..n]).ok().map(str::to_owned)
}

/// The cgroup v2 path of process `pid` (the `0::` line of /proc/PID/cgroup);
/// `Ok(None)` when the process is gone or has no cgroup v2 line.
pub fn process_cgroup(pid: u32) -> io::Result<Option<String>> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let Some(text) = read_bounded(&path, PROC_CGROUP_MAX)? else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned))
}

/// The command name of process `pid` (/proc/PID/comm, at most 15 bytes);
/// `None` when the process is gone or the name is not UTF-8 or empty.
pub fn command(pid: u32) -> Option<String> {
    let text = read_small(&format!("/proc/{pid}/comm"))?;
    let name = text.trim_end_matches('\n');
    (!name.is_empty()).then(|| name.to_owned())
}

/// The process holding socket `inode`, among the first `max_procs` pids of
/// cgroup `cgroup_path` (its `cgroup.procs`): each one's /proc/PID/fd links
/// are read until one is `socket:[INODE]`. Costs O(processes in that cgroup
/// × their descriptors), not O(all of /proc): about 50 µs for a cgroup of
/// one small process. Reading another user's /proc/PID/fd links needs
/// CAP_SYS_PTRACE (root without it gets EACCES, hence `None`).
///
/// `None`: no cgroup2 mount, the cgroup is gone, no process of it (among
/// those looked at) holds the socket (it moved to another cgroup after
/// creating the socket, or passed the descriptor on), or not permitted. When
/// several processes hold the socket (fork), the first found is named.
pub fn pid_of_socket(cgroup_path: &str, inode: u64, max_procs: usize) -> Option<u32> {
    if max_procs == 0 || inode == 0 {
        return None;
    }
    let want = format!("socket:[{inode}]");
    processes(cgroup_path, max_procs)?
        .into_iter()
        .find(|&pid| holds(pid, &want))
}

/// The first `max_procs` pids of cgroup `cgroup_path` (its `cgroup.procs`);
/// `None` when the cgroup cannot be read.
pub fn processes(cgroup_path: &str, max_procs: usize) -> Option<Vec<u32>> {
    let m = mount().ok()??;
    let root = m.root.trim_end_matches('/');
    // cgroup_path is relative to the hierarchy; the mount shows `root`.
    let inside = if root.is_empty() {
        cgroup_path
    } else {
        cgroup_path.strip_prefix(root)?
    };
    let inside = inside.trim_start_matches('/');
    if inside.split('/').any(|c| c == "..") {
        return None;
    }
    let procs = m.mountpoint.join(inside).join("cgroup.procs");
    // A pid is at most 7 digits plus a newline.
    let text = read_bounded(&procs, (max_procs as u64).saturating_mul(8)).ok()??;
    Some(
        text.lines()
            .take(max_procs)
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .collect(),
    )
}

/// Orders `pids` newest first: in the order the kernel handed them out,
/// counting back from the last one (/proc/sys/kernel/ns_last_pid, read at
/// most every 100 ms), so the order holds across a wrap of
/// pid_max; pids handed out since that read (a little above it) count as
/// the newest. Without those files, highest first. Only an order of
/// preference: nothing is concluded from it.
pub fn newest_first(pids: &mut [u32]) {
    static PID_MAX: OnceLock<Option<u32>> = OnceLock::new();
    static LAST: Mutex<Option<(Instant, u32)>> = Mutex::new(None);
    let read = |p: &str| read_small(p).and_then(|t| t.trim().parse::<u32>().ok());
    let Some(max) = *PID_MAX.get_or_init(|| read("/proc/sys/kernel/pid_max").filter(|&m| m > 0))
    else {
        pids.sort_unstable_by(|a, b| b.cmp(a));
        return;
    };
    let last = {
        let mut cached = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        match *cached {
            Some((at, last)) if at.elapsed() < LAST_PID_EVERY => Some(last),
            _ => {
                let last = read("/proc/sys/kernel/ns_last_pid");
                *cached = last.map(|l| (Instant::now(), l));
                last
            }
        }
    };
    let Some(last) = last else {
        pids.sort_unstable_by(|a, b| b.cmp(a));
        return;
    };
    pids.sort_unstable_by_key(|&p| age(p, last, max));
}

/// Pids below this are never handed out again after a wrap (the kernel's
/// RESERVED_PIDS): the processes that hold them are old.
const RESERVED_PIDS: u32 = 300;

/// How far back `pid` was handed out, counting from `last` in a pid space
/// of `max`: 0 the newest. Pids up to a little above `last` (handed out
/// since it was read) count as newer still; reserved pids as the oldest.
fn age(pid: u32, last: u32, max: u32) -> u64 {
    if pid < RESERVED_PIDS {
        return u64::from(max);
    }
    let max = u64::from(max);
    let top = u64::from(last) + (max / 64).min(4096);
    (top + max - u64::from(pid) % max) % max
}

/// The owner of process `pid` (its /proc/PID directory's owner: the
/// effective uid); `None` when it is gone.
pub fn process_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

fn holds(pid: u32, want: &str) -> bool {
    super::procfd::holds_link(pid, want).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(
            unit_of("/system.slice/cron.service").as_deref(),
            Some("cron.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(
            unit_of("/system.slice/prometheus-node-exporter.service/x").as_deref(),
            Some("prometheus-node-exporter.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope")
                .as_deref(),
            Some("app-foo.scope")
        );
        assert_eq!(unit_of("/"), None);
        assert_eq!(unit_of(""), None);
        assert_eq!(unit_of("/system.slice"), None);
        assert_eq!(unit_of("/a/.service"), None);
        assert_eq!(unit_of("/a/service"), None);
    }

    #[test]
    fn mountinfo_finds_cgroup2() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned()))
        );
        let odd = "50 1 0:40 /sub\\040dir /mnt/cg\\040two rw shared:1 - cgroup2 none rw\n";
        assert_eq!(
            find_cgroup2(odd),
            Some((PathBuf::from("/mnt/cg two"), "/sub dir".to_owned()))
        );
        assert_eq!(find_cgroup2("garbage\n1 2 3\n - \n"), None);
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("\\"), "\\");
        assert_eq!(unescape("\\é12"), "\\é12");
    }

    #[test]
    fn paths_relative_to_the_hierarchy() {
        let mp = Path::new("/sys/fs/cgroup");
        assert_eq!(
            relative_path(
                mp,
                "/",
                Path::new("/sys/fs/cgroup/system.slice/cron.service")
            )
            .as_deref(),
            Some("/system.slice/cron.service")
        );
        assert_eq!(
            relative_path(mp, "/", Path::new("/sys/fs/cgroup")).as_deref(),
            Some("/")
        );
        assert_eq!(
            relative_path(mp, "/sub", Path::new("/sys/fs/cgroup/x")).as_deref(),
            Some("/sub/x")
        );
        assert_eq!(relative_path(mp, "/", Path::new("/elsewhere/x")), None);
        assert_eq!(
            relative_path(mp, "/", Path::new("/sys/fs/cgroup/x (deleted)")),
            None
        );
        // "/sys/fs/cgroupX" is not under "/sys/fs/cgroup".
        assert_eq!(relative_path(mp, "/", Path::new("/sys/fs/cgroupX/y")), None);
    }

    #[test]
    fn the_walk_names_what_file_handles_name() {
        let Some(m) = mount().unwrap() else { return };
        let map = walk(&m, WALK_MAX);
        let mine = process_cgroup(std::process::id()).unwrap().unwrap();
        let (&id, _) = map
            .iter()
            .find(|(_, p)| **p == mine)
            .unwrap_or_else(|| panic!("{mine} not in {map:?}"));
        assert_eq!(by_walk(&m, id).as_deref(), Some(mine.as_str()));
        if file_handles().is_ok() {
            for (&id, path) in &map {
                assert_eq!(by_handle(&m, id).unwrap().as_ref(), Some(path), "{id}");
            }
        }
        assert_eq!(walk(&m, 1).len(), 1);
    }

    #[test]
    fn refusals_are_explained() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        let root = Privileges::parse("CapEff:\t000001ffffffffff\nSeccomp:\t2\n");
        let nocap = Privileges::parse("CapEff:\t0000000000000000\nSeccomp:\t0\n");
        assert_eq!(
            refusal(&eperm, root),
            "open_by_handle_at forbidden by seccomp"
        );
        assert_eq!(
            refusal(&enosys, root),
            "open_by_handle_at forbidden by seccomp"
        );
        assert_eq!(
            refusal(&eperm, nocap),
            "open_by_handle_at needs CAP_DAC_READ_SEARCH"
        );
        assert!(refusal(&enosys, nocap).starts_with("open_by_handle_at failed: "));
        assert!(handles_refused(&eperm) && handles_refused(&enosys));
        assert!(!handles_refused(&io::Error::from_raw_os_error(
            libc::ESTALE
        )));
    }

    #[test]
    fn pid_ages_count_back_from_the_last_across_a_wrap() {
        // 32768 pids, the last handed out 1000: 1100 (handed out since the
        // read) is the newest, then 1000, 999, 301 (after the wrap), 32000
        // (before it); 2 (reserved) is the oldest.
        let ages: Vec<u64> = [1100, 1000, 999, 301, 32000, 2]
            .iter()
            .map(|&p| age(p, 1000, 32768))
            .collect();
        assert!(ages.windows(2).all(|w| w[0] < w[1]), "{ages:?}");
        // Near the top of the space: 310 was handed out after a wrap
        // since the read, so it is newer than 32700.
        assert!(age(310, 32760, 32768) < age(32700, 32760, 32768));
        assert!(age(32760, 32700, 32768) < age(5000, 32700, 32768));
    }

    #[test]
    fn newest_pids_first() {
        let me = std::process::id();
        let mut pids = vec![1, me, 2];
        newest_first(&mut pids);
        // This process is newer than init and pid 2 unless pids wrapped.
        assert_eq!(pids[0], me);
        assert_eq!(pids.len(), 3);
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        assert!(command(me).is_some());
        assert_eq!(command(u32::MAX), None);
        assert_eq!(process_cgroup(u32::MAX).unwrap(), None);
        assert_eq!(pid_of_socket("/", 1, 0), None);
    }
}
