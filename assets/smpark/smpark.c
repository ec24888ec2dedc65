// SPDX-License-Identifier: GPL-2.0-only
/*
 * smpark - park the secondary CPUs of an arm64 guest so that a VMM can snapshot it.
 *
 * A VMM that snapshots a running multi-vCPU guest wants every vCPU but one in a known,
 * quiet state: not in the middle of a context switch, an IPI or a timer, and with the same
 * registers every time it looks. SMPARK_PARK puts a SCHED_FIFO kthread on every online CPU
 * except the primary. Each thread masks interrupts and halts in WFI with the scratch
 * registers and the flags zeroed, so every halt looks the same. SMPARK_UNPARK releases
 * them. The interface is /dev/smpark; see smpark.h and README.md.
 *
 * Why it is built this way:
 * - A kthread, not an IPI handler: between halts the CPU takes the interrupt that woke it
 *   (IRQs on for one instruction) and reports an RCU quiescent state. A CPU spinning in an
 *   IPI handler would stall RCU and deadlock stop_machine().
 * - The tick keeps running on a parked CPU (it wakes, runs its timers, halts again). With
 *   the tick masked, timers queued on that CPU (the RCU grace-period kthread's, say)
 *   would wait for unpark and stall the primary. A VMM captures when every secondary is
 *   halted, which it sees (WFI exits); the halted registers are the same every time.
 * - The only thing a parked CPU makes way for is its stopper thread (stop_machine(),
 *   migration): otherwise stop_machine() would spin on the primary forever. Any other
 *   task, including the fair server's CFS slice, waits for unpark: that is what parked
 *   means. The tick bounds how long the stopper waits.
 * - Park and unpark run on the primary CPU (work_on_cpu()), wherever the caller runs, so
 *   their timeouts never sit on a CPU that is about to be parked.
 * - CPU hotplug is disabled while CPUs are parked: a hotplug request fails with -EBUSY
 *   instead of waiting for a parked CPU.
 * - Closing the file that parked unparks: a caller that dies cannot leave the CPUs parked.
 * - Host-direct unpark: the VMM may release the CPUs by writing a byte into guest memory,
 *   with no guest-side call (supermachine's agent can starve when every vCPU but one is
 *   parked). The state page's guest-physical address is in /sys/kernel/smpark/state_gpa;
 *   a non-zero byte at offset 0 ends every parked loop. The loop already wakes on every
 *   tick (see above) and checks the byte then, so the write costs no extra wake-ups and is
 *   seen within one tick. The first CPU to leave queues a work item that finishes the
 *   unpark (stops the threads, re-enables hotplug, forgets the owner), so the module ends
 *   up exactly as after SMPARK_UNPARK.
 *
 * SMPARK_PARK and SMPARK_UNPARK are supermachine 0.7.108's ioctl numbers (_IO('M', 1) and
 * _IO('M', 2)); their argument is ignored (supermachine's agent passes 1). SMPARK_STATUS,
 * the timeout and the unpark on close are this module's extensions.
 */

#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/kobject.h>
#include <linux/kthread.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/smp.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <asm/barrier.h>
#include <asm/sysreg.h>

#include "smpark.h"

static unsigned int timeout_ms = 1000;
module_param(timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms, "how long SMPARK_PARK waits for every secondary CPU (ms)");

/* Serialises park, unpark, the owner's release and unload. */
static DEFINE_MUTEX(smpark_lock);
/* CPUs whose thread is in the parked loop now; each thread sets and clears its own bit. */
static struct cpumask parked;
/* CPUs that have a park thread (under smpark_lock). */
static struct cpumask targets;
static DEFINE_PER_CPU(struct task_struct *, park_thread);
/* Tells the threads to leave the loop. */
static bool release;
static DECLARE_WAIT_QUEUE_HEAD(smpark_wait);
/* The file whose SMPARK_PARK parked the CPUs (under smpark_lock). */
static struct file *owner;
static u64 parks;
/* Each parked CPU's stopper thread ("migration/N"), referenced while parked. */
static DEFINE_PER_CPU(struct task_struct *, stopper);
/*
 * The state page whose guest-physical address /sys/kernel/smpark/state_gpa shows. Only
 * the VMM writes it while CPUs are parked (byte SMPARK_STATE_UNPARK_OFFSET); park clears
 * it. Allocated at load, so its address stays the same for the module's life, which is
 * what a VMM stores next to a snapshot.
 */
