/*
 * The guest half of `cargo xtask bench`: the transport floor the agent is compared with.
 * Built statically at bench time and written into the guest through the agent; never shipped.
 *
 *   bench-guest serve PORT BUF
 *                            daemonise and serve AF_VSOCK PORT with a BUF-byte vsock window
 *                            (the agent's, so the floor has the same credit); each connection sends one
 *                            command byte: 'e' echo everything back until EOF, or 's' then
 *                            an 8-byte little-endian count: send that many zero bytes, close;
 *                            or 'r' then a count: read that many bytes, answer one byte;
 *                            or 'x': for each 64-byte message, fork + execlp `true` + wait,
 *                            then send the message back, its first byte now the exit status
 *                            (the exec floor in one round trip, timed by the host as an exec
 *                            is); 'X' the same with the steps the agent's exec contract adds
 *                            to any spawn: three pipes for the program's stdio, the child in
 *                            a cgroup of its own (one kept across spawns, as the agent pools
 *                            its exec cgroups) and in a session of its own.
 *                            Prints "serving PORT" once listening. Connections are served
 *                            by WORKERS threads already waiting in accept(), as the agent keeps
 *                            an idle connection thread: no fork or thread start per connection.
 *   bench-guest spawn N [MS] fork + execlp `true` + wait, N times, each after MS ms idle
 *                            (default 0: back to back); prints the mean of the spawns in ns.
 *                            `true` is found on PATH, as the agent finds the exec's `true`.
 *   bench-guest out N        write N zero bytes to stdout, 64 KiB per write (the agent's side
 *                            of the streaming figure: the same bytes from the same kind of
 *                            static buffer as 's', so only the transport differs).
 *   bench-guest kmsg TEXT    print the timestamp (µs of guest uptime) of the first kernel log
 *                            record containing TEXT, from /dev/kmsg without blocking; exit 1
 *                            when no record has it.
 *   bench-guest mtime PATH   print when PATH was last modified, in µs of guest uptime
 *                            (CLOCK_BOOTTIME now less the realtime clock's age of its mtime;
 *                            file times are tick-coarse: a jiffy's precision).
 *   bench-guest counter      print, in µs, how long before the kernel's clock started the
 *                            guest's counter did (counter.h; under -icount only): the
 *                            loader, the decompressor and the kernel's first steps.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "counter.h"
#include "io.h"
#include "vsock.h"

/* Threads serving connections (see serve). */
#define WORKERS 4

static int floor_cgroup(void);
static int spawn_true(int procs);

static void handle(int c)
{
	static __thread char buf[65536];
	char cmd;

	if (read_all(c, &cmd, 1))
		return;
	if (cmd == 'e') {
		ssize_t n;

		while ((n = read(c, buf, sizeof(buf))) > 0)
			if (write(c, buf, n) != n)
				return;
	} else if (cmd == 'x' || cmd == 'X') {
		/* Each 64-byte message: spawn `true` (with the contract's steps for 'X'), then
		 * send the message back with the status's low byte in place of its first.
		 */
		static __thread int procs = -1;

		if (cmd == 'X' && procs < 0 && (procs = floor_cgroup()) < 0)
			return;
		while (!read_all(c, buf, 64)) {
			int st = spawn_true(cmd == 'X' ? procs : -1);

			buf[0] = (char)(st < 0 ? 0xff : WIFEXITED(st) ? WEXITSTATUS(st) : 0xfe);
			if (write(c, buf, 64) != 64)
				return;
		}
	} else if (cmd == 'r') {
		uint64_t left;

		if (read_all(c, &left, sizeof(left)))
			return;
		while (left) {
			ssize_t n = read(c, buf, left < sizeof(buf) ? left : sizeof(buf));

			if (n <= 0)
				return;
			left -= n;
		}
		if (write(c, "k", 1) != 1)
			return;
	} else if (cmd == 's') {
		uint64_t left;

		if (read_all(c, &left, sizeof(left)))
			return;
		memset(buf, 0, sizeof(buf));
		while (left) {
			/* 16 KiB writes, as the agent's frames (vhost-device-vsock 0.3.0 limit). */
			size_t n = left < 16384 ? left : 16384;
			ssize_t w = write(c, buf, n);

			if (w <= 0)
				return;
			left -= w;
		}
	}
}

