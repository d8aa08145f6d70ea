//! The host's listening unix sockets, asked of the kernel (unix_diag): each
//! one's socket inode (`socket:[INODE]` in its holders' /proc/PID/fd), its
//! bound name (a path, or an abstract name) and, for a path, the file it
//! made (device and inode), which is how a second name of the same socket
//! (a hard link, as transparent mode makes) is recognised: /proc/net/unix
//! shows only the name a socket was bound to, never the file a path names
//! now.

use std::io;
use std::path::PathBuf;

use super::msg::protocol;
use super::DUMP_LIMITS;
use crate::host::netlink::{attrs, Message, NetlinkSocket, NlMsg};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// linux/unix_diag.h
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
/// The listening state of a unix socket (TCP_LISTEN in the kernel's table).
const STATE_LISTEN: u8 = 10;
/// unix_diag_msg: family, type, state, pad, ino, cookie[2].
const MSG_LEN: usize = 16;
/// A sun_path is at most 108 bytes; a longer name attribute is malformed.
const NAME_MAX: usize = 108;

/// A unix socket's bound name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    /// A path in the file system, as it was bound (the file may have been
    /// renamed or unlinked since: see [`UnixListener::file`]).
    Path(PathBuf),
    /// An abstract name (the bytes after the leading NUL), which belongs to
    /// the network namespace and vanishes with its last socket.
    Abstract(Vec<u8>),
}

impl UnixName {
    /// An abstract name as tools print it: `@` and the name.
    pub fn display(&self) -> String {
        match self {
            UnixName::Path(p) => p.display().to_string(),
            UnixName::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// One listening unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListener {
    /// The socket's inode: `socket:[INODE]` in /proc/PID/fd of its holders.
    pub inode: u64,
    /// SOCK_STREAM or SOCK_SEQPACKET.
    pub kind: u8,
    pub name: Option<UnixName>,
    /// For a path: the (st_dev, st_ino) of the socket file it made, as
    /// `stat` reports them for any name of that file.
    pub file: Option<(u64, u64)>,
}

/// Every listening unix socket in this network namespace.
pub fn unix_listeners() -> io::Result<Vec<UnixListener>> {
    let sock = NetlinkSocket::open(libc::NETLINK_SOCK_DIAG, "sock_diag", super::RECV_TIMEOUT)?;
    let req = Message {
        msg_type: SOCK_DIAG_BY_FAMILY,
        flags: 0,
        payload: request(),
    };
    let mut malformed = 0usize;
    let found = sock.dump(&req, DUMP_LIMITS, Vec::new, |all, m| match parse(m) {
        Some(Some(l)) => all.push(l),
        Some(None) => {}
        None => malformed += 1,
    })?;
    if malformed > 0 {
        return Err(protocol(format!(
            "{malformed} malformed unix_diag message(s)"
        )));
    }
    Ok(found)
}

/// unix_diag_req: every listening socket, with its name and file.
fn request() -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.push(libc::AF_UNIX as u8);
    out.push(0); // protocol
    out.extend_from_slice(&0u16.to_ne_bytes()); // pad
    out.extend_from_slice(&(1u32 << STATE_LISTEN).to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // ino: any
    out.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS).to_ne_bytes());
    out.extend_from_slice(&[0xff; 8]); // cookie: none
    out
}

/// One reply message: `Some(Some(_))` a listener, `Some(None)` another
/// message type or state (skipped), `None` malformed.
fn parse(m: &NlMsg<'_>) -> Option<Option<UnixListener>> {
    if m.msg_type != SOCK_DIAG_BY_FAMILY {
        return Some(None);
    }
    let p = m.payload;
    if p.len() < MSG_LEN {
        return None;
    }
    if p[0] != libc::AF_UNIX as u8 || p[2] != STATE_LISTEN {
        return Some(None);
    }
    let inode = u64::from(u32::from_ne_bytes(p[4..8].try_into().ok()?));
    let mut l = UnixListener {
        inode,
        kind: p[1],
        name: None,
        file: None,
    };
    for a in attrs(&p[MSG_LEN..]) {
        let (kind, value) = a.ok()?;
        match kind {
            UNIX_DIAG_NAME => {
                if value.len() > NAME_MAX {
                    return None;
                }
                l.name = match value.split_first() {
                    None => None,
                    Some((0, rest)) => Some(UnixName::Abstract(rest.to_vec())),
                    Some(_) => {
                        let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                        let path = std::str::from_utf8(&value[..end]).ok()?;
                        Some(UnixName::Path(PathBuf::from(path)))
                    }
                };
            }
            UNIX_DIAG_VFS => {
                let v = value;
                if v.len() < 8 {
                    return None;
                }
                let ino = u64::from(u32::from_ne_bytes(v[0..4].try_into().ok()?));
                let dev = u32::from_ne_bytes(v[4..8].try_into().ok()?);
                // The kernel's own dev_t (major << 20 | minor), as stat
                // reports it.
                l.file = Some((libc::makedev(dev >> 20, dev & 0xf_ffff), ino));
            }
            _ => {}
        }
    }
    Some(Some(l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_bound_listener_is_found_by_its_file_under_a_second_name() {
        let dir = std::env::temp_dir().join(format!("rbp-udiag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let link = dir.join("second.sock");
        std::fs::hard_link(&path, &link).unwrap();
        let meta = std::fs::metadata(&link).unwrap();
        let all = match unix_listeners() {
            Ok(all) => all,
            // No unix_diag (module not loaded, or no netlink here).
            Err(e) => return eprintln!("skipped: {e}"),
        };
        let me = all
            .iter()
            .find(|l| l.file == Some((meta.dev(), meta.ino())))
            .expect("the listener, by its file");
        assert_eq!(me.name, Some(UnixName::Path(path.clone())));
        assert_eq!(me.kind, libc::SOCK_STREAM as u8);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
