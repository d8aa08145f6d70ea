//! Unit tests of `sockdiag`: the bytecode filter, reply parsing and
//! matching, the request layout.

use super::*;
use crate::host::netlink::NLA_HDRLEN;

/// Runs the kernel's bytecode interpreter (inet_diag_bc_run) for ports.
fn run_bc(bc: &[u8], sport: u16, dport: u16) -> bool {
    let mut at = 0usize;
    let mut len = bc.len() as isize;
    while len > 0 {
        let code = bc[at];
        let yes_off = bc[at + 1] as isize;
        let no_off = u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as isize;
        let operand = || u16::from_ne_bytes([bc[at + 6], bc[at + 7]]);
        let yes = match code {
            INET_DIAG_BC_JMP => false,
            INET_DIAG_BC_S_EQ => sport == operand(),
            INET_DIAG_BC_D_EQ => dport == operand(),
            0 => true,
            _ => panic!("unexpected op {code}"),
        };
        let off = if yes { yes_off } else { no_off };
        len -= off;
        at = at.wrapping_add(off as usize);
    }
    len == 0
}

/// The kernel's audit (inet_diag_bc_audit + valid_cc) for the ops used.
fn audit(bc: &[u8]) -> bool {
    let valid_cc = |cc: isize| {
        let (mut at, mut len) = (0usize, bc.len() as isize);
        while len >= 0 {
            if cc > len {
                return false;
            }
            if cc == len {
                return true;
            }
            let yes = bc[at + 1] as isize;
            if yes < 4 || yes & 3 != 0 {
                return false;
            }
            len -= yes;
            at += yes as usize;
        }
        false
    };
    let (mut at, mut len) = (0usize, bc.len() as isize);
    while len > 0 {
        let code = bc[at];
        let mut min_len = 4isize;
        match code {
            INET_DIAG_BC_S_EQ | INET_DIAG_BC_D_EQ => {
                min_len += 4;
                if len < min_len {
                    return false;
                }
            }
            INET_DIAG_BC_JMP => {}
            _ => return false,
        }
        let yes = bc[at + 1] as isize;
        let no = u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as isize;
        if no < min_len || no > len + 4 || no & 3 != 0 {
            return false;
        }
        if no < len && !valid_cc(len - no) {
            return false;
        }
        if yes < min_len || yes > len + 4 || yes & 3 != 0 {
            return false;
        }
        at += yes as usize;
        len -= yes;
    }
    len == 0
}

#[test]
fn port_filter_matches_local_or_remote_port() {
    for ports in [&[111u16][..], &[111, 1111], &[1, 2, 3, 111, 65535]] {
        let bc = port_filter(ports);
        assert!(audit(&bc), "{ports:?}: kernel audit would reject");
        for &p in ports {
            assert!(run_bc(&bc, p, 40000), "{ports:?}: sport {p}");
            assert!(run_bc(&bc, 40000, p), "{ports:?}: dport {p}");
        }
        assert!(!run_bc(&bc, 40000, 40001), "{ports:?}: other ports");
        assert!(!run_bc(&bc, 0, 0), "{ports:?}: zero ports");
    }
    let many: Vec<u16> = (1..=MAX_PORTS as u16).collect();
    let bc = port_filter(&many);
    assert!(audit(&bc));
    assert!(run_bc(&bc, 5000, MAX_PORTS as u16));
    assert!(!run_bc(&bc, 5000, 5001));
    assert!(NLA_HDRLEN + bc.len() <= usize::from(u16::MAX));
}

fn diag_msg(family: u8, state: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
    let mut m = vec![family, state, 0, 0];
    m.extend_from_slice(&sport.to_be_bytes());
    m.extend_from_slice(&dport.to_be_bytes());
    let mut a = [0u8; 16];
    a[..src.len()].copy_from_slice(src);
    m.extend_from_slice(&a);
    let mut a = [0u8; 16];
    a[..dst.len()].copy_from_slice(dst);
    m.extend_from_slice(&a);
    m.extend_from_slice(&[0u8; 12]); // if, cookie
    m.extend_from_slice(&[0u8; 12]); // expires, rqueue, wqueue
    m.extend_from_slice(&65534u32.to_ne_bytes());
    m.extend_from_slice(&4242u32.to_ne_bytes());
    m
}

