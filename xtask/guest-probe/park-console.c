/*
 * PID 1 of the aarch64 snapshot-cycle check of `cargo xtask test`. That VM has no vsock
 * (QEMU cannot migrate a VM with vhost-user-vsock), so the host drives it over the serial
 * console instead: one command per line, one answer line per command, each starting with
 * "park-console:". Built statically at test time; never shipped.
 *
 *   park          SMPARK_PARK                 -> "park-console: parked <hex mask>"
 *   unpark        SMPARK_UNPARK               -> "park-console: unparked"
 *   time SECS     clock_settime (sync-time)   -> "park-console: time <secs read back>"
 *   pin           a task pinned to each online CPU runs there -> "park-console: pinned <n>"
 *   gpa           the state page's guest-physical address     -> "park-console: gpa 0x<hex>"
 *   status        SMPARK_STATUS -> "park-console: status parked <hex mask> parks <n>"
 *   rmmod         close /dev/smpark (which unparks) and unload smpark -> "park-console: removed"
 *   off           power off through PSCI
 *
 * At start it loads /smpark.ko with finit_module and answers "park-console: ready <cpus>".
 * It opens /dev/smpark and calls park and unpark the way supermachine 0.7.108's agent does:
 * O_RDONLY, with 1 as the (ignored) ioctl argument.
 * Failures answer "park-console: error <what>: <errno text>".
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../../assets/smpark/smpark.h"

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	fputs("park-console: ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

/* Prints the state page's address from sysfs, as supermachine's init-oci reads it. */
static void say_gpa(void)
{
	char buf[64];
	unsigned long long gpa;
	FILE *f = fopen(SMPARK_STATE_GPA_PATH, "re");

	if (!f) {
		say("error gpa: %s", strerror(errno));
		return;
	}
	if (!fgets(buf, sizeof(buf), f) || sscanf(buf, "0x%llx", &gpa) != 1)
		say("error gpa: unexpected %s contents", SMPARK_STATE_GPA_PATH);
	else
		say("gpa 0x%llx", gpa);
	fclose(f);
}

/* Forks one child per online CPU, pins it there and checks that it ran there. */
static int pin_all(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	int ok = 0;

	for (long cpu = 0; cpu < n; cpu++) {
		pid_t pid = fork();
		int st;

		if (pid == 0) {
			cpu_set_t set;

			CPU_ZERO(&set);
			CPU_SET(cpu, &set);
			if (sched_setaffinity(0, sizeof(set), &set))
				_exit(2);
			_exit(sched_getcpu() == cpu ? 0 : 3);
		}
		if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
	}
	return ok;
}

int main(void)
{
	struct termios t;
	char line[128];
	int mod, dev;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	/* No echo, so the host reads answers only. */
	if (tcgetattr(0, &t) == 0) {
		t.c_lflag &= ~(ECHO | ECHONL);
		tcsetattr(0, TCSANOW, &t);
	}
	mod = open("/smpark.ko", O_RDONLY | O_CLOEXEC);
	if (mod < 0 || syscall(SYS_finit_module, mod, "", 0)) {
		say("error load /smpark.ko: %s", strerror(errno));
		goto off;
	}
	dev = open("/dev/smpark", O_RDONLY | O_CLOEXEC);
	if (dev < 0) {
		say("error open /dev/smpark: %s", strerror(errno));
		goto off;
	}
	say("ready %ld", sysconf(_SC_NPROCESSORS_ONLN));
	while (fgets(line, sizeof(line), stdin)) {
		struct smpark_status st;
		long long secs;

		line[strcspn(line, "\r\n")] = 0;
		if (!strcmp(line, "park")) {
			if (ioctl(dev, SMPARK_PARK, 1) || ioctl(dev, SMPARK_STATUS, &st))
				say("error park: %s", strerror(errno));
			else
				say("parked %llx", (unsigned long long)st.parked);
		} else if (!strcmp(line, "unpark")) {
			if (ioctl(dev, SMPARK_UNPARK, 1))
				say("error unpark: %s", strerror(errno));
			else
				say("unparked");
		} else if (sscanf(line, "time %lld", &secs) == 1) {
			struct timespec ts = { .tv_sec = secs };

			if (clock_settime(CLOCK_REALTIME, &ts))
				say("error time: %s", strerror(errno));
			else
				say("time %lld", (long long)time(NULL));
		} else if (!strcmp(line, "gpa")) {
			say_gpa();
		} else if (!strcmp(line, "status")) {
			if (ioctl(dev, SMPARK_STATUS, &st))
				say("error status: %s", strerror(errno));
			else
				say("status parked %llx parks %llu", (unsigned long long)st.parked,
				    (unsigned long long)st.parks);
		} else if (!strcmp(line, "pin")) {
			say("pinned %d", pin_all());
		} else if (!strcmp(line, "rmmod")) {
			close(dev);
			dev = -1;
			if (syscall(SYS_delete_module, "smpark", O_NONBLOCK))
				say("error rmmod: %s", strerror(errno));
			else
				say("removed");
		} else if (!strcmp(line, "off")) {
			break;
		} else if (line[0]) {
			say("error unknown command %s", line);
		}
	}
off:
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
