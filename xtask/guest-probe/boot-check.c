/*
 * Minimal PID 1 for the aarch64 kernel boot check of `cargo xtask test` and the bench's boot
 * cost: proves the kernel boots to userspace, reports the online CPUs, the kernel release and
 * the guest's counter when PID 1 started (`clock_ns`, counter.h: under `-icount` it counts
 * everything before PID 1, the kernel's decompression included), then powers off. Built
 * statically at test time; never shipped.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "counter.h"

int main(void)
{
	unsigned long long started = counter_ns();
	struct utsname u;
	char online[64] = "";
	int fd;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	fd = open("/sys/devices/system/cpu/online", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, online, sizeof(online) - 1);
		online[n > 0 ? n - 1 : 0] = 0;
	}
	uname(&u);
	printf("supermachine-boot-check: ok release=%s machine=%s cpus=%s clock_ns=%llu\n",
	       u.release, u.machine, online, started);
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
