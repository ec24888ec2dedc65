/*
 * Test-only guest program of the guest-networking (TSI) checks (xtask/src/e2e/tsi.rs).
 * Each command prints one result line that starts with "ok" or "fail", and exits 0 or 1.
 * ADDR is an IPv4 or IPv6 literal.
 *
 *   net tcp ADDR PORT BYTES        connect, send BYTES of a pattern while reading the echo
 *                                  back, compare it byte for byte
 *   net connect ADDR PORT          connect only; print "ok connected" or "fail errno=N (text)"
 *   net nonblock ADDR PORT         O_NONBLOCK connect (0 or EINPROGRESS), poll for POLLOUT,
 *                                  SO_ERROR 0, one byte echoed through poll
 *   net names ADDR PORT            getpeername is ADDR:PORT, getsockname of the same family
 *                                  with a port
 *   net udp ADDR PORT MODE         MODE connected (connect, send, recv) or unconnected
 *                                  (sendto, recvfrom naming ADDR:PORT): 5 datagrams echoed
 *   net many ADDR PORT N BYTES     N connections at once, BYTES echoed on each, through poll
 *   net serve PORT N               listen on the any-address, accept N connections (one child
 *                                  each) that echo until EOF; print "ok listening" first
 *   net stress SEED OPS ADDR PORT  OPS random socket operations (socket, connect, send, recv,
 *                                  shutdown, close, poll; TCP and UDP) on 16 slots
 *   net sockets                    the "sockets: used" count of /proc/net/sockstat
 *   net send ADDR PORT BYTES       to the host's sink: the count (u64 LE), BYTES zeros; print
 *                                  the nanoseconds from the count to the sink's answer, timed
 *                                  here ("ok ns N": the sink's own clock would start after
 *                                  the VMM had buffered up to a window of the bytes)
 *   net fetch ADDR PORT BYTES      from the host's source: the count, read BYTES, a 1-byte ack;
 *                                  print the nanoseconds the source took
 *   net connlat ADDR PORT N        N connects and closes; the mean nanoseconds of one
 *   net vconnlat PORT N            the same with AF_VSOCK to the host (CID 2) PORT
 *   net vsocks                     how many AF_VSOCK sockets the kernel holds (bound, listening,
 *                                  connected or closing), through vsock_diag
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "vsock.h"

static int fail(const char *what)
{
	printf("fail %s: errno=%d (%s)\n", what, errno, strerror(errno));
	return 1;
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		*len = sizeof(*in);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return AF_INET6;
	}
	fprintf(stderr, "not an address: %s\n", host);
	exit(2);
}

static unsigned char pattern(uint64_t i)
{
	return (unsigned char)(i * 131 + (i >> 9) + (i >> 17));
}

/* One echoed stream: how far it has sent and checked. */
struct flow {
	int fd;
	uint64_t sent, got, total;
	int done;
};

/* Advances @f by one poll result; returns -1 on an error or a wrong byte. */
static int flow_step(struct flow *f, short revents)
{
	unsigned char buf[65536];

	if (revents & POLLOUT && f->sent < f->total) {
		size_t n = f->total - f->sent;

		if (n > sizeof(buf))
			n = sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = pattern(f->sent + i);
		ssize_t w = send(f->fd, buf, n, MSG_NOSIGNAL);

		if (w < 0 && errno != EAGAIN)
			return -1;
		if (w > 0)
			f->sent += w;
	}
	if (revents & (POLLIN | POLLHUP | POLLERR)) {
		ssize_t r = recv(f->fd, buf, sizeof(buf), 0);

		if (r < 0 && errno != EAGAIN)
			return -1;
		if (r == 0) {
			if (f->got != f->total) {
				errno = EPIPE;
				return -1;
			}
			f->done = 1;
		}
		for (ssize_t i = 0; i < r; i++) {
			if (buf[i] != pattern(f->got + i)) {
				errno = EILSEQ;
				return -1;
			}
		}
		if (r > 0)
			f->got += r;
		/* No half-close: supermachine's muxer ends the whole connection on it. */
		if (f->got == f->total)
			f->done = 1;
	}
	return 0;
}

static int connect_to(const char *host, int port, int type, int flags)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int family = parse_addr(host, port, &ss, &len);
	int fd = socket(family, type | flags, 0);

	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int echo_flows(struct flow *flows, int n)
{
	struct pollfd *p = n > 0 ? calloc(n, sizeof(*p)) : NULL;
	int left = n;

	if (!p)
		return n > 0 ? -1 : 0;

	while (left) {
		for (int i = 0; i < n; i++) {
			p[i].fd = flows[i].done ? -1 : flows[i].fd;
			p[i].events = POLLIN | (flows[i].sent < flows[i].total ? POLLOUT : 0);
		}
		int r = poll(p, (nfds_t)n, 30000);

		if (r <= 0) {
			if (r == 0)
				errno = ETIMEDOUT;
			return -1;
		}
		for (int i = 0; i < n; i++) {
			if (flows[i].done || !p[i].revents)
				continue;
			if (flow_step(&flows[i], p[i].revents) < 0)
				return -1;
			if (flows[i].done)
				left--;
		}
	}
	free(p);
	return 0;
}

