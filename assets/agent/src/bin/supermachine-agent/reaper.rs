//! The one place that calls `wait4`: reaps every child, including orphans re-parented to
//! PID 1, and hands exit statuses (with peak RSS) to whoever registered the pid. Statuses of
//! unregistered children (the workload that the launch script started before it became the
//! agent) are kept, the most recent few, for [`exit_of`].
//!
//! Nobody else may wait for children, or the reaper and the waiter would race for the same
//! status. Spawning happens through [`spawn_registered`], which holds the registry lock across
//! `fork`, so a child that exits at once is still matched to its waiter.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use supermachine_agent::protocol::ExitStatus;

#[derive(Default)]
struct Registry {
    waiters: HashMap<i32, Sender<ExitStatus>>,
    /// Bumped on every spawn so an idle reaper knows a child may exist again.
    generation: u64,
    /// Exits of children nobody registered, newest last.
    unclaimed: VecDeque<(i32, ExitStatus)>,
}

/// Unclaimed exits kept.
const UNCLAIMED_KEPT: usize = 64;

struct Reaper {
    registry: Mutex<Registry>,
    spawned: Condvar,
    reaped: Condvar,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| Reaper {
        registry: Mutex::new(Registry::default()),
        spawned: Condvar::new(),
        reaped: Condvar::new(),
    })
}

fn lock() -> MutexGuard<'static, Registry> {
    // A panic elsewhere must not stop reaping: take the data even if poisoned.
    reaper().registry.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `spawn` (which forks and returns the child's pid) with the registry locked and
/// registers the pid. The receiver gets the child's exit status once.
pub fn spawn_registered<T, E>(
    spawn: impl FnOnce() -> Result<(i32, T), E>,
) -> Result<(i32, T, Receiver<ExitStatus>), E> {
    let mut reg = lock();
    let (pid, extra) = spawn()?;
    let (tx, rx) = mpsc::channel();
    reg.waiters.insert(pid, tx);
    reg.generation += 1;
    drop(reg);
    reaper().spawned.notify_all();
    Ok((pid, extra, rx))
}

/// Decodes a wait status: the exit code, or 128 + the signal. `ru_maxrss` is in KiB on Linux.
pub fn decode(status: libc::c_int, maxrss_kib: libc::c_long) -> ExitStatus {
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u32
    } else {
        128 + libc::WTERMSIG(status) as u32
    };
    ExitStatus {
        code,
        peak_rss_kib: maxrss_kib.max(0) as u64,
    }
}

/// The exit of an unregistered child `pid`, if the reaper collected it; waits up to `wait`
/// for it.
pub fn exit_of(pid: i32, wait: Option<std::time::Duration>) -> Option<ExitStatus> {
    let find = |r: &Registry| {
        r.unclaimed
            .iter()
            .rev()
            .find(|(p, _)| *p == pid)
            .map(|e| e.1)
    };
    let mut reg = lock();
    if let Some(w) = wait {
        let (g, _) = reaper()
            .reaped
            .wait_timeout_while(reg, w, |r| find(r).is_none())
            .unwrap_or_else(|e| e.into_inner());
        reg = g;
    }
    find(&reg)
}

/// Starts the reaper thread.
pub fn start() -> io::Result<()> {
    std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(64 * 1024)
        .spawn(run)
        .map(drop)
}

fn run() {
    loop {
        let generation = lock().generation;
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only to `status` and `usage`, both valid.
        let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
        if pid > 0 {
            let exit = decode(status, usage.ru_maxrss);
            let mut reg = lock();
            match reg.waiters.remove(&pid) {
                // The waiter may have gone (client disconnected): nothing to do then.
                Some(tx) => drop(tx.send(exit)),
                None => {
                    if reg.unclaimed.len() == UNCLAIMED_KEPT {
                        reg.unclaimed.pop_front();
                    }
                    reg.unclaimed.push_back((pid, exit));
                    reaper().reaped.notify_all();
                }
            }
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            _ => {
                // ECHILD: no children. Sleep until a spawn, or a second for orphans that a
                // subreaper may inherit without a spawn of ours.
                let reg = lock();
                if reg.generation == generation {
                    let _ = reaper().spawned.wait_timeout(reg, Duration::from_secs(1));
                }
            }
        }
    }
}
