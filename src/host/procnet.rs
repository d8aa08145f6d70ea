//! TCP sockets of this network namespace, read from /proc/net/tcp{,6}: what
//! `status` counts TIME_WAIT with.

use std::net::IpAddr;

/// One socket line of /proc/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    pub local_ip: IpAddr,
    pub state: u8,
    pub uid: u32,
}

pub const TCP_TIME_WAIT: u8 = 6;

/// Reads /proc/net/tcp and /proc/net/tcp6 (this process's network
/// namespace). Unreadable files give nothing.
pub fn tcp_sockets() -> Vec<TcpSocket> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            out.extend(text.lines().skip(1).filter_map(parse_tcp_line));
        }
    }
    out
}

fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = fields.next()?;
    let remote = fields.next()?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let _queues = fields.next()?;
    let _timer = fields.next()?;
    let _retr = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let (local_hex, local_port) = local.split_once(':')?;
    let (_, remote_port) = remote.split_once(':')?;
    Some(TcpSocket {
        local_port: u16::from_str_radix(local_port, 16).ok()?,
        remote_port: u16::from_str_radix(remote_port, 16).ok()?,
        local_ip: parse_proc_ip(local_hex)?,
        state,
        uid,
    })
}

/// /proc/net/tcp prints addresses as host-order 32-bit words in hex.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| {
            u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16)
                .ok()
                .map(u32::from_be)
        })
        .collect();
    let words = words?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(&bytes[..]).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?).to_canonical()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let line = "   0: 0100007F:006F 0100007F:A1B2 06 00000000:00000000 03:00000F9C 00000000     0        0 0 3 0000000000000000";
        let s = parse_tcp_line(line).unwrap();
        assert_eq!(
            (s.local_port, s.remote_port, s.state, s.uid),
            (111, 0xa1b2, 6, 0)
        );
        assert_eq!(s.local_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        let v6 = "   1: 00000000000000000000000001000000:0457 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000";
        let s = parse_tcp_line(v6).unwrap();
        assert_eq!((s.local_port, s.state, s.uid), (1111, 10, 1000));
        assert_eq!(s.local_ip, "::1".parse::<IpAddr>().unwrap());
    }
}
