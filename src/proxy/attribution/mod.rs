//! Who a client is: the process, user and systemd unit behind a connection
//! (or a UDP source), found once when it arrives, never per call.
//!
//! - unix: SO_PEERCRED gives pid and uid; the command is /proc/PID/comm and
//!   the unit comes from /proc/PID/cgroup (cached per pid for a moment).
//! - loopback TCP/UDP: the client's own socket is on this host; sock_diag
//!   finds it by its addresses (the original destination, 127.0.0.1:111,
//!   for a redirected one) and gives its uid, cgroup id and cookie. With
//!   the eBPF recorder loaded (`host::bpf`; the daemon loads it at start
//!   where the kernel and its capabilities allow), the kernel recorded the
//!   process that connected or sent from it under that cookie: pid,
//!   command, uid and cgroup, exact at any rate and even once the process
//!   has exited. The cgroup id names the unit (cached per id: ids are never
//!   reused while the system runs).
//! - Otherwise (no recorder, or a socket older than it) the process holding
//!   the socket is searched for among its cgroup's processes (`search`),
//!   within a share of the proxy's CPU; beyond it the command stays
//!   unknown.
//!
//! What cannot be known (the process already gone, no sock_diag, cgroup v1
//! only, not permitted) stays `None` and shows as `-`: never a guess. A
//! remote client keeps only its address.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::host::bpf::{Owner, Recorder};
use crate::host::cgroup;
use crate::host::sockdiag::{Proto, SockDiag};

mod search;
use search::Search;

/// How long what was learnt of a pid, or of the process behind a cgroup
/// and user, is trusted.
pub(super) const FRESH: Duration = Duration::from_secs(2);
/// Entries kept in each cache.
pub(super) const CACHE: usize = 1024;

thread_local! {
    /// Each thread's own sock_diag socket, opened on first use: the stream
    /// loops and UDP threads ask at once without waiting on one another
    /// (one exchange per new client). It answers for the network namespace
    /// it was opened in, which is the daemon's.
    static DIAG: std::cell::RefCell<Option<SockDiag>> = const { std::cell::RefCell::new(None) };
}

/// How a client reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Unix,
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Who a client is, as far as can be known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub transport: Transport,
    /// The systemd unit (`cron.service`, `session-3.scope`).
    pub unit: Option<Arc<str>>,
    /// The command name (/proc/PID/comm).
    pub command: Option<Arc<str>>,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    /// A client not on this host: its address stands in for everything.
    pub remote: Option<IpAddr>,
}

impl Identity {
    /// Nothing known but the transport.
    pub fn unknown(transport: Transport) -> Identity {
        Identity {
            transport,
            unit: None,
            command: None,
            uid: None,
            pid: None,
            remote: None,
        }
    }
}

/// How the process behind a loopback TCP or UDP client is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Nobody is named (`attribution = false`).
    Off,
    /// Looked up in what the eBPF recorder saw; a note when part of it
    /// comes from /proc instead (the command, without CAP_PERFMON).
    Ebpf(Option<String>),
    /// Searched for among the client's cgroup's processes; why the recorder
    /// is not used.
    Search(String),
}

impl Mode {
    /// `ebpf`, `search` or `off`: the word status and metrics show.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Ebpf(_) => "ebpf",
            Mode::Search(_) => "search",
        }
    }

    /// Why the recorder is not used (search), or what it does not record
    /// (ebpf).
    pub fn why(&self) -> Option<&str> {
        match self {
            Mode::Search(why) | Mode::Ebpf(Some(why)) => Some(why),
            _ => None,
        }
    }
}

/// A cgroup's path and its systemd unit.
type Names = (Option<Arc<str>>, Option<Arc<str>>);

/// A process as /proc describes it.
#[derive(Debug, Clone)]
struct Process {
    command: Option<Arc<str>>,
    unit: Option<Arc<str>>,
}

/// Finds identities, with the caches that make it cheap.
#[derive(Debug)]
pub struct Attributor {
    /// Reloadable (SIGHUP).
    enabled: AtomicBool,
    /// Transparent mode's redirect is in place: most TCP clients addressed
    /// rpcbind's port, so their sockets are looked for there first.
    redirected: AtomicBool,
    /// cgroup id → (its path, its unit).
    cgroups: Mutex<LruCache<u64, Names>>,
    /// pid → what /proc said, and when.
    processes: Mutex<LruCache<u32, (Instant, Process)>>,
    /// The process holding a socket, where nothing better tells.
    search: Search,
    /// The eBPF recorder, once loaded; or why not.
    recorder: OnceLock<Result<Recorder, String>>,
}

pub(super) fn cache<K: std::hash::Hash + Eq, V>() -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(CACHE).expect("non-zero")))
}

