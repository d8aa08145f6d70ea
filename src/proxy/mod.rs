//! The request path: from a client's socket to rpcbind and back.
//!
//! Owns the listeners and per-connection loops (`listen`), the checks and
//! local answers (`service`, each call decoded once into a `request`), who
//! may do what (`policy`), the cache (`cache`) and its coherence with
//! rpcbind's registrations (`coherence`), the persistent upstream connections (`upstream`; `link_local`: those
//! from this host's link-local addresses for server mode's link-local
//! clients; `outbound`: the client side's, to other hosts' rpcbind), the client
//! limits (`limits`), server mode's per-host rate limit and offenders
//! (`shield`), who each client is (`attribution`) and how much it
//! asks (`clients`), the counters the path bumps (`metrics`), the log
//! lines of repeated events (`logs`), rpcbind's own counters
//! (`rpcbind_stats`) and the typed status snapshot the
//! control socket sends and the operator commands read back (`status`). It imports
//! `protocol` for the wire formats and `host` for the few raw syscalls it
//! needs; it never imports `ops` (operator commands read its counters, not
//! the other way round) nor the top-level daemon, CLI or config modules.

pub mod attribution;
pub mod cache;
pub mod clients;
mod coherence;
pub mod limits;
pub mod link_local;
pub mod listen;
pub mod logs;
pub mod metrics;
pub mod outbound;
pub mod policy;
mod request;
pub mod rpcbind_stats;
pub mod service;
pub mod shield;
pub mod status;
pub mod upstream;
