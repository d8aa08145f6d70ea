//! The fallback that finds the process holding a client's socket, where
//! nothing records it when the client connects: the socket's inode is
//! looked for in the descriptor tables of its cgroup's processes. Exact
//! when it finds one (the socket is in that process's table, or the
//! process is the user's only one in the cgroup); otherwise nothing, never
//! a guess.
//!
//! Order, cheapest answer first:
//! 1. sockets seen in an earlier look: every socket inode in every table
//!    read is remembered for a moment, so one read names all the sockets
//!    a process has open at once;
//! 2. the user's only process in the cgroup (no table read at all);
//! 3. the processes that held this cgroup's client sockets more than once
//!    lately, most often first, and the latest one-shot, each at the
//!    descriptor it used last (one readlink: a long-lived client is found
//!    at its first candidate, with no read of the cgroup's process list);
//!    then the repeat clients' other descriptors of client sockets and
//!    whole tables (one with several lookups in flight);
//! 4. the cgroup's other processes, newest first: their descriptors 3-5
//!    one readlink each (a loop that starts a process per lookup is found
//!    at its newest), then their whole tables, the client's user before
//!    others.
//!
//! Each table is read at most once per lookup, and all of it within a
//! budget: a share of the proxy's own CPU time in the current second, with
//! a floor so that a quiet daemon still searches. Beyond it a lookup stays
//! unnamed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{cache, FRESH};
use crate::host::{cgroup, procfd};

/// Processes of one cgroup listed, at most.
const MAX_LISTED: usize = 4096;
/// Socket inodes remembered from one descriptor table, at most.
const MAX_SOCKETS_PER_TABLE: usize = 4096;
/// Socket inodes remembered in all, from the tables read last.
const SOCKETS_REMEMBERED: usize = 16_384;
/// Pids remembered per cgroup as having held its client sockets.
const RECENT: usize = 8;
/// The descriptors a client that has just started usually gives its
/// socket (the lowest free ones after stdin, stdout and stderr): looked at
/// one by one in every candidate before any whole table is read.
const FIRST_FDS: std::ops::RangeInclusive<u32> = 3..=5;
/// The search may take this share of the CPU time the proxy used in the
/// last second (in per cent)...
const CPU_SHARE_PERCENT: u32 = 25;
/// ...but always at least this much per second.
const FLOOR: Duration = Duration::from_millis(20);

/// A process's command (/proc/PID/comm), if it could be read.
type Command = Option<Arc<str>>;
/// The pid and command holding a socket.
pub(super) type Holder = (Option<u32>, Command);
/// A user's only process in a cgroup, if it has exactly one.
type Sole = Option<Holder>;
/// When a cgroup's process list was last read, the list, and the `Sole` it
/// gave.
type Seen = (Instant, Vec<u32>, Sole);

/// How much searching the current second may still take: a share of the
/// CPU time the proxy has used in it so far (so a storm's first second is
/// not held to the quiet second before it), or the floor.
#[derive(Debug)]
struct Budget {
    /// The current second's start, and the proxy's CPU time then.
    since: (Instant, Duration),
    /// The proxy's CPU time as last read, and when (reading it sums every
    /// thread's: it is read at most every [`CPU_READ_EVERY`]).
    cpu: (Instant, Duration),
    /// Search time (CPU) spent in the current second so far.
    spent: Duration,
}

/// How often the proxy's CPU time is read for the budget, at most.
const CPU_READ_EVERY: Duration = Duration::from_millis(10);

impl Budget {
    fn new() -> Budget {
        let now = (Instant::now(), procfd::own_cpu_time());
        Budget {
            since: now,
            cpu: now,
            spent: Duration::ZERO,
        }
    }

    /// What is left of this second's allowance, starting a new second when
    /// one has passed.
    fn left(&mut self) -> Duration {
        let now = Instant::now();
        if now.duration_since(self.cpu.0) >= CPU_READ_EVERY {
            self.cpu = (now, procfd::own_cpu_time());
        }
        if now.duration_since(self.since.0) >= Duration::from_secs(1) {
            self.since = self.cpu;
            self.spent = Duration::ZERO;
        }
        allowance(self.cpu.1.saturating_sub(self.since.1)).saturating_sub(self.spent)
    }
}