static int cmd_tcp(const char *host, int port, uint64_t bytes)
{
	struct flow f = { .total = bytes };

	f.fd = connect_to(host, port, SOCK_STREAM, 0);
	if (f.fd < 0)
		return fail("connect");
	fcntl(f.fd, F_SETFL, O_NONBLOCK);
	if (echo_flows(&f, 1) < 0)
		return fail("echo");
	printf("ok echoed %llu bytes\n", (unsigned long long)bytes);
	return 0;
}

static int cmd_connect(const char *host, int port)
{
	int fd = connect_to(host, port, SOCK_STREAM, 0);

	if (fd < 0)
		return fail("connect");
	printf("ok connected\n");
	return 0;
}

static int cmd_nonblock(const char *host, int port)
{
	struct pollfd p;
	int err = 0;
	socklen_t len = sizeof(err);
	char c = 'x', d = 0;
	int fd = connect_to(host, port, SOCK_STREAM, SOCK_NONBLOCK);

	if (fd < 0)
		return fail("connect");
	p.fd = fd;
	p.events = POLLOUT;
	if (poll(&p, 1, 10000) != 1 || !(p.revents & POLLOUT))
		return fail("poll POLLOUT");
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
		errno = err;
		return fail("SO_ERROR");
	}
	if (send(fd, &c, 1, 0) != 1)
		return fail("send");
	p.events = POLLIN;
	if (poll(&p, 1, 10000) != 1 || recv(fd, &d, 1, 0) != 1 || d != c)
		return fail("echo through poll");
	printf("ok nonblocking connect, poll and echo\n");
	return 0;
}

static int cmd_names(const char *host, int port)
{
	struct sockaddr_storage want, peer, self;
	socklen_t wlen, plen = sizeof(peer), slen = sizeof(self);
	int family = parse_addr(host, port, &want, &wlen);
	int fd = connect_to(host, port, SOCK_STREAM, 0);
	int self_port;

	if (fd < 0)
		return fail("connect");
	if (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0)
		return fail("getpeername");
	if (plen != wlen || memcmp(&peer, &want, wlen)) {
		printf("fail getpeername: not the destination\n");
		return 1;
	}
	if (getsockname(fd, (struct sockaddr *)&self, &slen) < 0)
		return fail("getsockname");
	self_port = family == AF_INET ? ntohs(((struct sockaddr_in *)&self)->sin_port) :
					ntohs(((struct sockaddr_in6 *)&self)->sin6_port);
	if (self.ss_family != family || !self_port) {
		printf("fail getsockname: family %d port %d\n", self.ss_family, self_port);
		return 1;
	}
	printf("ok peer is the destination, local port %d\n", self_port);
	return 0;
}

static int cmd_udp(const char *host, int port, const char *mode)
{
	struct sockaddr_storage dst, from;
	socklen_t dlen, flen;
	int connected = !strcmp(mode, "connected");
	int family = parse_addr(host, port, &dst, &dlen);
	int fd = socket(family, SOCK_DGRAM, 0);
	struct timeval tv = { .tv_sec = 10 };

	if (fd < 0)
		return fail("socket");
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connected && connect(fd, (struct sockaddr *)&dst, dlen) < 0)
		return fail("connect");
	for (int i = 0; i < 5; i++) {
		char out[64], in[64];
		int n = snprintf(out, sizeof(out), "datagram %d", i);
		ssize_t r;

		if (connected)
			r = send(fd, out, n, 0);
		else
			r = sendto(fd, out, n, 0, (struct sockaddr *)&dst, dlen);
		if (r != n)
			return fail("send");
		flen = sizeof(from);
		r = recvfrom(fd, in, sizeof(in), 0, (struct sockaddr *)&from, &flen);
		if (r < 0)
			return fail("recv");
		if (r != n || memcmp(in, out, n)) {
			printf("fail datagram %d came back different\n", i);
			return 1;
		}
		if (!connected && (flen != dlen || memcmp(&from, &dst, dlen))) {
			printf("fail datagram %d: source is not the destination\n", i);
			return 1;
		}
	}
	printf("ok 5 datagrams echoed (%s)\n", mode);
	return 0;
}

