//! What every operator command shares: one request to the control socket,
//! one-line failures, and the daemon's status read into its type.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::proxy::status::Status;

pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rpcbind-proxy: {msg}");
    ExitCode::from(crate::cli::EXIT_FAILURE)
}

/// A command line that clap accepted but that asks for nothing sensible:
/// one line, and the usage status clap itself exits with.
pub(crate) fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rpcbind-proxy: {msg} (see --help)");
    ExitCode::from(crate::cli::EXIT_USAGE)
}

/// Sends one request line to the control socket and returns the JSON answer.
/// A socket that is not the control socket (rpcbind's, the proxy's RPC
/// socket) is named as such rather than by the bare I/O error it causes.
pub(crate) fn control_request(path: &Path, line: &str) -> Result<Value, String> {
    let at = path.display();
    let mut s = UnixStream::connect(path).map_err(|e| unreachable_daemon(path, &e))?;
    let tried = |e: std::io::Error| format!("cannot reach the daemon at {at}: {e}");
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
    let mut text = Vec::new();
    let exchanged = s
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| s.take(16 << 20).read_to_end(&mut text));
    match exchanged {
        Ok(_) if !text.is_empty() => {}
        Ok(_) => {
            return Err(not_control(
                path,
                "it closed the connection without an answer",
            ))
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
            ) =>
        {
            return Err(not_control(path, "it reset the connection"))
        }
        Err(e) => return Err(tried(e)),
    }
    let v: Value =
        serde_json::from_slice(&text).map_err(|_| not_control(path, "its answer is not JSON"))?;
    match v.get("error").and_then(Value::as_str) {
        Some(err) => Err(err.to_string()),
        None => Ok(v),
    }
}

/// Why nothing answered at `path`: no socket there, or no daemon behind it.
fn unreachable_daemon(path: &Path, e: &std::io::Error) -> String {
    let at = path.display();
    let why = match e.kind() {
        ErrorKind::NotFound => {
            "no socket there: the daemon is not running, or was started with another --control"
        }
        ErrorKind::ConnectionRefused => {
            "nothing listens on it: the daemon is not running (a stopped one can leave the file)"
        }
        _ => return format!("cannot reach the daemon at {at}: {e}"),
    };
    format!("cannot reach the daemon at {at}: {why}")
}

/// A socket that answered the control request as no control socket does.
fn not_control(path: &Path, what: &str) -> String {
    let p = path.display();
    format!(
        "{p} is not rpcbind-proxy's control socket ({what}; is it rpcbind's, or the proxy's RPC \
         socket?); the control socket is {} unless the daemon was started with --control",
        crate::config::DEFAULT_CONTROL
    )
}

/// The daemon's status. A status this build cannot read (a field missing
/// or of another type) is an error naming the field, never a 0.
pub(crate) fn status_request(path: &Path) -> Result<Status, String> {
    parse_status(path, control_request(path, "status")?)
}

/// Reads a status answer from the daemon at `path` into its type.
pub(crate) fn parse_status(path: &Path, v: Value) -> Result<Status, String> {
    serde_json::from_value(v)
        .map_err(|e| format!("bad status from the daemon at {}: {e}", path.display()))
}
