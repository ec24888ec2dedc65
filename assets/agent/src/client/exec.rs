//! Collected execs: [`Client::exec_with_input`] and [`Client::exec_output`] run an exec to its
//! EXIT in one poll loop that writes the input and reads the output under the output limit.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::conn::{agent_error, cost, counts, frame_bytes, Cap, Conn};
use super::wait::{peer_gone, poll_fd, send_nb, Wait};
use super::{Client, Error, Result, EXEC_TIMEOUT_GRACE};
use crate::codec;
use crate::protocol::*;

/// Input staged per send during [`Client::exec_with_input`].
const STAGE: usize = 64 * 1024;

/// Collected result of [`Client::exec_output`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Everything the process wrote to stdout (or its tty).
    pub stdout: Vec<u8>,
    /// Everything the process wrote to stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// One event of a running exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes on stdout (or the tty).
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// The process (or the last of its chain) ended; no event follows.
    Exit(ExitStatus),
}

impl Client {
    /// The idle deadline of an exec of `req`.
    pub(super) fn exec_idle(&self, req: &ExecRequest) -> Option<Duration> {
        let base = self.exec_idle_timeout?;
        Some(match req.timeout_ms {
            Some(ms) => base.max(Duration::from_millis(ms).saturating_add(EXEC_TIMEOUT_GRACE)),
            None => base,
        })
    }

    /// Runs an exec to completion with `stdin` as its input, then EOF, and collects its output.
    ///
    /// Returns at EXIT even if the guest never read `stdin`: input is written from the same
    /// poll loop that reads the output, and writing stops at EXIT. Output above the output
    /// limit is [`Error::OutputLimit`] and kills the exec; no byte for the exec idle deadline
    /// is [`Error::TimedOut`].
    pub fn exec_with_input(&self, req: &ExecRequest, stdin: &[u8]) -> Result<Output> {
        let payload = serde_json::to_vec(req)
            .map_err(|e| Error::Protocol(format!("REQUEST does not serialise: {e}")))?;
        let request = frame_bytes(FrameKind::Request, &payload)?;
        let wait = Wait::idle(self.exec_idle(req));
        let limit = self.output_limit;
        self.with_conn(self.connect_timeout, |c| {
            collect(c, &request, stdin, wait, limit)
        })
    }

    /// Runs an exec to completion with empty stdin and collects its output (REQUEST and the
    /// empty STDIN go out as one write).
    pub fn exec_output(&self, req: &ExecRequest) -> Result<Output> {
        self.exec_with_input(req, &[])
    }
}

/// The host → agent bytes of [`Client::exec_with_input`]: the REQUEST, stdin in frames, the
/// empty STDIN, staged a whole number of frames at a time.
struct Input<'a> {
    stage: Vec<u8>,
    sent: usize,
    stdin: &'a [u8],
    pos: usize,
    eof_staged: bool,
    /// The agent stopped reading (EPIPE): nothing more is sent.
    abandoned: bool,
}

impl<'a> Input<'a> {
    fn new(request: &[u8], stdin: &'a [u8]) -> Input<'a> {
        let mut i = Input {
            stage: Vec::with_capacity(request.len() + STAGE.min(stdin.len() + 64)),
            sent: 0,
            stdin,
            pos: 0,
            eof_staged: false,
            abandoned: false,
        };
        i.stage.extend_from_slice(request);
        i.stage_frames();
        i
    }

    /// Appends stdin frames (and the EOF) while the stage is under [`STAGE`].
    fn stage_frames(&mut self) {
        while self.stage.len() < STAGE && !self.eof_staged {
            let n = (self.stdin.len() - self.pos).min(MAX_DATA_CHUNK);
            self.stage
                .extend_from_slice(&codec::header(FrameKind::Stdin, n));
            self.stage
                .extend_from_slice(&self.stdin[self.pos..self.pos + n]);
            self.pos += n;
            // An empty frame is the EOF.
            self.eof_staged = n == 0;
        }
    }

    fn done(&self) -> bool {
        self.abandoned || (self.eof_staged && self.sent == self.stage.len())
    }

    /// No frame of ours is cut off on the wire.
    fn at_frame_boundary(&self) -> bool {
        !self.abandoned && (self.sent == 0 || self.sent == self.stage.len())
    }

    /// Sends what the socket takes without blocking.
    fn pump(&mut self, fd: RawFd) -> io::Result<()> {
        loop {
            if self.sent == self.stage.len() {
                if self.eof_staged {
                    return Ok(());
                }
                self.stage.clear();
                self.sent = 0;
                self.stage_frames();
            }
            match send_nb(fd, &self.stage[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Appends `b` to `dst`, moving it when `dst` is empty.
fn append(dst: &mut Vec<u8>, b: Vec<u8>) {
    if dst.is_empty() {
        *dst = b;
    } else {
        dst.extend_from_slice(&b);
    }
}

/// The exec of [`Client::exec_with_input`] on `c`: one poll loop that sends the input while
/// the agent takes it and reads the output, up to EXIT.
fn collect(c: &mut Conn, request: &[u8], stdin: &[u8], wait: Wait, limit: u64) -> Result<Output> {
    let mut input = Input::new(request, stdin);
    let mut out = Output::default();
    let mut cap = Cap { left: limit, limit };
    loop {
        // Every frame already received.
        loop {
            let f = match c.parse(Some(cap)) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    if let Error::OutputLimit { .. } = e {
                        c.kill(input.at_frame_boundary());
                    }
                    return Err(e);
                }
            };
            if counts(f.kind) {
                cap.left -= cost(f.payload.len());
            }
            match FrameKind::from_u8(f.kind) {
                Some(FrameKind::Stdout) => append(&mut out.stdout, f.payload),
                Some(FrameKind::Stderr) => append(&mut out.stderr, f.payload),
                Some(FrameKind::Exit) => {
                    out.status = exit_status(&f.payload)?;
                    // Stop writing: after EXIT nobody reads our input. A frame cut off
                    // half-way leaves the connection unfit for another request.
                    if !input.at_frame_boundary() {
                        c.dirty = true;
                    }
                    return Ok(out);
                }
                Some(FrameKind::Error) => return Err(agent_error(&f.payload)),
                // Host → agent kinds and kinds a newer agent may add: skipped, as
                // supermachine does (they count against the limit).
                _ => {}
            }
        }
        let mut events = libc::POLLIN;
        if !input.done() {
            if let Err(e) = input.pump(c.fd()) {
                if !peer_gone(&e) {
                    c.dirty = true;
                    return Err(e.into());
                }
                // The agent stopped reading: keep reading, EXIT (or the close) follows.
                input.abandoned = true;
                c.dirty = true;
                c.gone = true;
            }
            if !input.done() {
                events |= libc::POLLOUT;
            }
        }
        let Some(revents) = poll_fd(c.fd(), events, wait)? else {
            return Err(wait.timed_out(if input.done() {
                "the exec's output or EXIT"
            } else {
                "the exec's output or EXIT, or the agent to read its stdin"
            }));
        };
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            c.fill_or_eof("EXIT")?;
        }
    }
}

/// An EXIT payload.
pub(super) fn exit_status(payload: &[u8]) -> Result<ExitStatus> {
    ExitStatus::decode(payload)
        .ok_or_else(|| Error::Protocol(format!("EXIT payload of {} bytes", payload.len())))
}
