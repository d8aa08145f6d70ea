//! Client hosts for the sandbox: each a network namespace of its own, held
//! by a long-lived process (an anchor, as the sandbox's own), joined to the
//! sandbox (the server) by a veth pair of its own.
//!
//! Link `n` (1 to 254) is, on the server's side, interface `s<n>` with
//! 169.254.n.1/24 and fd51:n::1/64, and in the client, `eth0` with
//! 169.254.n.2/24 and fd51:n::2/64 (and no other address: no automatic
//! IPv6 link-local one), its default routes (IPv4 and IPv6)
//! pointing at the server: a client can reach every address of the server,
//! those of the other links too (they arrive on its own link). Only
//! link-local IPv4 and unique-local IPv6 addresses are used (IPv6 without
//! duplicate address detection, so they are usable at once), and nothing is
//! forwarded: nothing here can reach or be reached from a real network.
//!
//! The client's process also has a mount namespace of its own with an empty
//! tmpfs on /run, so a client command that falls back to a local rpcbind
//! (/run/rpcbind.sock) finds none, neither the machine's nor the sandbox's.
//!
//! Everything goes with the [`Client`]: its process is killed when it is
//! dropped, and its namespace, with the veth pair (both ends), with it.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::process::Output;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use tokio::net::UdpSocket;

use super::{
    connect_from_reserved_port, local_ip_for, run_command, spawn_anchor, tcp_sockets_of,
    time_wait_count_of, wait_tcp_settled_of, Call, Conn, Endpoint, Outcome, Proc, Sandbox,
    Transport, REPLY_TIMEOUT, RPCBIND_PORT, TCP_LISTEN,
};

/// The server's addresses on link `n`.
pub fn server_addrs(n: u8) -> [IpAddr; 2] {
    [
        Ipv4Addr::new(169, 254, n, 1).into(),
        Ipv6Addr::new(0xfd51, n.into(), 0, 0, 0, 0, 0, 1).into(),
    ]
}

/// The client's addresses on link `n`.
pub fn client_addrs(n: u8) -> [IpAddr; 2] {
    [
        Ipv4Addr::new(169, 254, n, 2).into(),
        Ipv6Addr::new(0xfd51, n.into(), 0, 0, 0, 0, 0, 2).into(),
    ]
}

/// The server's interface of link `n`.
pub fn server_interface(n: u8) -> String {
    format!("s{n}")
}

/// A client host joined to the sandbox by link `n`.
#[derive(Debug)]
pub struct Client {
    link: u8,
    anchor: Proc,
    /// An rpcbind of the client's own (the client as a server: see
    /// [`Client::start_rpcbind`]).
    rpcbind: Option<Proc>,
}

