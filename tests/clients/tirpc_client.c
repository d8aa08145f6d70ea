/*
 * tirpc_client: the rpcbind client calls real programs make, through stock
 * libtirpc, for rpcbind-proxy's integration tests. tests/support/rpc.rs checks
 * the wire protocol byte by byte; this checks that what unmodified libtirpc
 * does (a fresh TCP connection per lookup, reserved ports as root, UDP for
 * pmap_getport, registrations over /run/rpcbind.sock) works end to end.
 *
 * Build: gcc -O2 -Wall -Wextra -o tirpc_client tirpc_client.c \
 *            $(pkg-config --cflags --libs libtirpc)
 * Output: stable lines on stdout (formats in usage()). Exit: 0 success, 1 a
 * call failed (one line on stderr; libtirpc itself may warn too), 2 usage.
 * A FALSE or "not registered" answer that rpcbind really gave is printed, not
 * an error; only a failed RPC (refused, timed out, reset...) is.
 */
#define _GNU_SOURCE
#include <rpc/rpc.h>
#include <rpc/pmap_clnt.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Total timeout of our own clnt_calls. rpcb_getaddr's (60 s) and
 * pmap_getport's (5 s retransmit, 60 s total) are compiled into libtirpc
 * 1.3.3: its exported rpc_control() does not reach them. */
static struct timeval CALL_TIMEOUT = {10, 0};
/* probe: how long a lookup still in flight at stop time may take before it is
 * counted as failed (covers two pmap_getport retransmits). */
#define PROBE_GRACE_S 12
/* xdr_void is declared without parameters: cast via a generic pointer. */
#define XDR_VOID ((xdrproc_t)(void (*)(void))xdr_void)
#define U32 0xffffffffUL

/* From the command line: MODE [HOST] PROG VERS ARGS... (a = ARGS). */
static const char *mode, *host;
static rpcprog_t prog;
static rpcvers_t vers;
static int nargs;

static __attribute__((noreturn)) void usage(void)
{
	fputs("usage: tirpc_client MODE ARGS; MODE ARGS -> stdout:\n"
	      "  clnt-create HOST PROG VERS NETTYPE COUNT -> ok N\n"
	      "  getaddr HOST PROG VERS NETID COUNT -> addr UADDR | unregistered\n"
	      "  pmap-getport HOST PROG VERS tcp|udp COUNT -> port P\n"
	      "  local-getaddr SOCKET PROG VERS NETID -> addr UADDR | unregistered\n"
	      "        (RPCB v4 GETADDR over the unix SOCKET; @NAME: an abstract name)\n"
	      "  set PROG VERS NETID UADDR | unset PROG VERS [NETID] -> true|false\n"
	      "  pmap-set PROG VERS tcp|udp PORT | pmap-unset PROG VERS -> true|false\n"
	      "  rereg-check HOST PROG VERS ROUNDS -> rounds R stale S failed F\n"
	      "  probe HOST PROG VERS RATE_PER_S SECONDS\n"
	      "        -> tcp_ok A tcp_failed B udp_ok C udp_failed D\n"
	      "  serve PROG VERS -> ready\n", stderr);
	exit(2);
}

/* One line on stderr (libtirpc's messages may contain '\n'), exit 1. */
static __attribute__((noreturn)) void fail(const char *what, const char *msg)
{
	fprintf(stderr, "tirpc_client %s: ", what);
	for (; *msg; msg++)
		if (*msg != '\n' || msg[1])
			fputc(*msg == '\n' ? ' ' : *msg, stderr);
	fputc('\n', stderr);
	exit(1);
}

static unsigned long num(const char *s, unsigned long max)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-' || v > max)
		usage();
	return v;
}

static unsigned long count_of(const char *s)
{
	unsigned long c = num(s, 1UL << 30);
	return c ? c : (usage(), 0);
}

static double posnum(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v > 0))
		usage();
	return v;
}

static struct netconfig *nconf_of(const char *netid)
{
	struct netconfig *nc = getnetconfigent(netid);
	if (!nc) {
		fprintf(stderr, "tirpc_client: unknown netid %s\n", netid);
		exit(2);
	}
	return nc;
}

static int proto_of(const char *s)
{
	return !strcmp(s, "tcp") ? IPPROTO_TCP : !strcmp(s, "udp") ? IPPROTO_UDP : (usage(), 0);
}

