//! Duties of the guest agent: mounts (devpts above all: supermachine's x86 init never mounts
//! it, and a tty exec needs it), OOM protection, and as PID 1 signal handling.
//!
//! Each step logs and goes on when it fails: a guest with a missing `/dev/shm` is still
//! reachable and can be debugged over the agent, a dead PID 1 is a kernel panic.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use supermachine_guest::{signals, sysctl};

use crate::{log, sys, workload};

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// In order: later entries live inside earlier ones.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=0755",
    },
    // favordynmods: every exec moves its program into a cgroup of its own (exec/tree.rs);
    // without it each move waits for an RCU grace period, about 3 ms under TCG.
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID | NODEV | NOEXEC,
        data: "favordynmods",
    },
];

/// Writes the guest contract's hardening sysctls ([`supermachine_guest::sysctl::HARDENING`]),
/// which supermachine's x86 init does not set; each failure is logged (a kernel without
/// io_uring has no such file).
fn set_sysctls() {
    for (path, e) in sysctl::write_all(sysctl::HARDENING) {
        log!("write {path}: {e}");
    }
}

/// A directory is a mount point when it sits on another device than its parent.
fn is_mountpoint(p: &Path) -> bool {
    match (fs::metadata(p), p.parent().map(fs::metadata)) {
        (Ok(m), Some(Ok(parent))) => m.dev() != parent.dev() || m.ino() == parent.ino(),
        _ => false,
    }
}

fn mount(m: &Mount) -> io::Result<()> {
    let target = Path::new(m.target);
    if is_mountpoint(target) {
        return Ok(());
    }
    fs::create_dir_all(target)?;
    sys::mount(m.source, target, m.fstype, m.flags, m.data)
}

/// True when `p` is a directory with entries: not a place to mount over.
fn has_entries(p: &Path) -> bool {
    fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())
}

/// Mounts what is missing, links `/dev/ptmx`, sets the boot-time sysctls, shields the agent
/// from the OOM killer.
///
/// `/run` gets a tmpfs only while it is empty: supermachine's launch script has already
/// written the workload's pid file there, which a mount would hide.
pub fn setup() {
    for m in MOUNTS {
        if m.target == "/run" && has_entries(Path::new(m.target)) {
            continue;
        }
        if let Err(e) = mount(m) {
            log!("mount {} on {}: {e}", m.fstype, m.target);
        }
    }
    // With a private devpts instance, /dev/ptmx must lead to it.
    let ptmx = Path::new("/dev/ptmx");
    let is_char = fs::symlink_metadata(ptmx).is_ok_and(|m| m.file_type().is_char_device());
    if !is_char && fs::symlink_metadata(ptmx).is_err() {
        if let Err(e) = std::os::unix::fs::symlink("pts/ptmx", ptmx) {
            log!("symlink /dev/ptmx -> pts/ptmx: {e}");
        }
    }
    set_sysctls();
    protect_from_oom();
}

/// Whether [`protect_from_oom`] lowered the agent's score (then each exec resets its own).
static OOM_PROTECTED: AtomicBool = AtomicBool::new(false);

/// The OOM killer must pick the workload, never the agent. As PID 1 the agent needs no low
/// score, since the kernel never picks the global init (`oom_unkillable_task`): it sets the
/// default (whatever a launch script left), which its programs inherit, so that no exec has
/// to reset its own.
pub fn protect_from_oom() {
    let pid1 = std::process::id() == 1;
    let score = if pid1 { "0" } else { "-1000" };
    match fs::write("/proc/self/oom_score_adj", score) {
        Ok(()) => OOM_PROTECTED.store(!pid1, Ordering::Relaxed),
        Err(e) => {
            log!("write /proc/self/oom_score_adj: {e}");
            // The score is unknown: each exec resets its own.
            OOM_PROTECTED.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether the agent runs with a lowered `oom_score_adj` that its programs must not inherit.
pub fn oom_protected() -> bool {
    OOM_PROTECTED.load(Ordering::Relaxed)
}

/// Outside a guest, become a subreaper so orphans of our execs are still ours to reap.
pub fn become_subreaper() {
    if let Err(e) = sys::set_child_subreaper() {
        log!("prctl(PR_SET_CHILD_SUBREAPER): {e}");
    }
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks SIGTERM/SIGINT/SIGHUP in every thread (call before starting any) and forwards them
/// to the workload from a dedicated thread. The kernel never delivers default-action signals to
/// PID 1, so without this a shutdown request would vanish.
pub fn forward_signals() {
    let set = signals::set_of(&FORWARDED);
    sys::block_signals(&set);
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            if let Some(sig) = sys::sigwait(&set) {
                log!("received signal {sig}, forwarding to the workload");
                workload::forward(sig);
            }
        });
    if let Err(e) = spawned {
        log!("cannot start the signal thread: {e}");
    }
}
