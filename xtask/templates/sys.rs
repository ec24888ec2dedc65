//! The few OS calls extraction needs that `std` does not expose, declared here so the crate
//! keeps zero dependencies: open flags for an existing file that must not be followed or
//! blocked on, an unnamed `O_TMPFILE` and `linkat` (Linux), and a liveness probe for the
//! writers of stale temp files. Every value is per target; where one is not known, the caller
//! falls back to a path that needs none of them.

use std::fs::File;
use std::io;
use std::path::Path;

/// Linux open flags come in two layouts: the generic one, and the one of arm, arm64 and
/// powerpc (other `O_DIRECTORY` and `O_NOFOLLOW` bits). Other Linux arches are left out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    LinuxGeneric,
    LinuxArm,
    Bsd,
    Unknown,
}

const LAYOUT: Layout = if cfg!(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x"
    )
)) {
    Layout::LinuxGeneric
} else if cfg!(all(
    target_os = "linux",
    any(
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "powerpc",
        target_arch = "powerpc64"
    )
)) {
    Layout::LinuxArm
} else if cfg!(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)) {
    Layout::Bsd
} else {
    Layout::Unknown
};

/// `O_NOFOLLOW | O_NONBLOCK`: opening what should be the existing asset must neither follow a
/// symlink swapped in since `lstat` nor block on a FIFO. `None` where the values are not known
/// here: the caller then never opens an existing file and always rewrites.
pub(crate) const NOFOLLOW_NONBLOCK: Option<i32> = match LAYOUT {
    Layout::LinuxGeneric => Some(0o400000 | 0o4000),
    Layout::LinuxArm => Some(0o100000 | 0o4000),
    Layout::Bsd => Some(0x0100 | 0x0004),
    Layout::Unknown => None,
};

/// `O_TMPFILE` (`__O_TMPFILE | O_DIRECTORY`) on the Linux layouts known here.
#[cfg(target_os = "linux")]
const O_TMPFILE: Option<i32> = match LAYOUT {
    Layout::LinuxGeneric => Some(0o20000000 | 0o200000),
    Layout::LinuxArm => Some(0o20000000 | 0o40000),
    Layout::Bsd | Layout::Unknown => None,
};

#[cfg(unix)]
mod ffi {
    use std::ffi::c_char;

    extern "C" {
        pub(super) fn kill(pid: i32, sig: i32) -> i32;
        pub(super) fn geteuid() -> u32;
        #[cfg(target_os = "linux")]
        pub(super) fn linkat(
            olddirfd: i32,
            oldpath: *const c_char,
            newdirfd: i32,
            newpath: *const c_char,
            flags: i32,
        ) -> i32;
    }
}

/// This process's effective user id: whoever an extracted file must belong to.
#[cfg(unix)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments and always succeeds.
    unsafe { ffi::geteuid() }
}

/// Whether process `pid` may still be running. Errs towards "alive": only a definite "no such
/// process" counts as dead, so a live writer's temp file is never taken for stale.
#[cfg(unix)]
pub(crate) fn process_alive(pid: u32) -> bool {
    const ESRCH: i32 = 3;
    let Ok(pid) = i32::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that `pid` exists, and
    // takes no pointers.
    let rc = unsafe { ffi::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(ESRCH)
}

/// Without a liveness probe, every writer counts as alive and nothing is swept.
#[cfg(not(unix))]
pub(crate) fn process_alive(_pid: u32) -> bool {
    true
}

/// An unnamed file in `dir` (`O_TMPFILE`, mode 0600): a writer killed before [`link`] leaves
/// nothing behind. `None` when this target or filesystem has no `O_TMPFILE`.
#[cfg(target_os = "linux")]
pub(crate) fn unnamed_file(dir: &Path) -> Option<File> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = O_TMPFILE?;
    // Errors (EOPNOTSUPP from a filesystem without it, EISDIR from a kernel before 3.11, and
    // any other) all mean "use a named temp file", which reports a real problem itself.
    OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(dir)
        .ok()
}

/// No `O_TMPFILE` off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn unnamed_file(_dir: &Path) -> Option<File> {
    None
}

/// Gives the unnamed `file` the name `dest` (which must not exist): `linkat` with
/// `AT_EMPTY_PATH`, which needs `CAP_DAC_READ_SEARCH`, else through `/proc/self/fd`.
#[cfg(target_os = "linux")]
pub(crate) fn link(file: &File, dest: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    const AT_FDCWD: i32 = -100;
    const AT_SYMLINK_FOLLOW: i32 = 0x400;
    const AT_EMPTY_PATH: i32 = 0x1000;
    let nul = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    let dest = CString::new(dest.as_os_str().as_bytes()).map_err(nul)?;
    let fd = file.as_raw_fd();
    // SAFETY: both paths are NUL-terminated CStrings that outlive the call, and `fd` is an
    // open descriptor owned by `file`, borrowed for the duration of the call.
    if unsafe { ffi::linkat(fd, c"".as_ptr(), AT_FDCWD, dest.as_ptr(), AT_EMPTY_PATH) } == 0 {
        return Ok(());
    }
    let proc_path = CString::new(format!("/proc/self/fd/{fd}")).map_err(nul)?;
    // SAFETY: as above; AT_FDCWD makes both paths relative to the working directory.
    let rc = unsafe {
        ffi::linkat(
            AT_FDCWD,
            proc_path.as_ptr(),
            AT_FDCWD,
            dest.as_ptr(),
            AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Never called off Linux: [`unnamed_file`] returns `None` there.
#[cfg(not(target_os = "linux"))]
pub(crate) fn link(_file: &File, _dest: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
