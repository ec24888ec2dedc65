/*
 * Minimal PID 1 for the aarch64 kernel boot check of `cargo xtask test`: proves the Image
 * boots to userspace on QEMU virt (GICv3, PSCI, PL011), reports the online CPUs and the
 * kernel release, then powers off through PSCI. Built statically at test time; never shipped.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(void)
{
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
	printf("supermachine-boot-check: ok release=%s machine=%s cpus=%s\n", u.release, u.machine,
	       online);
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