/// The search time allowed in a second in which the proxy has used `cpu`
/// of CPU time so far.
fn allowance(cpu: Duration) -> Duration {
    (cpu * CPU_SHARE_PERCENT / 100).max(FLOOR)
}

/// A process found holding a socket, and the descriptor it held it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    pid: u32,
    fd: u32,
}

/// A process that held a cgroup's client sockets lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    found: Found,
    /// How many times it was found.
    hits: u32,
    /// The descriptors below 64 it held them on (bit N: descriptor N): a
    /// client with several lookups in flight cycles through a few.
    fds: u64,
}

/// `fd` as a bit of [`Recent::fds`] (none for 64 and above).
fn fd_bit(fd: u32) -> u64 {
    1u64.checked_shl(fd).unwrap_or(0)
}

/// The search's memories and budget.
#[derive(Debug)]
pub(super) struct Search {
    /// (cgroup id, uid) → the cgroup's process list as last read, and that
    /// user's only process in it, if it had exactly one.
    holders: Mutex<LruCache<(u64, u32), Seen>>,
    /// cgroup id → the processes that held its client sockets lately:
    /// most often found first, then latest first.
    recent: Mutex<LruCache<u64, Vec<Recent>>>,
    /// Socket inode → when a look saw it in a descriptor table, and where
    /// (pid, descriptor).
    sockets: Mutex<LruCache<u64, (Instant, Found)>>,
    /// pid → its command, and when it was read.
    commands: Mutex<LruCache<u32, (Instant, Command)>>,
    budget: Mutex<Budget>,
}

