//! `fork` + `execve` with the exact child setup the agent needs.
//!
//! `std::process::Command` cannot be used: it waits for a child whose `exec` failed, racing
//! the [`reaper`](crate::reaper), and it cannot reset `oom_score_adj`. Everything the child
//! needs is allocated before `fork`; between `fork` and `execve` the child calls only
//! async-signal-safe functions.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use supermachine_agent::protocol::WinSize;

use crate::server::annotate;
use crate::user::Ident;

/// What to run and how.
pub struct Spec {
    /// Resolved program path.
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    /// Switch to this identity (`None`: keep the agent's).
    pub ident: Option<Ident>,
    pub tty: Option<WinSize>,
}

/// Why [`spawn`] failed.
#[derive(Debug)]
pub enum SpawnError {
    /// Preparing the child (pipes, pty, fork) failed in the agent.
    Setup(io::Error),
    /// The child failed before it became the program: `chdir`, `execve` or identity change.
    Child {
        /// The step that failed (`chdir`, `execve`, `setuid`, …).
        stage: &'static str,
        /// The errno it failed with.
        cause: io::Error,
    },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Setup(e) => e.fmt(f),
            SpawnError::Child { stage, cause } => write!(f, "{stage}: {cause}"),
        }
    }
}

impl From<io::Error> for SpawnError {
    fn from(e: io::Error) -> Self {
        SpawnError::Setup(e)
    }
}

/// The parent's ends of the child's stdio.
pub struct Stdio {
    /// stdin pipe write end (or the pty master, duplicated).
    pub stdin: Option<File>,
    /// stdout pipe read end (or the pty master).
    pub stdout: Option<File>,
    /// stderr pipe read end (`None` in tty mode).
    pub stderr: Option<File>,
    /// The pty master, for resizes.
    pub pty: Option<File>,
}

fn cvt(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(annotate(io::Error::last_os_error(), what.to_string()))
    } else {
        Ok(r)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two c_ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    cvt(r, "pipe2")?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens a pty pair with the given size; both ends close-on-exec.
fn openpty(size: WinSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (mut master, mut slave) = (0, 0);
    let null = std::ptr::null_mut();
    // SAFETY: master/slave are valid out-pointers; name and termios may be null; ws is valid.
    let r = unsafe { libc::openpty(&mut master, &mut slave, null, std::ptr::null(), &ws) };
    cvt(r, "openpty")?;
    // SAFETY: openpty succeeded, so both are fresh descriptors owned by nobody else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&m, &s] {
        // SAFETY: fcntl on a descriptor we own.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        cvt(r, "fcntl(FD_CLOEXEC)")?;
    }
    Ok((m, s))
}

/// Sets a pty's window size.
pub fn resize(pty: &File, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    cvt(
        unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        "ioctl(TIOCSWINSZ)",
    )
    .map(drop)
}

/// Where the child failed before `execve`; sent over the error pipe with errno.
#[repr(u8)]
#[derive(Clone, Copy)]
enum Stage {
    Setup = 1,
    Groups = 2,
    Gid = 3,
    Uid = 4,
    Chdir = 5,
    Exec = 6,
}

fn stage_name(b: u8) -> &'static str {
    match b {
        2 => "setgroups",
        3 => "setgid",
        4 => "setuid",
        5 => "chdir",
        6 => "execve",
        _ => "child setup",
    }
}

