//! The fallback that finds the process holding a client's socket: its
//! cgroup's processes are looked at for the socket's inode, within a time
//! budget. Exact when it finds one (the socket is in that process's
//! descriptor table, or the process is the user's only one in the cgroup);
//! otherwise nothing, never a guess.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{cache, FRESH};
use crate::host::cgroup;

/// Processes of one cgroup looked at to find the one holding a socket.
const MAX_PROCS: usize = 16;
/// Processes of one cgroup looked at to tell whether one user has only one.
const MAX_LISTED: usize = 256;
/// Time per second that searches for a socket's process may take (2%).
const SEARCH_BUDGET: Duration = Duration::from_millis(20);

/// The pid and command holding a socket.
pub(super) type Holder = (Option<u32>, Option<Arc<str>>);
/// A user's only process in a cgroup, if it has exactly one.
type Sole = Option<Holder>;
/// When a cgroup's process list was last read, the list, and the `Sole` it
/// gave.
type Seen = (Instant, Vec<u32>, Sole);

/// The search's caches and budget.
#[derive(Debug)]
pub(super) struct Search {
    /// (cgroup id, uid) → the cgroup's process list as last read, and that
    /// user's only process in it, if it had exactly one.
    holders: Mutex<LruCache<(u64, u32), Seen>>,
    /// Search time spent in the current second: (the second's start, spent).
    budget: Mutex<(Instant, Duration)>,
}

impl Search {
    pub(super) fn new() -> Search {
        Search {
            holders: cache(),
            budget: Mutex::new((Instant::now(), Duration::ZERO)),
        }
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

    /// The process holding socket `inode` in cgroup `cg` created by `uid`,
    /// and its command. Never a guess: the user's only process there, or
    /// the one found holding this very socket.
    pub(super) fn holder(&self, cg: u64, uid: u32, path: &str, inode: u64) -> Holder {
        // A user's only process: checked against the cgroup's current list
        // on every connection (a small read: such a cgroup is small), so a
        // process joining it is seen at once. Several processes: the list
        // is looked at again only after a while (the search below is exact
        // meanwhile), so a large cgroup is not read per connection.
        let cached = match self
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(cg, uid))
        {
            Some((at, _, None)) if at.elapsed() < FRESH => Some((None, None)),
            Some((_, seen, Some(sole))) => Some((Some(seen.clone()), Some(sole.clone()))),
            _ => None,
        };
        let sole = match cached {
            Some((None, None)) => None,
            Some((Some(seen), sole)) => {
                let pids = cgroup::processes(path, MAX_LISTED).unwrap_or_default();
                if pids == seen {
                    sole
                } else {
                    self.sole(cg, uid, pids)
                }
            }
            _ => {
                let pids = cgroup::processes(path, MAX_LISTED).unwrap_or_default();
                self.sole(cg, uid, pids)
            }
        };
        if let Some(sole) = sole {
            return sole;
        }
        // Several processes of this user share the cgroup (a cron daemon and
        // its jobs): look for the one holding this socket, while the budget
        // lasts.
        {
            let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
            if budget.0.elapsed() >= Duration::from_secs(1) {
                *budget = (Instant::now(), Duration::ZERO);
            }
            if budget.1 >= SEARCH_BUDGET {
                return (None, None);
            }
        }
        let started = Instant::now();
        let pid = cgroup::pid_of_socket(path, inode, MAX_PROCS);
        self.budget.lock().unwrap_or_else(PoisonError::into_inner).1 += started.elapsed();
        (pid, pid.and_then(cgroup::command).map(Arc::from))
    }
}
