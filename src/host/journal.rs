//! systemd's journal, spoken to in its native protocol: one datagram per
//! entry on journald's socket, each field `NAME=value\n`, or, for a value
//! with a newline, `NAME\n`, its length as a little-endian u64, the value
//! and `\n`. journald adds the sender's pid, unit and the like from the
//! socket's credentials, so an entry carries only what the daemon says.
//!
//! An entry is bounded: each value at most [`MAX_VALUE`] bytes and the
//! whole datagram at most [`MAX_ENTRY`] (fields past it are left out), well
//! under the kernel's datagram limit, so one send is always enough.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Where journald receives native entries.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The longest value sent; a longer one is cut (on a character boundary)
/// and ends in "…".
pub const MAX_VALUE: usize = 8 * 1024;

/// The longest entry sent: fields that would go past it are left out.
pub const MAX_ENTRY: usize = 48 * 1024;

/// How long a send may wait for a journald that does not read: past it the
/// entry is dropped rather than the daemon's thread held.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest field name journald accepts.
const MAX_NAME: usize = 64;

/// One entry, its fields in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    fields: Vec<(String, String)>,
}

impl Entry {
    pub fn new() -> Entry {
        Entry::default()
    }

    /// Adds a field; `name` is made a valid journal field name (see
    /// [`field_name`]), and a name that ends up empty drops the field.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = field_name(name);
        if !name.is_empty() {
            self.fields.push((name, value.to_owned()));
        }
    }

    /// The first value of field `name` (as [`Entry::add`] stored it, before
    /// any cut).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The datagram: each value cut to [`MAX_VALUE`], and fields that would
    /// take it past [`MAX_ENTRY`] left out (those first added stay).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = Vec::new();
        for (name, value) in &self.fields {
            field.clear();
            let value = cut(value, MAX_VALUE);
            field.extend_from_slice(name.as_bytes());
            if value.contains('\n') {
                field.push(b'\n');
                field.extend_from_slice(&(value.len() as u64).to_le_bytes());
            } else {
                field.push(b'=');
            }
            field.extend_from_slice(value.as_bytes());
            field.push(b'\n');
            if out.len() + field.len() <= MAX_ENTRY {
                out.extend_from_slice(&field);
            }
        }
        out
    }
}

/// A journal field name: upper-case letters, digits and `_`, not starting
/// with `_` (reserved for fields journald sets itself) or a digit, at most 64
/// bytes; `.` becomes `_`, other characters are dropped.
pub fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .map(|c| c.to_ascii_uppercase())
        .skip_while(|c| *c == '_' || c.is_ascii_digit())
        .collect();
    out.truncate(MAX_NAME);
    out
}

/// `value` cut to at most `max` bytes on a character boundary, "…" marking
/// the cut.
fn cut(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if value.len() <= max {
        return value.into();
    }
    let mark = "…";
    let mut end = max - mark.len();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &value[..end]).into()
}

/// A socket to journald.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Journal {
    /// journald's socket, if it is there and someone reads it.
    pub fn connect() -> io::Result<Journal> {
        Journal::at(Path::new(SOCKET))
    }

    /// The journal socket at `path`. An empty datagram (which journald
    /// ignores) checks that someone is bound there.
    pub fn at(path: &Path) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        socket.send_to(&[], path)?;
        Ok(Journal {
            socket,
            path: path.to_owned(),
        })
    }

    /// Sends one entry.
    pub fn send(&self, entry: &Entry) -> io::Result<()> {
        self.socket.send_to(&entry.encode(), &self.path).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of one datagram, as journald reads them.
    fn parse(mut data: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n' || b == b'=').unwrap();
            let name = String::from_utf8(data[..end].to_vec()).unwrap();
            let value;
            if data[end] == b'=' {
                let nl = data.iter().position(|&b| b == b'\n').unwrap();
                value = data[end + 1..nl].to_vec();
                data = &data[nl + 1..];
            } else {
                let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap());
                let start = end + 9;
                let stop = start + usize::try_from(len).unwrap();
                value = data[start..stop].to_vec();
                assert_eq!(data[stop], b'\n');
                data = &data[stop + 1..];
            }
            fields.push((name, String::from_utf8(value).unwrap()));
        }
        fields
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fields_are_encoded_in_order_and_read_back() {
        let mut e = Entry::new();
        e.add("PRIORITY", "5");
        e.add("MESSAGE", "listening on tcp:127.0.0.1:111");
        e.add("F_ERROR", "line one\nline two");
        let data = e.encode();
        assert!(data.starts_with(b"PRIORITY=5\nMESSAGE=listening on tcp:127.0.0.1:111\nF_ERROR\n"));
        assert_eq!(
            parse(&data),
            pairs(&[
                ("PRIORITY", "5"),
                ("MESSAGE", "listening on tcp:127.0.0.1:111"),
                ("F_ERROR", "line one\nline two"),
            ])
        );
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(field_name("f_log.target"), "F_LOG_TARGET");
        assert_eq!(field_name("_private"), "PRIVATE");
        assert_eq!(field_name("1st-try"), "STTRY");
        assert_eq!(field_name("é"), "");
        assert_eq!(field_name(&"a".repeat(100)).len(), MAX_NAME);
        let mut e = Entry::new();
        e.add("é", "dropped");
        assert!(e.encode().is_empty());
    }

    #[test]
    fn long_values_are_cut_and_the_entry_is_bounded() {
        let mut e = Entry::new();
        e.add("MESSAGE", &"é".repeat(MAX_VALUE));
        for i in 0..20 {
            e.add(&format!("F_{i}"), &"x".repeat(MAX_VALUE));
        }
        let data = e.encode();
        assert!(data.len() <= MAX_ENTRY, "{}", data.len());
        let fields = parse(&data);
        assert_eq!(fields[0].0, "MESSAGE");
        assert!(fields[0].1.len() <= MAX_VALUE && fields[0].1.ends_with('…'));
        assert!(fields.len() > 1 && fields.len() < 21, "{}", fields.len());
        assert_eq!(e.get("F_3").map(str::len), Some(MAX_VALUE));
    }

    #[test]
    fn entries_reach_the_socket_and_a_missing_journal_is_an_error() {
        let dir = std::env::temp_dir().join(format!("journal-test.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        assert!(Journal::at(&path).is_err(), "nothing is bound yet");
        let server = UnixDatagram::bind(&path).unwrap();
        let journal = Journal::at(&path).unwrap();
        let mut buf = vec![0; MAX_ENTRY];
        assert_eq!(server.recv(&mut buf).unwrap(), 0, "the probe is empty");
        let mut e = Entry::new();
        e.add("MESSAGE", "descriptor limit 1024");
        journal.send(&e).unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            parse(&buf[..n]),
            pairs(&[("MESSAGE", "descriptor limit 1024")])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
