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

#endif
