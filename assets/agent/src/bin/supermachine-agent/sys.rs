//! The agent's OS boundary: every system call it makes outside [`spawn`], the vfork spawn
//! code (the child between vfork and exec must stay async-signal-safe and allocation-free,
//! so it calls libc itself, and the descriptors it inherits, pipes and pty, are made beside
//! it). Each wrapper is safe and checks its result; it returns the OS error as
//! the kernel gave it (so `raw_os_error` still reads it) and the caller's typed error names
//! the operation, except where a helper is its own operation (`set_nonblocking`, the dups).
//! The rest of the agent names libc's constants and types but calls nothing unsafe.
//!
//! We call `libc` directly rather than through `rustix` or `nix`: the agent ships in every
//! guest, and a second system-call layer would add bytes for no behaviour (the agent is
//! 0.69 MB static on x86_64).
//!
//! [`spawn`]: crate::spawn

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Instant;

use crate::oserror::annotate;

/// `r` as a count, or the last OS error.
fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `r == 0`, or the last OS error.
fn check_zero(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "fcntl(F_GETFL)".into(),
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "fcntl(F_SETFL)".into(),
        ));
    }
    Ok(())
}

/// A `pollfd` asking for `events` on `fd` (a negative `fd` is skipped by `poll`).
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `poll`'s timeout for `deadline`, rounded up (the guest contract's, shared with init-oci and
/// the host client).
pub use supermachine_guest::poll::timeout_ms;

/// Waits until `fd` is ready for `events`, an error or hang-up shows, a signal interrupts,
/// or `deadline` passes. Callers retry their operation after it either way.
pub fn wait(fd: RawFd, events: libc::c_short, deadline: Option<Instant>) {
    let mut p = pollfd(fd, events);
    // SAFETY: p is one valid pollfd and the count passed is 1.
    unsafe { libc::poll(&mut p, 1, timeout_ms(deadline)) };
}

/// `poll(2)` on `fds` for up to `timeout` ms: how many have events.
pub fn poll(fds: &mut [libc::pollfd], timeout: libc::c_int) -> io::Result<usize> {
    // SAFETY: fds is a valid array of pollfds of the length passed.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    check(n as isize)
}

/// `readv(2)` into `bufs`.
pub fn readv(fd: RawFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    // SAFETY: IoSliceMut is ABI-compatible with iovec on Unix; each points into a live
    // buffer borrowed for the call.
    let r = unsafe { libc::readv(fd, bufs.as_ptr().cast(), bufs.len() as libc::c_int) };
    check(r)
}

/// `write(2)` of `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid initialised slice of the length passed.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    check(r)
}

/// One `pread(2)` of a byte at offset 0: `Ok(0)` at end of file.
pub fn pread_first_byte(fd: RawFd) -> io::Result<usize> {
    let mut byte = [0u8; 1];
    // SAFETY: pread into a valid one-byte buffer.
    check(unsafe { libc::pread(fd, byte.as_mut_ptr().cast(), 1, 0) })
}

/// A close-on-exec duplicate of `fd` (numbered 3 or above) as a `File`; `what` names it.
pub fn dup_cloexec(fd: RawFd, what: &str) -> io::Result<File> {
    // SAFETY: fcntl with integer arguments; the result is checked.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if d < 0 {
        return Err(annotate(io::Error::last_os_error(), format!("dup {what}")));
    }
    // SAFETY: d is a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(d) }))
}

/// `dup2(from, to)`.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes no pointers.
    let r = unsafe { libc::dup2(from, to) };
    if r < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            format!("dup2({from}, {to})"),
        ));
    }
    Ok(())
}

/// `kill(pid, sig)`; the OS error as is (callers name the target in their own error).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    check_zero(unsafe { libc::kill(pid, sig) })
}

/// A child that ended: its pid, `wait` status and peak RSS (KiB).
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Its pid.
    pub pid: i32,
    /// Its `wait` status.
    pub status: libc::c_int,
    /// `ru_maxrss`.
    pub max_rss_kib: i64,
}

/// Waits for any child to end (`wait4(-1, …, 0, …)`).
pub fn wait_any() -> io::Result<Ended> {
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only to `status` and `usage`, both valid.
    let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Ended {
        pid,
        status,
        max_rss_kib: usage.ru_maxrss,
    })
}

