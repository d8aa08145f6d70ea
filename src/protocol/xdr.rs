//! XDR (RFC 4506) on `bytes`, bounded by construction.
//!
//! The decoder never allocates: it hands out slices of the record it was given,
//! and every length read from the wire is checked against the bytes that are
//! actually left (and against the caller's maximum) before anything is sliced.
//! That is the whole defence against "rpcbomb" (CVE-2017-8779): a peer that
//! claims a 4 GiB string gets an error, not an allocation.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Why a value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum XdrError {
    #[error("truncated: needed {needed} bytes at offset {offset}, {left} left")]
    Truncated {
        offset: usize,
        needed: usize,
        left: usize,
    },
    #[error("length {len} exceeds the maximum {max}")]
    TooLong { len: u32, max: u32 },
}

/// A cursor over one XDR-encoded buffer.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes not yet consumed.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if n > self.remaining() {
            return Err(XdrError::Truncated {
                offset: self.pos,
                needed: n,
                left: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> Result<i32, XdrError> {
        self.u32().map(|v| v as i32)
    }

    pub fn u64(&mut self) -> Result<u64, XdrError> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Ok(hi << 32 | lo)
    }

    /// XDR bool: any non-zero value is true (as libtirpc's xdr_bool).
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        self.u32().map(|v| v != 0)
    }

    /// Fixed-length opaque data of `len` bytes plus padding.
    pub fn opaque_fixed(&mut self, len: usize) -> Result<&'a [u8], XdrError> {
        let data = self.take(len)?;
        self.take(padded(len) - len)?;
        Ok(data)
    }

    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        let len = self.u32()?;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        // Checked against what is left before slicing: no allocation either way.
        self.opaque_fixed(len as usize)
    }

    /// A string of at most `max` bytes. XDR strings are bytes; no UTF-8 check.
    pub fn string(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        self.opaque(max)
    }
}

/// Appends XDR values to a `BytesMut`.
pub trait XdrWrite {
    fn put_xdr_u32(&mut self, v: u32);
    fn put_xdr_opaque(&mut self, data: &[u8]);
    fn put_xdr_fixed(&mut self, data: &[u8]);
}

impl XdrWrite for BytesMut {
    fn put_xdr_u32(&mut self, v: u32) {
        self.put_u32(v);
    }

    fn put_xdr_opaque(&mut self, data: &[u8]) {
        self.put_u32(data.len() as u32);
        self.put_xdr_fixed(data);
    }

    fn put_xdr_fixed(&mut self, data: &[u8]) {
        self.put_slice(data);
        self.put_bytes(0, padded(data.len()) - data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_and_padding() {
        let buf = [
            0, 0, 0, 7, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0xff, 0xff, 0xff, 0xfe,
        ];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.string(10), Ok(&b"abc"[..]));
        assert_eq!(r.i32(), Ok(-2));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn a_huge_claimed_length_is_an_error_not_an_allocation() {
        let buf = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        assert_eq!(
            Reader::new(&buf).opaque(u32::MAX),
            Err(XdrError::Truncated {
                offset: 4,
                needed: 0xffff_ffff,
                left: 4
            })
        );
        assert_eq!(
            Reader::new(&buf).string(255),
            Err(XdrError::TooLong {
                len: u32::MAX,
                max: 255
            })
        );
    }

    #[test]
    fn missing_padding_is_truncation() {
        let buf = [0, 0, 0, 1, b'x'];
        assert!(matches!(
            Reader::new(&buf).opaque(8),
            Err(XdrError::Truncated { .. })
        ));
    }

    #[test]
    fn writer_pads_to_four() {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(b"hello");
        b.put_xdr_u32(1);
        assert_eq!(
            &b[..],
            &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0, 0, 0, 1]
        );
    }
}
