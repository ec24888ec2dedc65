/*
 * The rig's x86_64 "firmware": 64 KiB that QEMU maps as its BIOS, whose only job is to put
 * CPU 0 in the state supermachine 0.7.108's KVM backend gives it before its first run
 * (SM arch/x86_64/boot.rs setup_boot's BootRegs, applied by kvm/mod.rs apply_boot_regs):
 *
 *   long mode, CR0 = PE|PG, CR4 = PAE, EFER = LME|LMA, CR3 = 0x1000 (its page tables),
 *   GDTR = 0x4000/31 (its GDT), CS = 0x10, DS = ES = SS = FS = GS = 0x18,
 *   RSI = 0x10000 (its zero page), RIP = 0x100200 (startup_64), RFLAGS = 0x2,
 *   every other general register 0.
 *
 * Everything those registers point at (page tables, GDT, zero page, command line, kernel,
 * initrd, MP table) is written by supermachine's own setup_boot and loaded by QEMU's
 * generic loader before the CPU starts (conformance/sm-boot, kvm-layout). The stub writes
 * no guest RAM: it runs from the BIOS's alias below 1 MiB, which supermachine's page
 * tables identity-map, and it keeps RFLAGS at its reset value 0x2 by using no instruction
 * that sets arithmetic flags. Other CPUs stay in wait-for-SIPI, as supermachine leaves them.
 *
 * Build: as --64 stub.S -o stub.o && ld -m elf_x86_64 -Ttext=0 --oformat=binary stub.o
 */
	.set ALIAS, 0xf0000		/* the 64 KiB BIOS's alias under 1 MiB (CS 0xf000) */

	.text
	.code16
start16:
	cli
	lgdtl	%cs:gdt32_desc		/* a flat 32-bit GDT of our own, for the way up */
	movl	$0x1, %eax		/* CR0.PE */
	movl	%eax, %cr0
	ljmpl	$0x08, $(ALIAS + start32)

	.code32
start32:
	movl	$0x10, %eax		/* flat data, so the loads below can reach ALIAS */
	movl	%eax, %ds
	movl	$0x20, %eax		/* CR4 = PAE */
	movl	%eax, %cr4
	movl	$0x1000, %eax		/* CR3 = supermachine's PML4 */
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx	/* EFER = LME; LMA follows when paging comes on */
	movl	$0, %edx
	movl	$0x100, %eax
	wrmsr
	movl	$0x80000001, %eax	/* CR0 = PE|PG: compatibility mode */
	movl	%eax, %cr0
	lgdtl	(ALIAS + sm_gdt_desc)	/* supermachine's GDT: 0x10 is its 64-bit code */
	ljmpl	$0x10, $(ALIAS + start64)

	.code64
start64:
	movl	$0x18, %eax		/* supermachine's data selector everywhere */
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movl	$0, %eax
	movl	$0, %ebx
	movl	$0, %ecx
	movl	$0, %edx
	movl	$0, %edi
	movl	$0, %ebp
	movl	$0, %esp
	movl	$0, %r8d
	movl	$0, %r9d
	movl	$0, %r10d
	movl	$0, %r11d
	movl	$0, %r12d
	movl	$0, %r13d
	movl	$0, %r14d
	movl	$0, %r15d
	movl	$0x10000, %esi		/* RSI = boot_params */
	jmp	*(ALIAS + entry)	/* RIP = 0x100200, every register else 0 */

	.p2align 3
entry:
	.quad	0x100200
sm_gdt_desc:
	.word	31
	.long	0x4000
	.p2align 3
gdt32:
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x08: flat 32-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: flat data */
gdt32_desc:
	.word	gdt32_desc - gdt32 - 1
	.long	ALIAS + gdt32

	.org	0xfff0
	.code16
reset:					/* the CPU starts here, at 0xfffffff0 */
	ljmp	$0xf000, $start16	/* into the alias: CS base 0xf0000 */
	.org	0x10000
