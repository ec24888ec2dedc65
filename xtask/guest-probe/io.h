/*
 * Whole reads and writes for the test-only guest programs: 0 when all `n` bytes moved, -1 on
 * an error or an early end.
 */
#ifndef GUEST_PROBE_IO_H
#define GUEST_PROBE_IO_H

#include <stddef.h>
#include <unistd.h>

static inline int write_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w <= 0)
			return -1;
		p = (const char *)p + w;
		n -= w;
	}
	return 0;
}

static inline int read_all(int fd, void *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);

		if (r <= 0)
			return -1;
		p = (char *)p + r;
		n -= r;
	}
	return 0;
}

#endif
