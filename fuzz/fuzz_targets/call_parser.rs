//! The call header: `rpc::parse_call`, then `rpc::authenticate`, on arbitrary
//! bytes (a whole record, as the record codec hands it over).
//!
//! Checks: no panic; the header and arguments split the record exactly;
//! credentials and verifiers within libtirpc's 400 bytes; the verifier a
//! reply carries is AUTH_NONE or the call's own; an AUTH_NONE/AUTH_NONE call
//! re-encodes (`encode_call`) to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcbind_proxy::protocol::rpc::{
    authenticate, encode_call, parse_call, OpaqueAuth, AUTH_NONE, AUTH_SYS, MAX_AUTH_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let Ok(call) = parse_call(data) else {
        return;
    };
    assert_eq!(call.header.len() + call.args.len(), data.len());
    assert_eq!(call.header, &data[..call.header.len()]);
    assert_eq!(call.args, &data[call.header.len()..]);
    assert!(call.header.len() >= 40);
    assert!(call.cred.body.len() <= MAX_AUTH_BYTES as usize);
    assert!(call.verf.body.len() <= MAX_AUTH_BYTES as usize);

    match authenticate(&call) {
        Ok(verf) => {
            assert!(call.cred.flavor == AUTH_NONE || call.cred.flavor == AUTH_SYS);
            assert!(verf == OpaqueAuth::NONE || verf == call.verf);
        }
        Err(_) => assert_ne!(call.cred.flavor, AUTH_NONE),
    }

    if call.cred == OpaqueAuth::NONE && call.verf == OpaqueAuth::NONE {
        let again = encode_call(call.xid, call.prog, call.vers, call.procedure, call.args);
        assert_eq!(&again[..], data);
    }
});
