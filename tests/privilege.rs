//! Registrations through the proxy keep rpcbind's notion of who the caller
//! is: an unprivileged caller must not be able to remove or take over
//! registrations by going through a (root) proxy, and a privileged caller
//! must still be able to register and unregister.
//!
//! Every operation is also made directly at rpcbind by the same kind of
//! caller (on other program numbers), and the replies and recorded owners
//! must match.

mod support;

use support::*;

/// Who makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// uid/gid 65534 over the unix socket.
    Nobody,
    /// root over the unix socket.
    Root,
    /// TCP from an ephemeral (unprivileged) port.
    TcpEphemeral,
    /// TCP from a port below 1024.
    TcpReserved,
    /// UDP from an ephemeral port.
    UdpEphemeral,
    /// UDP from a port below 1024.
    UdpReserved,
}

const NOBODY: u32 = 65534;

async fn connect(sb: &Sandbox, target: Target, caller: Caller) -> Conn {
    let result = match caller {
        Caller::Nobody => {
            let path = sb
                .endpoint(target, Transport::Unix)
                .unix_path()
                .unwrap()
                .to_owned();
            sb.connect_unix_as(&path, NOBODY, NOBODY).await
        }
        Caller::Root => Conn::connect(&sb.endpoint(target, Transport::Unix)).await,
        Caller::TcpEphemeral => Conn::connect(&sb.endpoint(target, Transport::Tcp)).await,
        Caller::UdpEphemeral => Conn::connect(&sb.endpoint(target, Transport::Udp)).await,
        Caller::TcpReserved => {
            connect_from_reserved_port(&sb.endpoint(target, Transport::Tcp)).await
        }
        Caller::UdpReserved => {
            connect_from_reserved_port(&sb.endpoint(target, Transport::Udp)).await
        }
    };
    result.unwrap_or_else(|e| panic!("{caller:?} cannot connect to {target:?}: {e}"))
}

/// One call by `caller` on a fresh connection.
async fn call_as(sb: &Sandbox, target: Target, caller: Caller, call: &Call) -> Outcome {
    connect(sb, target, caller).await.call(call).await
}

fn v3_set(prog: u32) -> Call {
    // The owner field claims superuser; rpcbind ignores it.
    Call::rpcb(
        3,
        RPCBPROC_SET,
        rpcb_args(prog, 1, "tcp", "0.0.0.0.9.1", "superuser"),
    )
}

fn v3_unset(prog: u32, vers: u32, netid: &str) -> Call {
    Call::rpcb(
        3,
        RPCBPROC_UNSET,
        rpcb_args(prog, vers, netid, "", "superuser"),
    )
}

fn v2_set(prog: u32) -> Call {
    Call::rpcb(2, PMAPPROC_SET, pmap_args(prog, 1, IPPROTO_UDP, 2345))
}

fn v2_unset(prog: u32, vers: u32) -> Call {
    Call::rpcb(2, PMAPPROC_UNSET, pmap_args(prog, vers, 0, 0))
}

/// The operations an attacker would try; `own` is a program number of its own.
fn attacks(own: u32) -> Vec<(&'static str, Call)> {
    vec![
        ("v3 UNSET portmapper v4 tcp", v3_unset(PMAP_PROG, 4, "tcp")),
        ("v2 UNSET portmapper v2", v2_unset(PMAP_PROG, 2)),
        (
            "v4 UNSET portmapper v3 udp with AUTH_SYS uid 0",
            Call::rpcb(4, RPCBPROC_UNSET, rpcb_args(PMAP_PROG, 3, "udp", "", ""))
                .with_cred(Auth::sys(0, 0)),
        ),
        (
            "v3 UNSET portmapper v4 local",
            v3_unset(PMAP_PROG, 4, "local"),
        ),
        ("v3 SET of a new program", v3_set(own)),
        ("v2 SET of a new program", v2_set(own + 1)),
        (
            "v4 SET with AUTH_SYS uid 0",
            Call::rpcb(
                4,
                RPCBPROC_SET,
                rpcb_args(own + 2, 1, "udp", "0.0.0.0.9.2", "superuser"),
            )
            .with_cred(Auth::sys(0, 0)),
        ),
    ]
}

