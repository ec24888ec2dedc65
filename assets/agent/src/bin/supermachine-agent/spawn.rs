//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` + `execve` with the exact child setup the
//! agent needs.
//!
//! Why not `fork`: the agent is multi-threaded and PID 1, and a full `fork` copies its page
//! tables (about 500 µs and 125 page faults per exec on the host, far more under TCG). With
//! vfork semantics the child borrows the parent's memory until `execve`, the calling thread is
//! suspended meanwhile, and the child reports a failure before `execve` by writing into the
//! parent's memory: no error pipe. `CLONE_PIDFD` gives the exec's poll loop a descriptor that
//! becomes readable when the child exits.
//!
//! Why not `std::process::Command` or `posix_spawn`: the first waits for a child whose `exec`
//! failed, racing the [`reaper`](crate::reaper); neither can reset `oom_score_adj`, join an
//! exec cgroup, take a controlling tty and switch identity. Everything the child needs is
//! prepared before `clone`; the child calls only async-signal-safe functions.

use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use supermachine_agent::protocol::WinSize;
use supermachine_guest::signals;
use supermachine_guest::user::Ident;

use crate::oserror::annotate;
use crate::{spare, sys};

/// Where the program's file is.
pub enum Program {
    /// argv[0] names a path (it has a `/`): that file, and any failure to run it is said.
    Path(CString),
    /// argv[0] is a bare name: these files in `PATH` order, the first that runs wins.
    /// What cannot be reached (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG) and what is no program
    /// (EACCES: a directory, a file without an execute bit) is passed over, as the agent's
    /// `stat` of each entry did before; when all were, the program was not found. A file
    /// that is there and fails to run (ENOEXEC, ETXTBSY, …) ends the search with its error.
    Search(Vec<CString>),
}

/// What to run and how.
pub struct Spec {
    pub program: Program,
    pub argv: Vec<CString>,
    /// Shared with the plan: most execs use the one environment the agent builds once.
    pub envp: std::sync::Arc<[CString]>,
    pub cwd: CString,
    /// Switch to this identity (`None`: keep the agent's).
    pub ident: Option<Ident>,
    pub tty: Option<WinSize>,
    /// `cgroup.procs` of the exec's cgroup, which the child joins before `execve`.
    pub cgroup_procs: Option<RawFd>,
}

/// Why [`spawn`] failed.
#[derive(Debug)]
pub enum SpawnError {
    /// Preparing the child (pipes, pty, clone) failed in the agent.
    Setup(io::Error),
    /// The child failed before it became the program: `chdir`, `execve` or identity change.
    Child {
        /// The step that failed (`chdir`, `execve`, `setuid`, …).
        stage: &'static str,
        /// The errno it failed with.
        cause: io::Error,
    },
    /// A [`Program::Search`] found no file by that name.
    NotFound,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Setup(e) => e.fmt(f),
            SpawnError::Child { stage, cause } => write!(f, "{stage}: {cause}"),
            SpawnError::NotFound => f.write_str("command not found"),
        }
    }
}

impl From<io::Error> for SpawnError {
    fn from(e: io::Error) -> Self {
        SpawnError::Setup(e)
    }
}

/// The parent's ends of the child's stdio, all non-blocking (the exec's poll loop owns them).
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

/// Pipe capacity for output: a child writing 64 KiB blocks (dd, most runtimes) fills a
/// default 64 KiB pipe per write and waits for the agent each time; 256 KiB lets it run ahead.
/// (Stdin keeps the default: the agent queues host input itself.)
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// A pipe whose `parent` end (0: read, 1: write) is non-blocking and, for output, `PIPE_SIZE`
/// large; the child's end blocks, as programs expect. Returns (parent end, child end).
///
/// Both ends are created non-blocking and the child's is cleared: two syscalls instead of a
/// read-modify-write of the parent's flags, on the exec's critical path.
fn stdio_pipe(parent: usize) -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two c_ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    cvt(r, "pipe2")?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (mine, theirs) = if parent == 0 { (r, w) } else { (w, r) };
    // F_SETFL ignores the access mode, so 0 clears O_NONBLOCK and nothing else.
    // SAFETY: fcntl with integer arguments on a descriptor we own.
    let r = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFL, 0) };
    cvt(r, "fcntl(F_SETFL)")?;
    if parent == 0 {
        // Best effort: over the user's pipe-buffer quota the kernel keeps the default size.
        // SAFETY: fcntl with an integer argument on a descriptor we own.
        unsafe { libc::fcntl(mine.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    Ok((File::from(mine), theirs))
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

/// Where the child failed before `execve`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    None,
    Setup,
    Cgroup,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
    NotFound,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::None | Stage::Setup => "child setup",
            Stage::Cgroup => "join exec cgroup",
            Stage::Groups => "setgroups",
            Stage::Gid => "setgid",
            Stage::Uid => "setuid",
            Stage::Chdir => "chdir",
            Stage::Exec => "execve",
            Stage::NotFound => "lookup",
        }
    }
}

