//! Soak: mixed lookups through the proxy for a long time while rpcbind is
//! killed and restarted every 30 s (its registrations come back on new
//! ports), checking every answer against what rpcbind held around the time
//! of the call, and sampling the proxy's RSS.
//!
//!   sudo cargo bench --bench soak                  # 10 minutes
//!   sudo SOAK_SECONDS=60 cargo bench --bench soak  # a short run
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.
//! Output: one line per 10 s (lookups, errors, wrong answers, RSS), then a
//! summary; exits non-zero if any answer was wrong or RSS grew by more than
//! half between the first and the last third of the run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use support::*;

const PROGRAMS: u32 = 40;
const FIRST_PROG: u32 = 610_000;
const RESTART_EVERY: Duration = Duration::from_secs(30);
/// An answer may reflect registrations this long before the call was sent
/// (the refresh interval, plus room for the DUMP).
const STALENESS: Duration = Duration::from_millis(1500);

/// What rpcbind held from `since` on: the port base of each epoch, or None
/// while it is down.
#[derive(Debug, Clone, Copy)]
struct Era {
    since: Instant,
    base: Option<u32>,
}

#[derive(Debug, Default)]
struct Tally {
    lookups: u64,
    errors: u64,
    wrong: u64,
    samples: Vec<(u64, u64)>,
}

fn port_of(base: u32, prog: u32) -> u32 {
    base + (prog - FIRST_PROG)
}

/// Whether `port` is what rpcbind answered for `prog` at some time in
/// [sent - STALENESS, received].
fn plausible(eras: &[Era], prog: u32, port: u32, sent: Instant, received: Instant) -> bool {
    let from = sent.checked_sub(STALENESS).unwrap_or(sent);
    eras.iter().enumerate().any(|(i, e)| {
        let until = eras.get(i + 1).map_or(received, |n| n.since);
        let overlaps = e.since <= received && until >= from;
        overlaps
            && match e.base {
                Some(base) => {
                    port == port_of(base, prog) || (prog >= FIRST_PROG + PROGRAMS && port == 0)
                }
                // While rpcbind is down and just after, 0 (re-registering).
                None => port == 0,
            }
    })
}

async fn register_all(sb: &Sandbox, base: u32) {
    for i in 0..PROGRAMS {
        let port = port_of(base, FIRST_PROG + i);
        let addr = format!("0.0.0.0.{}.{}", port >> 8, port & 0xff);
        assert!(sb.rpcbind_set(FIRST_PROG + i, 1, "tcp", &addr).await);
    }
}

fn proxy_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn client(
    ep: Endpoint,
    transport: Transport,
    one_shot: bool,
    eras: Rc<RefCell<Vec<Era>>>,
    tally: Rc<RefCell<Tally>>,
    until: Instant,
) {
    let mut conn = None;
    let mut n: u32 = transport as u32 * 7;
    while Instant::now() < until {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12345);
        // A few unregistered programs among the registered ones.
        let prog = FIRST_PROG + (n >> 8) % (PROGRAMS + 5);
        let call = Call::new(
            PMAP_PROG,
            2,
            PMAPPROC_GETPORT,
            pmap_args(prog, 1, IPPROTO_TCP, 0),
        );
        let sent = Instant::now();
        let out = if one_shot {
            call_once(&ep, &call).await
        } else {
            if conn.is_none() {
                conn = Conn::connect(&ep).await.ok();
            }
            match conn.as_mut() {
                Some(c) => c.call(&call).await,
                None => Outcome::Error("connect".into()),
            }
        };
        let received = Instant::now();
        let (lost, wrong) = match out.results().and_then(|r| decode_u32(&r).ok()) {
            Some(port) => (
                false,
                !plausible(&eras.borrow(), prog, port, sent, received),
            ),
            None => (true, false),
        };
        {
            let mut t = tally.borrow_mut();
            t.lookups += 1;
            t.errors += u64::from(lost);
            t.wrong += u64::from(wrong);
        }
        if wrong {
            eprintln!("WRONG: program {prog} answered {out}");
        }
        if lost && matches!(out, Outcome::Closed | Outcome::Error(_)) {
            conn = None;
        }
        tokio::task::yield_now().await;
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: run with `cargo bench --bench soak` (as root); nothing to do in test mode");
        return;
    }
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    run_without_proxy(move |mut sb| async move {
        let mut base = 20_000;
        register_all(&sb, base).await;
        sb.start_proxy(&[]).await.expect("proxy");
        let pid = sb.proxy_pid().expect("proxy pid");
        let start = Instant::now();
        let until = start + Duration::from_secs(seconds);
        let eras = Rc::new(RefCell::new(vec![Era {
            since: start,
            base: Some(base),
        }]));
        let tally = Rc::new(RefCell::new(Tally::default()));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                for (t, one_shot) in [
                    (Transport::Unix, false),
                    (Transport::Tcp, false),
                    (Transport::Udp, false),
                    (Transport::Tcp, true),
                ] {
                    let ep = sb.endpoint(Target::Proxy, t);
                    tokio::task::spawn_local(client(
                        ep,
                        t,
                        one_shot,
                        eras.clone(),
                        tally.clone(),
                        until,
                    ));
                }
                let mut next_restart = start + RESTART_EVERY;
                let mut next_report = start + Duration::from_secs(10);
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = Instant::now();
                    if now >= next_restart {
                        next_restart += RESTART_EVERY;
                        eras.borrow_mut().push(Era {
                            since: Instant::now(),
                            base: None,
                        });
                        sb.restart_rpcbind().await;
                        base = if base == 20_000 { 30_000 } else { 20_000 };
                        register_all(&sb, base).await;
                        eras.borrow_mut().push(Era {
                            since: Instant::now(),
                            base: Some(base),
                        });
                    }
                    if now >= next_report {
                        next_report += Duration::from_secs(10);
                        let rss = proxy_rss_kib(pid);
                        let mut t = tally.borrow_mut();
                        t.samples.push((now.duration_since(start).as_secs(), rss));
                        println!(
                            "t={:>4}s lookups={:>9} errors={:>6} wrong={} rss={} KiB",
                            now.duration_since(start).as_secs(),
                            t.lookups,
                            t.errors,
                            t.wrong,
                            rss
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            })
            .await;
        let t = tally.borrow();
        let third = (t.samples.len() / 3).max(1);
        let avg = |s: &[(u64, u64)]| s.iter().map(|x| x.1).sum::<u64>() / s.len().max(1) as u64;
        let (first, last) = (
            avg(&t.samples[..third.min(t.samples.len())]),
            avg(&t.samples[t.samples.len().saturating_sub(third)..]),
        );
        println!(
            "soak: {seconds}s, {} lookups, {} errors (SYSTEM_ERR or lost while rpcbind restarted), {} wrong answers, RSS first third {first} KiB, last third {last} KiB",
            t.lookups, t.errors, t.wrong
        );
        assert_eq!(t.wrong, 0, "wrong answers");
        assert!(
            last <= first + first / 2,
            "RSS grew from {first} to {last} KiB"
        );
    });
}
