/*
 * Test-only guest program of the agent-abuse checks (xtask/src/e2e/abuse.rs).
 *
 *   abuse hog                 allocate and touch 1 MiB chunks until the OOM killer ends us
 *   abuse connect CID PORT    connect AF_VSOCK to CID:PORT, send stdin, and print one line:
 *                             "connect failed: <errno text>", "closed without an answer"
 *                             or "answered <n> bytes" (what a workload in the guest gets
 *                             when it tries to reach the agent)
 *   abuse escape FILE         start a daemon that leaves the exec's process group and session
 *                             (fork, setsid, fork, stdio to /dev/null) and is re-parented to
 *                             init; it writes its pid to FILE and sleeps. Returns once FILE
 *                             is written. Only the exec's cgroup still holds it.
 *   abuse leave FILE          the same daemon, but it moves itself to the root cgroup (out of
 *                             the exec's reach: what a root workload can do) and keeps the
 *                             exec's stdout and stderr open; it writes its pid to FILE, or
 *                             "failed" when it could not leave.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vsock.h"

static __attribute__((noreturn)) void hog(void)
{
	for (;;) {
		char *p = malloc(1 << 20);
		if (!p) {
			/* Overcommit refused: keep the pressure on until the OOM killer acts. */
			usleep(1000);
			continue;
		}
		memset(p, 0xa5, 1 << 20);
	}
}

static int connect_vsock(unsigned int cid, unsigned int port)
{
	struct vsock_addr a = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
		printf("connect failed: %s\n", strerror(errno));
		return 0;
	}
	char buf[4096];
	ssize_t n;
	/* The agent hangs up on refused peers: a write may then fail with EPIPE, never SIGPIPE. */
	while ((n = read(0, buf, sizeof(buf))) > 0)
		if (send(s, buf, n, MSG_NOSIGNAL) != n)
			break;
	struct timeval tv = { .tv_sec = 5 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	size_t total = 0;
	while ((n = read(s, buf, sizeof(buf))) > 0)
		total += n;
	if (total)
		printf("answered %zu bytes\n", total);
	else
		printf("closed without an answer\n");
	return 0;
}

/* Writes `text` to `file` through a temp file and a rename, so a reader never sees it half. */
static void publish(const char *file, const char *text)
{
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s.tmp", file);
	FILE *f = fopen(tmp, "w");
	if (!f)
		_exit(1);
	fputs(text, f);
	fclose(f);
	rename(tmp, file);
}

static int escape(const char *file, int leave)
{
	pid_t first = fork();
	if (first < 0)
		return 1;
	if (first == 0) {
		setsid();
		if (fork() != 0)
			_exit(0);
		char pid[32];
		snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
		if (leave) {
			/* "0" moves the writer itself; stdout and stderr stay the exec's. */
			int procs = open("/sys/fs/cgroup/cgroup.procs", O_WRONLY);
			if (procs < 0 || write(procs, "0\n", 2) != 2) {
				publish(file, "failed\n");
				_exit(1);
			}
			close(procs);
		} else {
			int null = open("/dev/null", O_RDWR);
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
		}
		publish(file, pid);
		for (;;)
			pause();
	}
	waitpid(first, 0, 0);
	while (access(file, F_OK) != 0)
		usleep(1000);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "escape"))
		return escape(argv[2], 0);
	if (argc == 3 && !strcmp(argv[1], "leave"))
		return escape(argv[2], 1);
	if (argc == 2 && !strcmp(argv[1], "hog"))
		hog();
	if (argc == 4 && !strcmp(argv[1], "connect"))
		return connect_vsock(strtoul(argv[2], 0, 0), strtoul(argv[3], 0, 0));
	fprintf(stderr,
		"usage: abuse hog | abuse connect CID PORT | abuse escape FILE | abuse leave FILE\n");
	return 2;
}