/// Reaps the child behind `pidfd` if it has ended (`waitid(P_PIDFD, …, WEXITED | WNOHANG)`,
/// with its rusage): `Ok(None)` while it runs; ECHILD once someone else reaped it.
pub fn reap_pidfd(pidfd: RawFd) -> io::Result<Option<Ended>> {
    // SAFETY: all-zero is a valid siginfo_t and rusage; si_pid stays 0 if nothing was reaped.
    let (mut info, mut usage): (libc::siginfo_t, libc::rusage) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: the raw waitid (libc's wrapper has no rusage argument) writes only to `info` and
    // `usage`, both valid; `pidfd` is a descriptor number the kernel checks.
    let r = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_PIDFD,
            pidfd,
            &mut info as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOHANG,
            &mut usage as *mut libc::rusage,
        )
    };
    check(r as isize)?;
    // SAFETY: waitid with WEXITED filled a SIGCHLD siginfo (or left it zeroed).
    let (pid, code) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    // As a wait status, so that one decoder serves wait4 and waitid: an exit code in bits
    // 8-15, a signal in bits 0-6 (and 0x80 when it dumped core).
    let status = match info.si_code {
        libc::CLD_EXITED => (code & 0xff) << 8,
        libc::CLD_DUMPED => (code & 0x7f) | 0x80,
        _ => code & 0x7f,
    };
    Ok(Some(Ended {
        pid,
        status,
        max_rss_kib: usage.ru_maxrss,
    }))
}

/// The number of online CPUs (at least 1).
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u32
}

/// The kernel's release (`uname -r`); empty if uname fails.
pub fn kernel_release() -> String {
    // SAFETY: all-zero bytes are a valid utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the valid struct we pass.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release within the array.
    unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Sets CLOCK_REALTIME to `unix_ns` nanoseconds since the epoch.
pub fn set_realtime(unix_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as _,
        tv_nsec: (unix_ns % 1_000_000_000) as _,
    };
    // SAFETY: ts is a valid timespec.
    check_zero(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
}

/// `reboot(cmd)`: as PID 1 this ends the VM, so it returns only the kernel's refusal.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot takes no pointers.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// `ioctl(fd, request, arg)` of a driver whose `request` reads or writes at most one `T`
/// through `arg` (or ignores it).
pub fn ioctl<T>(fd: RawFd, request: u32, arg: Option<&mut T>) -> io::Result<()> {
    let p = arg.map_or(std::ptr::null_mut(), |a| a as *mut T);
    // SAFETY: p is null or points to a live T the request may fill; the caller names a
    // request of that contract.
    check_zero(unsafe { libc::ioctl(fd, request as _, p) })
}

/// Pins thread `tid` to `cpus` (each below 1024). A thread that already exited gives ESRCH.
pub fn set_affinity(tid: i32, cpus: &[u32]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET only writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus
        .iter()
        .filter(|&&c| (c as usize) < libc::CPU_SETSIZE as usize)
    {
        // SAFETY: c is within the set (checked above).
        unsafe { libc::CPU_SET(c as usize, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    check_zero(r)
}

/// `mount(source, target, fstype, flags, data)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let target_c = c(&target.to_string_lossy())?;
    let (src, fst, dat) = (c(source)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target_c.as_ptr(),
            fst.as_ptr(),
            flags,
            dat.as_ptr().cast(),
        )
    };
    check_zero(r)
}

/// Makes this process a child subreaper: orphans below it are re-parented to it.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    check_zero(r)
}

/// Blocks `set` in the calling thread (threads started later inherit it).
pub fn block_signals(set: &libc::sigset_t) {
    // SAFETY: set is initialised; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
}

/// Waits for one of the blocked signals of `set`; `None` if sigwait failed.
pub fn sigwait(set: &libc::sigset_t) -> Option<libc::c_int> {
    let mut sig: libc::c_int = 0;
    // SAFETY: set is a valid initialised sigset and sig a valid out-pointer.
    (unsafe { libc::sigwait(set, &mut sig) } == 0).then_some(sig)
}

/// Whether `path` is the root of a cgroup2 file system.
pub fn is_cgroup2(path: &str) -> bool {
    const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
    let Ok(c) = CString::new(path) else {
        return false;
    };
    // SAFETY: all-zero is a valid statfs; statfs writes only into it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    ok && st.f_type as libc::c_long == CGROUP2_SUPER_MAGIC
}

/// Fills `buf` from the kernel's CRNG without waiting for it: `Err` (EAGAIN) while it is not
/// yet seeded, or a short count.
pub fn getrandom_nonblocking(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    check(unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) })
}

/// This process's effective uid.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid takes no arguments and always succeeds.
    unsafe { libc::geteuid() }
}