/* HOST as an IPv4 sockaddr, as pmap_getport wants it. */
static struct sockaddr_in ipv4_of(const char *name)
{
	struct addrinfo hints = {.ai_family = AF_INET}, *ai;
	struct sockaddr_in sin;
	int e = getaddrinfo(name, NULL, &hints, &ai);
	if (e)
		fail("resolve", gai_strerror(e));
	memcpy(&sin, ai->ai_addr, sizeof sin);
	freeaddrinfo(ai);
	return sin;
}

static unsigned port_of(const struct netbuf *nb)
{
	const struct sockaddr_in6 *sa = nb->buf; /* sin_port and sin6_port coincide */
	return sa->sin6_family == AF_INET || sa->sin6_family == AF_INET6 ? ntohs(sa->sin6_port) : 0;
}

/* One rpcb_getaddr(PROG, VERS, nc, HOST) as libtirpc clients make it (a
 * fresh connection to HOST:111 per call). 1: found (address in nb),
 * 0: rpcbind said not registered, -1: the call failed (message in *err). */
static int lookup(struct netconfig *nc, struct netbuf *nb, struct sockaddr_storage *ss,
		  const char **err)
{
	*nb = (struct netbuf){.buf = ss, .maxlen = sizeof *ss};
	rpc_createerr.cf_stat = RPC_SUCCESS;
	if (rpcb_getaddr(prog, vers, nc, nb, host))
		return 1;
	if (rpc_createerr.cf_stat == RPC_PROGNOTREGISTERED)
		return 0;
	*err = clnt_spcreateerror("rpcb_getaddr");
	return -1;
}

/* clnt-create: what every ordinary client does first (lookup at HOST's
 * rpcbind, then a NULL call to the service); COUNT repeats it as load. */
static int do_clnt_create(char **a)
{
	unsigned long count = count_of(a[1]), i;
	struct timeval retry = {2, 0};
	char what[64];
	for (i = 0; i < count; i++) {
		snprintf(what, sizeof what, "clnt-create #%lu", i);
		CLIENT *c = clnt_create(host, prog, vers, a[0]);
		if (!c)
			fail(what, clnt_spcreateerror(host));
		clnt_control(c, CLSET_RETRY_TIMEOUT, (char *)&retry); /* datagram only */
		if (clnt_call(c, NULLPROC, XDR_VOID, NULL, XDR_VOID, NULL, CALL_TIMEOUT))
			fail(what, clnt_sperror(c, "NULLPROC"));
		clnt_destroy(c);
	}
	printf("ok %lu\n", i);
	return 0;
}

/* getaddr: rpcb_getaddr (RPCB v4 GETADDR over a fresh connection of NETID's
 * transport); COUNT > 1 is for TIME_WAIT and reserved-port measurements. */
static int do_getaddr(char **a)
{
	struct netconfig *nc = nconf_of(a[0]);
	unsigned long count = count_of(a[1]);
	struct netbuf nb;
	struct sockaddr_storage ss;
	const char *err = "";
	char what[64], *u;
	int r = 0;
	for (unsigned long i = 0; i < count; i++) {
		snprintf(what, sizeof what, "getaddr #%lu", i);
		if ((r = lookup(nc, &nb, &ss, &err)) < 0)
			fail(what, err);
	}
	if (r == 0)
		puts("unregistered");
	else if ((u = taddr2uaddr(nc, &nb)))
		printf("addr %s\n", u);
	else
		fail("getaddr", "taddr2uaddr failed");
	return 0;
}

/* local-getaddr: RPCB v4 GETADDR through libtirpc's stream client on a unix
 * socket we connect ourselves, as libtirpc >= 1.3.4 and the kernel connect
 * to the abstract name @/run/rpcbind.sock before the path (HOST is the
 * socket: a path, or @NAME). */