/// Runs `args` in the sandbox's network namespace, failing the test if it
/// fails.
async fn server_cmd(sb: &Sandbox, args: &[&str]) {
    let out = sb.run_in_ns(args).await;
    assert!(
        out.status.success(),
        "{args:?} in the server's namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Client {
    /// Creates the client of link `n` and its link (see the module's
    /// documentation). `sb` is the server: this is called from the
    /// sandbox's thread, in its network namespace.
    pub async fn attach(sb: &Sandbox, n: u8) -> Client {
        assert!((1..=254).contains(&n), "link numbers are 1 to 254");
        let (anchor, _root) = spawn_anchor("client", &["-n"])
            .await
            .unwrap_or_else(|e| panic!("client {n}: {e}"));
        let client = Client {
            link: n,
            anchor,
            rpcbind: None,
        };
        let pid = client.pid().to_string();
        let ifname = server_interface(n);
        let [s4, s6] = server_addrs(n);
        let [c4, c6] = client_addrs(n);
        let (s4, s6) = (format!("{s4}/24"), format!("{s6}/64"));
        let (c4, c6) = (format!("{c4}/24"), format!("{c6}/64"));
        server_cmd(
            sb,
            &[
                "ip", "link", "add", &ifname, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )
        .await;
        // No automatic link-local address (it would appear, once its
        // duplicate address detection ends, among the addresses rpcbind
        // picks from, at a moment of its own): only the addresses given.
        server_cmd(sb, &["ip", "link", "set", &ifname, "addrgenmode", "none"]).await;
        server_cmd(sb, &["ip", "addr", "add", &s4, "dev", &ifname]).await;
        server_cmd(sb, &["ip", "addr", "add", &s6, "dev", &ifname, "nodad"]).await;
        server_cmd(sb, &["ip", "link", "set", &ifname, "up"]).await;
        let [gw4, gw6] = server_addrs(n).map(|a| a.to_string());
        for args in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "link", "set", "eth0", "addrgenmode", "none"],
            &["ip", "addr", "add", &c4, "dev", "eth0"],
            &["ip", "addr", "add", &c6, "dev", "eth0", "nodad"],
            &["ip", "link", "set", "eth0", "up"],
            &["ip", "route", "add", "default", "via", &gw4],
            &["ip", "-6", "route", "add", "default", "via", &gw6],
        ] {
            client.run_ok(args).await;
        }
        client
    }

    /// Pid of the process holding the client's namespaces.
    pub fn pid(&self) -> u32 {
        self.anchor.pid()
    }

    /// The link's number.
    pub fn link(&self) -> u8 {
        self.link
    }

    /// The client's own addresses (IPv4, IPv6).
    pub fn addrs(&self) -> [IpAddr; 2] {
        client_addrs(self.link)
    }

    /// Gives the link IPv6 link-local addresses too: fe80::n:1/64 on the
    /// server's side, fe80::n:2/64 on the client's (no duplicate address
    /// detection). Returns the server's, as the client calls it (scoped to
    /// its `eth0`).
    pub async fn add_link_local(&self, sb: &Sandbox) -> SocketAddrV6 {
        let n = u16::from(self.link);
        let server = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, n, 1);
        let s = format!("{server}/64");
        server_cmd(
            sb,
            &[
                "ip",
                "addr",
                "add",
                &s,
                "dev",
                &server_interface(self.link),
                "nodad",
            ],
        )
        .await;
        let c = format!("{}/64", Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, n, 2));
        self.run_ok(&["ip", "addr", "add", &c, "dev", "eth0", "nodad"])
            .await;
        // The index of the client's eth0, from its namespace's
        // /proc/net/if_inet6 (address, index in hex, ..., name).
        let path = format!("/proc/{}/net/if_inet6", self.pid());
        let table = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let index = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 6 && f[5] == "eth0")
            .and_then(|f| u32::from_str_radix(f[1], 16).ok())
            .unwrap_or_else(|| panic!("no eth0 in {path}: {table}"));
        SocketAddrV6::new(server, RPCBIND_PORT, 0, index)
    }

    /// Starts an rpcbind of the client's own (`rpcbind -f` in its network
    /// and mount namespaces: its /run is the client's), so that the
    /// client host is a server the sandbox can call; returns once it
    /// listens on TCP port 111. It is killed with the client.
    pub async fn start_rpcbind(&mut self) {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .args(["-n", "-m", "--", "rpcbind", "-f"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let (proc, _child) = Proc::spawn("client-rpcbind", &mut cmd)
            .unwrap_or_else(|e| panic!("client {}: spawning rpcbind: {e}", self.link));
        let pid = self.pid();
        self.rpcbind = Some(proc);
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        let mut backoff = Duration::from_millis(1);
        while !tcp_sockets_of(pid)
            .iter()
            .any(|s| s.state == TCP_LISTEN && s.local_port == RPCBIND_PORT)
        {
            if let Some(status) = self.rpcbind.as_ref().and_then(Proc::exit_status) {
                panic!("client {}: rpcbind exited ({status})", self.link);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "client {}: rpcbind not listening on port 111 within {REPLY_TIMEOUT:?}",
                self.link
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Runs a command in the client's network and mount namespaces and
    /// captures its output (bounded, as [`Sandbox::run_in_ns`]).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .args(["-n", "-m", "--"])
            .args(args);
        run_command(cmd, args).await
    }

    /// [`Client::run`], failing the test unless the command succeeds.
    pub async fn run_ok(&self, args: &[&str]) {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} in client {}: {}",
            self.link,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `body` on a thread of its own that has entered the client's
    /// network namespace, on a runtime of that thread: every socket it
    /// opens is the client's. A panic in `body` is raised here.
    pub async fn within<T, F, Fut>(&self, body: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/proc/{}/ns/net", self.pid());
        let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("client-{}", self.link))
            .spawn(move || {
                setns(ns, CloneFlags::CLONE_NEWNET).expect("entering the client's namespace");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the client's runtime");
                let _ = tx.send(rt.block_on(body()));
            })
            .expect("spawning the client's thread");
        match rx.await {
            Ok(v) => v,
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => panic!("the client's thread ended without a result"),
            },
        }
    }

    /// One call from this client to `server` over `transport` (TCP or UDP)
    /// on a fresh socket, from an ephemeral port or, with `reserved`, from
    /// a port below 1024; the outcome (reply bytes after the XID, no reply
    /// within the client's timeout, ...).
    pub async fn call(
        &self,
        server: SocketAddr,
        transport: Transport,
        reserved: bool,
        call: &Call,
    ) -> Outcome {
        let call = call.clone();
        self.within(move || async move { call_from(server, transport, reserved, &call).await })
            .await
    }

    /// TIME_WAIT sockets in the client's namespace, optionally only those
    /// with `port` as local or remote port, once every socket half-way
    /// through closing has finished (at most `settle`).
    pub async fn time_wait_count(&self, port: Option<u16>, settle: Duration) -> usize {
        wait_tcp_settled_of(self.pid(), port, settle)
            .await
            .unwrap_or_else(|e| panic!("client {}: {e}", self.link));
        time_wait_count_of(self.pid(), port)
    }
}

/// Bound on a client's connect (a SYN nobody answers is retried for
/// minutes otherwise).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One call to `server` on a fresh socket of the calling thread's
/// namespace (see [`Client::call`]); for a body run with
/// [`Client::within`].
pub async fn call_from(
    server: SocketAddr,
    transport: Transport,
    reserved: bool,
    call: &Call,
) -> Outcome {
    call_and_source(server, transport, reserved, call).await.0
}

/// [`call_from`], and over UDP the address the reply came from. The UDP
/// socket is not connected, so a reply from another address than the one
/// called is read too (a connected socket, as `Conn`'s, drops it): the
/// bytes are compared, the source is reported.
pub async fn call_and_source(
    server: SocketAddr,
    transport: Transport,
    reserved: bool,
    call: &Call,
) -> (Outcome, Option<SocketAddr>) {
    match transport {
        Transport::Tcp => {
            let ep = Endpoint::Tcp(server);
            let connect = async {
                if reserved {
                    connect_from_reserved_port(&ep).await
                } else {
                    Conn::connect(&ep).await
                }
            };
            let out = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(mut conn)) => conn.call(call).await,
                Ok(Err(e)) => Outcome::Error(format!("connect {ep}: {e}")),
                Err(_) => Outcome::Error(format!("connect {ep}: no answer in {CONNECT_TIMEOUT:?}")),
            };
            (out, None)
        }
        Transport::Udp => match udp_socket(server, reserved).await {
            Ok(sock) => udp_call(&sock, server, call).await,
            Err(e) => (
                Outcome::Error(format!("udp socket for {server}: {e}")),
                None,
            ),
        },
        Transport::Unix => panic!("a client host has no unix path to the server"),
    }
}

