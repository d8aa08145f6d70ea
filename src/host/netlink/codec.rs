//! Netlink messages as data: the uapi constants, a request message and its
//! encoding (nlmsghdr, payload, padding), nlattr building (padded to 4
//! bytes, nested attributes with their length patched in), and walking
//! messages and attributes out of a datagram with every length checked
//! against the slice it came in, NLMSG_ERROR payloads included (errno,
//! extended ACK message). No I/O here; the socket is in `netlink`.

use super::NetlinkError;

// --- kernel uapi (linux/netlink.h) ---

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLA_HDRLEN: usize = 4;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;

pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;

pub(crate) const NLM_F_REQUEST: u16 = 0x01;
pub(crate) const NLM_F_MULTI: u16 = 0x02;
pub(crate) const NLM_F_ACK: u16 = 0x04;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
// Flags of NEW requests.
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
// Flags of NLMSG_ERROR.
pub(crate) const NLM_F_CAPPED: u16 = 0x100;
pub(crate) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;

pub(crate) const SOL_NETLINK: libc::c_int = 270;
pub(crate) const NETLINK_EXT_ACK: libc::c_int = 11;
pub(crate) const NETLINK_CAP_ACK: libc::c_int = 10;

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

// --- building ---

/// One message to the kernel, as data: its type, its flags and its payload
/// (everything after the nlmsghdr). The socket numbers it when it sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) msg_type: u16,
    /// NLM_F_* besides NLM_F_REQUEST, which every message to the kernel
    /// carries (and NLM_F_DUMP, which a dump adds).
    pub(crate) flags: u16,
    pub(crate) payload: Vec<u8>,
}

impl Message {
    /// Appends the message with sequence number `seq` and `flags` added to
    /// its own: nlmsghdr (nlmsg_pid 0, to the kernel, which fills it),
    /// payload, padding to 4 bytes.
    pub(crate) fn encode(&self, seq: u32, flags: u16, out: &mut Vec<u8>) {
        // Messages we build are small (a few rules, a bytecode of at most
        // a thousand ports).
        let len =
            u32::try_from(NLMSG_HDRLEN + self.payload.len()).expect("netlink message over 4 GiB");
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&self.msg_type.to_ne_bytes());
        out.extend_from_slice(&(self.flags | flags | NLM_F_REQUEST).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&self.payload);
        out.resize(align4(out.len()), 0);
    }
}

/// Netlink attributes (struct nlattr + payload, padded to 4 bytes).
#[derive(Debug, Default)]
pub(crate) struct AttrBuf {
    buf: Vec<u8>,
}

impl AttrBuf {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn put(&mut self, ty: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        // Attributes we build are small (names <= 255 bytes, a few rules).
        let len16 = u16::try_from(len).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    pub(crate) fn put_u32_be(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    pub(crate) fn put_u64_be(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Starts a nested attribute; returns its offset for [`Self::nest_end`].
    pub(crate) fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub(crate) fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("nested netlink attribute over 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

// --- parsing (everything here is bounded by the slice it is given) ---

/// Iterates over the attributes in `buf`: (type without flags, payload).
/// Stops with an error on a length that does not fit.
pub(crate) struct Attrs<'a> {
    buf: &'a [u8],
}

pub(crate) fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            // Trailing padding shorter than a header is ignored, as the kernel does.
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.buf[0], self.buf[1]]));
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(NetlinkError::Malformed(format!(
                "attribute length {len} out of bounds"
            ))));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        self.buf = self.buf.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    }
}

/// One netlink message from the kernel: header fields and payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NlMsg<'a> {
    pub(crate) msg_type: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

/// Iterates over the messages of a datagram from the kernel; stops with an
/// error on a length that does not fit.
pub(crate) struct Msgs<'a> {
    buf: &'a [u8],
}

pub(crate) fn msgs(buf: &[u8]) -> Msgs<'_> {
    Msgs { buf }
}

impl<'a> Iterator for Msgs<'a> {
    type Item = Result<NlMsg<'a>, NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.buf;
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            self.buf = &[];
            return Some(Err(NetlinkError::Malformed(format!(
                "netlink message length {len} out of bounds ({} bytes left)",
                buf.len()
            ))));
        }
        self.buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(NlMsg {
            msg_type: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        }))
    }
}

/// An NLMSG_ERROR message: errno (positive; 0 = ACK) and the extended ACK's
/// message, if the kernel sent one. Needs the whole struct nlmsgerr.
pub(crate) fn parse_error(msg: &NlMsg<'_>) -> Result<(i32, Option<String>), NetlinkError> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(NetlinkError::Malformed(format!(
            "NLMSG_ERROR of {} bytes",
            p.len()
        )));
    }
    let errno = i32::from_ne_bytes([p[0], p[1], p[2], p[3]])
        .checked_neg()
        .unwrap_or(i32::MAX);
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let tlv_at = if msg.flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            let orig = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
            4usize.saturating_add(align4(orig.min(p.len())))
        };
        if let Some(tlvs) = p.get(tlv_at..) {
            for a in attrs(tlvs).flatten() {
                if a.0 == NLMSGERR_ATTR_MSG {
                    let end = a.1.iter().position(|&b| b == 0).unwrap_or(a.1.len());
                    text = Some(String::from_utf8_lossy(&a.1[..end]).into_owned());
                }
            }
        }
    }
    Ok((errno, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut a = AttrBuf::new();
        a.put_str(1, "nat"); // 4 + 4 = 8, no padding
        a.put(2, &[0xaa]); // 4 + 1 -> 8
        a.put_u32_be(3, 0x0102_0304);
        let b = a.into_bytes();
        assert_eq!(b.len(), 8 + 8 + 8);
        assert_eq!(&b[0..8], &[8, 0, 1, 0, b'n', b'a', b't', 0]);
        assert_eq!(&b[8..16], &[5, 0, 2, 0, 0xaa, 0, 0, 0]);
        assert_eq!(&b[16..24], &[8, 0, 3, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn nested_attributes_carry_their_length_and_flag() {
        let mut a = AttrBuf::new();
        let n = a.nest_start(4);
        a.put_u32_be(1, 3);
        a.put_u32_be(2, (-100i32) as u32);
        a.nest_end(n);
        let b = a.into_bytes();
        assert_eq!(b.len(), 20);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 20);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 4 | NLA_F_NESTED);
        let parsed: Vec<_> = attrs(&b).map(Result::unwrap).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, 4, "NLA_F_NESTED masked");
        let inner: Vec<_> = attrs(parsed[0].1).map(Result::unwrap).collect();
        assert_eq!(
            inner,
            vec![(1, &[0, 0, 0, 3][..]), (2, &[0xff, 0xff, 0xff, 0x9c][..])]
        );
    }

    #[test]
    fn extended_ack_message_is_read() {
        // errno -EINVAL, capped request header, NLMSGERR_ATTR_MSG "bad".
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let mut a = AttrBuf::new();
        a.put_str(NLMSGERR_ATTR_MSG, "bad");
        p.extend_from_slice(&a.into_bytes());
        let m = NlMsg {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS | NLM_F_CAPPED,
            seq: 0,
            payload: &p,
        };
        assert_eq!(parse_error(&m).unwrap(), (libc::EINVAL, Some("bad".into())));
    }
}