static void *accept_loop(void *arg)
{
	int s = (int)(intptr_t)arg;

	for (;;) {
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);

		if (c < 0)
			continue;
		handle(c);
		close(c);
	}
	return NULL;
}

static int serve(unsigned port, unsigned long long buf)
{
	struct vsock_addr a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (s < 0 || vsock_set_buffer(s, buf) || bind(s, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(s, 16)) {
		perror("bench-guest: vsock listen");
		return 1;
	}
	printf("serving %u\n", port);
	fflush(stdout);
	/* Leave the agent's exec: new session, no parent to wait for. */
	if (fork())
		_exit(0);
	setsid();
	{
		int null = open("/dev/null", O_RDWR);

		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
	}
	for (int i = 1; i < WORKERS; i++) {
		pthread_t t;

		pthread_create(&t, NULL, accept_loop, (void *)(intptr_t)s);
	}
	accept_loop((void *)(intptr_t)s);
	return 0;
}

/* The cgroup the 'X' command's children join: its cgroup.procs, open, or -1 (said why). */
static int floor_cgroup(void)
{
	static const char dir[] = "/sys/fs/cgroup/bench-floor";
	char procs[sizeof(dir) + sizeof("/cgroup.procs")];
	int fd;

	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "bench-guest: mkdir %s: %s\n", dir, strerror(errno));
		return -1;
	}
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
	fd = open(procs, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "bench-guest: open %s: %s\n", procs, strerror(errno));
	return fd;
}

/* In the child of an 'X' spawn, before execlp: 0, or -1 with the failed step said on
 * stderr (still bench-guest's own: the dup2 onto it comes last).
 */
static int contract_steps(int procs, int fds[3][2])
{
	const char *step = "join the floor's cgroup";

	if (write(procs, "0", 1) != 1)
		goto fail;
	step = "setsid";
	if (setsid() < 0)
		goto fail;
	step = "dup2";
	if (dup2(fds[0][0], 0) < 0 || dup2(fds[1][1], 1) < 0 || dup2(fds[2][1], 2) < 0)
		goto fail;
	return 0;
fail:
	dprintf(2, "bench-guest: contract spawn child: %s: %s\n", step, strerror(errno));
	return -1;
}

/* One fork + execlp `true` + wait; with procs >= 0 the child first takes the contract's steps
 * (three stdio pipes, the cgroup whose cgroup.procs is procs, a session). Returns the wait
 * status, or -1 with the failed call said on stderr.
 */
static int spawn_true(int procs)
{
	int fds[3][2];
	int open_pipes = 0;
	pid_t p = -1;
	int st;

	/* The server calls this for as long as it runs: every pipe it made is closed on every
	 * path, a failed one included, so a spawn that fails (EMFILE, EAGAIN) leaks nothing.
	 */
	for (; procs >= 0 && open_pipes < 3; open_pipes++) {
		if (pipe2(fds[open_pipes], O_CLOEXEC) < 0) {
			perror("bench-guest: pipe2");
			break;
		}
	}
	if (procs < 0 || open_pipes == 3) {
		p = fork();
		if (p < 0)
			perror("bench-guest: fork");
	}
	if (p == 0) {
		/* The child's ends: the read end of stdin's pipe, the write ends of the
		 * output pipes; dup2 clears close-on-exec on the copies.
		 */
		if (procs >= 0 && contract_steps(procs, fds) < 0)
			_exit(126);
		execlp("true", "true", (char *)NULL);
		_exit(127);
	}
	for (int k = 0; k < open_pipes; k++) {
		close(fds[k][0]);
		close(fds[k][1]);
	}
	if (p < 0)
		return -1;
	if (waitpid(p, &st, 0) < 0) {
		perror("bench-guest: waitpid");
		return -1;
	}
	return st;
}