/// Everything the child reads, prepared before `clone`, and where it reports a failure. It
/// lives in the parent's memory, which the child shares until `execve`.
struct ChildArgs<'a> {
    spec: &'a Spec,
    /// The files of `spec.program` to try, in order.
    program: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    groups: Vec<libc::gid_t>,
    fds: [RawFd; 3],
    pty_slave: RawFd,
    /// The agent's own `oom_score_adj` is not the default: the child resets it.
    reset_oom_score: bool,
    failed: Stage,
    errno: i32,
}

/// The child's stack while it shares the parent's memory: the steps before `execve` are a
/// handful of syscalls.
const CHILD_STACK: usize = 64 * 1024;

thread_local! {
    /// The child stack of this thread's last spawn, reused by its next: with CLONE_VFORK the
    /// child has exec'd or exited before `clone` returns, so nothing runs on it between spawns.
    static CHILD_STACKS: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A started child: its pid, a pidfd that polls readable once it exits, and the parent's
/// stdio ends.
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdio: Stdio,
}

/// Starts `spec`. The child is the leader of a new session and process group, so signals reach
/// everything it starts; it joins the exec cgroup when `spec.cgroup_procs` is set.
///
/// Call through [`crate::reaper::spawn_registered`].
pub fn spawn(spec: &Spec) -> Result<(i32, Child), SpawnError> {
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|a| a.as_ptr())
            .chain(Some(std::ptr::null()))
            .collect()
    };
    let mut stdio = Stdio {
        stdin: None,
        stdout: None,
        stderr: None,
        pty: None,
    };
    // The child's ends stay open here until it has exec'd (clone returns only then).
    let mut keep_alive: Vec<OwnedFd> = Vec::new();
    let (fds, pty_slave) = if let Some(size) = spec.tty {
        let (m, s) = openpty(size)?;
        sys::set_nonblocking(m.as_raw_fd())?;
        let m = File::from(m);
        stdio.stdin = Some(m.try_clone()?);
        stdio.stdout = Some(m.try_clone()?);
        stdio.pty = Some(m);
        let fd = s.as_raw_fd();
        keep_alive.push(s);
        ([fd; 3], fd)
    } else {
        let (w0, r0) = stdio_pipe(1)?;
        let (r1, w1) = stdio_pipe(0)?;
        let (r2, w2) = stdio_pipe(0)?;
        stdio.stdin = Some(w0);
        stdio.stdout = Some(r1);
        stdio.stderr = Some(r2);
        let fds = [r0.as_raw_fd(), w1.as_raw_fd(), w2.as_raw_fd()];
        keep_alive.extend([r0, w1, w2]);
        (fds, -1)
    };
    let program = match &spec.program {
        Program::Path(p) => vec![p.as_ptr()],
        Program::Search(files) => files.iter().map(|f| f.as_ptr()).collect(),
    };
    let mut args = ChildArgs {
        spec,
        program,
        argv: ptrs(&spec.argv),
        envp: ptrs(&spec.envp),
        groups: spec
            .ident
            .as_ref()
            .map(|i| i.groups.clone())
            .unwrap_or_default(),
        fds,
        pty_slave,
        reset_oom_score: crate::pid1::oom_protected(),
        failed: Stage::None,
        errno: 0,
    };
    // This thread's spare stack: the child is gone from it by the time clone returns.
    let mut stack = spare::take(&CHILD_STACKS, CHILD_STACK);
    // Stacks grow down on both arches; the top must be 16-byte aligned.
    let top = ((stack.as_mut_ptr() as usize + CHILD_STACK) & !15) as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: sigset_t is plain data, filled by sigfillset and pthread_sigmask. With every
    // signal blocked no handler can run in the child while it shares our memory; the child
    // unblocks everything itself right before execve.
    let saved = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
        saved
    };
    // SAFETY: `top` is the aligned top of a live stack buffer; CLONE_VFORK suspends this thread
    // until the child has exec'd or exited, so `args`, `stack` and every pointer in them
    // outlive the child's use. CLONE_PIDFD stores the pidfd in `pidfd`.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    drop(keep_alive);
    spare::keep(&CHILD_STACKS, stack, CHILD_STACK);
    if pid < 0 {
        return Err(SpawnError::Setup(crate::oserror::annotate(
            clone_err,
            "clone".into(),
        )));
    }
    // SAFETY: clone succeeded with CLONE_PIDFD, so pidfd is a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if args.failed == Stage::NotFound {
        return Err(SpawnError::NotFound);
    }
    if args.failed != Stage::None {
        // The child has _exit()ed; the reaper collects it.
        return Err(SpawnError::Child {
            stage: args.failed.name(),
            cause: io::Error::from_raw_os_error(args.errno),
        });
    }
    Ok((pid, Child { pid, pidfd, stdio }))
}

