// SPDX-License-Identifier: MIT OR Apache-2.0
//
// Who opened each client socket of rpcbind's port: at the moment a process
// connects a socket (cgroup/connect4, connect6) or sends a datagram
// (cgroup/sendmsg4, sendmsg6) to a watched port, its pid, uid, command and
// cgroup are recorded under the socket's cookie. The proxy reads the cookie
// of its client's socket from sock_diag and looks it up: exact at any rate,
// and still there after the process has exited.
//
// Built by build.rs with `clang -target bpf -O2` into the binary, loaded
// and verified by the kernel when the daemon starts, attached at the root
// of the cgroup2 hierarchy through bpf links that the kernel removes when
// the daemon exits. Every program lets the call through unchanged.
//
// Self-contained on purpose (no kernel or libbpf headers needed to build):
// the context's layout and the helpers' numbers below are the kernel's
// stable ABI (include/uapi/linux/bpf.h).

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

// struct bpf_sock, up to the field read here.
struct bpf_sock {
	u32 bound_dev_if;
	u32 family;
	u32 type;
	u32 protocol;
	u32 mark;
	u32 priority;
	u32 src_ip4;
	u32 src_ip6[4];
	u32 src_port; // host byte order
};

// struct bpf_sock_addr, up to the fields read here.
struct bpf_sock_addr {
	u32 user_family;
	u32 user_ip4;
	u32 user_ip6[4];
	u32 user_port; // network byte order, in the low 16 bits
	u32 family;
	u32 type;
	u32 protocol;
	u32 msg_src_ip4;
	u32 msg_src_ip6[4];
	struct bpf_sock *sk; // __bpf_md_ptr: 8 bytes, 8-aligned
} __attribute__((aligned(8)));

// The legacy map definition, which needs no BTF.
struct bpf_map_def {
	u32 type;
	u32 key_size;
	u32 value_size;
	u32 max_entries;
	u32 map_flags;
};

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define AF_INET6 10
#define BPF_F_MMAPABLE (1U << 10)
#define BPF_MAP_TYPE_LRU_HASH 9
#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   u64 flags) = (void *)2;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
#ifndef NO_COMM
static long (*bpf_get_current_comm)(void *buf, u32 size) = (void *)16;
#endif
static u64 (*bpf_get_socket_cookie)(void *ctx) = (void *)46;
static u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static u64 (*bpf_get_netns_cookie)(void *ctx) = (void *)122;

// What the proxy reads back (src/host/bpf.rs: Owner, the same layout).
struct owner {
	u32 pid;
	u32 uid;
	u64 cgroup;
	char comm[16];
};

// Socket cookie -> the process that last connected it or sent from it. LRU:
// the oldest are dropped when full; the proxy sets max_entries at load.
struct bpf_map_def SEC("maps") owners = {
	.type = BPF_MAP_TYPE_LRU_HASH,
	.key_size = sizeof(u64),
	.value_size = sizeof(struct owner),
	.max_entries = 65536,
	.map_flags = 0,
};

// The watched destination ports (user_port as read: network byte order),
// filled by the proxy: rpcbind's port and the proxy's own.
struct bpf_map_def SEC("maps") ports = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(u32),
	.value_size = sizeof(u8),
	.max_entries = 16,
	.map_flags = 0,
};

// Source port (IPv4: index PORT, IPv6: 65536 + PORT) -> the cookie of the
// socket that last sent a datagram from it to a watched port. The proxy
// keeps each UDP source's identity while the same socket sends from it: a
// new socket reusing the port changes the cookie here before its datagram
// arrives.
// Mapped into the proxy's memory (BPF_F_MMAPABLE): it reads a source's
// cookie per datagram without a system call.
struct bpf_map_def SEC("maps") udp_senders = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(u32),
	.value_size = sizeof(u64),
	.max_entries = 2 * 65536,
	.map_flags = BPF_F_MMAPABLE,
};

// struct bpf_sock_ops, up to the fields read here.
struct bpf_sock_ops {
	u32 op;
	u32 args[4];
	u32 family;
	u32 remote_ip4;
	u32 local_ip4;
	u32 remote_ip6[4];
	u32 local_ip6[4];
	u32 remote_port; // network byte order, in the low 16 bits
	u32 local_port; // host byte order
};