static int do_local_getaddr(char **a)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	size_t n = strlen(host);
	if (n == 0 || n >= sizeof sun.sun_path)
		usage();
	memcpy(sun.sun_path, host, n);
	socklen_t len = offsetof(struct sockaddr_un, sun_path) + n + (host[0] != '@');
	if (host[0] == '@')
		sun.sun_path[0] = '\0';
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, len) < 0)
		fail("local-getaddr", strerror(errno));
	struct netbuf nb = {.maxlen = len, .len = len, .buf = &sun};
	CLIENT *c = clnt_vc_create(fd, &nb, RPCBPROG, RPCBVERS4, 0, 0);
	if (!c)
		fail("local-getaddr", clnt_spcreateerror("clnt_vc_create"));
	RPCB args = {.r_prog = prog, .r_vers = vers, .r_netid = a[0], .r_addr = "", .r_owner = ""};
	char *uaddr = NULL;
	enum clnt_stat st = clnt_call(c, RPCBPROC_GETADDR, (xdrproc_t)xdr_rpcb, (char *)&args,
				      (xdrproc_t)xdr_wrapstring, (char *)&uaddr, CALL_TIMEOUT);
	if (st != RPC_SUCCESS)
		fail("local-getaddr", clnt_sperror(c, "GETADDR"));
	if (uaddr && *uaddr)
		printf("addr %s\n", uaddr);
	else
		puts("unregistered");
	return 0;
}

/* pmap-getport: PMAP v2 GETPORT, always over UDP (also for tcp), the way
 * mount, showmount and other portmapper-era clients look ports up. */
static int do_pmap_getport(char **a)
{
	int proto = proto_of(a[0]);
	unsigned long count = count_of(a[1]);
	unsigned port = 0;
	for (unsigned long i = 0; i < count; i++) {
		struct sockaddr_in sin = ipv4_of(host);
		rpc_createerr.cf_stat = RPC_SUCCESS;
		port = pmap_getport(&sin, prog, vers, proto);
		if (port == 0 && rpc_createerr.cf_stat != RPC_PROGNOTREGISTERED)
			fail("pmap-getport", clnt_spcreateerror("pmap_getport"));
	}
	printf("port %u\n", port);
	return 0;
}

/* set, unset, pmap-set, pmap-unset: registrations as daemons make them, over
 * /run/rpcbind.sock, where rpcbind records the caller's uid (SO_PEERCRED) as
 * owner. pmap_set/pmap_unset are the portmapper-era API: libtirpc turns them
 * into rpcb_set/unset of 0.0.0.0.p1.p2 on tcp/udp. Prints rpcbind's answer;
 * exits 1 only if the call failed (rpc_createerr set) rather than got FALSE. */
static int do_registration(char **a)
{
	struct netconfig *nc = nargs > 0 && mode[0] != 'p' ? nconf_of(a[0]) : NULL;
	struct netbuf *taddr = NULL;
	bool_t r;
	if (!strcmp(mode, "set") && !(taddr = uaddr2taddr(nc, a[1]))) {
		fprintf(stderr, "tirpc_client: bad uaddr %s for %s\n", a[1], a[0]);
		exit(2);
	}
	const char *call = mode[0] == 'p' ? mode : mode[0] == 's' ? "rpcb_set" : "rpcb_unset";
	rpc_createerr.cf_stat = RPC_SUCCESS;
	if (!strcmp(mode, "set"))
		r = rpcb_set(prog, vers, nc, taddr);
	else if (!strcmp(mode, "unset"))
		r = rpcb_unset(prog, vers, nc);
	else if (!strcmp(mode, "pmap-set"))
		r = pmap_set(prog, vers, proto_of(a[0]), num(a[1], 65535));
	else
		r = pmap_unset(prog, vers);
	if (!r && rpc_createerr.cf_stat != RPC_SUCCESS)
		fail(mode, clnt_spcreateerror(call));
	puts(r ? "true" : "false");
	return 0;
}

/* rereg-check: a service restarting on a new port must be found there at
 * once: an answer right after SET with the old port (or "not registered") is
 * stale, the race a lookup cache gets wrong. Unsets PROG/VERS at the end. */
static int do_rereg_check(char **a)
{
	unsigned long rounds = num(a[0], 65535 - 20000), stale = 0, failed = 0;
	struct netconfig *nc = nconf_of("tcp");
	char first[300] = "", uaddr[64];
	for (unsigned long i = 0; i < rounds; i++) {
		unsigned port = 20000 + i;
		snprintf(uaddr, sizeof uaddr, "127.0.0.1.%u.%u", port >> 8, port & 255);
		struct netbuf *taddr = uaddr2taddr(nc, uaddr), nb;
		struct sockaddr_storage ss;
		const char *err = "";
		if (!taddr)
			fail("rereg-check", "uaddr2taddr failed");
		rpcb_unset(prog, vers, NULL);
		rpc_createerr.cf_stat = RPC_SUCCESS;
		int set = rpcb_set(prog, vers, nc, taddr);
		int r = set ? lookup(nc, &nb, &ss, &err) : -1;
		if (r < 0 && !failed++ && !stale)
			snprintf(first, sizeof first, "round %lu: %s", i,
				 set ? err : clnt_spcreateerror("rpcb_set"));
		else if (r >= 0 && (r == 0 || port_of(&nb) != port) && !stale++ && !failed)
			snprintf(first, sizeof first, "round %lu: registered port %u, lookup said %u",
				 i, port, r ? port_of(&nb) : 0);
		free(taddr->buf);
		free(taddr);
	}
	rpcb_unset(prog, vers, NULL);
	printf("rounds %lu stale %lu failed %lu\n", rounds, stale, failed);
	fflush(stdout);
	if (stale || failed)
		fail("rereg-check", first);
	return 0;
}