static u8 *state_page;
static struct kobject *smpark_kobj;
static void host_unpark_fn(struct work_struct *work);
static DECLARE_WORK(host_unpark_work, host_unpark_fn);

/* Whether the VMM has written the unpark byte since the last park. */
static bool host_unpark_requested(void)
{
	return READ_ONCE(state_page[SMPARK_STATE_UNPARK_OFFSET]) != 0;
}

/*
 * Halt until an interrupt is pending (IRQs are masked, so none is taken here). The scratch
 * registers and the flags are zeroed first, so a VMM reading the vCPU sees the same
 * registers at every halt; the callee-saved ones hold this loop's invariants.
 */
static __always_inline void park_halt(void)
{
	asm volatile("	mov	x0, xzr\n	mov	x1, xzr\n	mov	x2, xzr\n"
		     "	mov	x3, xzr\n	mov	x4, xzr\n	mov	x5, xzr\n"
		     "	mov	x6, xzr\n	mov	x7, xzr\n	mov	x8, xzr\n"
		     "	mov	x9, xzr\n	mov	x10, xzr\n	mov	x11, xzr\n"
		     "	mov	x12, xzr\n	mov	x13, xzr\n	mov	x14, xzr\n"
		     "	mov	x15, xzr\n	mov	x16, xzr\n	mov	x17, xzr\n"
		     "	msr	nzcv, xzr\n"
		     "	dsb	sy\n"
		     "	wfi\n"
		     : : : "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9",
		       "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17", "cc", "memory");
}

static void enter_parked(unsigned int cpu)
{
	cpumask_set_cpu(cpu, &parked);
	smp_mb__after_atomic();
	wake_up(&smpark_wait);
}

static void leave_parked(unsigned int cpu)
{
	cpumask_clear_cpu(cpu, &parked);
	smp_mb__after_atomic();
	wake_up(&smpark_wait);
}