fn owners(dump: &[RpcbEntry], prog: u32) -> Vec<String> {
    dump.iter()
        .filter(|e| e.prog == prog)
        .map(|e| e.owner.clone())
        .collect()
}

#[test]
fn unprivileged_callers_cannot_take_over_registrations() {
    run(|sb| async move {
        let before = sb.rpcbind_dump().await;
        let mut problems = Vec::new();
        for (caller, base) in [
            (Caller::Nobody, 400_100),
            (Caller::TcpEphemeral, 400_200),
            (Caller::UdpEphemeral, 400_300),
        ] {
            // Each attempt directly first (rpcbind refuses it, so it changes
            // nothing the proxied attempt depends on), then through the proxy.
            let direct_base = base + 50;
            for ((name, direct_call), (_, proxy_call)) in
                attacks(direct_base).iter().zip(attacks(base).iter())
            {
                let direct = call_as(&sb, Target::Direct, caller, direct_call).await;
                let proxy = call_as(&sb, Target::Proxy, caller, proxy_call).await;
                if direct != proxy {
                    problems.push(format!(
                        "{name} by {caller:?}: rpcbind answers {direct}, the proxy {proxy}"
                    ));
                }
            }
            let now = sb.rpcbind_dump().await;
            for offset in 0..3 {
                let via_proxy = owners(&now, base + offset);
                let direct = owners(&now, direct_base + offset);
                if via_proxy != direct {
                    problems.push(format!(
                        "program {} registered by {caller:?} through the proxy has owners {via_proxy:?}; \
                         registered directly ({}): {direct:?}",
                        base + offset,
                        direct_base + offset
                    ));
                }
            }
        }

        let after = sb.rpcbind_dump().await;
        for e in before.iter().filter(|e| e.prog == PMAP_PROG) {
            if !after.contains(e) {
                problems.push(format!("portmapper entry removed: {e:?}"));
            }
        }
        for e in &after {
            if e.owner == "superuser" && !before.contains(e) {
                problems.push(format!(
                    "entry registered as superuser by an unprivileged caller: {e:?}"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{} problems:\n{}\nrpcbind's registrations now:\n{}",
            problems.len(),
            problems.join("\n"),
            after
                .iter()
                .map(|e| format!("  {e:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    });
}

#[test]
fn privileged_callers_can_register_and_unregister_through_the_proxy() {
    run(|sb| async move {
        let mut problems = Vec::new();
        for (caller, prog) in [
            (Caller::Root, 400_401),
            (Caller::TcpReserved, 400_402),
            (Caller::UdpReserved, 400_403),
        ] {
            for (what, set, unset) in [
                ("v3", v3_set(prog), v3_unset(prog, 1, "tcp")),
                ("v2", v2_set(prog + 10), v2_unset(prog + 10, 1)),
            ] {
                let registered = if what == "v3" { prog } else { prog + 10 };
                let out = call_as(&sb, Target::Proxy, caller, &set).await;
                if out.results().and_then(|r| decode_bool(&r).ok()) != Some(true) {
                    problems.push(format!("{what} SET {registered} by {caller:?}: {out}"));
                    continue;
                }
                let owned = owners(&sb.rpcbind_dump().await, registered);
                if owned.is_empty() || owned.iter().any(|o| o != "superuser") {
                    problems.push(format!(
                        "{what} SET {registered} by {caller:?}: owners {owned:?}, want superuser"
                    ));
                }
                let out = call_as(&sb, Target::Proxy, caller, &unset).await;
                if out.results().and_then(|r| decode_bool(&r).ok()) != Some(true) {
                    problems.push(format!("{what} UNSET {registered} by {caller:?}: {out}"));
                }
                let left = owners(&sb.rpcbind_dump().await, registered);
                if !left.is_empty() {
                    problems.push(format!(
                        "{what} UNSET {registered} by {caller:?} left entries owned by {left:?}"
                    ));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{} problems:\n{}",
            problems.len(),
            problems.join("\n")
        );
    });
}