impl Attributor {
    /// `enabled: false` names nobody (for measuring what attribution costs).
    pub fn new(enabled: bool) -> Attributor {
        Attributor {
            enabled: AtomicBool::new(enabled),
            redirected: AtomicBool::new(false),
            cgroups: cache(),
            processes: cache(),
            search: Search::new(),
            recorder: OnceLock::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Relaxed);
    }

    /// The eBPF recorder the daemon loaded, or why it did not (set once, at
    /// start; later calls are ignored).
    pub fn set_recorder(&self, recorder: Result<Recorder, String>) {
        let _ = self.recorder.set(recorder);
    }

    /// How clients are named now.
    pub fn mode(&self) -> Mode {
        if !self.enabled() {
            return Mode::Off;
        }
        match self.recorder.get() {
            Some(Ok(r)) if r.records_commands() => Mode::Ebpf(None),
            Some(Ok(_)) => Mode::Ebpf(Some(
                "commands read from /proc/PID/comm: no CAP_PERFMON".into(),
            )),
            Some(Err(why)) => Mode::Search(why.clone()),
            None => Mode::Search("the eBPF recorder was not loaded".into()),
        }
    }

    /// Whether transparent mode redirects port 111 here.
    pub fn set_redirected(&self, redirected: bool) {
        self.redirected.store(redirected, Relaxed);
    }

