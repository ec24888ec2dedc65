/*
 * AF_VSOCK for the test-only guest programs: <linux/vm_sockets.h>, which musl-gcc's include
 * path lacks.
 */
#ifndef GUEST_PROBE_VSOCK_H
#define GUEST_PROBE_VSOCK_H

#include <sys/socket.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xFFFFFFFFu
#define VMADDR_CID_HOST 2

/* struct sockaddr_vm */
struct vsock_addr {
	sa_family_t svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_zero[4];
};

/* setsockopt(fd, AF_VSOCK, ...) options, u64 values. */
#define SO_VM_SOCKETS_BUFFER_SIZE 0
#define SO_VM_SOCKETS_BUFFER_MAX_SIZE 2

/*
 * The receive buffer (credit window) of `fd` and of the connections it accepts: the maximum
 * first, as the size is clamped to it.
 */
static inline int vsock_set_buffer(int fd, unsigned long long bytes)
{
	return setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_MAX_SIZE, &bytes, sizeof(bytes)) ||
	       setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &bytes, sizeof(bytes));
}

#endif
