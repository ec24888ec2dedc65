//! Every process an exec starts, so that a timeout, a host disconnect or a SIGKILL from the host
//! ends all of them, not only the program it ran.
//!
//! In a guest each exec gets a cgroup v2 of its own (`/sys/fs/cgroup/supermachine-exec/N`),
//! which its program joins before `execve`. Whatever it starts stays inside, background jobs,
//! double-forked daemons and `setsid` included, and `cgroup.kill` ends them all at once.
//! Without cgroup2 (host test mode, or a kernel without it) the exec falls back to its process
//! group, which catches background jobs of a non-interactive shell but not a process that
//! left the group.
//!
//! Creating and removing a cgroup costs about 1 ms under TCG, a third of an exec's floor, so an
//! empty cgroup goes back to a small pool when its exec ends and the next exec reuses it, with
//! its `cgroup.procs` still open (opening it again was 0.1 ms of every exec). A cgroup whose
//! exec left processes behind (a daemon it started) is kept until they are gone; a new exec
//! retries removing such leftovers, at most once per [`LEFTOVER_RETRY`], not on every exec.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use supermachine_agent::protocol::{EXEC_CGROUP_PARENT, EXEC_CGROUP_POOL};

use crate::oserror::annotate;
use crate::{spawn, sys};

/// Where the guest mounts cgroup2.
const ROOT: &str = "/sys/fs/cgroup";

/// How often a new exec retries removing leftover cgroups: a daemon that outlives many execs
/// would otherwise cost each of them a failed `rmdir` and a `stat`.
const LEFTOVER_RETRY: Duration = Duration::from_secs(1);

/// Exec cgroups that still had processes when their exec ended, and when removing them was
/// last tried.
#[derive(Debug)]
struct Leftovers {
    dirs: Vec<PathBuf>,
    tried: Option<Instant>,
}

/// The agent's exec cgroups between execs (part of [`crate::state::State`]).
#[derive(Debug)]
pub struct Cgroups {
    leftovers: Mutex<Leftovers>,
    /// Empty exec cgroups, ready for the next exec.
    pool: Mutex<Vec<Cgroup>>,
    /// The next new cgroup's name.
    next: AtomicU64,
}

impl Cgroups {
    /// None yet.
    pub const fn new() -> Cgroups {
        Cgroups {
            leftovers: Mutex::new(Leftovers {
                dirs: Vec::new(),
                tried: None,
            }),
            pool: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Cgroup>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `also` to the leftovers and removes those whose processes are all gone, unless
    /// that was tried within [`LEFTOVER_RETRY`]; keeps the rest for a later try.
    fn remove_leftovers(&self, also: Option<PathBuf>) {
        let mut left = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        left.dirs.extend(also);
        if left.dirs.is_empty() || left.tried.is_some_and(|t| t.elapsed() < LEFTOVER_RETRY) {
            return;
        }
        left.tried = Some(Instant::now());
        // rmdir of a cgroup fails with EBUSY while processes remain in it.
        left.dirs
            .retain(|dir| std::fs::remove_dir(dir).is_err() && dir.exists());
    }
}

/// One exec's cgroup.
#[derive(Debug)]
struct Cgroup {
    dir: PathBuf,
    procs: File,
}

impl Cgroup {
    fn create(cgroups: &Cgroups) -> io::Result<Cgroup> {
        if !sys::is_cgroup2(ROOT) {
            // Never make directories in whatever else is mounted there (a host's tmpfs of v1
            // hierarchies, in `--exec-stdio` outside a guest).
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{ROOT} is not a cgroup2 mount"),
            ));
        }
        let parent = PathBuf::from(EXEC_CGROUP_PARENT);
        match std::fs::create_dir(&parent) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(annotate(e, format!("mkdir {EXEC_CGROUP_PARENT}")))
            }
            _ => {}
        }
        let dir = parent.join(cgroups.next.fetch_add(1, Ordering::Relaxed).to_string());
        std::fs::create_dir(&dir).map_err(|e| annotate(e, format!("mkdir {}", dir.display())))?;
        Cgroup::open(dir)
    }

    fn open(dir: PathBuf) -> io::Result<Cgroup> {
        let path = dir.join("cgroup.procs");
        // Readable too: an empty read says the exec left no process (see `is_empty`).
        let procs = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| annotate(e, format!("open {}", path.display())))?;
        Ok(Cgroup { dir, procs })
    }

    /// A pooled empty cgroup, or a new one. Leftovers whose processes are gone are removed
    /// first (at most once per [`LEFTOVER_RETRY`]).
    ///
    /// A pooled cgroup is used only if it is still there and empty: guest root may have removed
    /// it behind the agent (its open `cgroup.procs` then fails with ENODEV, and the exec would
    /// fail to join it) or moved a process into it. Such a one is let go.
    fn take(cgroups: &Cgroups) -> io::Result<Cgroup> {
        cgroups.remove_leftovers(None);
        loop {
            let pooled = cgroups.pool().pop();
            match pooled {
                Some(c) if c.is_empty() => return Ok(c),
                Some(Cgroup { dir, procs }) => {
                    drop(procs);
                    cgroups.remove_leftovers(Some(dir));
                }
                None => return Cgroup::create(cgroups),
            }
        }
    }

    /// Whether no process is left in the cgroup: its `cgroup.procs` reads empty (one pread on
    /// the open descriptor, instead of opening `cgroup.events`).
    fn is_empty(&self) -> bool {
        matches!(sys::pread_first_byte(self.procs.as_raw_fd()), Ok(0))
    }

    /// Back to the pool when empty, or removed if the pool is full; else kept as a leftover
    /// until its processes are gone.
    fn release(self, cgroups: &Cgroups) {
        let empty = self.is_empty();
        if empty {
            let mut pool = cgroups.pool();
            if pool.len() < EXEC_CGROUP_POOL {
                pool.push(self);
                return;
            }
        }
        let Cgroup { dir, procs } = self;
        drop(procs);
        // An empty cgroup goes now; the retry limit is for those a daemon still holds.
        if !(empty && std::fs::remove_dir(&dir).is_ok()) {
            cgroups.remove_leftovers(Some(dir));
        }
    }

    /// SIGKILLs every process in the cgroup.
    fn kill(&self) -> io::Result<()> {
        let path = self.dir.join("cgroup.kill");
        File::options()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"1"))
            .map_err(|e| annotate(e, format!("write {}", path.display())))
    }

    /// Sends `sig` to each process in the cgroup.
    fn signal(&self, sig: i32) {
        let Ok(list) = std::fs::read_to_string(self.dir.join("cgroup.procs")) else {
            return;
        };
        for pid in list.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // A pid listed in the cgroup belongs to the exec; one that just ended is fine.
            let _ = sys::kill(pid, sig);
        }
    }
}

