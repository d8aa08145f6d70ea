//! Record marking (RFC 5531 §11) as a client stream delivers it: arbitrary
//! bytes, cut into arbitrary chunks, through `RecordCodec::new(9000)`.
//!
//! Input: byte 0 says how many chunk-size bytes follow (1..=8); those sizes
//! are used in turn to cut the rest of the input. Checks:
//! - no panic;
//! - no record longer than 9000 bytes;
//! - the read buffer never grows past 64 KiB + the input length, whatever the
//!   record marks claim;
//! - the records and the verdict (error or not) are exactly those of a plain
//!   reference decoder run over the whole stream at once: chunking must not
//!   change what is decoded.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpcbind_proxy::protocol::rpc::{RecordCodec, MAX_FRAGMENTS};
use tokio_util::codec::Decoder;

const MAX: usize = 9000;

/// The straightforward reading of RFC 5531 §11 with the proxy's bounds:
/// a record over `MAX` bytes (checked at each mark) or over `MAX_FRAGMENTS`
/// fragments is an error. Returns the complete records and whether the
/// stream was refused.
fn reference(mut s: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut partial = Vec::new();
    let mut fragments = 0u32;
    loop {
        if s.len() < 4 {
            return (out, false);
        }
        let mark = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        let last = mark & 0x8000_0000 != 0;
        let len = (mark & 0x7fff_ffff) as usize;
        if partial.len() + len > MAX {
            return (out, true);
        }
        if s.len() < 4 + len {
            return (out, false);
        }
        let fragment = &s[4..4 + len];
        s = &s[4 + len..];
        if !(last && fragments == 0) {
            fragments += 1;
            if fragments > MAX_FRAGMENTS {
                return (out, true);
            }
        }
        partial.extend_from_slice(fragment);
        if last {
            fragments = 0;
            out.push(std::mem::take(&mut partial));
        }
    }
}

fn chunk_size(b: u8) -> usize {
    // Small chunks (1..=128 bytes) or large ones (up to ~16 KiB).
    if b & 0x80 == 0 {
        b as usize + 1
    } else {
        (b & 0x7f) as usize * 128 + 1
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 8) + 1;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);

    let bound = 64 * 1024 + stream.len();
    let mut codec = RecordCodec::new(MAX);
    let mut src = BytesMut::new();
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut refused = false;
    let mut off = 0;
    let mut i = 0;
    'feed: while off < stream.len() {
        let take = chunk_size(sizes[i % sizes.len()]).min(stream.len() - off);
        i += 1;
        src.extend_from_slice(&stream[off..off + take]);
        off += take;
        loop {
            match codec.decode(&mut src) {
                Ok(Some(record)) => {
                    assert!(record.len() <= MAX, "record of {} bytes", record.len());
                    records.push(record.to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    refused = true;
                    break 'feed;
                }
            }
            assert!(
                src.capacity() < bound,
                "read buffer capacity {} for {} input bytes",
                src.capacity(),
                stream.len()
            );
        }
        assert!(
            src.capacity() < bound,
            "read buffer capacity {} for {} input bytes",
            src.capacity(),
            stream.len()
        );
    }
    if !refused {
        // Whatever is left is an incomplete record: decode must keep saying None.
        assert!(matches!(codec.decode(&mut src), Ok(None)));
    }

    let (expected, expected_refused) = reference(stream);
    assert_eq!(
        refused, expected_refused,
        "verdict differs from the reference"
    );
    assert_eq!(records, expected, "records differ from the reference");
});
