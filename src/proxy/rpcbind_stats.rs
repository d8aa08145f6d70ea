//! rpcbind's own counters beside the proxy's: what reaches rpcbind (its
//! GETSTAT, what `rpcinfo -m` prints) next to what the proxy absorbed.
//!
//! Read when someone looks (`status`, a `/metrics` scrape), not on a timer,
//! so rpcbind is asked nothing while nobody watches; an answer (or a
//! failure) is reused for [`FRESH`], so a crowd of scrapers asks rpcbind
//! once. Each reading is one GETSTAT on a unix connection of its own, so it
//! never waits behind, or counts among, the clients' calls, and is given
//! up after [`WAIT`]. rpcbind counts these calls too, under v4 GETSTAT.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::rpc::{self, AcceptStat};
use crate::protocol::rpcb::{self, Procedure};
use crate::protocol::rpcb_stat::{self, AddrStat, VersionStats, VERSIONS};
use crate::proxy::service::Proxy;
use crate::proxy::status::ProcedureCount;
use crate::proxy::upstream;

/// How long one reading of rpcbind's counters is reused.
pub const FRESH: Duration = Duration::from_secs(1);
/// How long a status or a scrape waits for rpcbind's counters: rpcbind
/// answers GETSTAT in well under a millisecond, and one that is stuck
/// must not hold the operator's status up.
pub const WAIT: Duration = Duration::from_millis(300);
/// Lookup rows shown, the busiest first; the rest are summed.
const TOP_LOOKUPS: usize = 32;
const GETSTAT: u32 = 12;

/// rpcbind as the proxy sees it, in the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcbindStatus {
    /// rpcbind answered the proxy's last refresh round.
    pub up: bool,
    /// Its own counters; none when it could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<RpcbindCounters>,
}

/// rpcbind's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcbindCounters {
    /// Calls by version and procedure, every procedure of each version.
    pub calls: Vec<ProcedureCount>,
    /// SET and UNSET of each version, succeeded and failed.
    pub registrations: Vec<Registrations>,
    /// Address lookups (GETPORT, GETADDR, GETVERSADDR) by the version they
    /// came in and the program, version and netid asked for, the busiest
    /// first.
    pub lookups: Vec<LookupCount>,
    /// The lookups beyond those rows, summed.
    pub other_lookups: Outcomes,
    /// Remote calls (CALLIT, BCAST, INDIRECT) that reached rpcbind.
    pub remote_calls: Outcomes,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registrations {
    pub version: u32,
    /// `SET` or `UNSET`.
    pub procedure: String,
    pub success: u64,
    pub failure: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LookupCount {
    /// The protocol version of the lookup (2: GETPORT, 3/4: GETADDR).
    pub version: u32,
    pub program: u32,
    pub program_version: u32,
    pub netid: String,
    /// Answered with an address.
    pub success: u64,
    /// Answered "not registered".
    pub failure: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub success: u64,
    pub failure: u64,
}

/// The last reading, shared by every status and scrape within [`FRESH`].
#[derive(Debug, Default)]
pub(super) struct Readings {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Option<Arc<RpcbindCounters>>)>>,
}

impl Proxy {
    /// rpcbind's counters, read with GETSTAT over the unix connection (or
    /// the reading of the last second). None while rpcbind is down (no
    /// wait for it) or when it does not answer GETSTAT.
    pub async fn rpcbind_counters(&self) -> Option<Arc<RpcbindCounters>> {
        // One reader at a time: the others wait for its answer.
        let mut last = self.readings.last.lock().await;
        if let Some((at, counters)) = last.as_ref() {
            if at.elapsed() < FRESH {
                return counters.clone();
            }
        }
        let counters = if self.rpcbind_up() {
            self.getstat().await.map(Arc::new)
        } else {
            None
        };
        *last = Some((tokio::time::Instant::now(), counters.clone()));
        counters
    }

    async fn getstat(&self) -> Option<RpcbindCounters> {
        let call = rpc::encode_call(1, rpcb::PROGRAM, 4, GETSTAT, &[]);
        let reply = upstream::call_once(&self.rpcbind.socket, &call, WAIT)
            .await
            .ok()?;
        let parsed = rpc::parse_reply(&reply).ok()?;
        if parsed.accept != Some(AcceptStat::Success) {
            return None;
        }
        rpcb_stat::decode_stats(parsed.body)
            .ok()
            .map(|s| counters(&s))
    }
}

/// The status's view of a GETSTAT reply.
pub fn counters(stats: &rpcb_stat::RpcbStats) -> RpcbindCounters {
    let mut out = RpcbindCounters::default();
    let mut lookups = Vec::new();
    for (version, v) in VERSIONS.into_iter().zip(stats) {
        out.calls.extend(calls(version, v));
        // SET and UNSET are procedures 1 and 2 in every version.
        for (procedure, number, succeeded) in
            [(Procedure::Set, 1, v.sets), (Procedure::Unset, 2, v.unsets)]
        {
            let calls = v.calls[number];
            out.registrations.push(Registrations {
                version,
                procedure: procedure.name().into(),
                success: succeeded.into(),
                // Every call is counted; only successes have a counter.
                failure: calls.saturating_sub(succeeded).into(),
            });
        }
        lookups.extend(v.lookups.iter().map(|a| lookup(version, a)));
        out.other_lookups.success += u64::from(v.truncated.success);
        out.other_lookups.failure += u64::from(v.truncated.failure);
        for r in &v.remote_calls {
            out.remote_calls.success += u64::from(r.success);
            out.remote_calls.failure += u64::from(r.failure);
        }
    }
    lookups.sort_by(|a: &LookupCount, b| {
        (b.success + b.failure)
            .cmp(&(a.success + a.failure))
            .then_with(|| {
                (a.version, a.program, a.program_version).cmp(&(
                    b.version,
                    b.program,
                    b.program_version,
                ))
            })
            .then_with(|| a.netid.cmp(&b.netid))
    });
    for rest in lookups.drain(TOP_LOOKUPS.min(lookups.len())..) {
        out.other_lookups.success += rest.success;
        out.other_lookups.failure += rest.failure;
    }
    out.lookups = lookups;
    out
}

/// Every procedure of `version` with rpcbind's count, in number order.
fn calls(version: u32, v: &VersionStats) -> impl Iterator<Item = ProcedureCount> + '_ {
    (0..rpcb_stat::PROCEDURES as u32).filter_map(move |n| {
        Procedure::lookup(version, n).map(|p| ProcedureCount {
            version,
            procedure: p.name().into(),
            count: v.calls[n as usize].into(),
        })
    })
}

fn lookup(version: u32, a: &AddrStat) -> LookupCount {
    LookupCount {
        version,
        program: a.program,
        program_version: a.version,
        netid: a.netid.clone(),
        success: a.success.into(),
        failure: a.failure.into(),
    }
}
