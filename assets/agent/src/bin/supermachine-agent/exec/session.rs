//! One exec's I/O: a single `poll` loop over the host connection, the program's pipes (or pty)
//! and its pidfd. No thread per pipe and no lock.
//!
//! - Output is read only while the [`Outbox`] has room and sent as the connection takes it, so
//!   a host that stops reading stops the program (backpressure), never the agent.
//! - Host STDIN is queued and written to the program non-blocking; a program that never reads
//!   stdin leaves SIGNAL, RESIZE and disconnects handled. Only past [`STDIN_QUEUE`] unwritten
//!   bytes does the loop stop reading the connection (backpressure to the host); a hang-up is
//!   still seen then.
//! - A step ends when its program has exited and every output stream reached end of file:
//!   output written just before exit is sent before EXIT.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use supermachine_agent::codec::CodecError;
use supermachine_agent::protocol::*;

use super::outbox::Outbox;
use super::tree::ExecTree;
use crate::inbox::Inbox;
use crate::reaper::Reaper;
use crate::spawn::{self, Child};
use crate::sys::{self, pollfd};

/// Host stdin queued for the program before the loop stops reading the connection.
const STDIN_QUEUE: usize = 1 << 20;

/// End of input on a pty: the line discipline's EOF character (^D).
const PTY_EOF: u8 = 4;

/// How long output may stay open and silent after the exec was killed (deadline or the
/// host's SIGKILL). A process that escaped the kill (a `setsid` daemon in host mode, or a
/// root exec that left its cgroup) may hold stdout open for ever; once nothing more has
/// come for this long after the kill, and everything read has gone to the host, its pipes
/// are closed and the exec ends with its status, as PROTOCOL.md promises (issue 22).
const KILL_GRACE: Duration = Duration::from_millis(500);

/// The host connection and what the exec has not yet delivered in either direction.
pub struct Session<'a> {
    pub inbox: &'a mut Inbox,
    /// The connection's writing half (non-blocking for the exec's duration).
    pub out_fd: RawFd,
    pub outbox: Outbox,
    pub tree: ExecTree,
    pub deadline: Option<Instant>,
    /// The deadline passed and the exec was killed.
    pub timed_out: bool,
    /// The host sent SIGNAL 9: the exec was killed, and no further step runs.
    pub killed: bool,
    /// When the exec was killed (deadline or the host's SIGKILL), for [`KILL_GRACE`].
    killed_at: Option<Instant>,
    /// Host stdin not yet written; `stdin_sent` of it already was.
    stdin: Vec<u8>,
    stdin_sent: usize,
    /// The host sent end of input.
    stdin_eof: bool,
}

/// How a step's I/O ended.
pub enum StepEnd {
    /// The program exited and its output is queued.
    Exited(ExitStatus),
    /// The host went away (or broke the framing); the exec was killed.
    HostGone,
}

/// One running step's descriptors and status.
struct Running {
    /// Output streams still open, with the frame kind each becomes.
    outputs: [Option<(File, FrameKind)>; 2],
    /// Where host stdin goes (`None` once closed).
    stdin: Option<File>,
    /// The pty master in tty mode.
    pty: Option<File>,
    status: Option<ExitStatus>,
}

