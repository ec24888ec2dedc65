//! REQUEST: one exec — stage files, run `argv` and then each `chain` entry while they exit 0,
//! stream their output, answer with EXIT.
//!
//! - [`plan`]: the request checked once for every step;
//! - [`tree`]: every process the exec starts (its cgroup), for kills;
//! - [`session`]: the exec's single poll loop over the connection, pipes and pidfd;
//! - [`outbox`]: output frames assembled in place, sent in vsock-sized writes.
//!
//! A request that cannot start is an [`Error`] that [`run`] returns: the edge sends it as the
//! connection's ERROR frame. A step the agent cannot start once output is flowing ends the
//! stream with an ERROR frame of its own, behind the output queued before it.

mod outbox;
mod plan;
mod session;
mod tree;

pub use tree::Cgroups;

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use supermachine_agent::protocol::*;

use crate::edge::{Next, Writer};
use crate::inbox::Inbox;
use crate::oserror::annotate;
use crate::reaper::Reaper;
use crate::spawn::{self, SpawnError};
use crate::state::State;
use crate::{files, Config};
use session::{Session, StepEnd};
use tree::ExecTree;

/// How a step ends whose program was not found or whose cwd could not be entered.
const NOT_RUN: ExitStatus = ExitStatus {
    code: 127,
    peak_rss_kib: 0,
};

/// How a step ends that SIGKILL stopped before (or without) its exit status reaching us.
const KILLED: ExitStatus = ExitStatus {
    code: 128 + libc::SIGKILL as u32,
    peak_rss_kib: 0,
};

/// Why an exec failed (as opposed to its program failing: that is an exit status).
#[derive(Debug)]
pub enum Error {
    /// The REQUEST is not JSON of its shape.
    Parse(serde_json::Error),
    /// The REQUEST cannot run as asked.
    Plan(plan::Error),
    /// A `stage_files` entry could not be written.
    Stage(files::Error),
    /// The agent could not set a step up (pipes, tty, fork); the error names the program and
    /// the operation ([`annotate`]).
    Spawn(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse(e) => write!(f, "REQUEST JSON parse: {e}"),
            Error::Plan(e) => e.fmt(f),
            Error::Stage(e) => e.fmt(f),
            Error::Spawn(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Parse(e) => Some(e),
            Error::Plan(e) => Some(e),
            Error::Stage(e) => Some(e),
            Error::Spawn(e) => Some(e),
        }
    }
}

/// How one step ended.
enum Step {
    Exited(ExitStatus),
    /// The agent could not start it: the exec ends with this ERROR.
    Failed(Error),
    /// The host went away; the exec was killed.
    HostGone,
}

/// Starts one step and runs its I/O to the end.
fn run_step(plan: &plan::Plan, argv: &[String], s: &mut Session, reaper: &Reaper) -> Step {
    // With a tty there is one output stream: messages go where the program's stderr would.
    let msg_kind = if plan.tty.is_some() {
        FrameKind::Stdout
    } else {
        FrameKind::Stderr
    };
    let spec = match plan::spec(plan, argv, s.tree.procs_fd()) {
        Ok(spec) => spec,
        Err(e) => return Step::Failed(Error::Plan(e)),
    };
    match reaper.spawn_registered(|| spawn::spawn(&spec)) {
        Ok((_, child, exited)) => match s.run(child, reaper, exited) {
            StepEnd::Exited(status) => Step::Exited(status),
            StepEnd::HostGone => Step::HostGone,
        },
        Err(SpawnError::NotFound) => {
            let why = format!("{}: command not found\n", argv[0]);
            s.outbox.push(msg_kind, why.as_bytes());
            Step::Exited(NOT_RUN)
        }
        Err(SpawnError::Child { stage, cause }) => {
            let what = match stage {
                "chdir" => format!("chdir {:?}", spec.cwd),
                _ => format!("{stage} {:?}", argv[0]),
            };
            s.outbox
                .push(msg_kind, format!("agent: {what}: {cause}\n").as_bytes());
            Step::Exited(NOT_RUN)
        }
        Err(SpawnError::Setup(e)) => {
            Step::Failed(Error::Spawn(annotate(e, format!("exec {:?}", argv[0]))))
        }
    }
}

/// Runs the exec in `payload` on this connection and says how the connection goes on; an
/// exec that could not start is an error, nothing having been sent.
pub fn run(
    payload: &[u8],
    inbox: &mut Inbox,
    out: &Writer,
    config: &Config,
    state: &'static State,
) -> Result<Next, Error> {
    let req: ExecRequest = serde_json::from_slice(payload).map_err(Error::Parse)?;
    let plan = plan::plan(&req).map_err(Error::Plan)?;
    files::stage(&req.stage_files).map_err(Error::Stage)?;
    // Nobody else writes this connection during the exec: hold its writer throughout.
    let writer = out.lock().unwrap_or_else(|e| e.into_inner());
    let tree = ExecTree::new(config.guest, &state.cgroups);
    let mut s = Session::new(inbox, writer.as_raw_fd(), tree);
    s.deadline = plan.deadline;
    let mut last = ExitStatus::default();
    let mut peak = 0;
    for argv in &plan.steps {
        match run_step(&plan, argv, &mut s, &state.reaper) {
            Step::Exited(status) => {
                peak = peak.max(status.peak_rss_kib);
                last = status;
            }
            Step::Failed(e) => {
                s.outbox.push(FrameKind::Error, e.to_string().as_bytes());
                return Ok(if s.drain() { Next::Read } else { Next::Close });
            }
            Step::HostGone => return Ok(Next::Close),
        }
        // A kill (the deadline, or the host's SIGNAL 9) ends the whole exec.
        if last.code != 0 || s.timed_out || s.killed {
            break;
        }
    }
    if s.timed_out || s.killed {
        last.code = KILLED.code;
    }
    last.peak_rss_kib = peak;
    // Queued behind the last output: they leave in one write when they fit.
    s.outbox.push(FrameKind::Exit, &last.encode());
    Ok(if s.drain() { Next::Read } else { Next::Close })
}
