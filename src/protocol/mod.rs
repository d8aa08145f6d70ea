//! Wire formats: bytes in, bytes out, no I/O.
//!
//! Owns the bounded XDR reader and writer (`xdr`), ONC RPC record marking,
//! the call and reply envelopes and libtirpc's authentication rules (`rpc`),
//! program 100000's procedures and argument/result types (`rpcb`), and
//! rpcbind's own statistics, the GETSTAT reply (`rpcb_stat`).
//! Everything here is pure: it may import nothing else of the crate, opens no
//! socket and reads no clock, so it can be fuzzed and tested byte by byte.

pub mod rpc;
pub mod rpcb;
pub mod rpcb_stat;
pub mod xdr;