static int cmd_many(const char *host, int port, int n, uint64_t bytes)
{
	struct flow *flows = calloc(n, sizeof(*flows));

	for (int i = 0; i < n; i++) {
		flows[i].total = bytes;
		flows[i].fd = connect_to(host, port, SOCK_STREAM, 0);
		if (flows[i].fd < 0) {
			printf("fail connection %d: errno=%d (%s)\n", i, errno, strerror(errno));
			return 1;
		}
		fcntl(flows[i].fd, F_SETFL, O_NONBLOCK);
	}
	if (echo_flows(flows, n) < 0)
		return fail("echo");
	for (int i = 0; i < n; i++)
		close(flows[i].fd);
	printf("ok %d connections echoed %llu bytes each\n", n, (unsigned long long)bytes);
	return 0;
}

static int cmd_serve(int port, int n)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	int one = 1;
	int fd = socket(AF_INET6, SOCK_STREAM, 0);

	if (fd < 0)
		return fail("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		return fail("bind");
	if (listen(fd, 128) < 0)
		return fail("listen");
	printf("ok listening\n");
	fflush(stdout);
	signal(SIGCHLD, SIG_IGN);
	for (int i = 0; i < n; i++) {
		int c = accept(fd, NULL, NULL);

		if (c < 0)
			return fail("accept");
		if (fork() == 0) {
			char buf[65536];
			ssize_t r;

			close(fd);
			while ((r = recv(c, buf, sizeof(buf), 0)) > 0)
				if (send(c, buf, r, MSG_NOSIGNAL) != r)
					_exit(1);
			_exit(0);
		}
		close(c);
	}
	return 0;
}

static int cmd_stress(unsigned seed, long ops, const char *host, int port)
{
	int slots[16];
	long done = 0;

	srandom(seed);
	for (int i = 0; i < 16; i++)
		slots[i] = -1;
	signal(SIGPIPE, SIG_IGN);
	for (; done < ops; done++) {
		int s = random() % 16;
		int fd = slots[s];
		char buf[512];
		struct pollfd p;

		if (getenv("NET_TRACE"))
			fprintf(stderr, "op %ld slot %d fd %d\n", done, s, fd);
		switch (random() % 8) {
		case 0: /* a fresh socket, maybe connected */
			if (fd >= 0)
				close(fd);
			fd = socket(AF_INET, (random() % 3 ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK, 0);
			slots[s] = fd;
			if (fd >= 0 && random() % 4) {
				struct sockaddr_storage ss;
				socklen_t len;

				parse_addr(host, random() % 5 ? port : port + 1, &ss, &len);
				connect(fd, (struct sockaddr *)&ss, len);
			}
			break;
		case 1:
		case 2:
			if (fd >= 0) {
				memset(buf, 'a' + s, sizeof(buf));
				send(fd, buf, 1 + random() % sizeof(buf), MSG_DONTWAIT | MSG_NOSIGNAL);
			}
			break;
		case 3:
		case 4:
			if (fd >= 0)
				recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			break;
		case 5:
			if (fd >= 0)
				shutdown(fd, random() % 3);
			break;
		case 6:
			if (fd >= 0) {
				close(fd);
				slots[s] = -1;
			}
			break;
		case 7:
			if (fd >= 0) {
				p.fd = fd;
				p.events = POLLIN | POLLOUT;
				poll(&p, 1, 0);
			}
			break;
		}
	}
	for (int i = 0; i < 16; i++)
		if (slots[i] >= 0)
			close(slots[i]);
	printf("ok %ld operations\n", done);
	return 0;
}

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* A timed transfer with the host's sink (fetch 0) or source (fetch 1). */
static int cmd_transfer(const char *host, int port, uint64_t bytes, int fetch)
{
	static char buf[65536];
	uint64_t left = bytes, ns;
	int fd = connect_to(host, port, SOCK_STREAM, 0);
	long long start = now_ns();

	if (fd < 0)
		return fail("connect");
	if (write_all(fd, &bytes, sizeof(bytes)))
		return fail("send the count");
	while (left) {
		size_t n = left < sizeof(buf) ? left : sizeof(buf);

		if (fetch ? read_all(fd, buf, n) : write_all(fd, buf, n))
			return fail(fetch ? "read" : "write");
		left -= n;
	}
	if (fetch && write_all(fd, "k", 1))
		return fail("ack");
	if (read_all(fd, &ns, sizeof(ns)))
		return fail("read the time");
	if (!fetch)
		ns = now_ns() - start;
	printf("ok ns %llu\n", (unsigned long long)ns);
	return 0;
}

/* N connects (TCP to ADDR PORT, or AF_VSOCK to the host's PORT when host is NULL). */
static int cmd_connlat(const char *host, int port, int n)
{
	long long t = now_ns();

	for (int i = 0; i < n; i++) {
		int fd;

		if (host) {
			fd = connect_to(host, port, SOCK_STREAM, 0);
		} else {
			struct vsock_addr a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST,
						.svm_port = port };

			fd = socket(AF_VSOCK, SOCK_STREAM, 0);
			if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
				close(fd);
				fd = -1;
			}
		}
		if (fd < 0)
			return fail("connect");
		close(fd);
	}
	printf("ok ns %lld\n", (now_ns() - t) / n);
	return 0;
}

