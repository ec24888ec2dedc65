//! One connection: the socket, its buffered frame reader, the hybrid-vsock handshake, and the
//! pool that keeps one idle connection for the next request.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::wait::{peer_gone, poll_fd, recv_nb, send_all, send_nb, Wait};
use super::{Error, Result, POOL_MAX_IDLE};
use crate::codec::{self, CodecError, HEADER_LEN};
use crate::protocol::*;
use crate::transport;

/// The read buffer of a connection.
const READ_BUF: usize = 64 * 1024;

/// Grows `v` for `more` bytes, geometrically but never past `total`, the frame's length.
pub(super) fn grow(v: &mut Vec<u8>, total: usize, more: usize) {
    let need = v.len() + more;
    if need > v.capacity() {
        let target = need
            .max(v.capacity().saturating_mul(2))
            .max(READ_BUF)
            .min(total.max(need));
        v.reserve_exact(target - v.len());
    }
}

/// A frame as read: the raw kind byte (unknown kinds are skipped by exec readers).
#[derive(Debug)]
pub(super) struct RawFrame {
    pub(super) kind: u8,
    pub(super) payload: Vec<u8>,
}

/// A frame whose header has been read and whose payload is arriving.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) kind: u8,
    pub(super) len: usize,
    pub(super) payload: Vec<u8>,
}

/// The output budget of an exec being collected.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cap {
    pub(super) left: u64,
    pub(super) limit: u64,
}

/// Whether a frame counts against the output limit: everything but EXIT and ERROR (which end
/// the exec); kinds the client skips count too, so skipping cannot go on forever.
pub(super) fn counts(kind: u8) -> bool {
    kind != FrameKind::Exit as u8 && kind != FrameKind::Error as u8
}

/// What a frame of `len` payload bytes costs against the output limit: its header too, so that
/// endless empty (or skipped) frames use the limit up as surely as bytes do (issue 22).
pub(super) fn cost(len: usize) -> u64 {
    len as u64 + HEADER_LEN as u64
}

/// An ERROR frame's text as an [`Error::Agent`].
pub(super) fn agent_error(payload: &[u8]) -> Error {
    Error::Agent {
        code: None,
        message: String::from_utf8_lossy(payload).into_owned(),
    }
}

/// `payload` as a frame of `kind`, refusing payloads the agent would refuse.
pub(super) fn frame_bytes(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > MAX_FRAME_LEN as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{kind:?} payload of {} bytes exceeds MAX_FRAME_LEN {MAX_FRAME_LEN}",
                payload.len()
            ),
        )
        .into());
    }
    Ok(codec::encode(kind, payload))
}

