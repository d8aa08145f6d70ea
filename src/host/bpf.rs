//! The eBPF recorder of attribution: a small program (bpf/attribution.bpf.c,
//! built by build.rs) that the kernel runs when a process connects a socket
//! to, or sends a datagram to, a watched port. It records the socket's
//! cookie → the process's pid, uid, command and cgroup in an LRU map; the
//! proxy reads its client's socket cookie from sock_diag and looks it up.
//! Exact at any rate, no race with the process exiting, and nothing
//! searched in /proc.
//!
//! Loaded with aya (a pure-Rust loader); attached at the root of the cgroup2
//! hierarchy the daemon sees, through bpf links (Linux 5.7 or later): the
//! kernel removes the programs when the links' descriptors close, so a
//! daemon killed by SIGKILL or a crash leaves nothing behind. Programs
//! attached by others stay (multi-attach). Where it cannot load (no
//! CAP_BPF and CAP_NET_ADMIN, a seccomp filter without `bpf`, an older
//! kernel, a verifier that refuses it), [`Recorder::load`] says why in one
//! line and attribution falls back to searching /proc.

#![allow(unsafe_code)]

use std::fs::File;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use super::privileges::{Privileges, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN};

/// The objects build.rs compiled: with the command recorded, and without
/// (for a kernel that allows `bpf_get_current_comm` to cgroup programs only
/// with CAP_PERFMON). Aligned: the ELF parser reads its headers in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/attribution.bpf.o"));
static OBJECT_NO_COMM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/attribution-nocomm.bpf.o"));

/// The programs in the object, by their function names.
const PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// Sockets remembered; the oldest are dropped when full. At 40 bytes an
/// entry (key and value), about 2.6 MB of locked kernel memory at most.
pub const OWNERS: u32 = 65_536;
/// Ports watched at most (the `ports` map's size in the object).
pub const MAX_PORTS: usize = 16;

/// What the program recorded of a socket's process, laid out as its C
/// `struct owner`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The process (thread group) id.
    pub pid: u32,
    /// The uid it ran as.
    pub uid: u32,
    /// Its cgroup v2 id (resolve with `host::cgroup::cgroup_path_by_id`).
    pub cgroup: u64,
    /// Its command name, NUL-padded.
    comm: [u8; 16],
}

// SAFETY: Owner is repr(C), Copy, and made only of integers and a byte
// array with no padding (4 + 4 + 8 + 16 bytes): every bit pattern the
// kernel copies into it is a valid value.
unsafe impl aya::Pod for Owner {}

impl Owner {
    /// The command name, `None` when empty or not UTF-8.
    pub fn command(&self) -> Option<&str> {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.comm[..end])
            .ok()
            .filter(|c| !c.is_empty())
    }
}

