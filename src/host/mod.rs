//! The host: every syscall and kernel or init-system interface.
//!
//! Owns the raw syscalls (`sys`: the socket-option helpers every module
//! uses, SO_MARK, per-thread credentials, inherited sockets, RLIMIT_NOFILE,
//! SO_PEERCRED, SO_LINGER, the coarse clock), datagrams in
//! batches (`datagrams`: recvmmsg/sendmmsg), systemd's protocols (`systemd`: sd_notify, watchdog,
//! LISTEN_FDS), the journal's native protocol (`journal`), the one netlink exchange both netlink users share
//! (`netlink`: request and dump with one numbering, one recovery rule and
//! one error type; its `codec` builds messages and parses them with every
//! length checked), nf_tables over netlink
//! (`netfilter`: transparent mode's owner table), sock_diag
//! (`sockdiag`: a client's socket, TIME_WAIT counts, the listening unix sockets and the files they made), cgroups and /proc (`cgroup`: unit and command of a client; `procfd`: which processes hold a socket), the eBPF recorder of who opened each client socket (`bpf`: loaded with aya, attached through bpf links), what this process may do (`privileges`: capabilities, seccomp, pid namespace, from /proc/self/status),
//! /proc/net/tcp (`procnet`, where sock_diag is missing) and the terminal of
//! `top` (`terminal`). Every `unsafe` block of the crate lives in this folder, each
//! with its own `// SAFETY:` line. Modules here are leaves: they may import
//! each other and `protocol`, never `proxy` or `ops`, so the request path can
//! call them without a cycle.

pub mod bpf;
pub mod cgroup;
pub mod datagrams;
pub mod journal;
pub mod netfilter;
pub(crate) mod netlink;
pub mod privileges;
pub mod procfd;
pub mod procnet;
pub mod sockdiag;
pub mod sys;
pub mod systemd;
pub mod terminal;