/// A connection: the socket, its read buffer and the state of the frame being read.
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) pending: Option<Pending>,
    /// Bytes received since this connection was handed to the current operation.
    pub(super) received: u64,
    /// The peer closed or reset the connection.
    pub(super) gone: bool,
    /// A frame of ours may have gone out only in part: the stream is out of sync.
    pub(super) dirty: bool,
    /// Taken from the pool.
    pub(super) reused: bool,
    /// The last receive filled all the room it had: more is probably waiting.
    pub(super) more: bool,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("fd", &self.stream.as_raw_fd())
            .field("buffered", &(self.end - self.start))
            .field("pending", &self.pending.as_ref().map(|p| (p.kind, p.len)))
            .field("gone", &self.gone)
            .field("dirty", &self.dirty)
            .field("reused", &self.reused)
            .finish()
    }
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            pending: None,
            received: 0,
            gone: false,
            dirty: false,
            reused: false,
            more: false,
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Nothing buffered, half-read or half-written, and the peer still there: the connection
    /// can carry another request.
    pub(super) fn clean(&self) -> bool {
        self.start == self.end && self.pending.is_none() && !self.gone && !self.dirty
    }

    /// A pooled connection on which nothing arrived while it idled: no stray byte, no EOF,
    /// no reset.
    pub(super) fn idle_ok(&self) -> bool {
        self.clean()
            && matches!(
                poll_fd(self.fd(), libc::POLLIN, Wait::Idle(Duration::ZERO)),
                Ok(None)
            )
    }

    /// Sends `bytes` within `wait`.
    pub(super) fn send(&mut self, bytes: &[u8], wait: Wait, waiting_for: &str) -> Result<()> {
        match send_all(self.fd(), bytes, wait) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.dirty = true;
                Err(wait.timed_out(waiting_for))
            }
            Err(e) if peer_gone(&e) => {
                self.dirty = true;
                self.gone = true;
                // The agent may have said why before it closed (an ERROR such as "busy").
                while matches!(self.fill(), Ok(Some(n)) if n > 0) {}
                match self.parse(None) {
                    Ok(Some(f)) if f.kind == FrameKind::Error as u8 => Err(agent_error(&f.payload)),
                    _ => Err(Error::Closed {
                        waiting_for: waiting_for.into(),
                    }),
                }
            }
            Err(e) => {
                self.dirty = true;
                Err(e.into())
            }
        }
    }

    /// One non-blocking receive. `Ok(None)`: nothing there; `Ok(Some(0))`: the peer closed.
    pub(super) fn fill(&mut self) -> io::Result<Option<usize>> {
        let fd = self.fd();
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            // The rest of a large payload goes straight into its frame's buffer.
            if let Some(p) = &mut self.pending {
                let left = p.len - p.payload.len();
                if left >= READ_BUF / 2 {
                    grow(&mut p.payload, p.len, left.min(READ_BUF));
                    let room = (p.payload.capacity() - p.payload.len()).min(left);
                    let at = p.payload.spare_capacity_mut().as_mut_ptr().cast::<u8>();
                    // SAFETY: `at` points at the vector's spare capacity, at least `room` bytes.
                    let r = unsafe { recv_nb(fd, at, room) };
                    let n = self.received_from(r, room)?;
                    if let Some(n) = n {
                        let p = self.pending.as_mut().expect("pending above");
                        // SAFETY: recv initialised the n bytes after the old length, and n is
                        // within the spare capacity.
                        unsafe { p.payload.set_len(p.payload.len() + n) };
                    }
                    return Ok(n);
                }
            }
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let room = self.buf.len() - self.end;
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "read buffer full without a frame",
            ));
        }
        // SAFETY: buf[end..] is valid for writes of `room` bytes.
        let r = unsafe { recv_nb(fd, self.buf.as_mut_ptr().add(self.end), room) };
        let n = self.received_from(r, room)?;
        if let Some(n) = n {
            self.end += n;
        }
        Ok(n)
    }

    /// Books the result of a receive of up to `room` bytes.
    pub(super) fn received_from(
        &mut self,
        r: io::Result<usize>,
        room: usize,
    ) -> io::Result<Option<usize>> {
        match r {
            Ok(0) => {
                self.gone = true;
                Ok(Some(0))
            }
            Ok(n) => {
                self.received += n as u64;
                self.more = n == room;
                Ok(Some(n))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                self.more = false;
                Ok(None)
            }
            Err(e) => {
                self.gone |= peer_gone(&e);
                Err(e)
            }
        }
    }

    /// The error for an EOF: a cut-off frame, or a close between frames.
    pub(super) fn eof(&mut self, waiting_for: &str) -> Error {
        self.gone = true;
        if self.pending.is_some() || self.start != self.end {
            CodecError::Truncated.into()
        } else {
            Error::Closed {
                waiting_for: waiting_for.into(),
            }
        }
    }

    /// Receives at least one byte, waiting as `wait` allows.
    pub(super) fn read_some(&mut self, wait: Wait, waiting_for: &str) -> Result<()> {
        let mut try_first = self.more;
        loop {
            if !try_first && poll_fd(self.fd(), libc::POLLIN, wait)?.is_none() {
                return Err(wait.timed_out(waiting_for));
            }
            try_first = false;
            if self.fill_or_eof(waiting_for)?.is_some() {
                return Ok(());
            }
        }
    }

    /// [`Conn::fill`], with the end of the stream (EOF or a reset) as an error.
    pub(super) fn fill_or_eof(&mut self, waiting_for: &str) -> Result<Option<usize>> {
        match self.fill() {
            Ok(Some(0)) => Err(self.eof(waiting_for)),
            Ok(n) => Ok(n),
            Err(e) if peer_gone(&e) => Err(self.eof(waiting_for)),
            Err(e) => Err(e.into()),
        }
    }

    /// The next complete frame already received, if there is one. With `cap`, a frame that
    /// counts against it and is longer than what is left is refused from its header.
    pub(super) fn parse(&mut self, cap: Option<Cap>) -> Result<Option<RawFrame>> {
        if self.pending.is_none() {
            if self.end - self.start < HEADER_LEN {
                return Ok(None);
            }
            let h = &self.buf[self.start..self.start + HEADER_LEN];
            let kind = h[0];
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            if len > MAX_FRAME_LEN {
                return Err(CodecError::TooLong(len).into());
            }
            if let Some(c) = cap {
                if counts(kind) && cost(len as usize) > c.left {
                    return Err(Error::OutputLimit { limit: c.limit });
                }
            }
            self.start += HEADER_LEN;
            let len = len as usize;
            self.pending = Some(Pending {
                kind,
                len,
                payload: Vec::with_capacity(len.min(self.end - self.start)),
            });
        }
        let p = self.pending.as_mut().expect("pending above");
        let take = (p.len - p.payload.len()).min(self.end - self.start);
        if take > 0 {
            grow(&mut p.payload, p.len, take);
            p.payload
                .extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
        }
        if p.payload.len() < p.len {
            return Ok(None);
        }
        let p = self.pending.take().expect("pending above");
        Ok(Some(RawFrame {
            kind: p.kind,
            payload: p.payload,
        }))
    }

    /// Reads the next frame within `wait`.
    pub(super) fn next_frame(&mut self, wait: Wait, waiting_for: &str) -> Result<RawFrame> {
        loop {
            if let Some(f) = self.parse(None)? {
                return Ok(f);
            }
            self.read_some(wait, waiting_for)?;
        }
    }

    /// The hybrid-vsock handshake: `CONNECT <port>\n`, then one `OK <n>\n` line. Bytes after
    /// the newline stay buffered: they are the agent's.
    pub(super) fn hybrid_handshake(
        &mut self,
        path: &Path,
        port: u32,
        t: Duration,
    ) -> io::Result<()> {
        let wait = Wait::within(t);
        let timed_out = |what: &str| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("hybrid vsock {}: {what} within {t:?}", path.display()),
            )
        };
        if !send_all(self.fd(), format!("CONNECT {port}\n").as_bytes(), wait)? {
            return Err(timed_out("could not send CONNECT"));
        }
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some(i) = unread.iter().position(|&b| b == b'\n') {
                transport::check_hybrid_reply(&unread[..i], path, port)?;
                self.start += i + 1;
                self.received = 0;
                return Ok(());
            }
            if unread.len() > 64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("hybrid vsock {}: reply line too long", path.display()),
                ));
            }
            if poll_fd(self.fd(), libc::POLLIN, wait)?.is_none() {
                return Err(timed_out(&format!("no reply to CONNECT {port}")));
            }
            if self.fill()? == Some(0) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "hybrid vsock {}: port {port}: closed before OK (nothing listening in \
                         the guest?)",
                        path.display()
                    ),
                ));
            }
        }
    }

    /// Ends an exec: a SIGKILL frame if it can go out at once at a frame boundary, then the
    /// close, on which the agent kills the exec's process group anyway.
    pub(super) fn kill(&mut self, at_frame_boundary: bool) {
        if at_frame_boundary && !self.dirty {
            let sig = codec::encode(FrameKind::Signal, &[libc::SIGKILL as u8]);
            let _ = send_nb(self.fd(), &sig);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.dirty = true;
    }
}

// ---------------------------------------------------------------------------------------------
// The pool.

/// The one idle connection of a client with connection reuse, shared by its clones.
#[derive(Debug, Default)]
pub(super) struct Pool(Mutex<Option<(Conn, Instant)>>);

impl Pool {
    /// The idle connection, if it is young and nothing arrived on it.
    pub(super) fn take(&self) -> Option<Conn> {
        let (mut c, since) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        if since.elapsed() > POOL_MAX_IDLE || !c.idle_ok() {
            return None;
        }
        c.reused = true;
        c.received = 0;
        Some(c)
    }

    /// Keeps `c` for the next request if it can carry one.
    pub(super) fn put(&self, c: Conn) {
        if c.clean() {
            let old = self
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .replace((c, Instant::now()));
            drop(old);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_grow_only_with_what_arrived() {
        let mut v = Vec::new();
        grow(&mut v, 16 << 20, 10);
        assert!(v.capacity() >= 10 && v.capacity() <= READ_BUF);
        let mut v = Vec::new();
        grow(&mut v, 100, 10);
        assert_eq!(v.capacity(), 100);
    }
}
