//! One-shot calls to rpcbind's unix socket, each on a connection of its
//! own, closed afterwards: a registration under the caller's uid, and the
//! operator's reads that must not wait behind the clients' calls.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;
use tracing::warn;

use super::UpstreamError;
use crate::protocol::rpc::{put_record, RecordCodec, MAX_UPSTREAM_RECORD};

/// One call over a connection to rpcbind's unix socket opened with the
/// caller's uid and gid (see `sys::connect_unix_as`), closed afterwards.
/// Used only for registrations by unprivileged local callers, which are rare.
pub async fn call_as_user(
    path: &std::path::Path,
    uid: u32,
    gid: u32,
    call: &[u8],
    timeout: Duration,
) -> Result<Bytes, UpstreamError> {
    let exchange = async {
        let path = path.to_owned();
        let std_stream =
            tokio::task::spawn_blocking(move || crate::host::sys::connect_unix_as(&path, uid, gid))
                .await
                .map_err(|_| UpstreamError::Unavailable)?
                .map_err(|e| {
                    warn!(uid, error = %e, "cannot connect to rpcbind as the caller");
                    UpstreamError::Unavailable
                })?;
        std_stream
            .set_nonblocking(true)
            .map_err(|_| UpstreamError::Unavailable)?;
        let stream = UnixStream::from_std(std_stream).map_err(|_| UpstreamError::Unavailable)?;
        exchange_once(stream, call).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// One call over a connection of its own to rpcbind's unix socket, closed
/// afterwards: for the operator's reads (rpcbind's counters), which must
/// neither wait behind the clients' calls nor count among them.
pub async fn call_once(
    path: &std::path::Path,
    call: &[u8],
    timeout: Duration,
) -> Result<Bytes, UpstreamError> {
    let exchange = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|_| UpstreamError::Unavailable)?;
        exchange_once(stream, call).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// Sends `call` as one record on `stream` and reads one record back.
async fn exchange_once(stream: UnixStream, call: &[u8]) -> Result<Bytes, UpstreamError> {
    let (rd, mut wr) = stream.into_split();
    let mut rec = BytesMut::with_capacity(4 + call.len());
    put_record(&mut rec, call);
    wr.write_all(&rec)
        .await
        .map_err(|_| UpstreamError::ConnectionLost)?;
    let mut frames = FramedRead::new(rd, RecordCodec::new(MAX_UPSTREAM_RECORD));
    match frames.next().await {
        Some(Ok(reply)) => Ok(reply.freeze()),
        _ => Err(UpstreamError::ConnectionLost),
    }
}
