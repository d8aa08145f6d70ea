//! rpcbind's own `local` registrations, moved back to the usual unix path
//! by `intercept disable`.
//!
//! An rpcbind started while transparent mode is on listens on the upstream
//! path and registers it as its own `local` address (program 100000,
//! versions 3 and 4, owner `superuser`). `disable` gives rpcbind back
//! /run/rpcbind.sock; these entries would still name the upstream path, so
//! they are re-registered under the usual one before that name is removed.
//!
//! What rpcbind does with the calls (its `map_unset` and `map_set`):
//! - UNSET (prog, vers, netid) removes every entry of that program and
//!   version whose netid matches, case-insensitively; an empty netid would
//!   match every netid, so the netid is always `local`. Superuser may remove
//!   any entry. A `local` netid leaves the v2 (tcp/udp) list alone.
//! - SET appends the entry (at the end of the list, so DUMP lists it after
//!   the programs registered since) with the owner taken from the caller:
//!   `superuser` for uid 0 on the unix socket. The `r_owner` sent is ignored.
//!   It fails when the (prog, vers, netid) is registered with another
//!   address.
//!
//! Each version is moved on its own (UNSET then SET at once), so a `local`
//! lookup of program 100000 finds the other version meanwhile.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;

use super::query::stream_exchange;
use crate::protocol::rpc::{self, AcceptStat};
use crate::protocol::rpcb::{self, Rpcb, RpcbEntry};
use crate::protocol::xdr::Reader;

const SET: u32 = 1;
const UNSET: u32 = 2;
const DUMP: u32 = 4;
/// The RPCB version the calls are made in (the entries' own versions are in
/// their arguments).
const CALL_VERSION: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(2);

/// rpcbind at a unix path, over one connection.
struct Rpcbind {
    stream: UnixStream,
    path: String,
    xid: u32,
}

impl Rpcbind {
    fn connect(path: &Path) -> Result<Rpcbind, String> {
        let tried = |e: std::io::Error| format!("cannot reach rpcbind at {}: {e}", path.display());
        let stream = UnixStream::connect(path).map_err(tried)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(tried)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(tried)?;
        Ok(Rpcbind {
            stream,
            path: path.display().to_string(),
            xid: std::process::id() ^ 0x4c4f_0000,
        })
    }

    /// One call; the procedure's results.
    fn call(&mut self, procedure: u32, args: &[u8]) -> Result<Vec<u8>, String> {
        self.xid = self.xid.wrapping_add(1);
        let call = rpc::encode_call(self.xid, rpcb::PROGRAM, CALL_VERSION, procedure, args);
        let reply = stream_exchange(&mut self.stream, &call)
            .map_err(|e| format!("rpcbind at {}: {e}", self.path))?;
        let r = rpc::parse_reply(&reply)
            .map_err(|e| format!("rpcbind at {}: undecodable reply: {e}", self.path))?;
        match r.accept {
            Some(AcceptStat::Success) if r.xid == self.xid => Ok(r.body.to_vec()),
            Some(AcceptStat::Success) => {
                Err(format!("rpcbind at {}: reply to another call", self.path))
            }
            Some(other) => Err(format!("rpcbind at {}: {other:?}", self.path)),
            None => Err(format!("rpcbind at {}: call denied", self.path)),
        }
    }

    fn dump(&mut self) -> Result<Vec<RpcbEntry>, String> {
        let body = self.call(DUMP, &[])?;
        rpcb::decode_rpcblist(&body)
            .map_err(|e| format!("rpcbind at {}: undecodable DUMP: {e}", self.path))
    }

    /// SET or UNSET; rpcbind's yes or no.
    fn change(&mut self, procedure: u32, entry: &Rpcb<'_>) -> Result<bool, String> {
        let mut args = BytesMut::new();
        entry.encode(&mut args);
        let body = self.call(procedure, &args)?;
        Reader::new(&body)
            .bool()
            .map_err(|e| format!("rpcbind at {}: undecodable answer: {e}", self.path))
    }
}