static int park_thread_fn(void *unused)
{
	/* The thread is bound to its CPU. */
	unsigned int cpu = raw_smp_processor_id();
	struct task_struct *stop = per_cpu(stopper, cpu);
	unsigned long flags;
	bool by_host;

	preempt_disable();
	local_irq_save(flags);
	enter_parked(cpu);
	/*
	 * Each pass follows a wake-up (the tick at the latest), and the isb() below orders
	 * this pass's loads after it, so a byte the VMM wrote while the CPU was halted is
	 * read here. Nothing else is published with the byte, so no further barrier is
	 * needed: coherence alone makes the host's store visible to this load.
	 */
	while (!READ_ONCE(release) && !host_unpark_requested()) {
		if (need_resched() && stop && READ_ONCE(stop->__state) == TASK_RUNNING) {
			/* stop_machine() or a migration needs this CPU: step out for it. */
			leave_parked(cpu);
			local_irq_restore(flags);
			preempt_enable();
			schedule();
			preempt_disable();
			local_irq_save(flags);
			enter_parked(cpu);
			continue;
		}
		/* This loop touches no RCU-protected data: let grace periods end. */
		rcu_momentary_eqs();
		park_halt();
		/* Take whatever woke the CPU; the loop then checks why. */
		local_irq_enable();
		isb();
		local_irq_disable();
	}
	by_host = !READ_ONCE(release);
	leave_parked(cpu);
	local_irq_restore(flags);
	preempt_enable();
	/*
	 * Released by the VMM, not by release_all(): have the threads stopped and the state
	 * reset as SMPARK_UNPARK would. Queued on this CPU, which is no longer parked; every
	 * leaving CPU queues the same work, which runs once.
	 */
	if (by_host)
		schedule_work(&host_unpark_work);

	/* Exit only through kthread_stop(), which owns the task reference. */
	for (;;) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (kthread_should_stop())
			break;
		schedule();
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

/* The stopper thread of @cpu, with a reference, or NULL. */
static struct task_struct *find_stopper(unsigned int cpu)
{
	struct task_struct *g, *t, *found = NULL;
	char name[TASK_COMM_LEN];

	snprintf(name, sizeof(name), "migration/%u", cpu);
	rcu_read_lock();
	for_each_process_thread(g, t) {
		if ((t->flags & PF_KTHREAD) && !strcmp(t->comm, name)) {
			found = get_task_struct(t);
			break;
		}
	}
	rcu_read_unlock();
	return found;
}

/* Releases every park thread and waits for them to exit. Caller holds smpark_lock. */
static void release_all(void)
{
	unsigned int cpu;

	if (cpumask_empty(&targets))
		return;
	WRITE_ONCE(release, true);
	smp_mb();
	/* A halted CPU wakes for any pending interrupt: send every CPU one. */
	kick_all_cpus_sync();
	for_each_cpu(cpu, &targets) {
		kthread_stop(per_cpu(park_thread, cpu));
		per_cpu(park_thread, cpu) = NULL;
		if (per_cpu(stopper, cpu))
			put_task_struct(per_cpu(stopper, cpu));
		per_cpu(stopper, cpu) = NULL;
	}
	cpumask_clear(&targets);
	cpu_hotplug_enable();
}

/*
 * Finishes an unpark the VMM started by writing the state page, if it did, so that every
 * path sees the module exactly as after SMPARK_UNPARK. Caller holds smpark_lock.
 */
static void reap_host_unpark(void)
{
	if (cpumask_empty(&targets) || !host_unpark_requested())
		return;
	/* Threads still halted (waiting for their tick) are kicked out by release_all(). */
	release_all();
	owner = NULL;
}

static void host_unpark_fn(struct work_struct *work)
{
	mutex_lock(&smpark_lock);
	reap_host_unpark();
	mutex_unlock(&smpark_lock);
}

/* Runs on the primary CPU. */
static long do_park(void *unused)
{
	unsigned int cpu, primary = raw_smp_processor_id();
	struct cpumask late;
	int err = 0;

	if (!cpumask_empty(&targets))
		return 0;
	/* Holds off CPU hotplug until release_all(); the online mask is stable from here. */
	cpu_hotplug_disable();
	WRITE_ONCE(release, false);
	/*
	 * A byte left over from the last host-direct unpark would release the new threads at
	 * once. The threads are woken below, after this store (wake_up_process() orders it).
	 */
	WRITE_ONCE(state_page[SMPARK_STATE_UNPARK_OFFSET], 0);
	for_each_online_cpu(cpu) {
		struct task_struct *t;

		if (cpu == primary)
			continue;
		t = kthread_create_on_cpu(park_thread_fn, NULL, cpu, "smpark/%u");
		if (IS_ERR(t)) {
			err = PTR_ERR(t);
			pr_err("smpark: cannot create the park thread of CPU %u: %d\n", cpu, err);
			break;
		}
		sched_set_fifo(t);
		per_cpu(park_thread, cpu) = t;
		per_cpu(stopper, cpu) = find_stopper(cpu);
		if (!per_cpu(stopper, cpu))
			pr_warn("smpark: no migration/%u thread found: CPU %u will not yield to stop_machine()\n",
				cpu, cpu);
		cpumask_set_cpu(cpu, &targets);
	}
	if (cpumask_empty(&targets)) {
		cpu_hotplug_enable();
		return err; /* one CPU: nothing to park */
	}
	if (err) {
		release_all();
		return err;
	}
	for_each_cpu(cpu, &targets)
		wake_up_process(per_cpu(park_thread, cpu));
	if (!wait_event_timeout(smpark_wait, cpumask_equal(&parked, &targets),
				msecs_to_jiffies(timeout_ms))) {
		cpumask_andnot(&late, &targets, &parked);
		pr_warn("smpark: CPUs %*pbl did not park within %u ms; releasing all\n",
			cpumask_pr_args(&late), timeout_ms);
		release_all();
		return -ETIMEDOUT;
	}
	parks++;
	return 0;
}

/* Runs on the primary CPU. */
static long do_unpark(void *unused)
{
	release_all();
	return 0;
}

static long run_on_primary(long (*fn)(void *))
{
	return work_on_cpu(cpumask_first(cpu_online_mask), fn, NULL);
}

static long smpark_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct smpark_status st = {};
	long ret;

	/* SMPARK_PARK and SMPARK_UNPARK ignore @arg: supermachine's agent passes 1. */
	switch (cmd) {
	case SMPARK_PARK:
		if (mutex_lock_interruptible(&smpark_lock))
			return -ERESTARTSYS;
		/* A host-direct unpark whose work has not run yet: park must start afresh. */
		reap_host_unpark();
		ret = run_on_primary(do_park);
		if (!ret && !cpumask_empty(&targets) && !owner)
			owner = f;
		mutex_unlock(&smpark_lock);
		return ret;
	case SMPARK_UNPARK:
		if (mutex_lock_interruptible(&smpark_lock))
			return -ERESTARTSYS;
		ret = run_on_primary(do_unpark);
		owner = NULL;
		mutex_unlock(&smpark_lock);
		return ret;
	case SMPARK_STATUS:
		st.online = cpumask_bits(cpu_online_mask)[0];
		st.parked = cpumask_bits(&parked)[0];
		st.primary = cpumask_first(cpu_online_mask);
		st.timeout_ms = READ_ONCE(timeout_ms);
		st.parks = READ_ONCE(parks);
		return copy_to_user((void __user *)arg, &st, sizeof(st)) ? -EFAULT : 0;
	default:
		return -ENOTTY;
	}
}

