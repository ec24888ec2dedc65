/*
 * Kernel feature probe, run inside the guest by `cargo xtask test`.
 * Prints "ok NAME" or "FAIL NAME: cause" per feature; exits 1 when anything failed.
 * Built statically with musl-gcc at test time; it is never shipped.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

/* musl ships no kernel UAPI headers: the few constants needed, from include/uapi. */
#define CGROUP2_SUPER_MAGIC 0x63677270
#define TMPFS_MAGIC 0x01021994
#define DEVPTS_SUPER_MAGIC 0x1cd1
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
/* struct io_uring_params is 120 bytes; zeroed it asks for defaults. */
struct io_uring_params {
	unsigned char bytes[120];
};

static int failures;

static void report(const char *name, int ok)
{
	if (ok) {
		printf("ok %s\n", name);
	} else {
		printf("FAIL %s: %s\n", name, strerror(errno));
		failures++;
	}
}

static int fs_magic(const char *path, long magic)
{
	struct statfs s;
	if (statfs(path, &s) != 0)
		return 0;
	if ((long)s.f_type != magic) {
		errno = EINVAL;
		return 0;
	}
	return 1;
}

/* unshare() in a child, so the probe itself keeps its namespaces. */
static int can_unshare(int flags)
{
	pid_t pid = fork();
	int status;
	if (pid == 0)
		_exit(unshare(flags) == 0 ? 0 : errno);
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return 0;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		errno = WIFEXITED(status) ? WEXITSTATUS(status) : EINTR;
		return 0;
	}
	return 1;
}

static int sock(int family)
{
	int fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

int main(void)
{
	sigset_t set;
	struct io_uring_params p;
	char buf[64];
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	report("inotify", inotify_init1(IN_CLOEXEC) >= 0);
	report("epoll", epoll_create1(EPOLL_CLOEXEC) >= 0);
	report("eventfd", eventfd(0, EFD_CLOEXEC) >= 0);
	report("timerfd", timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC) >= 0);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	report("signalfd", signalfd(-1, &set, SFD_CLOEXEC) >= 0);
	report("memfd", memfd_create("probe", MFD_CLOEXEC) >= 0);
	memset(&p, 0, sizeof(p));
	report("io_uring", syscall(SYS_io_uring_setup, 4, &p) >= 0);
	report("seccomp", prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 0 &&
				  syscall(SYS_seccomp, 2 /* SECCOMP_GET_ACTION_AVAIL */, 0,
					  &(unsigned int){ 0x7fff0000U /* ALLOW */ }) == 0);
	report("unshare-mount-ns", can_unshare(CLONE_NEWNS));
	report("unshare-pid-ns", can_unshare(CLONE_NEWPID));
	report("unshare-user-ns", can_unshare(CLONE_NEWUSER));
	report("unshare-net-ns", can_unshare(CLONE_NEWNET));
	report("cgroup2", fs_magic("/sys/fs/cgroup", CGROUP2_SUPER_MAGIC));
	report("dev-shm-tmpfs", fs_magic("/dev/shm", TMPFS_MAGIC));
	report("devpts", fs_magic("/dev/pts", DEVPTS_SUPER_MAGIC));
	report("getrandom-nonblocking", getrandom(buf, sizeof(buf), GRND_NONBLOCK) == sizeof(buf));
	report("socket-ipv4", sock(AF_INET));
	report("socket-ipv6", sock(AF_INET6));
	report("socket-unix", sock(AF_UNIX));
	fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	report("dev-fuse", fd >= 0);
	fd = open("/sys/class/misc/hw_random/rng_current", O_RDONLY | O_CLOEXEC);
	memset(buf, 0, sizeof(buf));
	if (fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0 && strstr(buf, "virtio")) {
		fd = open("/dev/hwrng", O_RDONLY | O_CLOEXEC);
		report("virtio-rng-hwrng", fd >= 0 && read(fd, buf, 16) == 16);
	} else {
		errno = ENODEV;
		report("virtio-rng-hwrng", 0);
	}
	return failures ? 1 : 0;
}