/// Forks and execs `spec`. Returns the pid and the parent's stdio ends.
///
/// Call through [`crate::reaper::spawn_registered`]. The child is the leader of a new session
/// and process group, so signals and kills reach everything it starts.
pub fn spawn(spec: &Spec) -> Result<(i32, Stdio), SpawnError> {
    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(Some(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(Some(std::ptr::null()))
        .collect();
    let groups: Vec<libc::gid_t> = spec
        .ident
        .as_ref()
        .map(|i| i.groups.clone())
        .unwrap_or_default();

    // Parent and child ends, all close-on-exec; the child dup2()s its ends onto 0/1/2.
    let mut stdio = Stdio {
        stdin: None,
        stdout: None,
        stderr: None,
        pty: None,
    };
    let child_fds: [RawFd; 3];
    let mut keep_alive: Vec<OwnedFd> = Vec::new();
    let mut pty_slave: RawFd = -1;
    if let Some(size) = spec.tty {
        let (m, s) = openpty(size)?;
        let m = File::from(m);
        stdio.stdin = Some(m.try_clone()?);
        stdio.stdout = Some(m.try_clone()?);
        stdio.pty = Some(m);
        pty_slave = s.as_raw_fd();
        child_fds = [s.as_raw_fd(); 3];
        keep_alive.push(s);
    } else {
        let (r0, w0) = pipe()?;
        let (r1, w1) = pipe()?;
        let (r2, w2) = pipe()?;
        stdio.stdin = Some(File::from(w0));
        stdio.stdout = Some(File::from(r1));
        stdio.stderr = Some(File::from(r2));
        child_fds = [r0.as_raw_fd(), w1.as_raw_fd(), w2.as_raw_fd()];
        keep_alive.extend([r0, w1, w2]);
    }
    let (err_r, err_w) = pipe()?;
    let ident = spec.ident.as_ref().map(|i| (i.uid, i.gid));

    // SAFETY: fork has no memory-safety preconditions; the child branch below only calls
    // async-signal-safe functions on memory prepared before the fork, then execs or _exits.
    let pid = cvt(unsafe { libc::fork() }, "fork")?;
    if pid == 0 {
        // SAFETY: we are the child of a fork; everything used was allocated before it.
        unsafe {
            child(
                spec,
                &argv,
                &envp,
                &groups,
                ident,
                child_fds,
                pty_slave,
                err_w.as_raw_fd(),
            )
        }
    }
    drop(err_w);
    drop(keep_alive);
    let mut report = Vec::new();
    let mut err_file = File::from(err_r);
    let _ = err_file.read_to_end(&mut report);
    if report.len() == 5 {
        let errno = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        // The child has _exit()ed; the reaper collects it.
        return Err(SpawnError::Child {
            stage: stage_name(report[4]),
            cause: io::Error::from_raw_os_error(errno),
        });
    }
    Ok((pid, stdio))
}

/// The child side of [`spawn`]. Never returns.
///
/// # Safety
/// Must be called only in the child of `fork`, with pointers that stay valid (the parent's
/// memory image is copied, so everything prepared before the fork is).
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    spec: &Spec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    groups: &[libc::gid_t],
    ident: Option<(u32, u32)>,
    fds: [RawFd; 3],
    pty_slave: RawFd,
    err: RawFd,
) -> ! {
    let fail = |stage: Stage| -> ! {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let mut buf = [0u8; 5];
        buf[..4].copy_from_slice(&errno.to_ne_bytes());
        buf[4] = stage as u8;
        // SAFETY: write and _exit are async-signal-safe; buf is valid.
        unsafe {
            libc::write(err, buf.as_ptr().cast(), 5);
            libc::_exit(127)
        }
    };
    // SAFETY: async-signal-safe syscalls only, on values prepared before fork.
    unsafe {
        // The agent blocks SIGTERM & co. for its signal thread and ignores SIGPIPE; the child
        // must start with a clean slate.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
        }
        // PID 1 protects itself from the OOM killer; its children must not inherit that.
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
        if libc::setsid() < 0 {
            fail(Stage::Setup);
        }
        if pty_slave >= 0 && libc::ioctl(pty_slave, libc::TIOCSCTTY, 0) < 0 {
            fail(Stage::Setup);
        }
        for (target, &fd) in fds.iter().enumerate() {
            if fd == target as RawFd {
                // Already in place (inherited console): just make sure it survives exec.
                libc::fcntl(fd, libc::F_SETFD, 0);
            } else if libc::dup2(fd, target as RawFd) < 0 {
                fail(Stage::Setup);
            }
        }
        if let Some((uid, gid)) = ident {
            if libc::setgroups(groups.len() as _, groups.as_ptr()) < 0 {
                fail(Stage::Groups);
            }
            if libc::setgid(gid) < 0 {
                fail(Stage::Gid);
            }
            if libc::setuid(uid) < 0 {
                fail(Stage::Uid);
            }
        }
        if libc::chdir(spec.cwd.as_ptr()) < 0 {
            fail(Stage::Chdir);
        }
        libc::execve(spec.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Stage::Exec)
    }
}

/// Sends `sig` to the process group led by `pid`.
pub fn kill_group(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    cvt(unsafe { libc::kill(-pid, sig) }, "kill").map(drop)
}
