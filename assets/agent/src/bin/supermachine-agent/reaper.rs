//! The one place that calls `waitpid`: reaps every child, including orphans re-parented to
//! PID 1, and hands exit statuses to whoever registered the pid.
//!
//! Nobody else may wait for children, or the reaper and the waiter would race for the same
//! status. Spawning happens through [`spawn_registered`], which holds the registry lock across
//! `fork`, so a child that exits at once is still matched to its waiter.

use std::collections::HashMap;
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
}

struct Reaper {
    registry: Mutex<Registry>,
    spawned: Condvar,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| Reaper {
        registry: Mutex::new(Registry::default()),
        spawned: Condvar::new(),
    })
}

fn lock() -> MutexGuard<'static, Registry> {
    // A panic elsewhere must not stop reaping: take the data even if poisoned.
    reaper().registry.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `spawn` (which forks and returns the child's pid) with the registry locked and
/// registers the pid. The receiver gets the child's exit status once.
pub fn spawn_registered<T>(
    spawn: impl FnOnce() -> io::Result<(i32, T)>,
) -> io::Result<(i32, T, Receiver<ExitStatus>)> {
    let mut reg = lock();
    let (pid, extra) = spawn()?;
    let (tx, rx) = mpsc::channel();
    reg.waiters.insert(pid, tx);
    reg.generation += 1;
    drop(reg);
    reaper().spawned.notify_all();
    Ok((pid, extra, rx))
}

/// Decodes a wait status.
pub fn decode(status: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus {
            code: Some(libc::WEXITSTATUS(status)),
            ..ExitStatus::default()
        }
    } else {
        ExitStatus {
            signal: Some(libc::WTERMSIG(status)),
            ..ExitStatus::default()
        }
    }
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
        // SAFETY: waitpid writes only to `status`, a valid c_int.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            if let Some(tx) = lock().waiters.remove(&pid) {
                // The waiter may have gone (client disconnected): nothing to do then.
                let _ = tx.send(decode(status));
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
