//! Every procedure's argument decoder: `rpcb::decode_args`.
//!
//! Input: byte 0 picks the version (2..=4), byte 1 the procedure number
//! (0..=15, so a few numbers that do not exist are tried too), the rest is
//! the arguments. Checks: no panic; every decoded value re-encodes to at most
//! the bytes it came from and decodes back to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpcbind_proxy::protocol::rpcb::{decode_args, Args, Procedure, MAX_NETBUF};
use rpcbind_proxy::protocol::xdr::XdrWrite;

fuzz_target!(|data: &[u8]| {
    let [v, p, args @ ..] = data else {
        return;
    };
    let vers = 2 + (*v as u32 % 3);
    let Some(procedure) = Procedure::lookup(vers, *p as u32 % 16) else {
        return;
    };
    let Ok(decoded) = decode_args(procedure, vers, args) else {
        return;
    };
    let mut b = BytesMut::new();
    match decoded {
        Args::Void => return,
        Args::Mapping(m) => m.encode(&mut b),
        Args::Rpcb(r) => r.encode(&mut b),
        Args::Uaddr(u) => b.put_xdr_opaque(u),
        Args::Netbuf { maxlen, buf } => {
            assert!(maxlen <= MAX_NETBUF);
            assert!(buf.len() <= maxlen as usize);
            b.put_xdr_u32(maxlen);
            b.put_xdr_opaque(buf);
        }
        Args::RemoteCall(c) => {
            b.put_xdr_u32(c.prog);
            b.put_xdr_u32(c.vers);
            b.put_xdr_u32(c.procedure);
            b.put_xdr_opaque(c.args);
        }
    }
    // XDR ignores trailing bytes but not padding: the canonical encoding is
    // never longer than what was decoded.
    assert!(b.len() <= args.len(), "{} > {}", b.len(), args.len());
    assert_eq!(decode_args(procedure, vers, &b), Ok(decoded));
});