static int cmd_sockets(void)
{
	char line[256];
	FILE *f = fopen("/proc/net/sockstat", "r");
	int used;

	if (!f)
		return fail("open /proc/net/sockstat");
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "sockets: used %d", &used) == 1) {
			printf("ok sockets %d\n", used);
			return 0;
		}
	printf("fail no sockets line\n");
	return 1;
}

/* Netlink and vsock_diag, as uapi linux/netlink.h, sock_diag.h and vm_sockets_diag.h define
 * them (musl-gcc has no kernel headers).
 */
struct nlmsghdr {
	uint32_t nlmsg_len;
	uint16_t nlmsg_type, nlmsg_flags;
	uint32_t nlmsg_seq, nlmsg_pid;
};
#define NETLINK_SOCK_DIAG 4
#define NLM_F_REQUEST 1
#define NLM_F_DUMP 0x300
#define NLMSG_ERROR 2
#define NLMSG_DONE 3
#define SOCK_DIAG_BY_FAMILY 20
struct vsock_diag_req {
	uint8_t sdiag_family, sdiag_protocol;
	uint16_t pad;
	uint32_t vdiag_states, vdiag_ino, vdiag_show;
	uint32_t vdiag_cookie[2];
};

static int cmd_vsocks(void)
{
	struct {
		struct nlmsghdr nlh;
		struct vsock_diag_req req;
	} msg = {
		.nlh = { .nlmsg_len = sizeof(msg), .nlmsg_type = SOCK_DIAG_BY_FAMILY,
			 .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
		.req = { .sdiag_family = AF_VSOCK, .vdiag_states = ~0U },
	};
	static char buf[65536];
	int fd = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG);
	long count = 0;

	if (fd < 0)
		return fail("socket(NETLINK_SOCK_DIAG)");
	if (send(fd, &msg, sizeof(msg), 0) < 0)
		return fail("send");
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		size_t off = 0;

		if (n < 0)
			return fail("recv");
		while (off + sizeof(struct nlmsghdr) <= (size_t)n) {
			struct nlmsghdr *h = (struct nlmsghdr *)(buf + off);

			if (h->nlmsg_len < sizeof(*h) || off + h->nlmsg_len > (size_t)n)
				break;
			if (h->nlmsg_type == NLMSG_DONE) {
				printf("ok vsocks %ld\n", count);
				return 0;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				errno = -*(int32_t *)(h + 1);
				return fail("vsock_diag");
			}
			count++;
			off += (h->nlmsg_len + 3) & ~3U;
		}
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (argc == 5 && !strcmp(argv[1], "tcp"))
		return cmd_tcp(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "connect"))
		return cmd_connect(argv[2], atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "nonblock"))
		return cmd_nonblock(argv[2], atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "names"))
		return cmd_names(argv[2], atoi(argv[3]));
	if (argc == 5 && !strcmp(argv[1], "udp"))
		return cmd_udp(argv[2], atoi(argv[3]), argv[4]);
	if (argc == 6 && !strcmp(argv[1], "many"))
		return cmd_many(argv[2], atoi(argv[3]), atoi(argv[4]), strtoull(argv[5], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "serve"))
		return cmd_serve(atoi(argv[2]), atoi(argv[3]));
	if (argc == 6 && !strcmp(argv[1], "stress"))
		return cmd_stress(atoi(argv[2]), atol(argv[3]), argv[4], atoi(argv[5]));
	if (argc == 2 && !strcmp(argv[1], "sockets"))
		return cmd_sockets();
	if (argc == 2 && !strcmp(argv[1], "vsocks"))
		return cmd_vsocks();
	if (argc == 5 && !strcmp(argv[1], "send"))
		return cmd_transfer(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 0), 0);
	if (argc == 5 && !strcmp(argv[1], "fetch"))
		return cmd_transfer(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 0), 1);
	if (argc == 5 && !strcmp(argv[1], "connlat"))
		return cmd_connlat(argv[2], atoi(argv[3]), atoi(argv[4]));
	if (argc == 4 && !strcmp(argv[1], "vconnlat"))
		return cmd_connlat(NULL, atoi(argv[2]), atoi(argv[3]));
	fprintf(stderr, "usage: see the comment at the top of net.c\n");
	return 2;
}
