//! The workload: the image's main process, started by whoever boots the guest (supermachine's
//! x86 `/.supermachine/launch` runs `/.supermachine/run-workload` before it becomes the agent;
//! init-oci forks it on aarch64), which records its pid in [`WORKLOAD_PID_FILE`].
//!
//! `signal` is `kill(pid, signum)` on that pid, as supermachine expects. The status and wait
//! extensions read the same file; on x86 the agent is the workload's parent, so the reaper
//! also knows its exit code.

use std::fmt;
use std::io;
use std::time::Duration;

use supermachine_agent::protocol::*;

use crate::reaper::Reaper;
use crate::{log, sys, system};

/// A failed workload action.
#[derive(Debug)]
pub enum Error {
    /// [`WORKLOAD_PID_FILE`] holds no pid above 1 (or is missing).
    NoPid,
    /// `kill(pid, signum)` failed.
    Kill {
        /// The workload's pid.
        pid: i32,
        /// The signal.
        signum: i32,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoPid => {
                f.write_str("no workload pid recorded yet (workload may not be running)")
            }
            Error::Kill {
                pid,
                signum,
                source,
            } => write!(f, "signal: kill({pid}, {signum}): {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::NoPid => None,
            Error::Kill { source, .. } => Some(source),
        }
    }
}

/// The recorded pid, if the file holds a positive number.
fn recorded_pid() -> Result<i32, Error> {
    let text = std::fs::read_to_string(WORKLOAD_PID_FILE).unwrap_or_default();
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(Error::NoPid),
    }
}

/// `signal`: `kill(pid, signum)` on the recorded pid.
pub fn signal(signum: i32) -> Result<Signalled, Error> {
    let pid = recorded_pid()?;
    if let Err(source) = sys::kill(pid, signum) {
        return Err(Error::Kill {
            pid,
            signum,
            source,
        });
    }
    Ok(Signalled { pid })
}

fn alive(pid: i32) -> bool {
    // A zombie still has /proc/PID; its state letter says it is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        system::stat_state_ppid(&s).is_some_and(|(state, _)| state != "Z" && state != "X")
    })
}

fn state_of(reaper: &Reaper, pid: i32, wait: Option<Duration>) -> WorkloadState {
    let exit = reaper.exit_of(pid, wait);
    WorkloadState {
        pid,
        running: exit.is_none() && alive(pid),
        exit_code: exit.map(|e| e.code),
    }
}

/// `workload_status`.
pub fn status(reaper: &Reaper) -> Result<WorkloadState, Error> {
    Ok(state_of(reaper, recorded_pid()?, None))
}

/// `workload_wait`: blocks until the workload is gone.
pub fn wait(reaper: &Reaper) -> Result<WorkloadState, Error> {
    let pid = recorded_pid()?;
    loop {
        let s = state_of(reaper, pid, Some(Duration::from_millis(200)));
        if !s.running {
            return Ok(s);
        }
    }
}

/// Forwards a signal the agent received (SIGTERM at shutdown) to a running workload.
pub fn forward(sig: i32) {
    if let Err(e) = signal(sig) {
        log!("signal {sig} not forwarded: {e}");
    }
}