static int smpark_release(struct inode *inode, struct file *f)
{
	mutex_lock(&smpark_lock);
	if (owner == f) {
		pr_info("smpark: the file that parked the CPUs was closed: unparking\n");
		run_on_primary(do_unpark);
		owner = NULL;
	}
	mutex_unlock(&smpark_lock);
	return 0;
}

static const struct file_operations smpark_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = smpark_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.release = smpark_release,
	.llseek = noop_llseek,
};

static struct miscdevice smpark_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "smpark",
	.fops = &smpark_fops,
	.mode = 0600,
};

static ssize_t state_gpa_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "0x%llx\n", (unsigned long long)virt_to_phys(state_page));
}

static struct kobj_attribute state_gpa_attr = __ATTR_RO(state_gpa);

static int __init smpark_init(void)
{
	int err;

	state_page = (u8 *)get_zeroed_page(GFP_KERNEL);
	if (!state_page)
		return -ENOMEM;
	/* /sys/kernel/smpark/state_gpa, where init-oci reads the address for the VMM. */
	smpark_kobj = kobject_create_and_add("smpark", kernel_kobj);
	if (!smpark_kobj) {
		err = -ENOMEM;
		goto free_page;
	}
	err = sysfs_create_file(smpark_kobj, &state_gpa_attr.attr);
	if (err)
		goto put_kobj;
	err = misc_register(&smpark_dev);
	if (err)
		goto put_kobj;
	pr_info("smpark: /dev/smpark ready, %u CPUs online, state page at 0x%llx\n",
		num_online_cpus(), (unsigned long long)virt_to_phys(state_page));
	return 0;

put_kobj:
	kobject_put(smpark_kobj);
free_page:
	free_page((unsigned long)state_page);
	return err;
}

static void __exit smpark_exit(void)
{
	/* Stop publishing the address before the page goes. */
	kobject_put(smpark_kobj);
	misc_deregister(&smpark_dev);
	/* Every file is closed by now (the module is pinned while one is open). */
	mutex_lock(&smpark_lock);
	run_on_primary(do_unpark);
	mutex_unlock(&smpark_lock);
	/* A host-direct unpark may have queued its work; no thread reads the page now. */
	cancel_work_sync(&host_unpark_work);
	free_page((unsigned long)state_page);
}

module_init(smpark_init);
module_exit(smpark_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Parks secondary CPUs for byte-identical multi-vCPU snapshots");
MODULE_AUTHOR("supermachine-kernel");
