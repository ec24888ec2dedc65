/*
 * The guest's counter in nanoseconds since reset, for the test-only guest programs. Under
 * `-icount` QEMU's TSC and the arm64 virtual counter run on its virtual clock from reset, so
 * it counts everything before the kernel's own clock starts, the kernel's decompression
 * included. Without icount its origin and (on x86_64) its rate are the host's: meaningless.
 */
#ifndef GUEST_PROBE_COUNTER_H
#define GUEST_PROBE_COUNTER_H

static inline unsigned long long counter_ns(void)
{
#if defined(__x86_64__)
	return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
	unsigned long long cnt, frq;

	__asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(cnt));
	__asm__ volatile("mrs %0, cntfrq_el0" : "=r"(frq));
	return cnt / frq * 1000000000ULL + cnt % frq * 1000000000ULL / frq;
#else
	return 0;
#endif
}

#endif
