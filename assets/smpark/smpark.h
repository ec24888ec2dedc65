/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * smpark user interface: the misc device /dev/smpark and its ioctls.
 *
 * This header is the single source of truth for the ioctl numbers and the status
 * layout; the agent's Rust constants are checked against it by `cargo xtask test`.
 */
#ifndef _UAPI_SMPARK_H
#define _UAPI_SMPARK_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Unassigned in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define SMPARK_IOC_MAGIC 0xF4

/**
 * struct smpark_status - what SMPARK_STATUS reports.
 * @online: bitmap of online CPUs (bit N = CPU N; CPUs above 63 are not reported).
 * @parked: bitmap of CPUs that are in the parked loop right now.
 * @primary: the CPU that is never parked (the first online CPU).
 * @timeout_ms: how long SMPARK_PARK waits for every CPU (module parameter).
 * @parks: number of successful SMPARK_PARK calls since the module was loaded.
 */
struct smpark_status {
	__u64 online;
	__u64 parked;
	__u32 primary;
	__u32 timeout_ms;
	__u64 parks;
};

/*
 * Park every online CPU except the primary. Returns 0 once all of them are in the
 * parked loop; -ETIMEDOUT (everything released again) if one did not get there in
 * timeout_ms; 0 at once if they already are parked or there is one CPU.
 */
#define SMPARK_PARK _IO(SMPARK_IOC_MAGIC, 1)
/* Release the parked CPUs; returns once every one has left the loop. 0 if none is. */
#define SMPARK_UNPARK _IO(SMPARK_IOC_MAGIC, 2)
/* Fill a struct smpark_status. */
#define SMPARK_STATUS _IOR(SMPARK_IOC_MAGIC, 3, struct smpark_status)

#endif /* _UAPI_SMPARK_H */
