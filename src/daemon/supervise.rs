//! What systemd is told while the daemon serves: the watchdog ping (only
//! while its own loops go round and it answers a call) and the STATUS line.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::host::systemd;
use crate::proxy::service::Proxy;

/// Stream loops and UDP threads turn at least once a second; one that has
/// not turned for this long is stuck (and the watchdog ping is withheld).
const STUCK_AFTER: Duration = Duration::from_secs(3);

/// Tells systemd the daemon is alive (WATCHDOG=1, only while its own loops
/// go round and it answers a call) and how it is doing (STATUS=), every few
/// seconds.
pub(super) async fn supervise(
    proxy: Arc<Proxy>,
    probe_at: Option<std::net::SocketAddr>,
    turns: impl Fn() -> (Vec<u64>, Vec<u64>),
    shutdown: CancellationToken,
) {
    // Per stream loop and per UDP thread: its turn count, and since when it
    // has not moved.
    let since = |counts: Vec<u64>| -> Vec<(u64, tokio::time::Instant)> {
        let now = tokio::time::Instant::now();
        counts.into_iter().map(|t| (t, now)).collect()
    };
    let (streams, udp) = turns();
    let (mut last_streams, mut last_udp) = (since(streams), since(udp));
    let watchdog = systemd::watchdog_interval();
    // One socket for the daemon's life, named to the proxy, so that its
    // calls are not counted as a client's.
    let probe = match (watchdog, probe_at) {
        (Some(_), Some(at)) => match probe_socket(at).await {
            Ok(sock) => {
                if let Ok(from) = sock.local_addr() {
                    proxy.set_own_probe(from);
                }
                Some((sock, at))
            }
            Err(e) => {
                error!(listener = %at, error = %e, "cannot open the watchdog's probe socket; the pings go without it");
                None
            }
        },
        _ => None,
    };
    // Each probe has an XID of its own: a late answer to one that timed
    // out never passes for the next.
    let mut probes = std::process::id().rotate_left(16);
    let period = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).min(Duration::from_secs(5))
    });
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
        // Stream loops and UDP threads turn at least once a second, busy
        // or not.
        let (streams, udp) = turns();
        let streams_stuck = stuck(&mut last_streams, streams);
        let udp_stuck = stuck(&mut last_udp, udp);
        if !proxy.healthy() {
            error!("the refresh loop has stalled; withholding the watchdog ping");
        } else if streams_stuck {
            error!(
                "the stream loop (unix and TCP clients) is stuck; withholding the watchdog ping"
            );
        } else if udp_stuck {
            error!("a UDP thread is stuck; withholding the watchdog ping");
        } else if let Some(w) = watchdog {
            match &probe {
                Some((sock, at)) => match answers(sock, &mut probes, w / 2).await {
                    Ok(()) => systemd::watchdog(),
                    Err(e) => {
                        error!(listener = %at, error = %e, "the proxy did not answer its own call; withholding the watchdog ping")
                    }
                },
                None => systemd::watchdog(),
            }
        }
        systemd::status(&proxy.status_line());
    }
}

/// Whether a thread's turn count has stayed put for STUCK_AFTER,
/// given the counts now (`last` keeps each count and since when).
fn stuck(last: &mut [(u64, tokio::time::Instant)], counts: Vec<u64>) -> bool {
    let now = tokio::time::Instant::now();
    let mut any = false;
    for (last, count) in last.iter_mut().zip(counts) {
        if count != last.0 {
            *last = (count, now);
        }
        any |= now.duration_since(last.1) > STUCK_AFTER;
    }
    any
}

/// The watchdog probe's socket: on the listener's loopback address,
/// connected to it.
async fn probe_socket(at: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let sock = tokio::net::UdpSocket::bind((at.ip(), 0)).await?;
    sock.connect(at).await?;
    Ok(sock)
}

/// One call to the daemon's own UDP listener, answered by the request path
/// itself (an unknown program: PROG_UNAVAIL, rpcbind not involved). In
/// transparent mode clients wait on the daemon, so the watchdog must see a
/// stalled request path, not only a live timer.
async fn answers(
    sock: &tokio::net::UdpSocket,
    probes: &mut u32,
    within: Duration,
) -> std::io::Result<()> {
    *probes = probes.wrapping_add(1);
    let xid = *probes;
    let probe = async {
        sock.send(&crate::protocol::rpc::encode_call(xid, 0, 1, 0, &[]))
            .await?;
        let mut buf = [0u8; 64];
        loop {
            let n = sock.recv(&mut buf).await?;
            if crate::protocol::rpc::xid_of(&buf[..n]) == Some(xid) {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(within, probe)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