/// The child side of [`spawn`]: set up, then `execve`. Returns (exits) only on failure, after
/// recording the stage and errno in the shared [`ChildArgs`].
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive and not touched by the suspended parent
    // until this child execs or exits.
    let a = unsafe { &mut *arg.cast::<ChildArgs>() };
    // SAFETY: async-signal-safe syscalls only, on values prepared before clone.
    let stage = unsafe { child_setup(a) };
    a.failed = stage;
    a.errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: _exit never returns and touches no shared state.
    unsafe { libc::_exit(127) }
}

/// The steps before `execve`; returns the stage that failed.
///
/// # Safety
/// Only in the child of [`spawn`]'s `clone`.
unsafe fn child_setup(a: &ChildArgs) -> Stage {
    // SAFETY: async-signal-safe syscalls only, on memory prepared before clone.
    unsafe {
        // execve resets handled signals to their defaults, but keeps ignored ones ignored: the
        // agent ignores SIGPIPE (std does), and `yes | head` must end. (Handlers are
        // per-process copies without CLONE_SIGHAND, so this does not touch the agent's.)
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if let Some(fd) = a.spec.cgroup_procs {
            // "0" moves the writing process; everything it starts inherits the cgroup.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Stage::Cgroup;
            }
        }
        // An agent that is not PID 1 protects itself from the OOM killer; its programs must
        // not inherit that. A vfork child's write stays its own: the kernel special-cases vfork
        // children (vfork_done) and does not apply it to the agent that shares the memory (e2e
        // checks both scores). As PID 1 the agent keeps the default score, which its programs
        // inherit, and the open + write + close (about 175 µs under TCG) is skipped.
        if a.reset_oom_score {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        if libc::setsid() < 0 {
            return Stage::Setup;
        }
        if a.pty_slave >= 0 && libc::ioctl(a.pty_slave, libc::TIOCSCTTY, 0) < 0 {
            return Stage::Setup;
        }
        for (target, &fd) in a.fds.iter().enumerate() {
            if fd == target as RawFd {
                // Already in place (inherited console): just make sure it survives exec.
                libc::fcntl(fd, libc::F_SETFD, 0);
            } else if libc::dup2(fd, target as RawFd) < 0 {
                return Stage::Setup;
            }
        }
        if let Some(id) = &a.spec.ident {
            if libc::setgroups(a.groups.len() as _, a.groups.as_ptr()) < 0 {
                return Stage::Groups;
            }
            if libc::setgid(id.gid) < 0 {
                return Stage::Gid;
            }
            if libc::setuid(id.uid) < 0 {
                return Stage::Uid;
            }
        }
        if libc::chdir(a.spec.cwd.as_ptr()) < 0 {
            return Stage::Chdir;
        }
        // The program starts with every signal unblocked, whatever the agent's threads block.
        let none = signals::set_of(&[]);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // A missing or refused file is passed over only in a search.
        let search = matches!(a.spec.program, Program::Search(_));
        for &file in &a.program {
            libc::execve(file, a.argv.as_ptr(), a.envp.as_ptr());
            match *libc::__errno_location() {
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG | libc::EACCES
                    if search => {}
                _ => return Stage::Exec,
            }
        }
        Stage::NotFound
    }
}

/// Sends `sig` to the process group led by `pid`.
pub fn kill_group(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    cvt(unsafe { libc::kill(-pid, sig) }, "kill").map(drop)
}
