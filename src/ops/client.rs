//! What every operator command shares: one request to the control socket,
//! one-line failures, and the daemon's status read into its type.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::proxy::status::Status;

pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rpcbind-proxy: {msg}");
    ExitCode::FAILURE
}

/// Sends one request line to the control socket and returns the JSON answer.
pub(crate) fn control_request(path: &Path, line: &str) -> Result<Value, String> {
    let tried = |e: std::io::Error| format!("cannot reach the daemon at {}: {e}", path.display());
    let mut s = UnixStream::connect(path).map_err(tried)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(tried)?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(tried)?;
    let mut text = String::new();
    s.take(16 << 20).read_to_string(&mut text).map_err(tried)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("bad answer from the daemon at {}: {e}", path.display()))?;
    match v.get("error").and_then(Value::as_str) {
        Some(err) => Err(err.to_string()),
        None => Ok(v),
    }
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