/// rpcbind's own `local` entries that name `path`: their versions.
fn own_entries_naming(entries: &[RpcbEntry], path: &str) -> Vec<u32> {
    entries
        .iter()
        .filter(|e| {
            e.prog == rpcb::PROGRAM
                && matches!(e.vers, 3 | 4)
                && e.netid == b"local"
                && e.owner == b"superuser"
                && e.addr == path.as_bytes()
        })
        .map(|e| e.vers)
        .collect()
}

/// The UNSET and the SET that move one version's entry to `to`.
fn moves(vers: u32, to: &str) -> [(u32, Rpcb<'_>); 2] {
    let entry = |addr: &'static [u8]| Rpcb {
        prog: rpcb::PROGRAM,
        vers,
        netid: b"local",
        addr,
        owner: b"",
    };
    [
        (UNSET, entry(b"")),
        (
            SET,
            Rpcb {
                addr: to.as_bytes(),
                owner: b"superuser",
                ..entry(b"")
            },
        ),
    ]
}

/// Re-registers rpcbind's own `local` entries that name `from` under `to`,
/// asking rpcbind at `via` (as root, so they stay `superuser`'s). Returns
/// the versions moved.
pub(crate) fn move_own_entries(via: &Path, from: &str, to: &str) -> Result<Vec<u32>, String> {
    let mut rpcbind = Rpcbind::connect(via)?;
    let versions = own_entries_naming(&rpcbind.dump()?, from);
    for &vers in &versions {
        for (procedure, entry) in moves(vers, to) {
            if !rpcbind.change(procedure, &entry)? {
                let what = if procedure == SET { "SET" } else { "UNSET" };
                return Err(format!(
                    "rpcbind refused {what} of its own local entry (100000 v{vers}) for {to}"
                ));
            }
        }
    }
    Ok(versions)
}

/// Whether any registration rpcbind at `via` holds names `path`.
pub(crate) fn advertised(via: &Path, path: &str) -> Result<bool, String> {
    let entries = Rpcbind::connect(via)?.dump()?;
    Ok(entries.iter().any(|e| e.addr == path.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prog: u32, vers: u32, netid: &str, addr: &str, owner: &str) -> RpcbEntry {
        RpcbEntry {
            prog,
            vers,
            netid: netid.into(),
            addr: addr.into(),
            owner: owner.into(),
        }
    }

    #[test]
    fn only_rpcbinds_own_local_entries_of_versions_3_and_4_move() {
        let up = "/run/rpcbind/upstream.sock";
        let list = [
            entry(100000, 4, "tcp", "0.0.0.0.0.111", "superuser"),
            entry(100000, 2, "local", up, "superuser"),
            entry(100000, 4, "local", up, "superuser"),
            entry(100000, 3, "local", up, "superuser"),
            entry(100000, 4, "local", up, "1000"),
            entry(100000, 3, "unix", up, "superuser"),
            entry(400100, 1, "local", up, "superuser"),
            entry(100000, 4, "local", "/run/rpcbind.sock", "superuser"),
        ];
        assert_eq!(own_entries_naming(&list, up), [4, 3]);
    }

    #[test]
    fn a_move_unsets_one_version_of_local_only_then_sets_the_new_path() {
        let [(p1, unset), (p2, set)] = moves(3, "/run/rpcbind.sock");
        assert_eq!((p1, p2), (UNSET, SET));
        // Never an empty netid: rpcbind would remove every transport's entry.
        assert_eq!(
            (unset.prog, unset.vers, unset.netid),
            (100000, 3, &b"local"[..])
        );
        assert_eq!(
            (set.prog, set.vers, set.netid, set.addr),
            (100000, 3, &b"local"[..], &b"/run/rpcbind.sock"[..])
        );
        let mut b = BytesMut::new();
        set.encode(&mut b);
        let mut r = Reader::new(&b);
        assert_eq!(Rpcb::decode(&mut r).unwrap(), set);
    }
}