#define BPF_SOCK_OPS_TCP_CONNECT_CB 3

// A TCP client socket by its own address, as the proxy sees its peer.
struct tcp_client {
	u32 family;
	u32 ip[4]; // IPv4: ip[0]
	u32 port; // host byte order
};

// The client's address -> its socket's cookie, noted when it connects to a
// watched port (by then its port is chosen): the proxy finds the cookie of
// an accepted client here without asking sock_diag. Only the daemon's own
// network namespace (netns[0], set by the proxy): other namespaces reuse
// the same addresses.
struct bpf_map_def SEC("maps") tcp_clients = {
	.type = BPF_MAP_TYPE_LRU_HASH,
	.key_size = sizeof(struct tcp_client),
	.value_size = sizeof(u64),
	.max_entries = 65536,
	.map_flags = 0,
};

struct bpf_map_def SEC("maps") netns = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(u32),
	.value_size = sizeof(u64),
	.max_entries = 1,
	.map_flags = 0,
};

SEC("sockops")
int tcp_connect(struct bpf_sock_ops *ctx)
{
	if (ctx->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	// remote_port holds the network-order port in its high 16 bits on
	// little-endian machines (as sock_ops always did), its low ones on
	// big-endian: both are tried.
	u32 port = ctx->remote_port;
	u32 high = port >> 16;
	if (!bpf_map_lookup_elem(&ports, &port) && !bpf_map_lookup_elem(&ports, &high))
		return 1;
	u32 zero = 0;
	u64 *own = bpf_map_lookup_elem(&netns, &zero);
	if (!own || *own == 0 || bpf_get_netns_cookie(ctx) != *own)
		return 1;
	struct tcp_client key = {};
	key.family = ctx->family;
	if (ctx->family == AF_INET6) {
		key.ip[0] = ctx->local_ip6[0];
		key.ip[1] = ctx->local_ip6[1];
		key.ip[2] = ctx->local_ip6[2];
		key.ip[3] = ctx->local_ip6[3];
	} else {
		key.ip[0] = ctx->local_ip4;
	}
	key.port = ctx->local_port;
	u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&tcp_clients, &key, &cookie, 0);
	return 1;
}

// Whether two owners are the same, word by word (struct owner has no
// padding: 4 x 8 bytes).
static __attribute__((always_inline)) int same(const struct owner *a, const struct owner *b)
{
	const u64 *x = (const u64 *)a, *y = (const u64 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __attribute__((always_inline)) int record(struct bpf_sock_addr *ctx, int datagram)
{
	u32 port = ctx->user_port;
	if (!bpf_map_lookup_elem(&ports, &port))
		return 1;
	u64 cookie = bpf_get_socket_cookie(ctx);
	if (datagram) {
		// sendmsg runs after the socket was bound (autobind): its port is
		// known here.
		u32 source = ctx->sk->src_port & 0xffff;
		if (ctx->user_family == AF_INET6)
			source += 65536;
		u64 *slot = bpf_map_lookup_elem(&udp_senders, &source);
		if (slot && *slot != cookie)
			*slot = cookie;
	}
	struct owner o = {};
	o.pid = bpf_get_current_pid_tgid() >> 32;
	o.uid = (u32)bpf_get_current_uid_gid();
	o.cgroup = bpf_get_current_cgroup_id();
#ifndef NO_COMM
	// Allowed to cgroup programs only with CAP_PERFMON: build.rs also makes
	// this program without it, which the daemon loads where the kernel
	// refuses the helper (the command is then read from /proc/PID/comm).
	bpf_get_current_comm(o.comm, sizeof(o.comm));
#endif
	// A socket sending again from the same process (a datagram loop): its
	// entry is already right, and an LRU update costs more than a look.
	struct owner *known = bpf_map_lookup_elem(&owners, &cookie);
	if (known && same(known, &o))
		return 1;
	bpf_map_update_elem(&owners, &cookie, &o, 0);
	return 1;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return record(ctx, 0);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return record(ctx, 0);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return record(ctx, 1);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return record(ctx, 1);
}

// No helper used is GPL-only, so the kernel needs no GPL-compatible licence.
char _license[] SEC("license") = "MIT OR Apache-2.0";