/// The loaded, attached programs and the map they fill. Dropping it
/// detaches them.
pub struct Recorder {
    /// Holds the programs and their links.
    _ebpf: Ebpf,
    owners: HashMap<MapData, u64, Owner>,
    /// Source port (IPv6: 65536 + port) → the cookie of the socket that
    /// last sent a datagram from it to a watched port, mapped read-only
    /// into this process.
    udp_senders: Senders,
    /// A TCP client's own address → its socket's cookie, noted when it
    /// connected (`None`: the sock_ops program could not be loaded, or the
    /// namespace's cookie is unknown; sock_diag gives the cookie then).
    tcp_clients: Option<HashMap<MapData, TcpClient, u64>>,
    /// The kernel records commands (CAP_PERFMON).
    commands: bool,
    /// The daemon is in the host's pid namespace, so the pids the kernel
    /// records are the ones its /proc shows.
    pids_are_ours: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    /// Loads the programs, lets them watch `ports` (rpcbind's and the
    /// proxy's own) and attaches them at `cgroup_root` (the cgroup2
    /// mountpoint). The error is one line saying why, for the log.
    pub fn load(cgroup_root: &std::path::Path, ports: &[u16]) -> Result<Recorder, String> {
        let kernel =
            KernelVersion::current().map_err(|e| format!("kernel version unknown: {e}"))?;
        // Before 5.7, cgroup programs attach without a link: they would
        // stay attached after the daemon died.
        if kernel < KernelVersion::new(5, 7, 0) {
            return Err(format!(
                "Linux {kernel} has no bpf links for cgroup programs (5.7 or later needed)"
            ));
        }
        let own = Privileges::own();
        let has = |cap: u32| own.has(cap);
        if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
            return Err("no CAP_BPF".into());
        }
        if !has(CAP_NET_ADMIN) && !has(CAP_SYS_ADMIN) {
            return Err("no CAP_NET_ADMIN, which cgroup socket programs need".into());
        }
        // What a refused bpf() call means: under a seccomp filter, EPERM
        // and ENOSYS are the filter's answer (the capabilities are there).
        let refused = |what: String, e: &dyn std::error::Error| {
            let line = verifier_error(&chain(e));
            if own.seccomp_filter
                && (line.ends_with("(os error 1)") || line.ends_with("(os error 38)"))
            {
                let errno = line.rsplit(": ").next().unwrap_or_default();
                format!("bpf() forbidden by seccomp: {errno}")
            } else {
                format!("{what}: {line}")
            }
        };
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return Err(format!("{} ports to watch (1 to {MAX_PORTS})", ports.len()));
        }
        let cgroup = File::open(cgroup_root)
            .map_err(|e| format!("cannot open {}: {e}", cgroup_root.display()))?;
        let commands = has(CAP_PERFMON) || has(CAP_SYS_ADMIN);
        let attempt = |object| attach(object, &cgroup, cgroup_root, ports, &refused);
        let (ebpf, commands) = match attempt(if commands { OBJECT } else { OBJECT_NO_COMM }) {
            // Some kernels refuse the command helper even so.
            Err(e) if commands && e.contains("bpf_get_current_comm") => {
                (attempt(OBJECT_NO_COMM)?, false)
            }
            r => (r?, commands),
        };
        let mut ebpf = ebpf;
        let owners = ebpf
            .take_map("owners")
            .ok_or("the object has no owners map")?;
        let owners = HashMap::try_from(owners).map_err(|e| format!("owners map: {e}"))?;
        let tcp_clients = fast_tcp(&mut ebpf, &cgroup);
        let senders = ebpf
            .take_map("udp_senders")
            .ok_or("the object has no udp_senders map")?;
        let udp_senders = Senders::map(senders)?;
        Ok(Recorder {
            _ebpf: ebpf,
            owners,
            udp_senders,
            tcp_clients,
            commands,
            pids_are_ours: own.host_pid_namespace,
        })
    }

    /// The cookie of the TCP socket connected from `client` to a watched
    /// port in this network namespace, as the kernel noted it when it
    /// connected (`None`: not noted, or the fast path is not loaded).
    pub fn tcp_client(&self, client: std::net::SocketAddr) -> Option<u64> {
        let map = self.tcp_clients.as_ref()?;
        map.get(&TcpClient::of(client), 0).ok()
    }

    /// Whether TCP clients' cookies are noted at connect (the fast path).
    pub fn notes_tcp_clients(&self) -> bool {
        self.tcp_clients.is_some()
    }

    /// The cookie of the socket that last sent a datagram from `source`'s
    /// port (IPv6 and IPv4 apart) to a watched port, if any did: the same
    /// as before means the same socket is still sending from it (a socket
    /// reusing the port writes its own cookie before its datagram leaves).
    pub fn udp_sender(&self, source: std::net::SocketAddr) -> Option<u64> {
        let v6 = source.is_ipv6() && source.ip().to_canonical().is_ipv6();
        let index = usize::from(source.port()) + if v6 { 65_536 } else { 0 };
        Some(self.udp_senders.get(index)).filter(|&c| c != 0)
    }

    /// Whether the kernel records commands (`Owner::command`); if not, they
    /// are read from /proc/PID/comm while the process lives.
    pub fn records_commands(&self) -> bool {
        self.commands
    }

    /// Whether the pids recorded are this daemon's (it is in the host's pid
    /// namespace); if not, only command, uid and cgroup are.
    pub fn pids_are_ours(&self) -> bool {
        self.pids_are_ours
    }

    /// Who connected or last sent from the socket with this cookie.
    pub fn owner(&self, cookie: u64) -> Option<Owner> {
        self.owners.get(&cookie, 0).ok()
    }
}

