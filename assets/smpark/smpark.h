/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * smpark user interface: the misc device /dev/smpark and its ioctls.
 *
 * This header is the single source of truth for the ioctl numbers and the status
 * layout; the agent's Rust constants are checked against it by `cargo xtask test`.
 *
 * SMPARK_PARK and SMPARK_UNPARK are supermachine 0.7.108's numbers (its smpark.ko and
 * agent use _IO('M', 1) and _IO('M', 2), and the agent passes 1 as the argument, which the
 * module ignores). SMPARK_STATUS, the park timeout and "closing the file that parked
 * unparks" are this module's extensions.
 */
#ifndef _UAPI_SMPARK_H
#define _UAPI_SMPARK_H

#include <linux/ioctl.h>
#include <linux/types.h>

/*
 * 'M' is supermachine's choice. ioctl-number.rst lists other users of 'M' (sound/MIDI,
 * mtd), but /dev/smpark is its own device, so the numbers cannot collide.
 */
#define SMPARK_IOC_MAGIC 'M'

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
 * The argument of SMPARK_PARK and SMPARK_UNPARK is ignored (supermachine's agent passes 1).
 *
 * Park every online CPU except the primary. Returns 0 once all of them are in the
 * parked loop; -ETIMEDOUT (everything released again) if one did not get there in
 * timeout_ms; 0 at once if they already are parked or there is one CPU.
 */
#define SMPARK_PARK _IO(SMPARK_IOC_MAGIC, 1)
/* Release the parked CPUs; returns once every one has left the loop. 0 if none is. */
#define SMPARK_UNPARK _IO(SMPARK_IOC_MAGIC, 2)
/* Fill a struct smpark_status (an extension: supermachine 0.7.108 has no such ioctl). */
#define SMPARK_STATUS _IOR(SMPARK_IOC_MAGIC, 3, struct smpark_status)

/*
 * Host-direct unpark (supermachine 0.7.108's ABI). At load the module allocates one zeroed
 * page, the state page, and prints its guest-physical address as "0x%llx\n" in
 * SMPARK_STATE_GPA_PATH. A VMM that writes SMPARK_STATE_UNPARK (any non-zero byte) at
 * offset SMPARK_STATE_UNPARK_OFFSET of that page releases the parked CPUs without any
 * guest-side call; they see it within one timer tick. SMPARK_PARK clears the byte before
 * parking. The rest of the page is reserved (zero).
 */
#define SMPARK_STATE_GPA_PATH "/sys/kernel/smpark/state_gpa"
#define SMPARK_STATE_UNPARK_OFFSET 0
#define SMPARK_STATE_UNPARK 1

#endif /* _UAPI_SMPARK_H */
