//! `rpcbind-proxy generate`: man pages and shell completions, made from the
//! command-line definition itself so that they never drift from it. Hidden
//! from `--help`; packaging (scripts/build-deb) runs it on the release
//! binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use thiserror::Error;

use crate::cli::{Cli, GenerateArgs, What};

/// The name the man pages and completions are written for.
const BIN: &str = "rpcbind-proxy";

/// Why generation failed; one line naming the path.
#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("cannot create directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Entry point of the subcommand: prints the error as one line and maps it
/// to the exit status, like every other subcommand.
pub fn main(args: GenerateArgs) -> ExitCode {
    match run(args) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{BIN}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes what was asked for; returns the files written.
pub fn run(args: GenerateArgs) -> Result<Vec<PathBuf>, GenerateError> {
    match args.what {
        What::Man { dir } => man_pages(&dir),
        What::Completions { dir } => completions(&dir),
    }
}

fn create_dir(dir: &Path) -> Result<(), GenerateError> {
    std::fs::create_dir_all(dir).map_err(|source| GenerateError::Dir {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<PathBuf, GenerateError> {
    match std::fs::write(&path, bytes) {
        Ok(()) => Ok(path),
        Err(source) => Err(GenerateError::Write { path, source }),
    }
}

/// The manual section of every page: 8, system administration, as for
/// rpcbind(8) and rpcinfo(8) (the daemon and the tools that query it).
pub const SECTION: &str = "8";

/// One page for the program and one for every visible subcommand (at any
/// depth), named as clap_mangen names them: rpcbind-proxy.8,
/// rpcbind-proxy-serve.8, ... Hidden subcommands (this one) get none.
///
/// The subcommand pages are clap's rendering of `--help`. The program's page
/// is the daemon's manual: NAME, SYNOPSIS and COMMANDS from clap, and the
/// sections a daemon's page has (DESCRIPTION, FILES, SIGNALS, EXIT STATUS,
/// ENVIRONMENT, EXAMPLES, SEE ALSO) written here.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    create_dir(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Fills in each subcommand's display name (rpcbind-proxy-serve) and the
    // inherited version.
    cmd.build();
    let mut written = Vec::new();
    let main = clap_mangen::Man::new(cmd.clone()).section(SECTION);
    let path = dir.join(main.get_filename());
    let roff = render(&path, |w| {
        main.render_title(w)?;
        main.render_name_section(w)?;
        main.render_synopsis_section(w)?;
        w.write_all(MAIN_DESCRIPTION.as_bytes())?;
        main.render_subcommands_section(w)?;
        w.write_all(MAIN_SECTIONS.as_bytes())?;
        main.render_version_section(w)
    })?;
    written.push(write(path, &roff)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone(), dir, &mut written)?;
    }
    Ok(written)
}

fn render(
    path: &Path,
    f: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<Vec<u8>, GenerateError> {
    let mut roff = Vec::new();
    f(&mut roff).map_err(|source| GenerateError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(roff)
}

fn page(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), GenerateError> {
    let man = clap_mangen::Man::new(cmd.clone()).section(SECTION);
    let path = dir.join(man.get_filename());
    let roff = render(&path, |w| {
        man.render(w)?;
        if cmd.get_name() == "intercept" {
            w.write_all(INTERCEPT_FAILURES.as_bytes())?;
        }
        w.write_all(SUB_SEE_ALSO.as_bytes())
    })?;
    written.push(write(path, &roff)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone(), dir, written)?;
    }
    Ok(())
}

/// rpcbind-proxy(8): DESCRIPTION, before the generated COMMANDS.
const MAIN_DESCRIPTION: &str = r#".SH DESCRIPTION
.B rpcbind-proxy serve
sits in front of
.BR rpcbind (8)
on the same host and speaks its protocol (portmapper v2, rpcbind v3 and v4,
every procedure) on a unix socket, a TCP port and a UDP port on loopback.
It answers lookups (GETPORT, GETADDR, GETVERSADDR, GETADDRLIST, DUMP) from a
cache that follows changes made directly at rpcbind within
.B \-\-refresh
(1 s), sends every other call to rpcbind over a few persistent connections,
and closes finished client connections with a reset, so that a client that
connects once per lookup leaves no TIME_WAIT socket behind.
Answers are those rpcbind gives, byte for byte after the XID.
.PP
rpcbind always sees the caller's own identity: a registration (SET, UNSET)
from an unprivileged user cannot act as the superuser through the proxy.
CALLIT, BCAST and INDIRECT are never forwarded.
.PP
By default it listens on
.IR /run/rpcbind\-proxy/rpcbind.sock ,
127.0.0.1:1111 and [::1]:1111 (TCP and UDP), and talks to rpcbind at
.I /run/rpcbind.sock
and port 111 on loopback.
Under systemd,
.B rpcbind\-proxy.socket
holds the listeners and starts
.B rpcbind\-proxy.service
on the first client.
With
.BR \-\-intercept ,
unmodified clients of 127.0.0.1:111, [::1]:111 and the unix socket are
caught by an nftables table that the kernel removes when the daemon exits.
.PP
The other commands talk to a running daemon:
.B status
(open to every local user),
.B flush
(root),
.B check
(a monitoring plugin) and
.B query
(asks through the proxy, printing as
.BR rpcinfo (8)
prints).
Each has its own page, listed below; every option is also in
.BI "rpcbind\-proxy " COMMAND " \-\-help" .
"#;

/// rpcbind-proxy(8): the sections after the generated COMMANDS.
const MAIN_SECTIONS: &str = r#".SH FILES
.TP
.I /etc/rpcbind\-proxy/config.toml
Configuration read by
.B serve
when it exists (or the file named by
.BR \-\-config ):
the options of
.B serve
in kebab\-case; unknown keys are refused, flags override it.
.TP
.I /run/rpcbind\-proxy/rpcbind.sock
The proxy's unix socket (mode 0666), for clients.
.TP
.I /run/rpcbind\-proxy/control.sock
The control socket read by
.B status
and
.BR flush .
.TP
.I /run/rpcbind.sock
rpcbind's own unix socket, where the proxy forwards.
.TP
.BR rpcbind\-proxy.socket ", " rpcbind\-proxy.service
The package's systemd units
.RB ( "systemctl cat rpcbind\-proxy.service"
shows where they are and any drop\-ins).
.SH SIGNALS
.TP
.B SIGHUP
Re\-read the configuration file (TTLs, limits, timeouts, log level); the
cache is kept. Listeners, the control socket, rpcbind's addresses, the
number of stream threads and
.B \-\-intercept
change only with a restart; the log names any such setting that changed.
.TP
.BR SIGTERM ", " SIGINT
Stop accepting, answer the calls in flight (at most 2 s), remove the sockets
(and the interception table) and exit 0.
.SH "EXIT STATUS"
.TP
.B 0
.B serve
stopped on a signal; the other commands succeeded.
.TP
.B 1
A failure at run time: a port in use, a socket that cannot be created, the
daemon or rpcbind could not be reached, the host refused a change.
.TP
.B 2
A usage or configuration error: an unknown option, a bad option value (of
the wrong kind, such as
.BR "\-\-ttl abc" ,
or out of range, such as
.BR "\-\-ttl \-5" ),
a bad listener, an unreadable or wrong configuration file, options that
make no sense together. Fixed by changing the command line or the file.
.PP
Every error is one line on standard error naming the bad value and the
valid form.
.TP
.BR 0 ", " 1 ", " 2 ", " 3
.B check
only: OK, WARNING, CRITICAL, UNKNOWN, as monitoring plugins do (a usage
error is UNKNOWN).
.TP
.BR 0 ", " 1 ", " 3
.B intercept status
only: transparent mode on, partly on, off.
.SH ENVIRONMENT
.TP
.BR NOTIFY_SOCKET ", " WATCHDOG_USEC
Set by systemd: readiness, status and watchdog notifications are sent there.
.TP
.BR LISTEN_FDS ", " LISTEN_PID
Set by systemd socket activation: the listeners are adopted instead of bound.
.TP
.B JOURNAL_STREAM
Set by systemd when standard error goes to the journal: logs are then
written to the journal with their fields; otherwise to standard error.
.SH EXAMPLES
Run the daemon in the foreground on its defaults (rpcbind must be running):
.PP
.RS
.nf
rpcbind\-proxy serve
.fi
.RE
.PP
What it is doing, and who is asking:
.PP
.RS
.nf
rpcbind\-proxy status
.fi
.RE
.PP
Is it answering? The list
.B rpcinfo \-p
prints, asked through the proxy:
.PP
.RS
.nf
rpcbind\-proxy query \-p
.fi
.RE
.PP
A Nagios or Icinga check:
.PP
.RS
.nf
rpcbind\-proxy check \-\-warn\-time\-wait 100 \-\-crit\-time\-wait 400
.fi
.RE
.PP
Under systemd, the socket unit and the logs:
.PP
.RS
.nf
systemctl enable \-\-now rpcbind\-proxy.socket
journalctl \-u rpcbind\-proxy
.fi
.RE
.SH "SEE ALSO"
.BR rpcbind (8),
.BR rpcinfo (8),
.BR rpcbind\-proxy\-serve (8),
.BR rpcbind\-proxy\-status (8),
.BR rpcbind\-proxy\-flush (8),
.BR rpcbind\-proxy\-check (8),
.BR rpcbind\-proxy\-query (8),
.BR rpcbind\-proxy\-top (8),
.BR rpcbind\-proxy\-intercept (8),
.BR systemd.socket (5)
"#;

/// rpcbind-proxy-intercept(8): what is left after a failure, and how to get
/// back to a known state.
const INTERCEPT_FAILURES: &str = r#".SH "FAILURES AND RECOVERY"
.TP
.B enable fails midway
It undoes every change it made, newest first, and exits 1 with one line
naming the step that failed and saying it was rolled back:
.I /run/rpcbind.sock
is rpcbind's live socket again, the drop\-ins are as they were, systemd
reloads them and the proxy's units are back in the state they were in.
A change that cannot be undone is one line naming what is left and how to
finish by hand, usually
.BR "rpcbind\-proxy intercept disable" .
.TP
.B the daemon dies
The redirect table is owned by the daemon's netlink socket: the kernel
removes it the moment the daemon exits, however it exits (SIGTERM, crash,
SIGKILL, OOM kill), and clients of port 111 reach rpcbind directly again.
After every stop that was not clean, the service runs
.BR "intercept fail\-open" ,
which makes
.I /run/rpcbind.sock
rpcbind's live socket again, so unix clients reach rpcbind too; systemd
restarts the daemon, which runs
.B intercept reclaim
once it is ready.
.TP
.B to recover
.B rpcbind\-proxy intercept status
says which parts of transparent mode are in place (exit 0 on, 3 off, 1
partly on).
.B rpcbind\-proxy intercept disable
undoes every part that is in place, each step even when one before it
failed, and is safe to run again;
.B rpcbind\-proxy intercept enable
then sets it all up afresh.
"#;

/// Every subcommand's page points back at the main one.
const SUB_SEE_ALSO: &str = r#".SH "SEE ALSO"
.BR rpcbind\-proxy (8),
.BR rpcbind (8),
.BR rpcinfo (8)
"#;

/// bash, zsh and fish completion scripts, under the file names each shell's
/// generator chooses.
pub fn completions(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    create_dir(dir)?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible_command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut script);
        if shell == Shell::Bash {
            script = bash_case_labels(&script).into_bytes();
        }
        let name = clap_complete::Generator::file_name(&shell, BIN);
        written.push(write(dir.join(name), &script)?);
    }
    Ok(written)
}

/// clap_complete's bash script names a subcommand's state in two ways for a
/// binary whose name has a '-': the loop that walks the words sets
/// `rpcbind__proxy__subcmd__serve` (the '-' of the binary's name becomes
/// `__`), while the `case` that offers the options tests for
/// `rpcbind__subcmd__proxy__subcmd__serve` (every '-' becomes `__subcmd__`).
/// No label ever matched, so only subcommand names were completed. The
/// labels are rewritten to the walker's spelling: only the binary's own name
/// is spelled two ways (a subcommand's '-' becomes `__subcmd__` on both
/// sides).
fn bash_case_labels(script: &[u8]) -> String {
    let script = String::from_utf8_lossy(script);
    let walker = BIN.replace('-', "__");
    let label = BIN.replace('-', "__subcmd__");
    if walker == label {
        return script.into_owned();
    }
    script.replace(
        &format!("{label}__subcmd__"),
        &format!("{walker}__subcmd__"),
    )
}

/// The command line as users see it. The completion generators, unlike the
/// man page renderer, offer hidden subcommands too; clap cannot remove a
/// subcommand, so the top level is rebuilt from the visible ones.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}