impl<'a> Session<'a> {
    /// A session on a connection whose halves are already non-blocking.
    pub fn new(inbox: &'a mut Inbox, out_fd: RawFd, tree: ExecTree) -> Session<'a> {
        Session {
            inbox,
            out_fd,
            outbox: Outbox::new(),
            tree,
            deadline: None,
            timed_out: false,
            killed: false,
            killed_at: None,
            stdin: Vec::new(),
            stdin_sent: 0,
            stdin_eof: false,
        }
    }

    /// Sends everything queued, waiting for the connection as needed. False: the host is gone.
    pub fn drain(&mut self) -> bool {
        loop {
            match self.outbox.flush_to(self.out_fd) {
                Ok(true) => return true,
                Ok(false) => sys::wait(self.out_fd, libc::POLLOUT, None),
                Err(_) => return false,
            }
        }
    }

    /// Runs one started step's I/O until it ends; its exit status from `reaper` (registered
    /// there, with `exited` receiving it).
    pub fn run(&mut self, child: Child, reaper: &Reaper, exited: Receiver<ExitStatus>) -> StepEnd {
        let Child { pid, pidfd, stdio } = child;
        self.tree.started(pid);
        let mut r = Running {
            outputs: [
                stdio.stdout.map(|f| (f, FrameKind::Stdout)),
                stdio.stderr.map(|f| (f, FrameKind::Stderr)),
            ],
            stdin: stdio.stdin,
            pty: stdio.pty,
            status: None,
        };
        let mut last_output = Instant::now();
        loop {
            // Frames may already be buffered: sent with the REQUEST, or read in one go earlier.
            if !self.take_frames(&mut r) {
                return self.host_gone();
            }
            self.feed_stdin(&mut r);
            if self.outbox.flush_to(self.out_fd).is_err() {
                return self.host_gone();
            }
            if let (Some(status), [None, None]) = (r.status, &r.outputs) {
                return StepEnd::Exited(status);
            }
            if let Some(d) = self.deadline {
                if !self.timed_out && Instant::now() >= d {
                    self.timed_out = true;
                    self.killed_at.get_or_insert_with(Instant::now);
                    self.tree.kill_all();
                }
            }
            let grace_end = self.killed_at.map(|k| k.max(last_output) + KILL_GRACE);
            if let (Some(status), Some(end)) = (r.status, grace_end) {
                if Instant::now() >= end && self.outbox.is_empty() {
                    // One last look: output still coming extends the grace.
                    if self.read_outputs(&mut r, [true, true]) {
                        last_output = Instant::now();
                        continue;
                    }
                    // What escaped the kill keeps its end of the pipes; ours close here.
                    r.outputs = [None, None];
                    return StepEnd::Exited(status);
                }
            }
            let read_host = self.queued() < STDIN_QUEUE;
            let room = self.outbox.has_room();
            let out_fd = |o: &Option<(File, FrameKind)>| match o {
                Some((f, _)) if room => f.as_raw_fd(),
                _ => -1,
            };
            let stdin_fd = match &r.stdin {
                Some(f) if self.queued() > 0 => f.as_raw_fd(),
                _ => -1,
            };
            let mut fds = [
                pollfd(self.inbox.fd(), if read_host { libc::POLLIN } else { 0 }),
                pollfd(
                    self.out_fd,
                    if self.outbox.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    },
                ),
                pollfd(out_fd(&r.outputs[0]), libc::POLLIN),
                pollfd(out_fd(&r.outputs[1]), libc::POLLIN),
                pollfd(stdin_fd, libc::POLLOUT),
                pollfd(
                    if r.status.is_none() {
                        pidfd.as_raw_fd()
                    } else {
                        -1
                    },
                    libc::POLLIN,
                ),
            ];
            // A grace already over waits for the status (pidfd), not for the clock.
            let now = Instant::now();
            let wake = [
                self.deadline.filter(|_| !self.timed_out),
                grace_end.filter(|&g| g > now),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = sys::timeout_ms(wake);
            if let Err(e) = sys::poll(&mut fds, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return self.host_gone();
            }
            let ready = |i: usize| fds[i].revents != 0;
            if ready(0) {
                if !read_host {
                    // Not reading: only a hang-up or an error wakes this slot.
                    return self.host_gone();
                }
                match self.inbox.fill() {
                    Ok(0) => return self.host_gone(),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return self.host_gone(),
                }
            }
            if self.read_outputs(&mut r, [ready(2), ready(3)]) {
                last_output = Instant::now();
            }
            if ready(5) {
                // Reaped here if the reaper thread has not yet; else it sends the status as
                // soon as it has.
                let own = reaper.reap_exited(pid, pidfd.as_raw_fd());
                r.status = Some(own.unwrap_or_else(|| exited.recv().unwrap_or(super::KILLED)));
                self.tree.leader_reaped();
            }
        }
    }

    /// Reads once from each output marked in `which` into the outbox; an output at its end
    /// is closed. Whether any bytes came.
    fn read_outputs(&mut self, r: &mut Running, which: [bool; 2]) -> bool {
        let mut got = false;
        for (i, &look) in which.iter().enumerate() {
            let Some((f, kind)) = &r.outputs[i] else {
                continue;
            };
            if !look || !self.outbox.has_room() {
                continue;
            }
            match self.outbox.read_from(f.as_raw_fd(), *kind) {
                Ok(n) if n > 0 => got = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // End of file, or EIO: a pty's end of file once the last slave is closed.
                _ => r.outputs[i] = None,
            }
        }
        got
    }

    fn host_gone(&mut self) -> StepEnd {
        self.tree.kill_all();
        StepEnd::HostGone
    }

    /// Host stdin bytes queued and not yet written.
    fn queued(&self) -> usize {
        self.stdin.len() - self.stdin_sent
    }

    /// Handles the host's buffered frames while stdin may be queued. False: the framing broke.
    fn take_frames(&mut self, r: &mut Running) -> bool {
        while self.queued() < STDIN_QUEUE {
            let frame = match self.inbox.frame() {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                // Its bytes were skipped; the stream is still in sync.
                Err(CodecError::UnknownKind(_)) => continue,
                Err(_) => return false,
            };
            match frame.kind {
                FrameKind::Stdin if frame.payload.is_empty() => self.stdin_eof = true,
                // After end of input, or once the program closed its stdin, data goes nowhere.
                FrameKind::Stdin if self.stdin_eof || r.stdin.is_none() => {}
                FrameKind::Stdin => {
                    if self.queued() == 0 {
                        self.stdin.clear();
                        self.stdin_sent = 0;
                    }
                    self.stdin.extend_from_slice(&frame.payload);
                }
                FrameKind::Signal => {
                    if let Some(&sig) = frame.payload.first() {
                        if i32::from(sig) == libc::SIGKILL {
                            self.killed = true;
                            self.killed_at.get_or_insert_with(Instant::now);
                        }
                        self.tree.signal(i32::from(sig));
                    }
                }
                FrameKind::Resize => {
                    if let (Some(p), Some(size)) = (&r.pty, WinSize::decode(&frame.payload)) {
                        // The kernel sends SIGWINCH to the tty's foreground group itself.
                        let _ = spawn::resize(p, size);
                    }
                }
                // REQUEST or CONTROL before EXIT breaks the protocol's order; ignored as before.
                _ => {}
            }
        }
        true
    }

    /// Writes queued stdin without blocking; closes the program's stdin after end of input.
    fn feed_stdin(&mut self, r: &mut Running) {
        if let Some(f) = &mut r.stdin {
            while self.queued() > 0 {
                match f.write(&self.stdin[self.stdin_sent..]) {
                    Ok(n) => self.stdin_sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // The program closed its stdin: the rest is dropped.
                        r.stdin = None;
                        (self.stdin_sent, self.stdin) = (0, Vec::new());
                        break;
                    }
                }
            }
        }
        if self.stdin_eof && self.queued() == 0 {
            if let Some(mut f) = r.stdin.take() {
                // A pty's stdin is the terminal itself: send EOF instead of closing it.
                if r.pty.is_some() {
                    let _ = f.write(&[PTY_EOF]);
                }
            }
        }
    }
}
