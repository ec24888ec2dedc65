//! `init-oci`: PID 1 of supermachine's aarch64 (HVF) guests, run with no arguments as
//! `/init` of the initramfs, and again as `/init` of the overlay root.
//!
//! # Contract (supermachine 0.7.108's bake and `oci/init-oci.c`)
//! **Initramfs**: a gzip newc cpio of `/init` (this program), the directories `proc`, `sys`,
//! `dev` and `newroot`, and `/supermachine-smpark.ko` (optional). **Disks**: virtio-blk
//! `/dev/vda`, `/dev/vdb`, …: the image's squashfs layers (bottom first), then the bake's
//! delta layer (squashfs: `/init` again, `/supermachine-agent` and the
//! [`files`] `/.supermachine-*`), then the volumes (ext4). **Command line**: the
//! [`cmdline`] `supermachine.*` words. **Host services**: the env document on vsock port 1026
//! ([`envsvc`]) and the console's input at the two pauses ([`console`]).
//!
//! # Phase 1 ([`phase1`], in the initramfs)
//! 1. mounts proc, sysfs, devtmpfs, devpts, `/dev/shm`, `/tmp`, `/run` and cgroup2
//!    ([`mounts`]); brings `lo` up with 198.18.0.1/30 ([`net`]);
//! 2. with more than one CPU online, loads `/supermachine-smpark.ko` (`finit_module`) and
//!    prints `[SUPERMACHINE-SMPARK] state_gpa=0x…` from `/sys/kernel/smpark/state_gpa` (no
//!    line when the module has no such file);
//! 3. under `supermachine.kcache=1`: prints `[SUPERMACHINE-KCACHE] ready`, waits up to 30 s for
//!    a line on the console's input, prints `[SUPERMACHINE-KCACHE] resumed token=…`;
//! 4. mounts every `/dev/vd?` from `vda` as squashfs until the first that is missing or
//!    does not mount, and an overlay of them (the last disk on top) with a tmpfs upper on
//!    `/newroot`; moves /dev, /proc and /sys into it, makes it the root (`MS_MOVE` + chroot)
//!    and execs its `/init` with the environment `SUPERMACHINE_KCACHE_DONE=1` alone.
//!
//! # Phase 2 ([`phase2`], in the overlay: `/` is an overlayfs or `/.supermachine-cmd` exists)
//! 1. the pseudo-filesystems again where missing; `/etc/hosts` with `localhost`,
//!    `/etc/resolv.conf` (1.1.1.1), `/dev/fd` links, low ports and ICMP sockets for all;
//! 2. `supermachine.host_ipv6=0`: `/etc/gai.conf` preferring IPv4;
//! 3. the virtio-fs shares of `/.supermachine-virtiofs-binds`;
//! 4. the clock from `supermachine.host_time=`, when the guest's reads before 2001;
//! 5. the hostname from `/.supermachine-hostname`;
//! 6. the host's environment (vsock 1026, [`envsvc`], at most 2 s + 2 s) into PID 1's own;
//! 7. starts `/supermachine-agent` with no arguments (inheriting that environment and the
//!    console) and waits up to 1 s for `/run/supermachine-agent-ready`;
//! 8. prints `[SUPERMACHINE-INIT] heartbeat counter=1` (stdout), then mounts the volumes of
//!    `/.supermachine-volumes` (the last disks, ext4);
//! 9. reads the workload from `/.supermachine-cmd`, resolves `/.supermachine-user`, changes
//!    to `/.supermachine-workdir`, prints `init-oci: exec …`;
//! 10. [`supervise`]: prints `init-oci: workload-pre-exec`; under
//!     `supermachine.pre_exec_sync=1` prints `[SUPERMACHINE-PRE-EXEC] ready` and waits up to
//!     30 s for a console line (`… resumed token=…`), else sleeps 250 ms; forks the workload
//!     in its own process group as its user (stdio `/dev/null` unless
//!     `SUPERMACHINE_GUEST_STDIO=console`), writes `/run/supermachine-workload.pid`, reaps
//!     every child, forwards signals to the workload, prints `init-oci: child exited N` and
//!     `init-oci: parking PID 1 (exit=N)` when it ends, and stays PID 1 forever.
//!
//! # Failures
//! PID 1 never exits (the kernel would panic). Every failure is one `init-oci: …` line and a
//! fallback: no disk or no squashfs → phase 2 in the initramfs; a missing or unusable
//! command → `/bin/sh`; an unknown user → the workload is not run (exit 126); a command that
//! does not exec → exit 127; a bad workdir → `/`; no env service → the environment as is;
//! a module that does not load → no smpark; a panic → reap children forever.

// The contract half lives in the library (`src/lib.rs`); these names let PID 1's own modules
// say `crate::files` as before.
use init_oci::{cmdline, envjson, error, files};

mod console;
mod envsvc;
mod mounts;
mod net;
mod phase1;
mod phase2;
mod supervise;
mod sys;

use std::path::Path;

/// Reads the kernel command line (mounting /proc first if needed).
fn read_cmdline() -> cmdline::Cmdline {
    if !Path::new("/proc/cmdline").exists() {
        let _ = std::fs::create_dir_all("/proc");
        if let Err(e) = sys::mount("proc", "/proc", Some("proc"), 0, None) {
            say!("{e}");
        }
    }
    match std::fs::read_to_string("/proc/cmdline") {
        Ok(text) => cmdline::parse(&text),
        Err(e) => {
            say!("read /proc/cmdline: {e}; no supermachine.* settings");
            cmdline::Cmdline::default()
        }
    }
}

/// Whether this is phase 2: the root is the overlay, or the delta layer's command file is
/// visible (a VMM that gave no layers and put the files in the initramfs).
fn in_overlay() -> bool {
    Path::new(files::CMD).exists() || sys::fs_magic("/").is_ok_and(|m| m == sys::OVERLAYFS_MAGIC)
}

fn init() -> ! {
    let phase2 = in_overlay();
    say!(
        "hello from pid 1 ({})",
        if phase2 { "overlay root" } else { "initramfs" }
    );
    let cmdline = read_cmdline();
    if !phase2 && phase1::run(&cmdline) == phase1::Outcome::Overlay {
        // What the exec of the overlay's /init would have given: that environment only.
        for (k, _) in std::env::vars_os() {
            std::env::remove_var(k);
        }
        std::env::set_var(init_oci::contract::KCACHE_DONE, "1");
    }
    phase2::run(&cmdline)
}

fn main() {
    if std::process::id() != 1 {
        say!("not PID 1: refusing to act on this machine");
        std::process::exit(2);
    }
    // A panic must not end PID 1: the kernel would panic with it.
    if std::panic::catch_unwind(|| init()).is_err() {
        say!("internal error (a panic, above); PID 1 goes on reaping");
    }
    supervise::park_forever()
}
