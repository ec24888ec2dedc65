//! The one place that calls `wait4`: reaps every child, including orphans re-parented to
//! PID 1, and hands exit statuses (with peak RSS) to whoever registered the pid. Statuses of
//! unregistered children (the workload that the launch script started before it became the
//! agent) are kept, the most recent few, for [`Reaper::exit_of`].
//!
//! Nobody else may wait for children, or the reaper and the waiter would race for the same
//! status. Spawning happens through [`Reaper::spawn_registered`], which holds the registry lock across
//! `fork`, so a child that exits at once is still matched to its waiter. The one exception is
//! [`Reaper::reap_exited`]: a waiter whose child's pidfd says it has ended may reap it itself,
//! under the same lock, and takes its registration away with it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use supermachine_agent::protocol::ExitStatus;

use crate::sys;

#[derive(Default, Debug)]
struct Registry {
    waiters: HashMap<i32, Sender<ExitStatus>>,
    /// Bumped on every spawn so an idle reaper knows a child may exist again.
    generation: u64,
    /// Exits of children nobody registered, newest last.
    unclaimed: VecDeque<(i32, ExitStatus)>,
}

/// Unclaimed exits kept.
const UNCLAIMED_KEPT: usize = 64;

/// The registry of children and their exits (part of [`crate::state::State`]); its thread
/// ([`Reaper::start`]) is the one `wait4` caller.
#[derive(Debug)]
pub struct Reaper {
    registry: Mutex<Registry>,
    spawned: Condvar,
    reaped: Condvar,
}

impl Reaper {
    /// No child yet; call [`Reaper::start`] before the first spawn.
    pub fn new() -> Reaper {
        Reaper {
            registry: Mutex::new(Registry::default()),
            spawned: Condvar::new(),
            reaped: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere must not stop reaping: take the data even if poisoned.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `spawn` (which forks and returns the child's pid) with the registry locked and
    /// registers the pid. The receiver gets the child's exit status once.
    pub fn spawn_registered<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(i32, T), E>,
    ) -> Result<(i32, T, Receiver<ExitStatus>), E> {
        let mut reg = self.lock();
        let (pid, extra) = spawn()?;
        let (tx, rx) = mpsc::channel();
        reg.waiters.insert(pid, tx);
        reg.generation += 1;
        drop(reg);
        self.spawned.notify_all();
        Ok((pid, extra, rx))
    }

    /// The exit of the registered child `pid` if it has ended and this thread could reap it
    /// through its `pidfd`; `None` if it still runs or the reaper thread reaped it first (its
    /// status then comes through the receiver, as always).
    ///
    /// The exec thread wakes on the pidfd when the reaper thread wakes in `wait4`. Waiting for
    /// the reaper thread to run, reap, look the pid up and send put a thread switch and the
    /// reaper's loop between the program's exit and its EXIT frame: 0.1 to 1.3 ms of an exec
    /// of `true` under TCG (one vCPU).
    pub fn reap_exited(&self, pid: i32, pidfd: RawFd) -> Option<ExitStatus> {
        // Locked: the reaper thread cannot hand this pid out meanwhile, and no spawn can reuse
        // the pid before its registration is gone.
        let mut reg = self.lock();
        let ended = sys::reap_pidfd(pidfd).ok()??;
        reg.waiters.remove(&pid);
        Some(decode(ended.status, ended.max_rss_kib))
    }

    /// The exit of an unregistered child `pid`, if the reaper collected it; waits up to
    /// `wait` for it.
    pub fn exit_of(&self, pid: i32, wait: Option<Duration>) -> Option<ExitStatus> {
        let find = |r: &Registry| {
            r.unclaimed
                .iter()
                .rev()
                .find(|(p, _)| *p == pid)
                .map(|e| e.1)
        };
        let mut reg = self.lock();
        if let Some(w) = wait {
            let (g, _) = self
                .reaped
                .wait_timeout_while(reg, w, |r| find(r).is_none())
                .unwrap_or_else(|e| e.into_inner());
            reg = g;
        }
        find(&reg)
    }

    /// Starts the reaper thread.
    pub fn start(&'static self) -> io::Result<()> {
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(&self) {
        loop {
            let generation = self.lock().generation;
            match sys::wait_any() {
                Ok(sys::Ended {
                    pid,
                    status,
                    max_rss_kib,
                }) => {
                    let exit = decode(status, max_rss_kib);
                    let mut reg = self.lock();
                    match reg.waiters.remove(&pid) {
                        // The waiter may have gone (client disconnected): nothing to do then.
                        Some(tx) => drop(tx.send(exit)),
                        None => {
                            if reg.unclaimed.len() == UNCLAIMED_KEPT {
                                reg.unclaimed.pop_front();
                            }
                            reg.unclaimed.push_back((pid, exit));
                            self.reaped.notify_all();
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => {
                    // ECHILD: no children. Sleep until a spawn, or a second for orphans that
                    // a subreaper may inherit without a spawn of ours.
                    let reg = self.lock();
                    if reg.generation == generation {
                        let _ = self.spawned.wait_timeout(reg, Duration::from_secs(1));
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::Command;

    /// Registers `sh -c SCRIPT` with a reaper whose thread is not running (nothing else in
    /// this test binary waits for children), and a pidfd for it.
    fn registered(reaper: &Reaper, script: &str) -> (i32, OwnedFd, Receiver<ExitStatus>) {
        let (pid, _, rx) = reaper
            .spawn_registered(|| {
                let c = Command::new("sh").args(["-c", script]).spawn()?;
                Ok::<_, io::Error>((c.id() as i32, c))
            })
            .expect("spawn sh");
        // SAFETY: pidfd_open takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: checked above: a fresh descriptor nobody else owns.
        (pid, unsafe { OwnedFd::from_raw_fd(fd as i32) }, rx)
    }

    #[test]
    fn a_waiter_reaps_its_ended_child_and_takes_its_registration() {
        let reaper = Reaper::new();
        let (pid, fd, rx) = registered(&reaper, "exit 3");
        sys::wait(fd.as_raw_fd(), libc::POLLIN, None);
        let st = reaper.reap_exited(pid, fd.as_raw_fd()).expect("reaped");
        assert_eq!(st.code, 3);
        assert!(st.peak_rss_kib > 0, "{st:?}");
        assert!(reaper.lock().waiters.is_empty());
        // Nothing comes through the receiver, and a second try finds nothing to reap.
        assert!(rx.try_recv().is_err());
        assert_eq!(reaper.reap_exited(pid, fd.as_raw_fd()), None);
    }

    #[test]
    fn a_signal_reads_as_128_plus_it_and_a_running_child_is_left_alone() {
        let reaper = Reaper::new();
        let (pid, fd, _rx) = registered(&reaper, "sleep 30");
        assert_eq!(reaper.reap_exited(pid, fd.as_raw_fd()), None);
        assert!(reaper.lock().waiters.contains_key(&pid));
        // SAFETY: kill takes no pointers; pid is our registered, unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        sys::wait(fd.as_raw_fd(), libc::POLLIN, None);
        let st = reaper.reap_exited(pid, fd.as_raw_fd()).expect("reaped");
        assert_eq!(st.code, 128 + libc::SIGKILL as u32);
    }
}