static int spawn(long n, long pause_ms)
{
	struct timespec pause = { .tv_sec = pause_ms / 1000, .tv_nsec = pause_ms % 1000 * 1000000 };
	long long total = 0;

	for (long i = 0; i < n; i++) {
		struct timespec a, b;
		int st;

		if (pause_ms)
			nanosleep(&pause, NULL);
		clock_gettime(CLOCK_MONOTONIC, &a);
		st = spawn_true(-1);
		clock_gettime(CLOCK_MONOTONIC, &b);
		/* A `true` not found on PATH exits 127 at once: that would be no floor at all. */
		if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "bench-guest: spawn of true: status %#x\n", st);
			return 1;
		}
		total += (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
	}
	printf("%lld\n", total / n);
	return 0;
}

static int out(long long n)
{
	static char buf[65536];

	while (n > 0) {
		ssize_t w = write(1, buf, n < (long long)sizeof(buf) ? (size_t)n : sizeof(buf));

		if (w <= 0)
			return 1;
		n -= w;
	}
	return 0;
}

static int kmsg(const char *text)
{
	/* One record per read: "PRI,SEQ,USEC,FLAGS;MESSAGE\n" then continuation lines. */
	static char rec[8192];
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0) {
		perror("bench-guest: open /dev/kmsg");
		return 2;
	}
	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);
		char *msg;
		unsigned long long usec;

		if (n < 0 && errno == EPIPE)
			continue; /* records overwritten under us: read on from the oldest left */
		if (n < 0 && errno != EAGAIN) {
			perror("bench-guest: read /dev/kmsg");
			return 2;
		}
		if (n <= 0)
			break; /* EAGAIN: the end of the log */
		rec[n] = 0;
		msg = strchr(rec, ';');
		if (msg && strstr(msg, text) &&
		    sscanf(rec, "%*u,%*u,%llu", &usec) == 1) {
			printf("%llu\n", usec);
			return 0;
		}
	}
	fprintf(stderr, "bench-guest: no kernel log record has \"%s\"\n", text);
	return 1;
}

static int mtime(const char *path)
{
	struct stat st;
	struct timespec real, boot;
	long long age_ns, up_ns;

	if (stat(path, &st) < 0) {
		fprintf(stderr, "bench-guest: stat %s: %s\n", path, strerror(errno));
		return 1;
	}
	clock_gettime(CLOCK_REALTIME, &real);
	clock_gettime(CLOCK_BOOTTIME, &boot);
	age_ns = (real.tv_sec - st.st_mtim.tv_sec) * 1000000000LL +
		 (real.tv_nsec - st.st_mtim.tv_nsec);
	up_ns = boot.tv_sec * 1000000000LL + boot.tv_nsec - age_ns;
	if (age_ns < 0 || up_ns < 0) {
		fprintf(stderr, "bench-guest: %s modified %lld ns from now, at uptime %lld ns\n",
			path, -age_ns, up_ns);
		return 1;
	}
	printf("%lld\n", up_ns / 1000);
	return 0;
}

static int counter(void)
{
	struct timespec boot;
	unsigned long long now = counter_ns();

	clock_gettime(CLOCK_BOOTTIME, &boot);
	printf("%lld\n", ((long long)now - (boot.tv_sec * 1000000000LL + boot.tv_nsec)) / 1000);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "out"))
		return out(atoll(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]), strtoull(argv[3], NULL, 0));
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "spawn"))
		return spawn(atol(argv[2]), argc == 4 ? atol(argv[3]) : 0);
	if (argc == 3 && !strcmp(argv[1], "kmsg"))
		return kmsg(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "mtime"))
		return mtime(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "counter"))
		return counter();
	fprintf(stderr,
		"usage: bench-guest serve PORT BUF | spawn N [MS] | out N | "
		"kmsg TEXT | mtime PATH | counter\n");
	return 2;
}