/// Entries of the udp_senders array (two port ranges).
const SENDERS: usize = 2 * 65_536;

/// The udp_senders array, mapped into this process (read-only, shared
/// with the kernel, which the program writes): one load per datagram.
struct Senders {
    /// Keeps the map (and so the mapping's backing) alive.
    _map: aya::maps::Map,
    words: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
}

// SAFETY: the mapping is only read, through atomics, and lives until drop.
unsafe impl Send for Senders {}
// SAFETY: as above: shared reads of atomics are sound from any thread.
unsafe impl Sync for Senders {}

impl Senders {
    const LEN: usize = SENDERS * std::mem::size_of::<u64>();

    fn map(map: aya::maps::Map) -> Result<Senders, String> {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = match &map {
            aya::maps::Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err("udp_senders is not an array".into()),
        };
        // SAFETY: a new shared read-only mapping of the array map's
        // descriptor, LEN bytes (the map's 131,072 u64 values, which the
        // kernel page-aligns); no existing memory is touched, and a failure
        // is only an error.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(format!(
                "mapping udp_senders: {}",
                std::io::Error::last_os_error()
            ));
        }
        let words = std::ptr::NonNull::new(at.cast()).ok_or("mapping udp_senders: null")?;
        Ok(Senders { _map: map, words })
    }

    /// The cookie at `index` (0: none); `index` beyond the array reads 0.
    fn get(&self, index: usize) -> u64 {
        if index >= SENDERS {
            return 0;
        }
        // SAFETY: index < SENDERS, inside the LEN-byte mapping, which is
        // 8-byte aligned (page-aligned) and lives as long as self; the
        // kernel writes these words, hence atomic loads.
        let word = unsafe { &*self.words.as_ptr().add(index) };
        word.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of LEN bytes, not used after
        // this.
        unsafe {
            libc::munmap(self.words.as_ptr().cast(), Self::LEN);
        }
    }
}

/// A TCP client's address as the sock_ops program keys it (its C
/// `struct tcp_client`): the family, the address in network byte order
/// (IPv4 in the first word) and the port in host order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpClient {
    family: u32,
    ip: [u32; 4],
    port: u32,
}

// SAFETY: TcpClient is repr(C), Copy, and made only of u32s (24 bytes, no
// padding): every bit pattern is a valid value.
unsafe impl aya::Pod for TcpClient {}

