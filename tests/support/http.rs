//! A small HTTP/1.1 client for the tests of the daemon's `/metrics`: one
//! request per connection (`Connection: close`), the whole answer read to
//! the end within a bound. The daemon's side is hyper; this side stays
//! byte-level so that a test can also send what no real client would.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The address the tests serve `/metrics` on, inside the sandbox.
pub const METRICS: &str = "tcp:127.0.0.1:9111";

pub fn metrics_addr() -> SocketAddr {
    ([127, 0, 0, 1], 9111).into()
}

/// An answer: status code, headers (names lowercased), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD PATH` at `addr`.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let bytes = exchange(addr, raw.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"));
    parse(&bytes).unwrap_or_else(|| {
        panic!(
            "{method} http://{addr}{path}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// `GET /metrics` at the tests' metrics address, which must answer 200.
pub async fn scrape() -> String {
    let a = request(metrics_addr(), "GET", "/metrics").await;
    assert_eq!(a.status, 200, "GET /metrics: {a:?}");
    a.body
}

/// Sends `raw` and reads until the server closes (at most 10 s).
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no end of answer within 10 s"))??;
    Ok(out)
}

fn parse(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}