#[test]
fn diag_messages_parse_and_bound_attributes() {
    let mut m = diag_msg(2, 1, &[127, 0, 0, 1], 40000, &[127, 0, 0, 1], 111);
    assert_eq!(m.len(), DIAG_MSG_LEN);
    // An unrelated attribute, then the cgroup id.
    m.extend_from_slice(&[5, 0, 8, 0, 1, 0, 0, 0]);
    m.extend_from_slice(&12u16.to_ne_bytes());
    m.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
    m.extend_from_slice(&77u64.to_ne_bytes());
    let d = parse_diag_msg(&m).unwrap();
    assert_eq!(
        (d.sport, d.dport, d.uid, d.inode),
        (40000, 111, 65534, 4242)
    );
    assert_eq!(d.cgroup_id, Some(77));
    // Every truncation parses or is refused; none panics.
    for cut in 0..m.len() {
        let _ = parse_diag_msg(&m[..cut]);
    }
    assert!(parse_diag_msg(&m[..DIAG_MSG_LEN - 1]).is_none());
    // An attribute claiming more than is there ends the walk.
    let mut bad = diag_msg(2, 1, &[127, 0, 0, 1], 1, &[127, 0, 0, 1], 2);
    bad.extend_from_slice(&[200, 0, 21, 0, 1, 2, 3, 4]);
    assert_eq!(parse_diag_msg(&bad).unwrap().cgroup_id, None);
    // Unknown family: refused.
    assert!(parse_diag_msg(&diag_msg(99, 1, &[], 1, &[], 2)).is_none());
}

#[test]
fn answers_must_match_the_tuple_asked_for() {
    let c: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let s: SocketAddr = "127.0.0.1:111".parse().unwrap();
    let (lo, any) = (&[127, 0, 0, 1][..], &[0; 4][..]);
    // (protocol, state, source, its port, destination, its port, found)
    let cases = [
        (Proto::Tcp, TCP_ESTABLISHED, lo, 40000, lo, 111, true),
        // A listener the kernel fell back to, or a TIME_WAIT socket: no owner.
        (Proto::Tcp, TCP_LISTEN, lo, 40000, any, 0, false),
        (Proto::Tcp, TCP_TIME_WAIT, lo, 40000, lo, 111, false),
        (Proto::Tcp, TCP_ESTABLISHED, lo, 40000, lo, 1111, false),
        // UDP: unconnected on the wildcard address, or connected to `s`.
        (Proto::Udp, TCP_CLOSE, any, 40000, any, 0, true),
        (Proto::Udp, TCP_ESTABLISHED, lo, 40000, lo, 111, true),
        (Proto::Udp, TCP_ESTABLISHED, lo, 40000, lo, 2049, false),
        (Proto::Udp, TCP_CLOSE, any, 40001, any, 0, false),
    ];
    for (i, (proto, state, src, sport, dst, dport, found)) in cases.into_iter().enumerate() {
        let m = diag_msg(2, state, src, sport, dst, dport);
        assert_eq!(match_peer(proto, &m, c, s).is_some(), found, "case {i}");
    }
}

#[test]
fn mapped_addresses_are_looked_up_as_ipv4() {
    let c: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
    let s: SocketAddr = "127.0.0.1:111".parse().unwrap();
    let (family, l, r) = tuple(c, s).unwrap();
    assert_eq!(i32::from(family), libc::AF_INET);
    assert_eq!(l, "127.0.0.1:40000".parse().unwrap());
    assert_eq!(r, s);
    assert!(tuple("[::1]:1".parse().unwrap(), s).is_none());
}

#[test]
fn exact_request_layout() {
    let id = SockId::new(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:111".parse().unwrap(),
    );
    let r = build_request(2, 6, u32::MAX, &id, None);
    assert_eq!(r.len(), 56);
    assert_eq!(&r[8..12], &[0x9c, 0x40, 0, 111]);
    assert_eq!(&r[12..16], &[127, 0, 0, 1]);
    assert_eq!(&r[28..32], &[127, 0, 0, 1]);
    assert_eq!(&r[48..56], &[0xff; 8]);
}
