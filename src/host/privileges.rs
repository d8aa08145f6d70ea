//! What this process may do, as /proc/self/status says: its effective
//! capabilities, whether a seccomp filter is on, and whether it is in the
//! host's pid namespace. Read where a refused call needs explaining (the
//! eBPF recorder, cgroup file handles), so the log can say "no CAP_BPF" or
//! "forbidden by seccomp" instead of a bare EPERM.

/// CAP_DAC_READ_SEARCH (linux/capability.h): what open_by_handle_at needs.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The parts of /proc/self/status read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privileges {
    /// `CapEff:` (none if unreadable).
    capabilities: u64,
    /// `Seccomp: 2`: a filter decides which calls are allowed.
    pub seccomp_filter: bool,
    /// `NSpid:` names one pid: the host's pid namespace, not a nested one.
    pub host_pid_namespace: bool,
}

impl Privileges {
    /// This process's, now; all `false` and no capability if /proc cannot be
    /// read.
    pub fn own() -> Privileges {
        Privileges::parse(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
    }

    /// From the text of a /proc/PID/status file.
    pub fn parse(status: &str) -> Privileges {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        Privileges {
            capabilities: field("CapEff:")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or(0),
            seccomp_filter: field("Seccomp:") == Some("2"),
            host_pid_namespace: field("NSpid:")
                .is_some_and(|pids| pids.split_whitespace().count() == 1),
        }
    }

    /// Whether capability `cap` (a CAP_ number) is effective.
    pub fn has(&self, cap: u32) -> bool {
        cap < 64 && self.capabilities & (1 << cap) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let p =
            Privileges::parse("Name:\tx\nNSpid:\t7\t1\nCapEff:\t000001ffffffffff\nSeccomp:\t2\n");
        assert!(p.has(CAP_BPF) && p.has(CAP_DAC_READ_SEARCH) && !p.has(41) && !p.has(64));
        assert!(p.seccomp_filter);
        assert!(!p.host_pid_namespace);
        assert!(Privileges::parse("NSpid:\t4242\n").host_pid_namespace);
        assert!(!Privileges::parse("CapEff:\tzz\n").has(0));
        assert!(!Privileges::parse("Seccomp:\t0\n").seccomp_filter);
        assert_eq!(Privileges::parse(""), Privileges::default());
    }
}
