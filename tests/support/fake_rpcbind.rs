//! A fake rpcbind on a unix socket in a temporary directory, driven by a
//! script: it answers, holds, reorders, stays silent, drops the connection
//! or sends garbage, call by call. It needs no root and no network
//! namespace, so tests of the request path (the upstream multiplexer,
//! `Proxy::handle`) run anywhere; the real rpcbind stays the judge of
//! correct answers (tests/differential.rs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rpcbind_proxy::protocol::rpc::{accepted_reply, xid_of, AcceptStat, OpaqueAuth, RecordCodec};
use rpcbind_proxy::proxy::cache::CacheConfig;
use rpcbind_proxy::proxy::limits::LimitsConfig;
use rpcbind_proxy::proxy::policy::Peer;
use rpcbind_proxy::proxy::service::{Proxy, RpcbindAddr, Settings};
use rpcbind_proxy::proxy::upstream::{Target, Upstream};
use tokio::net::UnixListener;
use tokio_util::codec::Framed;

/// What the fake does with the n-th call it receives on a connection
/// (`calls` counts every call it received).
#[derive(Clone, Copy, Debug)]
pub enum Act {
    /// Echo the call back as the "reply" (the payload names the call).
    Echo,
    /// Hold this call and answer it after the next one (reorders).
    Hold,
    /// Read the call and never answer it.
    Silence,
    /// Close the connection without answering.
    Close,
    /// Send a record mark claiming 1 GiB (an oversized reply).
    Garbage,
    /// After a delay, answer as rpcbind answers a GETPORT: SUCCESS, port.
    SlowPort(u32),
    /// Hold this call; answer it with SUCCESS, port once a `PortThenRelease`
    /// call has been answered.
    HoldPort(u32),
    /// Answer as rpcbind answers an accepted SET: SUCCESS, TRUE.
    True,
    /// Answer with SUCCESS, port; then answer the held `HoldPort` call.
    PortThenRelease(u32),
}

/// A running fake: where it listens and what it has seen. Its directory is
/// removed when it is dropped (the listening task ends with the runtime).
#[derive(Debug)]
pub struct Fake {
    pub path: PathBuf,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Calls received, on every connection.
    pub calls: Arc<AtomicUsize>,
    _dir: TempDir,
}

/// A caller as the proxy sees root on its unix socket.
pub const ROOT: Peer = Peer::Unix {
    uid: 0,
    gid: 0,
    pid: None,
};

impl Fake {
    /// An upstream multiplexer in front of this fake.
    pub fn upstream(&self, timeout: Duration) -> Upstream {
        Upstream::new(Target::Unix(self.path.clone()), timeout)
    }

    /// The request path in front of this fake: a proxy with the default
    /// cache, whose upstream calls time out after `timeout`.
    pub fn proxy(&self, timeout: Duration) -> Arc<Proxy> {
        Proxy::new(
            RpcbindAddr {
                socket: self.path.clone(),
                port: 1,
                mark: None,
                public_socket: None,
            },
            Settings {
                upstream_timeout: timeout,
                cache: CacheConfig::default(),
                refresh: Duration::from_secs(1),
                limits: LimitsConfig::default(),
                attribution: true,
            },
        )
    }
}

#[derive(Debug)]
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a fake upstream on the current tokio runtime;
/// `script(conn_index, call_index)` says what to do.
pub fn fake(script: impl Fn(usize, usize) -> Act + Send + Sync + 'static) -> Fake {
    let dir =
        std::env::temp_dir().join(format!("rbp-fake-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rpcbind.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let n = conns.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let calls = calls2.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(s, RecordCodec::new(1 << 20));
                let mut held: Option<BytesMut> = None;
                let mut held_port: Option<(u32, u32)> = None;
                let answer = |xid: u32, value: u32| {
                    accepted_reply(
                        xid,
                        OpaqueAuth::NONE,
                        AcceptStat::Success,
                        &value.to_be_bytes(),
                    )
                };
                let mut i = 0;
                while let Some(Ok(call)) = framed.next().await {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let act = script(n, i);
                    i += 1;
                    match act {
                        Act::Echo => {
                            framed.send(&call[..]).await.unwrap();
                            if let Some(h) = held.take() {
                                framed.send(&h[..]).await.unwrap();
                            }
                        }
                        Act::Hold => held = Some(call),
                        Act::SlowPort(port) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let xid = xid_of(&call).unwrap();
                            let reply = accepted_reply(
                                xid,
                                OpaqueAuth::NONE,
                                AcceptStat::Success,
                                &port.to_be_bytes(),
                            );
                            framed.send(&reply[..]).await.unwrap();
                        }
                        Act::HoldPort(port) => held_port = Some((xid_of(&call).unwrap(), port)),
                        Act::True => {
                            framed
                                .send(&answer(xid_of(&call).unwrap(), 1)[..])
                                .await
                                .unwrap();
                        }
                        Act::PortThenRelease(port) => {
                            framed
                                .send(&answer(xid_of(&call).unwrap(), port)[..])
                                .await
                                .unwrap();
                            if let Some((xid, port)) = held_port.take() {
                                framed.send(&answer(xid, port)[..]).await.unwrap();
                            }
                        }
                        Act::Silence => {}
                        Act::Close => return,
                        Act::Garbage => {
                            use tokio::io::AsyncWriteExt;
                            let mut s = framed.into_inner();
                            s.write_all(&[0xc0, 0, 0, 0]).await.unwrap();
                            let _ = s.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Fake {
        path,
        connections,
        calls,
        _dir: TempDir(dir),
    }
}

/// A number unlikely to repeat, for names of temporary files.
pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}