impl Search {
    pub(super) fn new() -> Search {
        Search {
            holders: cache(),
            recent: cache(),
            sockets: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(SOCKETS_REMEMBERED).expect("non-zero"),
            )),
            commands: cache(),
            budget: Mutex::new(Budget::new()),
        }
    }

    /// The command of `pid`, read at most once while fresh (a long-lived
    /// client is named on every connection).
    fn command(&self, pid: u32) -> Command {
        let mut commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, c)) = commands.get(&pid) {
            if at.elapsed() < FRESH {
                return c.clone();
            }
        }
        let c: Command = cgroup::command(pid).map(Arc::from);
        commands.put(pid, (Instant::now(), c.clone()));
        c
    }

    /// The user's only process among `pids` (cgroup `cg`), remembered with
    /// the list it was found in.
    fn sole(&self, cg: u64, uid: u32, pids: Vec<u32>) -> Sole {
        let mine: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| cgroup::process_uid(p) == Some(uid))
            .collect();
        let sole = match mine[..] {
            [only] => Some((Some(only), cgroup::command(only).map(Arc::from))),
            _ => None,
        };
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put((cg, uid), (Instant::now(), pids, sole.clone()));
        sole
    }

    /// The user's only process in the cgroup, if it has exactly one; and
    /// the cgroup's process list when it was read for that.
    fn sole_process(&self, cg: u64, uid: u32, path: &str) -> (Sole, Option<Vec<u32>>) {
        // A user's only process: checked against the cgroup's current list
        // on every connection (a small read: such a cgroup is small), so a
        // process joining it is seen at once. Several processes: the list
        // is looked at again only after a while (the search is exact
        // meanwhile), so a large cgroup is not read per connection.
        let cached = match self
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(cg, uid))
        {
            Some((at, _, None)) if at.elapsed() < FRESH => return (None, None),
            Some((_, seen, Some(sole))) => Some((seen.clone(), sole.clone())),
            _ => None,
        };
        let pids = cgroup::processes(path, MAX_LISTED).unwrap_or_default();
        match cached {
            Some((seen, sole)) if seen == pids => (Some(sole), Some(pids)),
            _ => (self.sole(cg, uid, pids.clone()), Some(pids)),
        }
    }

    /// The process holding socket `inode` in cgroup `cg` (at `path`)
    /// created by `uid`, and its command. Never a guess: the user's only
    /// process there, or one found holding this very socket.
    pub(super) fn holder(&self, cg: u64, uid: u32, path: &str, inode: u64) -> Holder {
        if inode == 0 {
            return (None, None);
        }
        if let Some(found) = self.seen(inode) {
            self.matched(cg, found);
            return (Some(found.pid), self.command(found.pid));
        }
        let (sole, listed) = self.sole_process(cg, uid, path);
        if let Some(sole) = sole {
            return sole;
        }
        let left = self
            .budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .left();
        if left.is_zero() {
            return (None, None);
        }
        // Charged in this thread's CPU time (a search that waited for a
        // CPU did not cost the wait); stopped by the wall clock, which is
        // cheaper to read and never later.
        let started = procfd::thread_cpu_time();
        let found = self.look(cg, uid, path, inode, listed, Instant::now() + left);
        let took = procfd::thread_cpu_time().saturating_sub(started);
        self.budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spent += took;
        let Some(found) = found else {
            return (None, None);
        };
        self.matched(cg, found);
        (Some(found.pid), self.command(found.pid))
    }

    /// Where socket `inode` was seen in a recent look, if it was.
    fn seen(&self, inode: u64) -> Option<Found> {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        match sockets.get(&inode) {
            Some(&(at, found)) if at.elapsed() < FRESH => Some(found),
            _ => None,
        }
    }

    /// A process held a client socket of cgroup `cg`: one found more than
    /// once is tried first next time, at the descriptor it used last. A
    /// one-shot client takes the place of an older one-shot, never of a
    /// client found often.
    fn matched(&self, cg: u64, found: Found) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let list = recent.get_or_insert_mut(cg, Vec::new);
        let (hits, fds) = match list.iter().position(|r| r.found.pid == found.pid) {
            Some(i) => {
                let old = list.remove(i);
                (old.hits.saturating_add(1), old.fds | fd_bit(found.fd))
            }
            None => (1, fd_bit(found.fd)),
        };
        if list.len() >= RECENT {
            // The least found, the oldest of those.
            let least = list.iter().map(|r| r.hits).min().unwrap_or(0);
            if let Some(i) = list.iter().rposition(|r| r.hits == least) {
                list.remove(i);
            }
        }
        let at = list.partition_point(|r| r.hits > hits);
        list.insert(at, Recent { found, hits, fds });
    }

    /// The processes of cgroup `cg` found more than once lately, most
    /// first; and the latest found only once (a one-shot client often
    /// makes a second connection).
    fn first_candidates(&self, cg: u64) -> (Vec<Recent>, Option<Found>) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = recent.get(&cg) else {
            return (Vec::new(), None);
        };
        let repeat = list.partition_point(|r| r.hits > 1);
        (list[..repeat].to_vec(), list.get(repeat).map(|r| r.found))
    }

    /// `pid` is gone (or hidden): it is no longer tried first.
    fn forget(&self, cg: u64, pid: u32) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = recent.peek_mut(&cg) {
            list.retain(|r| r.found.pid != pid);
        }
    }

    /// Looks at the candidates, in the order the module describes, until
    /// one holds `inode` or `deadline` passes: single descriptors first (a
    /// readlink each: a repeat client's last one, then the first few of the
    /// cgroup's processes, newest first), then whole tables.
    fn look(
        &self,
        cg: u64,
        uid: u32,
        path: &str,
        inode: u64,
        listed: Option<Vec<u32>>,
        deadline: Instant,
    ) -> Option<Found> {
        let over = || Instant::now() >= deadline;
        let probe = |pid: u32, fd: u32| {
            (procfd::fd_socket(pid, fd) == Some(inode)).then_some(Found { pid, fd })
        };
        let (repeat, latest) = self.first_candidates(cg);
        for r in repeat.iter().map(|r| &r.found).chain(&latest) {
            if over() {
                return None;
            }
            if let Some(found) = probe(r.pid, r.fd) {
                return Some(found);
            }
        }
        // A repeat client with several sockets open at once uses other
        // descriptors: the others it used, then its whole table
        // (remembering them all), before the cgroup's other processes.
        for r in &repeat {
            for fd in (0..64).filter(|&fd| r.fds & fd_bit(fd) != 0 && fd != r.found.fd) {
                if over() {
                    return None;
                }
                if let Some(found) = probe(r.found.pid, fd) {
                    return Some(found);
                }
            }
        }
        for r in &repeat {
            if over() {
                return None;
            }
            if let Some(found) = self.holds(r.found.pid, inode) {
                return Some(found);
            }
        }
        // The cgroup's list only now: a repeat client costs no read of it.
        let me = std::process::id();
        let mut pids = match listed {
            Some(l) => l,
            None => cgroup::processes(path, MAX_LISTED).unwrap_or_default(),
        };
        for r in repeat.iter().filter(|r| !pids.contains(&r.found.pid)) {
            self.forget(cg, r.found.pid);
        }
        pids.retain(|p| *p != me && !repeat.iter().any(|r| r.found.pid == *p));
        cgroup::newest_first(&mut pids);
        for fd in FIRST_FDS {
            for &pid in &pids {
                if over() {
                    return None;
                }
                if let Some(found) = probe(pid, fd) {
                    return Some(found);
                }
            }
        }
        // Whole tables: the client's user's processes, then the others (a process that changed its uid after
        // making the socket, or was handed it).
        let mut others = Vec::new();
        let mine = pids.into_iter().filter(|&pid| {
            let same = cgroup::process_uid(pid) == Some(uid);
            if !same {
                others.push(pid);
            }
            same
        });
        let order: Vec<u32> = mine.collect();
        for pid in order.into_iter().chain(others) {
            if over() {
                return None;
            }
            if let Some(found) = self.holds(pid, inode) {
                return Some(found);
            }
        }
        None
    }

    /// Reads `pid`'s descriptor table once, remembering every socket in
    /// it; where it holds `inode`, if it does.
    fn holds(&self, pid: u32, inode: u64) -> Option<Found> {
        let table = procfd::socket_inodes(pid, MAX_SOCKETS_PER_TABLE).ok()?;
        let now = Instant::now();
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held = None;
        for &(fd, i) in &table {
            let found = Found { pid, fd };
            sockets.put(i, (now, found));
            if i == inode {
                held = Some(found);
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_allowance_is_a_share_of_cpu_with_a_floor() {
        assert_eq!(allowance(Duration::ZERO), FLOOR);
        assert_eq!(
            allowance(Duration::from_secs(1)),
            Duration::from_millis(u64::from(CPU_SHARE_PERCENT) * 10)
        );
        assert_eq!(
            allowance(Duration::from_secs(2)),
            allowance(Duration::from_secs(1)) * 2
        );
    }

    #[test]
    fn one_read_names_every_socket_of_a_table() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        let (ia, ib) = (ino(a.as_raw_fd()), ino(b.as_raw_fd()));
        let s = Search::new();
        let me = std::process::id();
        let at = |fd: i32| Found {
            pid: me,
            fd: u32::try_from(fd).unwrap(),
        };
        assert_eq!(s.holds(me, ia), Some(at(a.as_raw_fd())));
        assert_eq!(s.holds(u32::MAX, ia), None);
        assert_eq!(
            s.seen(ib),
            Some(at(b.as_raw_fd())),
            "remembered from the same read"
        );
        assert_eq!(s.seen(ib.wrapping_add(1_000_000)), None);
    }

    #[test]
    fn repeat_clients_come_first_and_one_shots_make_way() {
        let s = Search::new();
        let f = |pid: u32| Found { pid, fd: 3 };
        s.matched(7, f(1));
        s.matched(7, f(2));
        assert_eq!(
            s.first_candidates(7),
            (vec![], Some(f(2))),
            "each found once: the latest"
        );
        s.matched(7, f(1));
        let (repeat, latest) = s.first_candidates(7);
        let repeat: Vec<Found> = repeat.iter().map(|r| r.found).collect();
        assert_eq!((repeat, latest), (vec![f(1)], Some(f(2))), "found twice");
        for one_shot in 100..100 + RECENT as u32 * 2 {
            s.matched(7, f(one_shot));
        }
        s.matched(7, Found { pid: 1, fd: 4 });
        let recent = s
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&7)
            .cloned()
            .unwrap();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(
            recent[0],
            Recent {
                found: Found { pid: 1, fd: 4 },
                hits: 3,
                fds: 0b11000,
            },
            "the repeat client stays first, at its last descriptor, with both"
        );
        assert_eq!(
            recent[1].found,
            f(100 + RECENT as u32 * 2 - 1),
            "then the latest"
        );
        assert_eq!(s.first_candidates(8), (vec![], None));
        assert_eq!((fd_bit(0), fd_bit(63), fd_bit(64)), (1, 1 << 63, 0));
        s.forget(7, 1);
        assert_eq!(s.first_candidates(7), (vec![], Some(recent[1].found)));
    }
}
