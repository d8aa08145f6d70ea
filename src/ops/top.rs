//! `rpcbind-proxy top`: who is asking, live, like top(1): refreshed every
//! second, busiest first; `q` quits. Not on a terminal (or with `-n`), it
//! prints that many plain frames and exits, for scripts.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::client::{fail, status_request};
use super::text::clients_table;
use crate::cli::TopArgs;
use crate::host::terminal::RawKeys;
use crate::proxy::status::Status;

pub fn top(args: TopArgs) -> ExitCode {
    let delay = Duration::from_secs_f64(args.delay);
    let live = args.iterations.is_none() && std::io::stdout().is_terminal();
    if !live {
        let n = args.iterations.unwrap_or(1);
        for i in 0..n {
            if i > 0 {
                std::thread::sleep(delay);
                println!();
            }
            match status_request(&args.control.control) {
                Ok(v) => print!("{}", frame(&v)),
                Err(e) => return fail(e),
            }
        }
        return ExitCode::SUCCESS;
    }
    let keys = match RawKeys::enable() {
        Ok(k) => k,
        Err(e) => return fail(format!("top: cannot read keys from the terminal: {e}")),
    };
    let mut out = std::io::stdout();
    loop {
        let v = match status_request(&args.control.control) {
            Ok(v) => v,
            Err(e) => {
                drop(keys);
                return fail(e);
            }
        };
        // Home, clear, the frame; lines end in \r\n (no output processing
        // is changed, but be safe for terminals that need it).
        let text = frame(&v).replace('\n', "\r\n");
        let _ = write!(out, "\x1b[H\x1b[2J{text}\r\n  q: quit\r\n");
        let _ = out.flush();
        match keys.key(delay) {
            Ok(Some(b'q' | b'Q' | 0x03 | 0x04)) => break,
            Ok(_) => {}
            Err(e) => {
                drop(keys);
                return fail(format!("top: reading the terminal: {e}"));
            }
        }
    }
    ExitCode::SUCCESS
}

/// One screen: a header with the rates that matter in a storm, then the
/// clients by rate.
pub fn frame(s: &Status) -> String {
    let clients = &s.clients;
    // Folded from +0.0: a float sum of nothing is -0.0, printed "-0.0/s".
    let rows = clients.top.iter().fold(0.0, |a, c| a + c.per_second_10s);
    let rate = rows + clients.rest.per_second_10s;
    let mut o = format!(
        "rpcbind-proxy top - up {}s, {} clients connected, {} in all\n",
        s.uptime_seconds, clients.connected, clients.total,
    );
    o.push_str(&format!(
        "lookups {rate:.1}/s (10 s)   hit ratio {:.1}%   TIME_WAIT: port 111 {}, proxy ports {}   upstream calls {}\n",
        s.cache.hit_ratio * 100.0,
        s.time_wait.port_111,
        s.time_wait.proxy_ports,
        s.upstream.calls,
    ));
    if s.intercept.enabled {
        o.push_str(&format!(
            "transparent mode: {} flows redirected\n",
            s.intercept.redirected_flows()
        ));
    }
    o.push('\n');
    let table = clients_table(s);
    if table.is_empty() {
        o.push_str("  no clients yet\n");
    } else {
        o.push_str(&table);
    }
    o
}
