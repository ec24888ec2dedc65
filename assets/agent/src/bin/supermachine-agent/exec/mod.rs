//! REQUEST: one exec — stage files, run `argv` and then each `chain` entry while they exit 0,
//! stream their output, answer with EXIT.
//!
//! - [`plan`]: the request checked once for every step;
//! - [`tree`]: every process the exec starts (its cgroup), for kills;
//! - [`session`]: the exec's single poll loop over the connection, pipes and pidfd;
//! - [`outbox`]: output frames assembled in place, sent in vsock-sized writes.

mod outbox;
mod plan;
mod session;
mod tree;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use supermachine_agent::protocol::*;

use crate::inbox::Inbox;
use crate::server::{send_error, Next, Writer};
use crate::spawn::{self, SpawnError};
use crate::{files, reaper, Config};
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

/// How one step ended.
enum Step {
    Exited(ExitStatus),
    /// The agent could not start it: the exec ends with this ERROR.
    Failed(String),
    /// The host went away; the exec was killed.
    HostGone,
}

/// Starts one step and runs its I/O to the end.
fn run_step(plan: &plan::Plan, argv: &[String], s: &mut Session) -> Step {
    // With a tty there is one output stream: messages go where the program's stderr would.
    let msg_kind = if plan.tty.is_some() {
        FrameKind::Stdout
    } else {
        FrameKind::Stderr
    };
    let spec = match plan::spec(plan, argv, s.tree.procs_fd()) {
        Ok(Ok(spec)) => spec,
        Ok(Err(why)) => {
            s.outbox.push(msg_kind, why.as_bytes());
            return Step::Exited(NOT_RUN);
        }
        Err(f) => return Step::Failed(f.message),
    };
    match reaper::spawn_registered(|| spawn::spawn(&spec)) {
        Ok((_, child, exited)) => match s.run(child, exited) {
            StepEnd::Exited(status) => Step::Exited(status),
            StepEnd::HostGone => Step::HostGone,
        },
        Err(SpawnError::Child { stage, cause }) => {
            let what = match stage {
                "chdir" => format!("chdir {:?}", spec.cwd),
                _ => format!("{stage} {:?}", argv[0]),
            };
            s.outbox
                .push(msg_kind, format!("agent: {what}: {cause}\n").as_bytes());
            Step::Exited(NOT_RUN)
        }
        Err(SpawnError::Setup(e)) => Step::Failed(format!("exec {:?}: {e}", argv[0])),
    }
}

/// Makes descriptors non-blocking for the exec's poll loop and restores their flags after.
struct NonBlocking(Vec<(RawFd, libc::c_int)>);

impl NonBlocking {
    fn set(fds: &[RawFd]) -> io::Result<NonBlocking> {
        // Read every flag first: the two halves of a socket share one set of flags.
        let mut saved = Vec::with_capacity(fds.len());
        for &fd in fds {
            // SAFETY: fcntl with integer arguments.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            saved.push((fd, flags));
        }
        let guard = NonBlocking(saved);
        for &fd in fds {
            spawn::set_nonblocking(fd)?;
        }
        Ok(guard)
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        for &(fd, flags) in &self.0 {
            // SAFETY: fcntl with integer arguments on a descriptor the connection still owns.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
    }
}

/// Runs the exec in `payload` on this connection and says how the connection goes on.
pub fn run(payload: &[u8], inbox: &mut Inbox, out: &Writer, config: &Config) -> Next {
    let req: ExecRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return send_error(out, &format!("REQUEST JSON parse: {e}")),
    };
    let plan = match plan::plan(&req).and_then(|p| files::stage(&req.stage_files).map(|()| p)) {
        Ok(p) => p,
        Err(f) => return send_error(out, &f.message),
    };
    // Nobody else writes this connection during the exec: hold its writer throughout.
    let writer = out.lock().unwrap_or_else(|e| e.into_inner());
    let _nonblocking = match NonBlocking::set(&[inbox.fd(), writer.as_raw_fd()]) {
        Ok(g) => g,
        Err(e) => {
            drop(writer);
            return send_error(out, &format!("exec: make the connection non-blocking: {e}"));
        }
    };
    let mut s = Session::new(inbox, writer.as_raw_fd(), ExecTree::new(config.guest));
    s.deadline = plan.deadline;
    let mut last = ExitStatus::default();
    let mut peak = 0;
    for argv in &plan.steps {
        match run_step(&plan, argv, &mut s) {
            Step::Exited(status) => {
                peak = peak.max(status.peak_rss_kib);
                last = status;
            }
            Step::Failed(message) => {
                s.outbox.push(FrameKind::Error, message.as_bytes());
                return if s.drain() { Next::Read } else { Next::Close };
            }
            Step::HostGone => return Next::Close,
        }
        if last.code != 0 || s.timed_out {
            break;
        }
    }
    if s.timed_out {
        last.code = KILLED.code;
    }
    last.peak_rss_kib = peak;
    // Queued behind the last output: they leave in one write when they fit.
    s.outbox.push(FrameKind::Exit, &last.encode());
    if s.drain() {
        Next::Read
    } else {
        Next::Close
    }
}