/* probe: a steady trickle of client lookups (rpcb_getaddr over TCP, and
 * pmap_getport over UDP, both for PROG/VERS on tcp: "ok" means an address or
 * port came back) while the test kills, restarts or reconfigures the proxy;
 * the test judges the counts. Lookups keep libtirpc's own timeouts, so a lost
 * datagram that a retransmit recovers is no failure. A worker thread makes
 * them, so a stop (SECONDS, stdin EOF, SIGTERM/SIGINT) waits at most
 * PROBE_GRACE_S for one in flight, then counts it as failed. */
static struct probe {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* on CLOCK_MONOTONIC */
	int stop, done, inflight; /* inflight: 0 none, 1 tcp, 2 udp */
	unsigned long tcp_ok, tcp_failed, udp_ok, udp_failed;
	struct netconfig *nc;
	struct sockaddr_in sin;
	double period;
} p = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* SIGTERM and SIGINT: what stops probe and serve. */
static sigset_t stop_signals(void)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGTERM);
	sigaddset(&s, SIGINT);
	return s;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* Waits on p.cv (p.mu held) until `until` (a now_s() time) or *flag. */
static void wait_until(double until, const int *flag)
{
	struct timespec ts = {(time_t)until, (long)((until - (time_t)until) * 1e9)};
	while (!*flag && pthread_cond_timedwait(&p.cv, &p.mu, &ts) != ETIMEDOUT)
		;
}

static void *probe_worker(void *unused)
{
	double next = now_s();
	struct netbuf nb;
	struct sockaddr_storage ss;
	const char *err = NULL;
	(void)unused;
	pthread_mutex_lock(&p.mu);
	while (!p.stop) {
		p.inflight = 1;
		pthread_mutex_unlock(&p.mu);
		int ok = lookup(p.nc, &nb, &ss, &err) > 0;
		if (!ok) /* what failed, and when: for the test's log */
			fprintf(stderr, "probe: %.3f: tcp lookup failed: %s\n", now_s(),
				err ? err : "unregistered");
		err = NULL;
		pthread_mutex_lock(&p.mu);
		*(ok ? &p.tcp_ok : &p.tcp_failed) += 1;
		p.inflight = 2;
		pthread_mutex_unlock(&p.mu);
		struct sockaddr_in sin = p.sin;
		ok = pmap_getport(&sin, prog, vers, IPPROTO_TCP) != 0;
		if (!ok)
			fprintf(stderr, "probe: %.3f: udp lookup failed: %s\n", now_s(),
				clnt_spcreateerror("pmap_getport"));
		pthread_mutex_lock(&p.mu);
		*(ok ? &p.udp_ok : &p.udp_failed) += 1;
		p.inflight = 0;
		next += p.period;
		if (next < now_s())
			next = now_s(); /* fell behind: no burst to catch up */
		wait_until(next, &p.stop);
	}
	p.done = 1;
	pthread_cond_broadcast(&p.cv);
	pthread_mutex_unlock(&p.mu);
	return NULL;
}

