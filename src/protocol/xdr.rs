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
///
/// It keeps the bytes not yet consumed as a slice of their own, so that a
/// read is one bounds check and a slice split; every reader is inlined into
/// its caller (the cached-hit path decodes a dozen values per call), and the
/// errors are built out of line.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    rest: &'a [u8],
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, rest: buf }
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.buf.len() - self.rest.len()
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The bytes not yet consumed.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, needed: usize) -> XdrError {
        XdrError::Truncated {
            offset: self.position(),
            needed,
            left: self.remaining(),
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if n > self.rest.len() {
            return Err(self.truncated(n));
        }
        let (s, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(s)
    }

    #[inline]
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        match self.rest.split_first_chunk::<4>() {
            Some((b, rest)) => {
                self.rest = rest;
                Ok(u32::from_be_bytes(*b))
            }
            None => Err(self.truncated(4)),
        }
    }

    #[inline]
    pub fn i32(&mut self) -> Result<i32, XdrError> {
        self.u32().map(|v| v as i32)
    }

    #[inline]
    pub fn u64(&mut self) -> Result<u64, XdrError> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Ok(hi << 32 | lo)
    }

    /// `N` values of four bytes at once (a struct of `u32` fields), with the
    /// error reading them one by one would give.
    #[inline]
    pub fn u32s<const N: usize>(&mut self) -> Result<[u32; N], XdrError> {
        if self.rest.len() < 4 * N {
            return Err(self.truncated_at_word());
        }
        let (words, rest) = self.rest.split_at(4 * N);
        self.rest = rest;
        Ok(std::array::from_fn(|i| {
            u32::from_be_bytes([
                words[4 * i],
                words[4 * i + 1],
                words[4 * i + 2],
                words[4 * i + 3],
            ])
        }))
    }

    /// Where reading four-byte values one by one stops short: at the first
    /// value not wholly there.
    #[cold]
    #[inline(never)]
    fn truncated_at_word(&self) -> XdrError {
        let whole = self.rest.len() & !3;
        XdrError::Truncated {
            offset: self.position() + whole,
            needed: 4,
            left: self.rest.len() - whole,
        }
    }

    /// XDR bool: any non-zero value is true (as libtirpc's xdr_bool).
    #[inline]
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        self.u32().map(|v| v != 0)
    }

    /// Fixed-length opaque data of `len` bytes plus padding.
    #[inline]
    pub fn opaque_fixed(&mut self, len: usize) -> Result<&'a [u8], XdrError> {
        // Data and padding taken at once when both are there (`len` is
        // bounded by what is left before it is rounded up); otherwise the
        // two steps, for the error that names the missing part.
        if len <= self.rest.len() && padded(len) <= self.rest.len() {
            let (data, rest) = self.rest.split_at(padded(len));
            self.rest = rest;
            return Ok(&data[..len]);
        }
        self.opaque_fixed_short(len)
    }

    #[cold]
    #[inline(never)]
    fn opaque_fixed_short(&mut self, len: usize) -> Result<&'a [u8], XdrError> {
        let data = self.take(len)?;
        self.take(padded(len) - len)?;
        Ok(data)
    }

    /// Variable-length opaque data of at most `max` bytes.
    #[inline]
    pub fn opaque(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        let len = self.u32()?;
        if len > max {
            return Err(too_long(len, max));
        }
        // Checked against what is left before slicing: no allocation either way.
        self.opaque_fixed(len as usize)
    }

    /// A string of at most `max` bytes. XDR strings are bytes; no UTF-8 check.
    #[inline]
    pub fn string(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        self.opaque(max)
    }
}

#[cold]
#[inline(never)]
fn too_long(len: u32, max: u32) -> XdrError {
    XdrError::TooLong { len, max }
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
    fn words_at_once_read_and_fail_as_one_by_one() {
        let buf: Vec<u8> = (0..24).collect();
        for len in 4..=buf.len() {
            let (mut at_once, mut one_by_one) =
                (Reader::new(&buf[..len]), Reader::new(&buf[..len]));
            at_once.u32().unwrap();
            one_by_one.u32().unwrap();
            let expected = (|| {
                Ok([
                    one_by_one.u32()?,
                    one_by_one.u32()?,
                    one_by_one.u32()?,
                    one_by_one.u32()?,
                ])
            })();
            assert_eq!(at_once.u32s::<4>(), expected, "{len} bytes");
            if expected.is_ok() {
                assert_eq!(at_once.position(), one_by_one.position());
            }
        }
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
