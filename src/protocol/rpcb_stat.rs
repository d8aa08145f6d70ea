//! rpcbind's own statistics: the reply to RPCBPROC_GETSTAT (version 4,
//! procedure 12), what `rpcinfo -m` prints.
//!
//! rpcbind counts, for each protocol version (2, 3, 4): the calls of each
//! procedure, the SETs and UNSETs that succeeded, the address lookups
//! (GETPORT/GETADDR) per program, version and netid with how many found an
//! address, and the remote calls (CALLIT/INDIRECT). Counts are XDR `int`s
//! that wrap at 2^31; they are read as unsigned, like a counter that wraps.

use crate::protocol::xdr::{Reader, XdrError};

/// Procedure slots rpcbind counts per version (RPCBSTAT_HIGHPROC).
pub const PROCEDURES: usize = 13;
/// The versions rpcbind keeps statistics for, in the reply's order.
pub const VERSIONS: [u32; 3] = [2, 3, 4];
/// The longest netid kept (rpcbind's are "tcp", "udp6", "local", ...).
const MAX_NETID: u32 = 64;
/// List entries read per version and list: rpcbind keeps one entry per
/// (program, version, netid) ever asked for, which a client can grow at
/// will; past this the rest of the list is summed into `truncated`.
pub const MAX_ENTRIES: usize = 1024;

/// The statistics of one protocol version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Calls by procedure number (only the version's own are meaningful).
    pub calls: [u32; PROCEDURES],
    /// SETs and UNSETs that succeeded (the calls are in `calls`).
    pub sets: u32,
    pub unsets: u32,
    /// Address lookups (GETPORT, GETADDR, GETVERSADDR) per program,
    /// version and netid.
    pub lookups: Vec<AddrStat>,
    /// Remote calls (CALLIT, BCAST, INDIRECT) per target.
    pub remote_calls: Vec<RemoteCallStat>,
    /// Entries beyond [`MAX_ENTRIES`], their counts summed.
    pub truncated: AddrStat,
}

/// Lookups of one program, version and netid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrStat {
    pub program: u32,
    pub version: u32,
    pub netid: String,
    /// Lookups answered with an address.
    pub success: u32,
    /// Lookups answered "not registered".
    pub failure: u32,
}

/// Remote calls to one program, version and procedure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCallStat {
    pub program: u32,
    pub version: u32,
    pub procedure: u32,
    pub netid: String,
    pub success: u32,
    pub failure: u32,
    pub indirect: u32,
}

/// The whole reply body (`rpcb_stat_byvers`): versions 2, 3 and 4.
pub type RpcbStats = [VersionStats; 3];

/// Decodes a GETSTAT reply body. Every list is bounded by the record it
/// came in (each entry takes at least 24 bytes) and, for what is kept, by
/// [`MAX_ENTRIES`].
pub fn decode_stats(body: &[u8]) -> Result<RpcbStats, XdrError> {
    let mut r = Reader::new(body);
    let mut out: RpcbStats = Default::default();
    for v in &mut out {
        for c in &mut v.calls {
            *c = r.u32()?;
        }
        v.sets = r.u32()?;
        v.unsets = r.u32()?;
        while r.bool()? {
            let [program, version, success, failure] = r.u32s::<4>()?;
            let netid = r.string(MAX_NETID)?;
            let entry = AddrStat {
                program,
                version,
                netid: String::from_utf8_lossy(netid).into_owned(),
                success,
                failure,
            };
            if v.lookups.len() < MAX_ENTRIES {
                v.lookups.push(entry);
            } else {
                v.truncated.success = v.truncated.success.wrapping_add(success);
                v.truncated.failure = v.truncated.failure.wrapping_add(failure);
            }
        }
        while r.bool()? {
            let [program, version, procedure, success, failure, indirect] = r.u32s::<6>()?;
            let netid = r.string(MAX_NETID)?;
            if v.remote_calls.len() < MAX_ENTRIES {
                v.remote_calls.push(RemoteCallStat {
                    program,
                    version,
                    procedure,
                    netid: String::from_utf8_lossy(netid).into_owned(),
                    success,
                    failure,
                    indirect,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut Vec<u8>, words: &[u32]) {
        for w in words {
            b.extend_from_slice(&w.to_be_bytes());
        }
    }

    fn put_str(b: &mut Vec<u8>, s: &str) {
        put(b, &[s.len() as u32]);
        b.extend_from_slice(s.as_bytes());
        b.resize(b.len().next_multiple_of(4), 0);
    }

    /// A reply as rpcbind encodes it: v2 with two GETPORTs (one found),
    /// one SET; v3 empty; v4 with a remote call.
    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        // v2
        let mut calls = [0u32; PROCEDURES];
        calls[1] = 2;
        calls[3] = 2;
        put(&mut b, &calls);
        put(&mut b, &[1, 0]);
        put(&mut b, &[1, 100003, 3, 1, 1]);
        put_str(&mut b, "tcp");
        put(&mut b, &[0, 0]);
        // v3
        put(&mut b, &[0; PROCEDURES]);
        put(&mut b, &[0, 0, 0, 0]);
        // v4
        let mut calls = [0u32; PROCEDURES];
        calls[12] = 7;
        put(&mut b, &calls);
        put(&mut b, &[0, 0, 0]);
        put(&mut b, &[1, 100005, 3, 0, 0, 1, 1]);
        put_str(&mut b, "udp");
        put(&mut b, &[0]);
        b
    }

    #[test]
    fn a_reply_as_rpcbind_encodes_it() {
        let s = decode_stats(&sample()).unwrap();
        assert_eq!(s[0].calls[3], 2);
        assert_eq!((s[0].sets, s[0].unsets), (1, 0));
        assert_eq!(
            s[0].lookups,
            vec![AddrStat {
                program: 100003,
                version: 3,
                netid: "tcp".into(),
                success: 1,
                failure: 1
            }]
        );
        assert_eq!(s[1], VersionStats::default());
        assert_eq!(s[2].calls[12], 7);
        assert_eq!(s[2].remote_calls[0].procedure, 0);
        assert_eq!(s[2].remote_calls[0].indirect, 1);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let full = sample();
        for len in 0..full.len() {
            assert!(decode_stats(&full[..len]).is_err(), "{len} bytes decoded");
        }
    }

    #[test]
    fn a_long_list_keeps_its_bound_and_sums_the_rest() {
        let mut b = Vec::new();
        put(&mut b, &[0; PROCEDURES]);
        put(&mut b, &[0, 0]);
        for i in 0..MAX_ENTRIES as u32 + 10 {
            put(&mut b, &[1, i, 1, 2, 3]);
            put_str(&mut b, "udp");
        }
        put(&mut b, &[0, 0]);
        for _ in 0..2 {
            put(&mut b, &[0; PROCEDURES]);
            put(&mut b, &[0, 0, 0, 0]);
        }
        let s = decode_stats(&b).unwrap();
        assert_eq!(s[0].lookups.len(), MAX_ENTRIES);
        assert_eq!((s[0].truncated.success, s[0].truncated.failure), (20, 30));
    }

    #[test]
    fn a_netid_longer_than_any_rpcbind_uses_is_refused() {
        let mut b = Vec::new();
        put(&mut b, &[0; PROCEDURES]);
        put(&mut b, &[0, 0, 1, 1, 1, 0, 0]);
        put_str(&mut b, &"x".repeat(65));
        assert!(decode_stats(&b).is_err());
    }
}