static int do_probe(char **a)
{
	pthread_condattr_t ca;
	pthread_t th;
	sigset_t sigs = stop_signals();
	char buf[256];
	p.period = 1.0 / posnum(a[0]);
	double end = now_s() + posnum(a[1]);
	p.nc = nconf_of("tcp");
	p.sin = ipv4_of(host);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p.cv, &ca);
	/* Stop signals: blocked in every thread, read from a signalfd. */
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	struct pollfd fds[2] = {{.fd = 0, .events = POLLIN},
				{.fd = signalfd(-1, &sigs, SFD_CLOEXEC), .events = POLLIN}};
	if (fds[1].fd < 0 || pthread_create(&th, NULL, probe_worker, NULL))
		fail("probe", strerror(errno));
	for (double t; (t = now_s()) < end;) {
		int r = poll(fds, 2, end - t > 1 ? 1000 : (int)((end - t) * 1000) + 1);
		if (r < 0 && errno != EINTR)
			break;
		if (r <= 0)
			continue;
		if (fds[1].revents)
			break; /* SIGTERM / SIGINT */
		if (fds[0].revents & POLLNVAL)
			fds[0].fd = -1; /* no stdin at all: SECONDS and signals only */
		else if (fds[0].revents && read(0, buf, sizeof buf) <= 0)
			break; /* EOF */
	}
	pthread_mutex_lock(&p.mu);
	p.stop = 1;
	pthread_cond_broadcast(&p.cv);
	wait_until(now_s() + PROBE_GRACE_S, &p.done);
	if (!p.done) /* still stuck in a lookup: count it as failed */
		*(p.inflight == 1 ? &p.tcp_failed : &p.udp_failed) += 1;
	printf("tcp_ok %lu tcp_failed %lu udp_ok %lu udp_failed %lu\n",
	       p.tcp_ok, p.tcp_failed, p.udp_ok, p.udp_failed);
	fflush(stdout);
	_exit(0); /* the worker may still be blocked inside libtirpc */
}

/* serve: a real svc_create service (NULL proc only), registered by libtirpc
 * over the unix socket (owner = our uid) on tcp, tcp6, udp and udp6, so tests
 * can check registrations and lookups the way daemons make them. The loop is
 * svc_run's, except that SIGTERM/SIGINT end it (svc_run restarts poll on
 * EINTR): then svc_unreg and exit 0. */
static volatile sig_atomic_t stopping;
static void on_term(int sig) { stopping = sig; }

static void null_dispatch(struct svc_req *rq, SVCXPRT *xprt)
{
	if (rq->rq_proc == NULLPROC)
		svc_sendreply(xprt, XDR_VOID, NULL);
	else
		svcerr_noproc(xprt);
}

static int do_serve(char **a)
{
	struct sigaction sa = {.sa_handler = on_term};
	sigset_t block = stop_signals(), during;
	(void)a;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigprocmask(SIG_BLOCK, &block, &during); /* delivered only inside ppoll */
	if (!svc_create(null_dispatch, prog, vers, "tcp") ||
	    !svc_create(null_dispatch, prog, vers, "udp"))
		fail("serve", "svc_create failed");
	puts("ready");
	fflush(stdout);
	while (!stopping) {
		int nfds = svc_max_pollfd;
		struct pollfd *fds = calloc(nfds + 1, sizeof *fds);
		if (!fds)
			fail("serve", "out of memory");
		memcpy(fds, svc_pollfd, nfds * sizeof *fds);
		int r = ppoll(fds, nfds, NULL, &during);
		if (r < 0 && errno != EINTR)
			fail("serve", strerror(errno));
		if (r > 0)
			svc_getreq_poll(fds, r);
		free(fds);
	}
	svc_unreg(prog, vers);
	return 0;
}

static const struct {
	const char *name;
	int host, min, max; /* takes a HOST; ARGS counts */
	int (*fn)(char **);
} MODES[] = {
	{"clnt-create", 1, 2, 2, do_clnt_create}, {"getaddr", 1, 2, 2, do_getaddr},
	{"pmap-getport", 1, 2, 2, do_pmap_getport}, {"set", 0, 2, 2, do_registration},
	{"unset", 0, 0, 1, do_registration}, {"pmap-set", 0, 2, 2, do_registration},
	{"pmap-unset", 0, 0, 0, do_registration}, {"rereg-check", 1, 1, 1, do_rereg_check},
	{"probe", 1, 2, 2, do_probe}, {"serve", 0, 0, 0, do_serve},
	{"local-getaddr", 1, 1, 1, do_local_getaddr},
};

int main(int argc, char **argv)
{
	/* A peer resetting a connection must fail the call, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; argc >= 2 && i < sizeof MODES / sizeof *MODES; i++) {
		int h = MODES[i].host;
		mode = argv[1];
		nargs = argc - 4 - h;
		if (strcmp(mode, MODES[i].name) || nargs < MODES[i].min || nargs > MODES[i].max)
			continue;
		host = h ? argv[2] : NULL;
		prog = num(argv[2 + h], U32);
		vers = num(argv[3 + h], U32);
		return MODES[i].fn(argv + 4 + h);
	}
	usage();
}