/// The processes of one exec.
pub struct ExecTree {
    cgroups: &'static Cgroups,
    cgroup: Option<Cgroup>,
    /// The latest step's process group (its leader's pid).
    group: Option<i32>,
    /// The leader is not reaped yet, so its pid cannot have been reused.
    leader_alive: bool,
}

impl ExecTree {
    /// A tree with its own cgroup when `guest` (never on a host: the agent's host test mode
    /// must not create cgroups there) and cgroup2 is available; else process-group only.
    pub fn new(guest: bool, cgroups: &'static Cgroups) -> ExecTree {
        let cgroup = if guest {
            Cgroup::take(cgroups).ok()
        } else {
            None
        };
        ExecTree {
            cgroups,
            cgroup,
            group: None,
            leader_alive: false,
        }
    }

    /// The descriptor a new step's program writes itself into, if the exec has a cgroup.
    pub fn procs_fd(&self) -> Option<RawFd> {
        self.cgroup.as_ref().map(|c| c.procs.as_raw_fd())
    }

    /// A step started with `leader` as its process group.
    pub fn started(&mut self, leader: i32) {
        self.group = Some(leader);
        self.leader_alive = true;
    }

    /// The step's leader was reaped. Its group id stays reserved while any member lives (the
    /// kernel does not reuse a pid still used as a group id), so [`ExecTree::kill_all`] may
    /// still target the group; ordinary signals go through the cgroup from now on.
    pub fn leader_reaped(&mut self) {
        self.leader_alive = false;
    }

    /// Sends the host's `sig`. SIGKILL ends the whole exec; other signals go to the step's
    /// process group, or once its leader is gone, to each process still in the exec.
    pub fn signal(&self, sig: i32) {
        if sig == libc::SIGKILL {
            return self.kill_all();
        }
        match (self.group, &self.cgroup) {
            (Some(g), _) if self.leader_alive => drop(spawn::kill_group(g, sig)),
            (_, Some(c)) => c.signal(sig),
            _ => {}
        }
    }

    /// SIGKILLs every process of the exec.
    pub fn kill_all(&self) {
        if let Some(g) = self.group {
            let _ = spawn::kill_group(g, libc::SIGKILL);
        }
        if let Some(c) = &self.cgroup {
            if let Err(e) = c.kill() {
                crate::log!("exec cgroup: {e}");
            }
        }
    }
}

impl Drop for ExecTree {
    fn drop(&mut self) {
        if let Some(c) = self.cgroup.take() {
            c.release(self.cgroups);
        }
    }
}
