/*
 * _dl_find_object() for static musl binaries.
 *
 * The agent links GCC's libgcc_eh.a as its unwinder under musl (Rust's std needs one, and
 * Debian ships no musl build of LLVM's libunwind). GCC 12's unwinder finds a PC's
 * .eh_frame_hdr through glibc 2.35's _dl_find_object(), which musl lacks. This gives it the
 * same answer from dl_iterate_phdr(), which musl provides for static executables too.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <link.h>
#include <stddef.h>
#include <stdint.h>

/* glibc's x86_64/aarch64 layout (bits/dl_find_object.h). */
struct dl_find_object {
	unsigned long long dlfo_flags;
	void *dlfo_map_start;
	void *dlfo_map_end;
	void *dlfo_link_map;
	void *dlfo_eh_frame;
	unsigned long long dlfo_reserved[7];
};

struct query {
	uintptr_t pc;
	struct dl_find_object *out;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
	struct query *q = data;
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	void *eh_frame = NULL;
	(void)size;

	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *p = &info->dlpi_phdr[i];
		uintptr_t start = info->dlpi_addr + p->p_vaddr;

		if (p->p_type == PT_LOAD) {
			if (start < lo)
				lo = start;
			if (start + p->p_memsz > hi)
				hi = start + p->p_memsz;
		} else if (p->p_type == PT_GNU_EH_FRAME) {
			eh_frame = (void *)start;
		}
	}
	if (q->pc < lo || q->pc >= hi || eh_frame == NULL)
		return 0;
	q->out->dlfo_flags = 0;
	q->out->dlfo_map_start = (void *)lo;
	q->out->dlfo_map_end = (void *)hi;
	q->out->dlfo_link_map = NULL;
	q->out->dlfo_eh_frame = eh_frame;
	return 1;
}

int _dl_find_object(void *pc, struct dl_find_object *out)
{
	struct query q = { (uintptr_t)pc, out };

	return dl_iterate_phdr(visit, &q) ? 0 : -1;
}