    /// A unix client, from its SO_PEERCRED.
    pub fn unix(&self, pid: Option<i32>, uid: u32) -> Identity {
        let mut id = Identity {
            uid: Some(uid),
            ..Identity::unknown(Transport::Unix)
        };
        if !self.enabled() {
            return id;
        }
        let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()).filter(|&p| p != 0) else {
            return id;
        };
        id.pid = Some(pid);
        let p = self.process(pid);
        id.command = p.command;
        id.unit = p.unit;
        id
    }

    /// A TCP client from `client` to the proxy's `local` address. Its
    /// socket names the destination it connected to: in transparent mode
    /// usually rpcbind's port on the same address (redirected), which is
    /// tried first; the kernel confirms the exact addresses, so this is a
    /// lookup, not a guess. Outside transparent mode only `local` is asked:
    /// one sock_diag exchange per connection either way.
    pub fn tcp(&self, client: SocketAddr, local: SocketAddr, rpcbind_port: u16) -> Identity {
        if !self.enabled() {
            return Identity::unknown(Transport::Tcp);
        }
        if self.redirected.load(Relaxed) {
            let original = SocketAddr::new(local.ip(), rpcbind_port);
            self.inet(Proto::Tcp, client, &[original, local])
        } else {
            self.inet(Proto::Tcp, client, &[local])
        }
    }

    /// A UDP client sending from `client` to the proxy's `local` address. A
    /// redirected client addressed port 111 of the same loopback address;
    /// an unconnected socket (most are) is found either way.
    pub fn udp(&self, client: SocketAddr, local: SocketAddr, rpcbind_port: u16) -> Identity {
        self.udp_socket(client, local, rpcbind_port).0
    }

    /// [`Attributor::udp`], with the cookie of the client's socket when it
    /// was found: what [`Attributor::udp_sender`] is compared with.
    pub fn udp_socket(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        rpcbind_port: u16,
    ) -> (Identity, Option<u64>) {
        if !self.enabled() {
            return (Identity::unknown(Transport::Udp), None);
        }
        let original = SocketAddr::new(local.ip(), rpcbind_port);
        self.inet_socket(Proto::Udp, client, &[local, original])
    }

    /// With the eBPF recorder loaded: the cookie of the socket that last
    /// sent from `client`'s port (`None` if none is known, or no recorder).
    /// The same cookie as when the source was identified: the same socket,
    /// so the same identity, known without a lookup.
    pub fn udp_sender(&self, client: SocketAddr) -> Option<u64> {
        self.recorder()?.udp_sender(client)
    }

    /// The eBPF recorder, if it loaded.
    fn recorder(&self) -> Option<&Recorder> {
        self.recorder.get()?.as_ref().ok()
    }

    fn inet(&self, proto: Proto, client: SocketAddr, servers: &[SocketAddr]) -> Identity {
        self.inet_socket(proto, client, servers).0
    }

    fn inet_socket(
        &self,
        proto: Proto,
        client: SocketAddr,
        servers: &[SocketAddr],
    ) -> (Identity, Option<u64>) {
        let transport = match proto {
            Proto::Tcp => Transport::Tcp,
            Proto::Udp => Transport::Udp,
        };
        let mut id = Identity::unknown(transport);
        let ip = client.ip().to_canonical();
        if !ip.is_loopback() {
            // Another host: its socket is not here to ask about.
            id.remote = Some(ip);
            return (id, None);
        }
        // A TCP client noted at connect: its cookie without sock_diag.
        if let (Proto::Tcp, Some(recorder)) = (proto, self.recorder()) {
            if let Some(cookie) = recorder.tcp_client(client) {
                if let Some(owner) = recorder.owner(cookie) {
                    self.name_by_owner(&mut id, recorder, owner);
                    return (id, Some(cookie));
                }
            }
        }
        let found = DIAG.with_borrow_mut(|diag| {
            if diag.is_none() {
                *diag = SockDiag::open().ok();
            }
            let d = diag.as_ref()?;
            servers
                .iter()
                .find_map(|&s| d.peer_socket(proto, client, s).ok().flatten())
        });
        let Some(sock) = found else {
            return (id, None);
        };
        let cookie = Some(sock.cookie);
        tracing::trace!(?client, uid = sock.uid, cgroup = ?sock.cgroup_id, cookie = sock.cookie, "client socket");
        if let Some(recorder) = self.recorder() {
            if let Some(owner) = recorder.owner(sock.cookie) {
                self.name_by_owner(&mut id, recorder, owner);
                return (id, cookie);
            }
        }
        if sock.inode == 0 {
            // Closed by its process already (an orphan): no process holds
            // it to be found, and the kernel reports its owner as uid 0
            // and no cgroup.
            return (id, cookie);
        }
        id.uid = Some(sock.uid);
        let Some(cg) = sock.cgroup_id else {
            return (id, cookie);
        };
        let (path, unit) = self.cgroup(cg);
        id.unit = unit;
        let Some(path) = path else {
            return (id, cookie);
        };
        let (pid, command) = self.search.holder(cg, sock.uid, &path, sock.inode);
        id.pid = pid;
        id.command = command;
        (id, cookie)
    }

    /// Who the recorder saw open the client's socket.
    fn name_by_owner(&self, id: &mut Identity, recorder: &Recorder, owner: Owner) {
        id.uid = Some(owner.uid);
        // The kernel's pid is the host's: only meaningful (and in this
        // /proc) when the daemon shares the host's pid namespace.
        id.pid = recorder.pids_are_ours().then_some(owner.pid);
        id.command = match owner.command() {
            Some(c) => Some(Arc::from(c)),
            // Not recorded (no CAP_PERFMON): the process's own, while it
            // lives.
            None => id.pid.and_then(|pid| self.process(pid).command),
        };
        id.unit = self.cgroup(owner.cgroup).1.or_else(|| {
            // The cgroup cannot be named by its id: the process's own,
            // while it lives.
            id.pid.and_then(|pid| self.process(pid).unit)
        });
    }

    fn process(&self, pid: u32) -> Process {
        if let Some((at, p)) = self
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
        {
            if at.elapsed() < FRESH {
                return p.clone();
            }
        }
        let p = Process {
            command: cgroup::command(pid).map(Arc::from),
            unit: cgroup::process_cgroup(pid)
                .ok()
                .flatten()
                .and_then(|path| cgroup::unit_of(&path))
                .map(Arc::from),
        };
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(pid, (Instant::now(), p.clone()));
        p
    }

    fn cgroup(&self, id: u64) -> Names {
        if let Some(v) = self
            .cgroups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return v.clone();
        }
        let path = match cgroup::cgroup_path_by_id(id) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(cgroup = id, error = %e, "cannot name a client's cgroup");
                None
            }
        };
        tracing::trace!(cgroup = id, ?path, "client cgroup");
        let unit = path.as_deref().and_then(cgroup::unit_of).map(Arc::from);
        let v = (path.map(Arc::from), unit);
        // A cgroup that could not be resolved may be one being created:
        // only what was found is kept.
        if v.0.is_some() {
            self.cgroups
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(id, v.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_named_by_its_pid() {
        let a = Attributor::new(true);
        let id = a.unix(Some(std::process::id() as i32), 0);
        assert_eq!(id.pid, Some(std::process::id()));
        assert!(id.command.is_some(), "{id:?}");
        let off = Attributor::new(false).unix(Some(std::process::id() as i32), 0);
        assert_eq!((off.pid, off.command, off.uid), (None, None, Some(0)));
    }

    #[test]
    fn a_gone_process_is_unknown_not_guessed() {
        let a = Attributor::new(true);
        // Above pid_max (at most 2^22): no such process.
        let id = a.unix(Some(i32::MAX), 1000);
        assert_eq!((id.command, id.unit), (None, None));
        assert_eq!(id.uid, Some(1000));
    }

    #[test]
    fn remote_clients_keep_their_address() {
        let a = Attributor::new(true);
        let id = a.udp(
            "192.0.2.7:700".parse().unwrap(),
            "0.0.0.0:1111".parse().unwrap(),
            111,
        );
        assert_eq!(id.remote, Some("192.0.2.7".parse().unwrap()));
        assert_eq!((id.uid, id.command), (None, None));
    }
}
