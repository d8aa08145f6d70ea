//! `intercept enable`: the steps that turn transparent mode on, each
//! recorded so that a failing one undoes those before it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

pub(super) fn enable(control: &Path, modes: &EnableArgs) -> Result<(), String> {
    preconditions("enable")?;
    let bin = this_binary()?;
    let derived = rpcbind_listen()?;
    let files = drop_ins(Path::new(UNIT_DIR), &bin, &derived, modes);
    let abstract_name = derived.abstract_name.as_deref();
    let upstream = Path::new(UPSTREAM_SOCKET);
    let public = Path::new(DEFAULT_RPCBIND_SOCKET);
    let written = files
        .iter()
        .all(|(p, t)| std::fs::read_to_string(p).is_ok_and(|s| s == *t));
    if written
        && daemon_intercepting(control)
        && answers_null(upstream)
        && systemd_holds(upstream) != Some(false)
        && !abstract_elsewhere(abstract_name)
    {
        println!("transparent mode is already on");
        return Ok(());
    }
    // rpcbind's live socket must get its second name first: it answers on
    // /run/rpcbind.sock (transparent mode off, or an rpcbind that bound
    // that path itself when systemd passed it no socket).
    let link = !answers_null(upstream);
    let rpcbind_on_public =
        rpcbind_listens(public) || (answers_null(public) && !daemon_intercepting(control));
    if link && !rpcbind_on_public {
        return Err(format!(
            "rpcbind does not answer on {} or {}: start it first (systemctl start rpcbind)",
            public.display(),
            upstream.display()
        ));
    }
    let mut done = rollback::Changes::default();
    match enable_steps(control, &files, link, abstract_name, &mut done) {
        Ok(()) => {
            println!("transparent mode is on: local clients of port 111 and {DEFAULT_RPCBIND_SOCKET} go through rpcbind-proxy");
            if !modes.remote.is_empty() {
                println!(
                    "server mode is on: other hosts' port-111 traffic on {} goes through rpcbind-proxy",
                    modes.remote.join(", ")
                );
            }
            if modes.outbound {
                println!("the client side is on: this host's TCP lookups at other hosts' rpcbind go through rpcbind-proxy");
            }
            Ok(())
        }
        Err((step, why)) => Err(done.roll_back(&step, &why)),
    }
}

/// The steps of `enable` that change the host, each recorded in `done`
/// before it is made; on failure, the step's name and why it failed.
fn enable_steps(
    control: &Path,
    files: &[(PathBuf, String)],
    link: bool,
    abstract_name: Option<&str>,
    done: &mut rollback::Changes,
) -> Result<(), (String, String)> {
    let upstream = Path::new(UPSTREAM_SOCKET);
    let public = Path::new(DEFAULT_RPCBIND_SOCKET);
    // 1. The running rpcbind, reachable at its new path before anything
    //    depends on it there.
    if link {
        done.linking(upstream);
        link_socket(public, upstream).map_err(step(
            1,
            "link rpcbind's socket at /run/rpcbind/upstream.sock",
        ))?;
        println!("rpcbind's running socket is reachable at {UPSTREAM_SOCKET}");
    }
    // 2. The drop-ins.
    for (path, text) in files {
        done.writing(path);
        write_file(path, text).map_err(step(2, "write the drop-ins"))?;
        println!("wrote {}", path.display());
    }
    // 3. systemd reads them.
    done.reloading();
    systemctl(&["daemon-reload"]).map_err(step(3, "systemctl daemon-reload"))?;
    // 4. systemd holds rpcbind's socket at the upstream path, so that it
    //    passes it to rpcbind on every restart. It matched its descriptor
    //    to the new path at the reload (by the file both names share) if it
    //    held one; it holds none when rpcbind bound its socket itself (it
    //    was started without rpcbind.socket, or an earlier version's
    //    `disable` lost it), and then rpcbind, restarted by anyone, would
    //    bind /run/rpcbind.sock again and take it from the proxy. Restarted
    //    now, rpcbind.socket binds the upstream path itself; rpcbind's warm
    //    start (-w) keeps its registrations. Restarted too when rpcbind
    //    listens on the abstract name its units set, which the proxy's
    //    socket unit takes over: rpcbind lets go of it only when it stops
    //    (meanwhile clients that find no one there use the path).
    if systemd_holds(upstream) == Some(false) || abstract_elsewhere(abstract_name) {
        done.restarting_rpcbind();
        restart_rpcbind().map_err(step(
            4,
            "restart rpcbind.socket so that systemd holds rpcbind's socket",
        ))?;
        println!("restarted rpcbind.socket and rpcbind.service: systemd holds rpcbind's socket at {UPSTREAM_SOCKET}{}", abstract_name.map_or(String::new(), |n| format!(", and rpcbind lets go of {n}")));
    }
    // 5. The proxy's units: the socket unit takes /run/rpcbind.sock (systemd
    //    replaces the path; clients queue on it meanwhile), the daemon starts
    //    in transparent mode and installs its table.
    let restart = "restart rpcbind-proxy.socket and rpcbind-proxy.service";
    done.restarting();
    done.keeping_nat_hooks();
    // A deliberate restart: their start-rate limit, which earlier restarts
    // (an administrator's, a crash loop fixed since) may have used up,
    // must not refuse it.
    let mut reset = vec!["reset-failed"];
    reset.extend(PROXY_UNITS);
    let _ = systemctl(&reset);
    let mut args = vec!["restart"];
    args.extend(PROXY_UNITS);
    systemctl(&args).map_err(step(5, restart))?;
    // 6. The new daemon's table in place.
    let deadline = Instant::now() + READY;
    while !daemon_intercepting(control) {
        if Instant::now() >= deadline {
            return Err(step(6, "wait for the redirect table")(format!(
                "rpcbind-proxy did not start intercepting within {READY:?}: see journalctl -u rpcbind-proxy"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The error of `enable`'s step `n`, `what` it does: its name and why.
fn step(n: u8, what: &'static str) -> impl Fn(String) -> (String, String) {
    move |e| (format!("step {n} ({what})"), e)
}
