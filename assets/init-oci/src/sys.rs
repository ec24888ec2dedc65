//! Safe wrappers over the system calls init-oci needs and `std` does not offer. Every
//! `unsafe` block of the program lives here (and in [`crate::net`]).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use supermachine_guest::{poll, signals};

use crate::error::{Error, Result};

/// `AF_VSOCK`, which the `libc` crate does not define for musl.
const AF_VSOCK: libc::c_int = 40;

/// A `CString` for the kernel, or [`Error::Nul`].
pub fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Nul(s.to_string()))
}

/// `mount(2)`; `fstype` and `data` may be absent (moves and binds take neither).
pub fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let (s, t) = (cstr(source)?, cstr(target)?);
    let f = fstype.map(cstr).transpose()?;
    let d = data.map(cstr).transpose()?;
    // SAFETY: every pointer is either null (allowed for fstype and data) or a NUL-terminated
    // string that outlives the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            d.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>()),
        )
    };
    if r != 0 {
        let what = fstype.unwrap_or("(move)");
        return Err(Error::last_os(format!("mount {what} {source} on {target}")));
    }
    Ok(())
}

/// Moves the mount at `from` to `to` (`MS_MOVE`).
pub fn move_mount(from: &str, to: &str) -> Result<()> {
    mount(from, to, None, libc::MS_MOVE, None).map_err(|e| match e {
        Error::Sys { source, .. } => Error::io(format!("move mount {from} to {to}"), source),
        other => other,
    })
}

/// Whether `path` is a mount point: on another device than its parent, or the root.
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(m), Some(Ok(parent))) => m.dev() != parent.dev() || m.ino() == parent.ino(),
        _ => false,
    }
}

/// The filesystem magic of the filesystem holding `path` (`statfs(2)`'s `f_type`).
pub fn fs_magic(path: &str) -> Result<u64> {
    let p = cstr(path)?;
    // SAFETY: statfs is plain data; an all-zero value is valid and the call fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statfs(p.as_ptr(), &mut st) } != 0 {
        return Err(Error::last_os(format!("statfs {path}")));
    }
    // f_type is signed on some targets; the magic is the bit pattern.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64)
}

/// `OVERLAYFS_SUPER_MAGIC`.
pub const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// `chroot(2)`.
pub fn chroot(path: &str) -> Result<()> {
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chroot(p.as_ptr()) } != 0 {
        return Err(Error::last_os(format!("chroot {path}")));
    }
    Ok(())
}

/// Loads the kernel module in `file` (`finit_module(2)`, no parameters, no flags).
pub fn finit_module(file: &File) -> io::Result<()> {
    // SAFETY: a valid open fd, an empty NUL-terminated parameter string, flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            0 as libc::c_int,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`), at least 1.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe the name's bytes, alive for the call.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The wall clock in whole seconds since the epoch.
pub fn wall_clock_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Sets `CLOCK_REALTIME` to `secs` since the epoch.
pub fn set_wall_clock(secs: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as _,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec, alive for the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: takes no arguments.
    unsafe { libc::sync() };
}

/// Replaces the process with `path`, argv `[path]` and the environment `env`. Returns only
/// when the exec failed.
pub fn execve(path: &str, env: &[&str]) -> Error {
    let p = match cstr(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let env: Vec<CString> = match env.iter().map(|e| cstr(e)).collect() {
        Ok(v) => v,
        Err(e) => return e,
    };
    let argv = [p.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: path, argv and envp are NUL-terminated strings in null-terminated arrays, all
    // alive for the call.
    unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Error::last_os(format!("execve {path}"))
}

/// Waits up to `timeout` for `fd` to be readable; `Ok(false)` on timeout. EINTR retries
/// with the time left.
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    poll(fd, libc::POLLIN, timeout)
}

fn poll(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now().checked_add(timeout);
    Ok(poll::wait(fd, events, deadline)?.is_some())
}

/// Drops whatever input is queued on the terminal `fd` (`tcflush(fd, TCIFLUSH)`). A descriptor
/// that is no terminal has no such queue, so ENOTTY is no error.
pub fn flush_input(fd: RawFd) -> io::Result<()> {
    // SAFETY: tcflush takes no pointers.
    if unsafe { libc::tcflush(fd, libc::TCIFLUSH) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTTY) => Ok(()),
        _ => Err(e),
    }
}

/// One `read` of up to `max` bytes from `fd`, after waiting up to `timeout` for it to be
/// readable. `Ok(None)` on timeout; `Ok(Some(empty))` at end of file.
pub fn read_with_timeout(fd: RawFd, max: usize, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    if !poll_readable(fd, timeout)? {
        return Ok(None);
    }
    let mut buf = vec![0u8; max];
    loop {
        // SAFETY: buf is valid for max bytes of writes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), max) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf.truncate(n as usize);
        return Ok(Some(buf));
    }
}

/// Connects a vsock stream to (`cid`, `port`), giving up after `timeout` (the host may not
/// answer at all: vhost-device-vsock 0.3.0 sends no reset for a port nobody serves).
pub fn vsock_connect(cid: u32, port: u32, timeout: Duration) -> io::Result<File> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe {
        libc::socket(
            AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm of the given length.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        if !poll(sock.as_raw_fd(), libc::POLLOUT, timeout)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer in {timeout:?}"),
            ));
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err and len are valid out-pointers of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    Ok(File::from(sock))
}

/// Signals PID 1 takes through [`wait_signal`] instead of handlers: the child-exit signal
/// and every signal it forwards to the workload. Synchronous faults (SIGSEGV & co.) are not
/// blocked: blocking them would only turn a bug into a kill.
pub const SUPERVISED: [libc::c_int; 20] = [
    libc::SIGCHLD,
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGWINCH,
    libc::SIGIO,
    libc::SIGPWR,
];

/// Blocks [`SUPERVISED`] so they queue for [`wait_signal`]. Children inherit the mask
/// (`std::process::Command` keeps it): each must call [`unblock_all_signals`] before exec.
pub fn block_supervised_signals() {
    let set = signals::set_of(&SUPERVISED);
    // SAFETY: a valid initialised set; the old mask is not wanted.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Empties the signal mask. Called in a forked child before exec: async-signal-safe.
pub fn unblock_all_signals() -> io::Result<()> {
    let empty = signals::set_of(&[]);
    // SAFETY: a valid initialised set; the old mask is not wanted.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the next of [`SUPERVISED`] and returns its number.
pub fn wait_signal() -> libc::c_int {
    let set = signals::set_of(&SUPERVISED);
    loop {
        // SAFETY: a valid set; no siginfo wanted (null is allowed).
        let s = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if s > 0 {
            return s;
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The shell's number for it: the code, or 128 + the signal.
    pub fn number(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reaps one exited child without blocking: `Some((pid, exit))`, or `None` when none has
/// exited (or there are no children).
pub fn reap_one() -> Option<(i32, Exit)> {
    let mut status: libc::c_int = 0;
    // SAFETY: a valid out-pointer for the status.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let exit = if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(1)
    };
    Some((pid, exit))
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the identity `(uid, gid, groups)`: supplementary groups first, then the gid, then
/// the uid (the order in which each step still has the privilege it needs).
///
/// Called in the forked child before exec, so it only makes async-signal-safe calls.
pub fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: pointer and length describe the slice, alive for the call.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setgid and setuid take no pointers.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
