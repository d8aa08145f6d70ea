//! Checks of the sandbox harness itself and of the rpcbind facts the other
//! tests rely on. These talk to rpcbind only, so they pass without the proxy.

mod support;

use support::*;

#[test]
fn rpcbind_answers_null_on_every_transport() {
    run_without_proxy(|sb| async move {
        for t in Transport::ALL {
            for vers in [2, 3, 4] {
                let out = sb
                    .call(Target::Direct, t, &Call::rpcb(vers, 0, vec![]))
                    .await;
                assert_eq!(
                    out.results(),
                    Some(vec![]),
                    "NULL v{vers} over {t:?}: {out}"
                );
            }
        }
    });
}

#[test]
fn rpcbind_restart_forgets_registrations() {
    run_without_proxy(|mut sb| async move {
        assert!(sb.rpcbind_set(300_100, 1, "tcp", "0.0.0.0.4.1").await);
        let old_pid = sb.rpcbind_pid();
        sb.restart_rpcbind().await;
        assert_ne!(sb.rpcbind_pid(), old_pid);
        let dump = sb.rpcbind_dump().await;
        assert!(dump.iter().all(|e| e.prog != 300_100), "{dump:?}");
        assert!(dump
            .iter()
            .any(|e| e.prog == PMAP_PROG && e.netid == "local"));
        sb.kill_rpcbind().await;
        let out = sb
            .call(Target::Direct, Transport::Tcp, &Call::rpcb(2, 0, vec![]))
            .await;
        assert!(
            matches!(out, Outcome::Error(_)),
            "rpcbind still answers: {out}"
        );
    });
}

/// The owner rpcbind records depends on who connects (SO_PEERCRED, source
/// port), which the privilege tests rely on.
#[test]
fn rpcbind_records_the_caller_as_owner() {
    run_without_proxy(|sb| async move {
        let set = |prog| {
            Call::rpcb(
                3,
                RPCBPROC_SET,
                rpcb_args(prog, 1, "tcp", "0.0.0.0.9.9", "superuser"),
            )
        };

        let mut conn = sb
            .connect_unix_as(&sb.rpcbind_unix(), 65534, 65534)
            .await
            .unwrap();
        assert!(decode_bool(
            &conn
                .call(&set(300_201))
                .await
                .expect_results("SET as 65534")
        )
        .unwrap());

        let out = sb.call(Target::Direct, Transport::Tcp, &set(300_202)).await;
        assert!(decode_bool(&out.expect_results("SET from an ephemeral port")).unwrap());

        let dump = sb.rpcbind_dump().await;
        let owner = |prog| {
            dump.iter()
                .find(|e| e.prog == prog)
                .map(|e| e.owner.clone())
                .unwrap_or_else(|| panic!("{prog} not registered: {dump:?}"))
        };
        assert_eq!(owner(300_201), "65534");
        assert_eq!(owner(300_202), "unknown");

        // An unprivileged caller cannot remove portmapper.
        let mut conn = sb
            .connect_unix_as(&sb.rpcbind_unix(), 65534, 65534)
            .await
            .unwrap();
        let unset = Call::rpcb(3, RPCBPROC_UNSET, rpcb_args(PMAP_PROG, 4, "tcp", "", ""));
        assert!(!decode_bool(&conn.call(&unset).await.expect_results("UNSET as 65534")).unwrap());
    });
}

#[test]
fn rpcinfo_runs_inside_the_sandbox() {
    run_without_proxy(|sb| async move {
        assert!(sb.rpcbind_set(300_300, 1, "udp", "0.0.0.0.4.1").await);
        let out = sb.run_rpcinfo(&["-s"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("300300"), "{stdout}");
    });
}

#[test]
fn tcp_sockets_are_read_from_the_sandbox_namespace() {
    run_without_proxy(|sb| async move {
        let listening: Vec<_> = sb
            .tcp_sockets()
            .into_iter()
            .filter(|s| s.state == TCP_LISTEN && s.local_port == RPCBIND_PORT)
            .collect();
        // tcp and tcp6 listeners of this sandbox's rpcbind, nobody else's.
        assert_eq!(listening.len(), 2, "{listening:?}");
        assert_eq!(sb.time_wait_count(None), 0);
    });
}

#[test]
fn proxy_starts_and_answers_null() {
    run(|sb| async move {
        for t in Transport::ALL {
            let out = sb.call(Target::Proxy, t, &Call::rpcb(2, 0, vec![])).await;
            assert_eq!(
                out.results(),
                Some(vec![]),
                "NULL via the proxy over {t:?}: {out}"
            );
        }
    });
}
