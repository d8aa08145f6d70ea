/*
 * tirpc_bench: the load harness's libtirpc client (benches/load/tirpc.rs).
 * THREADS threads look up PROG VERS over stock libtirpc for SECONDS, the way
 * real clients do: a CLIENT handle from clnt_vc_create over a connected
 * socket, and clnt_call(RPCBPROC_GETADDR) with rpcbind v4 (what
 * rpcb_getaddr, behind clnt_create, asks first).
 *
 *   persistent: one handle per thread for the whole run.
 *   oneshot:    per lookup a fresh connection, handle, one call and
 *               clnt_destroy (the client closes first): what rpcb_getaddr
 *               does for every lookup. rpcb_getaddr itself always talks to
 *               port 111, so the bench makes the same calls on an address
 *               of its choosing (the proxy's port).
 *
 * Usage: tirpc_bench persistent|oneshot unix:PATH|tcp:IPV4:PORT PROG VERS
 *                    THREADS SECONDS
 * Output: lookups N errors E seconds S p50_us X p99_us Y answer UADDR
 * (the first answer; "-" for an empty address)
 *
 * Build: cc -O2 -Wall -Wextra -o tirpc_bench tirpc_bench.c -lpthread \
 *           $(pkg-config --cflags --libs libtirpc)
 */
#define _GNU_SOURCE
#include <rpc/rpc.h>
#include <rpc/rpcb_prot.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int oneshot;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static rpcprog_t prog;
static rpcvers_t vers;
static double seconds;
static struct timeval TIMEOUT = {5, 0};

struct result {
	unsigned long lookups, errors;
	double elapsed;
	unsigned *lat; /* nanoseconds */
	size_t nlat, cap;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static CLIENT *connect_handle(void)
{
	int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0) {
		close(fd);
		return NULL;
	}
	struct netbuf nb = {addrlen, addrlen, &addr};
	CLIENT *c = clnt_vc_create(fd, &nb, RPCBPROG, RPCBVERS4, 0, 0);
	if (!c) {
		close(fd);
		return NULL;
	}
	/* clnt_destroy closes the socket, as in clnt_tli_create's handles. */
	clnt_control(c, CLSET_FD_CLOSE, NULL);
	return c;
}

/* The first answer, printed for the harness to compare between targets. */
static char first_answer[128];
static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;

/* One GETADDR; 0 when rpcbind answered (an empty address is an answer:
 * over a unix socket a program registered only on tcp/udp has none). */
static int lookup(CLIENT *c)
{
	RPCB parms = {prog, vers, "tcp", "", ""};
	char *uaddr = NULL;
	enum clnt_stat st = clnt_call(c, RPCBPROC_GETADDR, (xdrproc_t)xdr_rpcb,
				      (char *)&parms, (xdrproc_t)xdr_wrapstring,
				      (char *)&uaddr, TIMEOUT);
	if (st != RPC_SUCCESS) {
		static int told;
		if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
			fprintf(stderr, "tirpc_bench: first failure: %s\n",
				clnt_sperror(c, "GETADDR"));
		return -1;
	}
	if (!first_answer[0]) {
		pthread_mutex_lock(&first_lock);
		if (!first_answer[0])
			snprintf(first_answer, sizeof first_answer, "%s",
				 uaddr && *uaddr ? uaddr : "-");
		pthread_mutex_unlock(&first_lock);
	}
	xdr_free((xdrproc_t)xdr_wrapstring, (char *)&uaddr);
	return 0;
}

static void *run(void *arg)
{
	struct result *r = arg;
	CLIENT *c = NULL;
	double start = now(), end = start + seconds, t = start;
	while (t < end) {
		if (!c && !(c = connect_handle())) {
			r->errors++;
			t = now();
			continue;
		}
		int rc = lookup(c);
		double t2 = now();
		if (rc == 0) {
			r->lookups++;
			if (r->nlat == r->cap) {
				r->cap = r->cap ? r->cap * 2 : 65536;
				r->lat = realloc(r->lat, r->cap * sizeof *r->lat);
				if (!r->lat)
					abort();
			}
			r->lat[r->nlat++] = (unsigned)((t2 - t) * 1e9);
		} else {
			r->errors++;
		}
		if (oneshot || rc != 0) {
			clnt_destroy(c);
			c = NULL;
		}
		t = t2;
	}
	if (c)
		clnt_destroy(c);
	r->elapsed = now() - start;
	return NULL;
}

static int cmp(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	return (x > y) - (x < y);
}

static __attribute__((noreturn)) void usage(void)
{
	fputs("usage: tirpc_bench persistent|oneshot unix:PATH|tcp:IPV4:PORT "
	      "PROG VERS THREADS SECONDS\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc != 7)
		usage();
	if (!strcmp(argv[1], "oneshot"))
		oneshot = 1;
	else if (strcmp(argv[1], "persistent"))
		usage();
	const char *where = argv[2];
	memset(&addr, 0, sizeof addr);
	if (!strncmp(where, "unix:", 5)) {
		struct sockaddr_un *un = (struct sockaddr_un *)&addr;
		if (strlen(where + 5) >= sizeof un->sun_path)
			usage();
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, where + 5);
		addrlen = sizeof *un;
	} else if (!strncmp(where, "tcp:", 4)) {
		struct sockaddr_in *in = (struct sockaddr_in *)&addr;
		char host[64];
		const char *colon = strrchr(where + 4, ':');
		if (!colon || (size_t)(colon - (where + 4)) >= sizeof host)
			usage();
		memcpy(host, where + 4, colon - (where + 4));
		host[colon - (where + 4)] = 0;
		in->sin_family = AF_INET;
		in->sin_port = htons(atoi(colon + 1));
		if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
			usage();
		addrlen = sizeof *in;
	} else {
		usage();
	}
	prog = strtoul(argv[3], NULL, 0);
	vers = strtoul(argv[4], NULL, 0);
	int threads = atoi(argv[5]);
	seconds = atof(argv[6]);
	if (threads < 1 || threads > 64 || !(seconds > 0))
		usage();

	pthread_t tid[64];
	struct result res[64];
	memset(res, 0, sizeof res);
	for (int i = 0; i < threads; i++)
		if (pthread_create(&tid[i], NULL, run, &res[i]))
			return 1;
	unsigned long lookups = 0, errors = 0;
	double elapsed = 0;
	size_t n = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(tid[i], NULL);
		lookups += res[i].lookups;
		errors += res[i].errors;
		if (res[i].elapsed > elapsed)
			elapsed = res[i].elapsed;
		n += res[i].nlat;
	}
	unsigned *all = malloc((n ? n : 1) * sizeof *all);
	if (!all)
		return 1;
	size_t k = 0;
	for (int i = 0; i < threads; i++) {
		memcpy(all + k, res[i].lat, res[i].nlat * sizeof *all);
		k += res[i].nlat;
	}
	qsort(all, n, sizeof *all, cmp);
	double p50 = n ? all[n / 2] / 1000.0 : 0, p99 = n ? all[n * 99 / 100] / 1000.0 : 0;
	printf("lookups %lu errors %lu seconds %.3f p50_us %.1f p99_us %.1f answer %s\n",
	       lookups, errors, elapsed, p50, p99,
	       first_answer[0] ? first_answer : "none");
	return 0;
}
