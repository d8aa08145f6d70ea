//! The constants of `netfilter`: the nf_tables uapi values it sends and
//! parses, and the module's own limits (names, receive buffer, dump bounds,
//! timeout). One cohesive table.

use std::time::Duration;

// --- kernel uapi constants (nfnetlink.h, nf_tables.h, nf_nat.h); the
// netlink ones are in `host::netlink` ---

pub(super) const NFGENMSG_LEN: usize = 4;

pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;

pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_DELRULE: u16 = 8;

pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_TABLE_FLAGS: u16 = 2;
pub(super) const NFT_TABLE_F_OWNER: u32 = 0x2;

pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NF_INET_LOCAL_OUT: u32 = 3;
pub(super) const NF_ACCEPT: u32 = 1;
pub(super) const NF_DROP: u32 = 0;

pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;

pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFT_META_MARK: u32 = 3;
pub(super) const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_META_L4PROTO: u32 = 16;

pub(super) const NFTA_CT_DREG: u16 = 1;
pub(super) const NFTA_CT_KEY: u16 = 2;
pub(super) const NFT_CT_STATE: u32 = 0;
/// `ct state new` (`NF_CT_STATE_BIT(IP_CT_NEW)`), a host-endian u32 in the register.
pub(super) const CT_STATE_NEW: u32 = 1 << 3;

pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;

pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub(super) const NFTA_BITWISE_SREG: u16 = 1;
pub(super) const NFTA_BITWISE_DREG: u16 = 2;
pub(super) const NFTA_BITWISE_LEN: u16 = 3;
pub(super) const NFTA_BITWISE_MASK: u16 = 4;
pub(super) const NFTA_BITWISE_XOR: u16 = 5;
pub(super) const NFTA_BITWISE_OP: u16 = 6;
pub(super) const NFT_BITWISE_BOOL: u32 = 0;

/// The TCP header's flags byte and the flags the redirect rule looks at.
pub(super) const TCP_FLAGS_OFFSET: u32 = 13;
pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_ACK: u8 = 0x10;

pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFT_RETURN: i32 = -5;

pub(super) const NFTA_COUNTER_BYTES: u16 = 1;
pub(super) const NFTA_COUNTER_PACKETS: u16 = 2;

pub(super) const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
pub(super) const NFTA_REDIR_FLAGS: u16 = 3;
pub(super) const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

pub(super) const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_REG_2: u32 = 2;

pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NFT_META_IIFNAME: u32 = 6;

pub(super) const NFTA_FIB_DREG: u16 = 1;
pub(super) const NFTA_FIB_RESULT: u16 = 2;
pub(super) const NFTA_FIB_FLAGS: u16 = 3;
pub(super) const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub(super) const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// The route type of an address of this host (`RTN_LOCAL`).
pub(super) const RTN_LOCAL: u32 = 2;

pub(super) const NFTA_NAT_TYPE: u16 = 1;
pub(super) const NFTA_NAT_FAMILY: u16 = 2;
pub(super) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(super) const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
pub(super) const NFTA_NAT_FLAGS: u16 = 7;
pub(super) const NFT_NAT_DNAT: u32 = 1;
pub(super) const NF_NAT_RANGE_MAP_IPS: u32 = 0x1;

/// libnftnl's rule userdata TLV type for the comment (`NFTNL_UDATA_RULE_COMMENT`).
pub(super) const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// nf_tables' limit for table, chain names and comments (NFT_NAME_MAXLEN - 1,
/// and the userdata TLV length is a u8).
pub(super) const NAME_MAX: usize = 255;
pub(super) const COMMENT_MAX: usize = 200;

/// The chain this module creates in its table.
pub(super) const CHAIN: &str = "output";
/// `priority -100` (dstnat), as nft's `type nat hook output priority -100`.
pub(super) const CHAIN_PRIORITY: i32 = -100;

/// Server mode's chain: other hosts' traffic, at `prerouting` (dstnat).
pub(super) const REMOTE_CHAIN: &str = "prerouting";

/// The chain of the NAT keeper table, and its priority (after the
/// redirect's, which it never needs to precede: it decides nothing).
pub(super) const KEEPER_CHAIN: &str = "output";
pub(super) const KEEPER_PRIORITY: i32 = 100;
/// The keeper rule's comment, what an administrator reading the ruleset sees.
pub(super) const KEEPER_COMMENT: &str =
    "rpcbind-proxy: no verdict; keeps conntrack and NAT on so that its redirected connections are reset properly when it dies";

/// Upper bound on what one dump may accumulate (messages and bytes).
pub(super) const DUMP_MAX_MSGS: usize = 4096;
pub(super) const DUMP_MAX_BYTES: usize = 4 * 1024 * 1024;
/// How long one receive may block before the call fails with `TimedOut`.
pub(super) const RECV_TIMEOUT: Duration = Duration::from_secs(5);