impl TcpClient {
    fn of(addr: std::net::SocketAddr) -> TcpClient {
        let words = |b: &[u8]| -> [u32; 4] {
            let mut w = [0u32; 4];
            for (i, c) in b.chunks(4).enumerate().take(4) {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            w
        };
        match addr.ip().to_canonical() {
            std::net::IpAddr::V4(v4) => TcpClient {
                family: libc::AF_INET as u32,
                ip: words(&v4.octets()),
                port: u32::from(addr.port()),
            },
            std::net::IpAddr::V6(v6) => TcpClient {
                family: libc::AF_INET6 as u32,
                ip: words(&v6.octets()),
                port: u32::from(addr.port()),
            },
        }
    }
}

/// The sock_ops program that notes each TCP client's address → cookie at
/// connect, for this network namespace only: loaded and attached where the
/// kernel allows it (its netns-cookie helper is Linux 5.15), else `None`
/// and sock_diag gives clients' cookies, as before.
fn fast_tcp(ebpf: &mut Ebpf, cgroup: &File) -> Option<HashMap<MapData, TcpClient, u64>> {
    let own = super::sys::netns_cookie()?;
    {
        let map = ebpf.map_mut("netns")?;
        let mut netns: Array<&mut MapData, u64> = Array::try_from(map).ok()?;
        netns.set(0, own, 0).ok()?;
    }
    let prog: &mut SockOps = ebpf.program_mut("tcp_connect")?.try_into().ok()?;
    if let Err(e) = prog.load() {
        tracing::debug!(
            "the TCP fast path is not loaded: {}",
            verifier_error(&chain(&e))
        );
        return None;
    }
    prog.attach(cgroup, CgroupAttachMode::Single).ok()?;
    HashMap::try_from(ebpf.take_map("tcp_clients")?).ok()
}

/// Loads `object`, fills its ports map and attaches its programs at
/// `cgroup`: the loaded object, or why not (one line).
fn attach(
    object: &[u8],
    cgroup: &File,
    cgroup_root: &std::path::Path,
    ports: &[u16],
    refused: &dyn Fn(String, &dyn std::error::Error) -> String,
) -> Result<Ebpf, String> {
    let mut ebpf = EbpfLoader::new()
        .set_max_entries("owners", OWNERS)
        .load(object)
        .map_err(|e| refused("loading the eBPF object".into(), &e))?;
    {
        let map = ebpf.map_mut("ports").ok_or("the object has no ports map")?;
        let mut watched: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(|e| format!("ports map: {e}"))?;
        for &p in ports {
            // As the program reads user_port: network byte order in the
            // low 16 bits.
            watched
                .insert(u32::from(p.to_be()), 1, 0)
                .map_err(|e| format!("ports map: {}", chain(&e)))?;
        }
    }
    for name in PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("the object has no program {name}"))?
            .try_into()
            .map_err(|e| format!("program {name}: {e}"))?;
        prog.load()
            .map_err(|e| refused(format!("the kernel refused program {name}"), &e))?;
        // Through a link (5.7 and later): always beside the programs others
        // attached; the kernel takes no attach flags with it (`Single` is
        // no flag).
        prog.attach(cgroup, CgroupAttachMode::Single).map_err(|e| {
            format!(
                "attaching {name} at {}: {}",
                cgroup_root.display(),
                chain(&e)
            )
        })?;
    }
    Ok(ebpf)
}

/// A refusal on one line: a verifier's log (the program's instructions as
/// it walked them, then why it stopped, then its statistics) shortened to
/// the line that says why.
fn verifier_error(line: &str) -> String {
    let Some((head, log)) = line.split_once("Verifier output:") else {
        return line.replace('\n', " ");
    };
    let why = log
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with(|c: char| c.is_ascii_digit())
                && !l.starts_with(':')
                && !["verification time", "stack depth", "processed"]
                    .iter()
                    .any(|p| l.starts_with(p))
        })
        .unwrap_or("no reason given");
    format!("{}: {why}", head.trim_end().trim_end_matches('.'))
}

/// An error and its causes, on one line (aya's errors wrap the syscall's).
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    let mut n = 0;
    while let Some(s) = source {
        // aya repeats a cause in its own message at times.
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
        n += 1;
        if n == 8 {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_log_is_shortened_to_its_reason() {
        let log = "the BPF_PROG_LOAD syscall failed. Verifier output: 0: R1=ctx() R10=fp0\n\
            0: (bf) r6 = r1                       ; R1=ctx() R6=ctx()\n\
            25: (85) call bpf_get_current_comm#16\n\
            program of this type cannot use helper bpf_get_current_comm#16\n\
            verification time 156 usec\nstack depth 48\n\
            processed 25 insns (limit 1000000) max_states_per_insn 0\n\
            : Invalid argument (os error 22)";
        assert_eq!(
            verifier_error(log),
            "the BPF_PROG_LOAD syscall failed: program of this type cannot use helper bpf_get_current_comm#16"
        );
        assert_eq!(verifier_error("a\nb"), "a b");
    }

    #[test]
    fn command_names() {
        let mut o = Owner {
            pid: 1,
            uid: 0,
            cgroup: 1,
            comm: [0; 16],
        };
        assert_eq!(o.command(), None);
        o.comm[..7].copy_from_slice(b"rpcinfo");
        assert_eq!(o.command(), Some("rpcinfo"));
        o.comm = [b'a'; 16];
        assert_eq!(o.command(), Some("aaaaaaaaaaaaaaaa"));
        o.comm[0] = 0xff;
        assert_eq!(o.command(), None);
    }
}
