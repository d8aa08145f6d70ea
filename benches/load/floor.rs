//! The floor: a zero-work responder in this process.

use std::io::{self, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{setsockopt, sockopt};

use rpcbind_proxy::protocol::rpc;

use crate::clients::framed;
use crate::{FLOOR_PORT, FLOOR_SOCK};

/// Threads accepting (and then serving) stream connections, per listener.
/// A connection keeps its thread until the client closes it, so this is the
/// most persistent connections the floor serves at once; one-shot
/// connections never wait for a thread.
const FLOOR_STREAM_THREADS: usize = 8;
const FLOOR_UDP_THREADS: usize = 4;

pub(crate) fn start_floor(expected: &[u8]) -> Result<(), String> {
    let reply = framed(expected);
    let unix = UnixListener::bind(FLOOR_SOCK).map_err(|e| format!("floor: {e}"))?;
    let tcp =
        TcpListener::bind(("127.0.0.1", FLOOR_PORT)).map_err(|e| format!("floor tcp: {e}"))?;
    let udp = UdpSocket::bind(("127.0.0.1", FLOOR_PORT)).map_err(|e| format!("floor udp: {e}"))?;
    for _ in 0..FLOOR_STREAM_THREADS {
        let (l, r) = (unix.try_clone().map_err(|e| e.to_string())?, reply.clone());
        std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                let _ = floor_serve(s, &r);
            }
        });
        let (l, reply) = (tcp.try_clone().map_err(|e| e.to_string())?, reply.clone());
        std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                let _ = s.set_nodelay(true);
                let mut s = s;
                if floor_serve(&mut s, &reply).is_ok() {
                    // The client closed first: RST, as the proxy does, so the
                    // floor leaves no TIME_WAIT (and runs out of no ports).
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    let _ = setsockopt(&s, sockopt::Linger, &linger);
                }
            }
        });
    }
    for _ in 0..FLOOR_UDP_THREADS {
        let (s, mut reply) = (
            udp.try_clone().map_err(|e| e.to_string())?,
            expected.to_vec(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 9000];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                if n >= 4 {
                    reply[..4].copy_from_slice(&buf[..4]);
                    let _ = s.send_to(&reply, peer);
                }
            }
        });
    }
    Ok(())
}

/// Answers every record on `s` with `reply` (record-marked), the call's XID
/// patched in, until the client closes.
fn floor_serve(mut s: impl Read + Write, reply: &[u8]) -> io::Result<()> {
    let mut buf = vec![0u8; 16384];
    let mut out = Vec::with_capacity(4096);
    let (mut start, mut end) = (0, 0);
    loop {
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = s.read(&mut buf[end..])?;
        if n == 0 {
            return Ok(());
        }
        end += n;
        out.clear();
        while end - start >= 4 {
            let mark = u32::from_be_bytes(buf[start..start + 4].try_into().unwrap());
            let len = (mark & 0x7fff_ffff) as usize;
            if !(4..=rpc::MAX_CLIENT_RECORD).contains(&len) {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if end - start < 4 + len {
                break;
            }
            let at = out.len();
            out.extend_from_slice(reply);
            out[at + 4..at + 8].copy_from_slice(&buf[start + 4..start + 8]);
            start += 4 + len;
        }
        if !out.is_empty() {
            s.write_all(&out)?;
        }
    }
}