/// An unconnected UDP socket for calls to `server`, bound to a reserved
/// port (600-1023, then 512-599) with `reserved`.
async fn udp_socket(server: SocketAddr, reserved: bool) -> io::Result<UdpSocket> {
    let ip = local_ip_for(&server);
    if !reserved {
        return UdpSocket::bind(SocketAddr::new(ip, 0)).await;
    }
    for port in (600..1024).chain(512..600) {
        match UdpSocket::bind(SocketAddr::new(ip, port)).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            other => return other,
        }
    }
    Err(io::Error::other("no reserved port free"))
}

/// Sends `call` to `server` and waits (at most [`REPLY_TIMEOUT`]) for a
/// datagram carrying its XID, from any address.
async fn udp_call(
    sock: &UdpSocket,
    server: SocketAddr,
    call: &Call,
) -> (Outcome, Option<SocketAddr>) {
    if let Err(e) = sock.send_to(&call.encode(), server).await {
        return (Outcome::Error(format!("send to {server}: {e}")), None);
    }
    let wanted = call.xid.to_be_bytes();
    let mut buf = vec![0u8; 65_536];
    let wait = async {
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, from)) if n >= 4 && buf[..4] == wanted => {
                    return (Outcome::Reply(buf[4..n].to_vec()), Some(from))
                }
                Ok(_) => continue,
                Err(e) => return (Outcome::Error(e.to_string()), None),
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .unwrap_or((Outcome::NoReply, None))
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(rpcbind) = self.rpcbind.take() {
            rpcbind.kill_blocking();
        }
        self.anchor.kill_blocking();
    }
}
