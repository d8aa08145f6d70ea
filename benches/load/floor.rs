//! The floor: a zero-work responder, what the kernel and the clients cost.
//!
//! It answers every call with a fixed GETPORT reply (the call's XID patched
//! in) on a unix socket, TCP and UDP, a blocking thread per connection. It
//! runs twice, the same code at two sets of addresses:
//!
//! - in its own process (`Target::Floor`, the yardstick): the bench binary
//!   re-executed with `--floor-process <hex of the reply>`
//!   ([`floor_process`]), a child in the bench's namespaces, as the proxy is
//!   a process of its own;
//! - in the bench process, beside the client threads
//!   (`Target::FloorInProcess`, for comparison). Switching between a client
//!   thread and a floor thread of one process is cheaper (no address-space
//!   switch), an advantage no daemon has; BENCHMARKS.md says how much it
//!   weighed in measured runs (sometimes a lot, sometimes nothing).

use std::io::{self, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use nix::sys::socket::{setsockopt, sockopt};

use rpcbind_proxy::protocol::rpc;

use crate::clients::framed;
use crate::{FLOOR_PROCESS_PORT, FLOOR_PROCESS_SOCK};

/// The hidden first argument that makes the bench binary the floor process.
pub(crate) const FLOOR_PROCESS_ARG: &str = "--floor-process";
/// The line the floor process writes on its stdout once it listens.
pub(crate) const FLOOR_READY: &str = "floor ready";

/// Threads accepting (and then serving) stream connections, per listener.
/// A connection keeps its thread until the client closes it, so this is the
/// most persistent connections the floor serves at once; one-shot
/// connections never wait for a thread.
const FLOOR_STREAM_THREADS: usize = 8;
const FLOOR_UDP_THREADS: usize = 4;

/// The floor process (`<bench> --floor-process <hex>`, `args` what follows
/// the flag): serves [`FLOOR_PROCESS_SOCK`] and [`FLOOR_PROCESS_PORT`],
/// says [`FLOOR_READY`] on stdout, and exits when its stdin reaches EOF:
/// the bench holds the other end of that pipe, which closes when the bench
/// exits or is killed, so the floor never outlives it.
pub(crate) fn floor_process(args: &[String]) -> ExitCode {
    let Some(expected) = args.first().and_then(|h| from_hex(h)) else {
        eprintln!("floor process: usage: {FLOOR_PROCESS_ARG} <hex of the reply>");
        return ExitCode::FAILURE;
    };
    if let Err(e) = start_floor(&expected, FLOOR_PROCESS_SOCK, FLOOR_PROCESS_PORT) {
        eprintln!("floor process: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = io::stdout().lock();
    if writeln!(out, "{FLOOR_READY}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(out);
    // Returning from main ends the serving threads with the process.
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
    ExitCode::SUCCESS
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Starts the floor's threads in this process, answering with `expected`
/// (the reply record's payload) on the unix socket `sock` and on TCP and
/// UDP 127.0.0.1:`port`. Every socket is bound when it returns.
pub(crate) fn start_floor(expected: &[u8], sock: &str, port: u16) -> Result<(), String> {
    let reply = framed(expected);
    let unix = UnixListener::bind(sock).map_err(|e| format!("floor {sock}: {e}"))?;
    let tcp =
        TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("floor tcp {port}: {e}"))?;
    let udp = UdpSocket::bind(("127.0.0.1", port)).map_err(|e| format!("floor udp {port}: {e}"))?;
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
