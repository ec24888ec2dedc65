//! Blocking host client for protocol 5, built to survive a hostile guest.
//!
//! A [`Client`] holds an [`Endpoint`]. By default every operation opens its own connection, as
//! supermachine's host does, so an exec never waits behind another and a failed connection never
//! poisons the next one. [`Client::with_connection_reuse`] keeps one idle connection for the next
//! request instead (an extension of the protocol, `PROTOCOL.md` §1), which saves the connect.
//!
//! # What a hostile guest cannot do to the host
//! The host is trusted; the guest is not, even as root, and it may have replaced the agent. So
//! every byte from the agent is treated as hostile:
//! - **It cannot hang the host.** Every read and write after connect has a deadline (table
//!   below); a guest that accepts and then stays silent, trickles one byte at a time, or stops
//!   reading our input gets [`Error::TimedOut`]. [`Client::wait_ready`] keeps to its own
//!   timeout whatever the guest does. [`Client::exec_with_input`] returns at EXIT even if the
//!   guest never read its stdin (stdin is written from the same poll loop that reads the
//!   output; after EXIT it stops writing).
//! - **It cannot exhaust host memory.** Frames longer than `MAX_FRAME_LEN` are refused from
//!   their header, and a frame's buffer grows only with the bytes that actually arrived.
//!   [`Client::exec_output`] and [`Client::exec_with_input`] stop at the output limit
//!   ([`DEFAULT_OUTPUT_LIMIT`], 64 MiB) with [`Error::OutputLimit`], checked against each frame's
//!   header before its payload is stored, and kill the exec (a SIGKILL frame, then the close).
//!   [`Client::read_file`] allocates only what arrived, never the size the guest claims nor the
//!   caller's `max_size` (which may be `u64::MAX`).
//! - **It cannot pass off a short or inconsistent transfer** as a success: a file whose length
//!   changes between chunks, a chunk larger than asked or than the file, or one that stops
//!   early is an error. [`shell_code`] saturates exit codes no process can produce.
//! - **Its text cannot drive the terminal.** Error messages carrying guest text are shown
//!   through [`printable`]: control characters (C0, DEL, C1, bidi overrides) are escaped and
//!   the text is cut at 4 KiB.
//!
//! `tests/hostile.rs` proves each point against a fake agent that sends garbage, huge lengths,
//! stalls, endless output, early closes, duplicate or misplaced EXIT frames, lying file sizes and
//! short transfers, and never reads stdin.
//!
//! # Deadlines
//! | what | deadline | default | setter |
//! |---|---|---|---|
//! | connect, and the hybrid-vsock `CONNECT`/`OK` handshake | total | 10 s ([`DEFAULT_CONNECT_TIMEOUT`]) | [`Client::with_connect_timeout`] |
//! | a CONTROL: sending it and reading its whole ack | total | 60 s ([`DEFAULT_CONTROL_TIMEOUT`]) | [`Client::with_control_timeout`] |
//! | an exec: any read or write | **idle**: this long without a byte either way | 300 s ([`DEFAULT_EXEC_IDLE_TIMEOUT`]), never below the request's `timeout_ms` + 10 s | [`Client::with_exec_idle_timeout`] |
//! | `workload_wait` | total | the caller's argument | — |
//!
//! Execs get an idle deadline, not a total one: a build, a test suite or a server may
//! legitimately run for hours, and no total deadline fits them all. What a wedged or hostile
//! guest does instead is go silent, which the idle deadline catches; a guest that talks forever
//! is stopped by the output limit ([`Client::exec_output`]) or, for the streaming
//! [`Client::exec`], by the caller, who sees every event. An exec whose deadline passes is over:
//! its connection is closed, on which the agent kills its process group.
//!
//! # Connection reuse
//! [`Client::with_connection_reuse`]`(true)` keeps the connection of a request that ended
//! cleanly (a CONTROL ack, or EXIT with our input at a frame boundary and nothing stray after
//! it) and sends the next request on it. Clones of the client share that one idle slot. A
//! pooled connection is used only if it idled at most [`POOL_MAX_IDLE`] (5 s, below the agent's
//! 10 s wait for a next request) and nothing arrived on it meanwhile (no stray byte, EOF or
//! reset). If it still turns out stale (EOF, EPIPE or a reset before any byte of the answer),
//! the request is sent once more on a fresh connection. The one risk this carries: an agent that
//! read the request and then died before answering a single byte sees it twice.
//!
//! ```no_run
//! use supermachine_agent::client::{Client, Endpoint};
//! use supermachine_agent::protocol::ExecRequest;
//!
//! let c = Client::new(Endpoint::Unix("/tmp/agent.sock".into())).with_connection_reuse(true);
//! for _ in 0..100 {
//!     // One connection for all 100 execs.
//!     assert_eq!(c.exec_output(&ExecRequest::new(["true"]))?.status.code, 0);
//! }
//! # Ok::<(), supermachine_agent::client::Error>(())
//! ```
//!
//! # I/O
//! Reads are buffered (64 KiB per connection, large payloads straight into their frame), so a
//! frame costs no syscalls of its own; an exec with empty stdin goes out as one write (REQUEST
//! and the empty STDIN together). Sockets stay blocking for other users of the descriptor;
//! the client itself uses `MSG_DONTWAIT` sends and receives and waits in `poll(2)`.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, CodecError, HEADER_LEN};
use crate::protocol::*;
use crate::{base64, transport};

/// How long a connect (and the hybrid-vsock handshake) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a CONTROL may take, from sending it to the last byte of its ack.
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an exec may go without a byte in either direction.
pub const DEFAULT_EXEC_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Added to a request's `timeout_ms` for the exec idle deadline: the agent's SIGKILL and the
/// EXIT after it need a moment.
pub const EXEC_TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// The most output [`Client::exec_output`] and [`Client::exec_with_input`] collect.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 64 << 20;

/// The longest a pooled connection idles before it is dropped rather than reused: half the
/// agent's 10 s wait for a next request, so the agent never times it out under us.
pub const POOL_MAX_IDLE: Duration = Duration::from_secs(5);

/// The read buffer of a connection.
const READ_BUF: usize = 64 * 1024;

/// Input staged per send during [`Client::exec_with_input`].
const STAGE: usize = 64 * 1024;

/// Characters of an error message [`Error`]'s `Display` shows.
const MAX_SHOWN: usize = 4096;

/// Where the agent is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A plain Unix socket that carries the agent stream directly: the agent's
    /// `--listen unix:PATH`, a VMM's per-connection bridge (supermachine's exec socket), or a
    /// test's fake agent.
    Unix(PathBuf),
    /// A VMM's hybrid-vsock Unix socket and the guest port.
    HybridVsock {
        /// The VMM's Unix socket (Firecracker `uds_path`, vhost-device-vsock `uds-path`).
        path: PathBuf,
        /// Guest port, normally [`DEFAULT_PORT`].
        port: u32,
    },
    /// Plain AF_VSOCK (host kernel with vhost-vsock).
    Vsock {
        /// Guest CID.
        cid: u32,
        /// Guest port, normally [`DEFAULT_PORT`].
        port: u32,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::HybridVsock { path, port } => {
                write!(f, "hybrid-vsock:{}:{port}", path.display())
            }
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// Client errors.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the endpoint failed (or its hybrid-vsock handshake did, or timed out).
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        source: io::Error,
    },
    /// A frame could not be read or written: a length above `MAX_FRAME_LEN`, an unknown kind
    /// where an answer was due, a frame cut off by the close, or a socket error.
    Codec(CodecError),
    /// The agent refused: an ERROR frame (no `code`) or an `ok:false` ack.
    Agent {
        /// The error class, when the agent sent one (an extension of protocol 5).
        code: Option<ErrorCode>,
        /// The agent's text, as sent (shown through [`printable`]).
        message: String,
    },
    /// The agent sent something the protocol does not allow here, or a file transfer that
    /// does not add up.
    Protocol(String),
    /// The agent closed the connection, between frames, before the answer was complete.
    Closed {
        /// What was still due.
        waiting_for: String,
    },
    /// A deadline passed (see the module's table).
    TimedOut {
        /// What was still due.
        waiting_for: String,
        /// The deadline.
        after: Duration,
        /// It was an idle deadline (no byte for `after`), not a total one.
        idle: bool,
    },
    /// An exec's output passed the client's limit; the exec was killed.
    OutputLimit {
        /// The limit, in bytes of stdout and stderr together.
        limit: u64,
    },
}

impl Error {
    /// The agent's error class, if this is an agent error that carried one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Agent { code, .. } => *code,
            _ => None,
        }
    }

    /// Whether a deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Messages carry guest text: format, then show it through `printable`.
        let text = match self {
            Error::Connect { endpoint, source } => {
                format!("connect to agent at {endpoint}: {source}")
            }
            Error::Codec(e) => format!("agent connection: {e}"),
            Error::Agent {
                code: Some(c),
                message,
            } => format!("agent: {c:?}: {message}"),
            Error::Agent {
                code: None,
                message,
            } => format!("agent: {message}"),
            Error::Protocol(m) => format!("agent protocol violation: {m}"),
            Error::Closed { waiting_for } => {
                format!("agent: the connection closed while waiting for {waiting_for}")
            }
            Error::TimedOut {
                waiting_for,
                after,
                idle: true,
            } => format!("agent: nothing in {after:?} while waiting for {waiting_for}"),
            Error::TimedOut {
                waiting_for,
                after,
                idle: false,
            } => format!("agent: timed out after {after:?} waiting for {waiting_for}"),
            Error::OutputLimit { limit } => format!(
                "agent: the exec's output passed the client's limit of {limit} bytes; the exec \
                 was killed"
            ),
        };
        f.write_str(&printable(&text))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Codec(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Codec(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Codec(CodecError::Io(e))
    }
}

/// Client result.
pub type Result<T> = std::result::Result<T, Error>;

/// Characters that must not reach a terminal raw: C0 and C1 controls, DEL, and the bidi
/// overrides that reorder what follows them on screen.
fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` made safe to print on a terminal: control characters (C0 and C1, DEL, and the bidi
/// overrides) escaped as `\n`, `\u{1b}`, …, and anything past 4096 characters cut off with a
/// note. The text of every [`Error`] goes through this; use it for any other guest text a tool
/// prints.
pub fn printable(text: &str) -> Cow<'_, str> {
    let long = text.len() > MAX_SHOWN && text.chars().nth(MAX_SHOWN).is_some();
    if !long && !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN * 2) + 16);
    let mut chars = text.chars();
    for c in chars.by_ref().take(MAX_SHOWN) {
        if unprintable(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    let rest = chars.count();
    if rest > 0 {
        out.push_str(&format!("… ({rest} more characters)"));
    }
    Cow::Owned(out)
}

/// The exit status as a shell's `$?`: the code as sent when it is 0–255 (128 + N for a
/// signal), else 255. No process can exit above 255, so a larger code is a lying guest; a
/// plain `code as i32` would let 256 pass for success once truncated to 8 bits.
pub fn shell_code(status: &ExitStatus) -> i32 {
    status.code.min(255) as i32
}

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

// ---------------------------------------------------------------------------------------------
// Deadlines and raw socket calls.

/// How long one step of an operation may wait.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Until this instant: the whole operation's deadline (`budget` after its start).
    Until { at: Instant, budget: Duration },
    /// This long without progress.
    Idle(Duration),
    /// No limit (only where the caller asked for none).
    Forever,
}

impl Wait {
    fn within(budget: Duration) -> Wait {
        match Instant::now().checked_add(budget) {
            Some(at) => Wait::Until { at, budget },
            None => Wait::Forever,
        }
    }

    fn idle(t: Option<Duration>) -> Wait {
        t.map_or(Wait::Forever, Wait::Idle)
    }

    /// `poll(2)`'s timeout for the next wait; `None` once the deadline has passed.
    fn poll_ms(&self) -> Option<libc::c_int> {
        let left = match *self {
            Wait::Until { at, .. } => at.checked_duration_since(Instant::now())?,
            Wait::Idle(d) => d,
            Wait::Forever => return Some(-1),
        };
        if left.is_zero() && matches!(self, Wait::Until { .. }) {
            return None;
        }
        // Rounded up: a 0 ms poll before the deadline would spin.
        let ms = left.as_nanos().div_ceil(1_000_000);
        Some(ms.min(libc::c_int::MAX as u128) as libc::c_int)
    }

    fn timed_out(&self, waiting_for: &str) -> Error {
        let (after, idle) = match *self {
            Wait::Until { budget, .. } => (budget, false),
            Wait::Idle(d) => (d, true),
            Wait::Forever => (Duration::MAX, false),
        };
        Error::TimedOut {
            waiting_for: waiting_for.into(),
            after,
            idle,
        }
    }
}

/// Waits for `events` on `fd`; `Ok(None)` when `wait` ran out first.
fn poll_fd(fd: RawFd, events: libc::c_short, wait: Wait) -> io::Result<Option<libc::c_short>> {
    loop {
        let Some(ms) = wait.poll_ms() else {
            return Ok(None);
        };
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: p is one valid pollfd and the count passed is 1.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(Some(p.revents));
        }
        if let Wait::Idle(_) = wait {
            return Ok(None);
        }
        // A total deadline: poll's rounding may wake us a little early; look again.
    }
}

/// One non-blocking send that never raises SIGPIPE.
fn send_nb(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking receive into `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn recv_nb(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees ptr is valid for writes of len bytes.
    let n = unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends all of `bytes`, waiting for room as `wait` allows. `Ok(false)`: the wait ran out.
fn send_all(fd: RawFd, mut bytes: &[u8], wait: Wait) -> io::Result<bool> {
    while !bytes.is_empty() {
        match send_nb(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if poll_fd(fd, libc::POLLOUT, wait)?.is_none() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The peer is gone: the kinds a stale pooled connection fails with.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// Grows `v` for `more` bytes, geometrically but never past `total`, the frame's length.
fn grow(v: &mut Vec<u8>, total: usize, more: usize) {
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
struct RawFrame {
    kind: u8,
    payload: Vec<u8>,
}

/// A frame whose header has been read and whose payload is arriving.
#[derive(Debug)]
struct Pending {
    kind: u8,
    len: usize,
    payload: Vec<u8>,
}

/// The output budget of an exec being collected.
#[derive(Clone, Copy, Debug)]
struct Cap {
    left: u64,
    limit: u64,
}

/// Whether a frame's payload counts against the output limit: everything but EXIT and ERROR
/// (which end the exec); kinds the client skips count too, so skipping cannot go on forever.
fn counts(kind: u8) -> bool {
    kind != FrameKind::Exit as u8 && kind != FrameKind::Error as u8
}

/// An ERROR frame's text as an [`Error::Agent`].
fn agent_error(payload: &[u8]) -> Error {
    Error::Agent {
        code: None,
        message: String::from_utf8_lossy(payload).into_owned(),
    }
}

/// `payload` as a frame of `kind`, refusing payloads the agent would refuse.
fn frame_bytes(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>> {
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

// ---------------------------------------------------------------------------------------------
// One connection.

/// A connection: the socket, its read buffer and the state of the frame being read.
struct Conn {
    stream: UnixStream,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    pending: Option<Pending>,
    /// Bytes received since this connection was handed to the current operation.
    received: u64,
    /// The peer closed or reset the connection.
    gone: bool,
    /// A frame of ours may have gone out only in part: the stream is out of sync.
    dirty: bool,
    /// Taken from the pool.
    reused: bool,
    /// The last receive filled all the room it had: more is probably waiting.
    more: bool,
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
    fn new(stream: UnixStream) -> Conn {
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

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Nothing buffered, half-read or half-written, and the peer still there: the connection
    /// can carry another request.
    fn clean(&self) -> bool {
        self.start == self.end && self.pending.is_none() && !self.gone && !self.dirty
    }

    /// A pooled connection on which nothing arrived while it idled: no stray byte, no EOF,
    /// no reset.
    fn idle_ok(&self) -> bool {
        self.clean()
            && matches!(
                poll_fd(self.fd(), libc::POLLIN, Wait::Idle(Duration::ZERO)),
                Ok(None)
            )
    }

    /// Sends `bytes` within `wait`.
    fn send(&mut self, bytes: &[u8], wait: Wait, waiting_for: &str) -> Result<()> {
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
    fn fill(&mut self) -> io::Result<Option<usize>> {
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
    fn received_from(&mut self, r: io::Result<usize>, room: usize) -> io::Result<Option<usize>> {
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
    fn eof(&mut self, waiting_for: &str) -> Error {
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
    fn read_some(&mut self, wait: Wait, waiting_for: &str) -> Result<()> {
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
    fn fill_or_eof(&mut self, waiting_for: &str) -> Result<Option<usize>> {
        match self.fill() {
            Ok(Some(0)) => Err(self.eof(waiting_for)),
            Ok(n) => Ok(n),
            Err(e) if peer_gone(&e) => Err(self.eof(waiting_for)),
            Err(e) => Err(e.into()),
        }
    }

    /// The next complete frame already received, if there is one. With `cap`, a frame that
    /// counts against it and is longer than what is left is refused from its header.
    fn parse(&mut self, cap: Option<Cap>) -> Result<Option<RawFrame>> {
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
                if counts(kind) && u64::from(len) > c.left {
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
    fn next_frame(&mut self, wait: Wait, waiting_for: &str) -> Result<RawFrame> {
        loop {
            if let Some(f) = self.parse(None)? {
                return Ok(f);
            }
            self.read_some(wait, waiting_for)?;
        }
    }

    /// The hybrid-vsock handshake: `CONNECT <port>\n`, then one `OK <n>\n` line. Bytes after
    /// the newline stay buffered: they are the agent's.
    fn hybrid_handshake(&mut self, path: &Path, port: u32, t: Duration) -> io::Result<()> {
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
    fn kill(&mut self, at_frame_boundary: bool) {
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
struct Pool(Mutex<Option<(Conn, Instant)>>);

impl Pool {
    /// The idle connection, if it is young and nothing arrived on it.
    fn take(&self) -> Option<Conn> {
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
    fn put(&self, c: Conn) {
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

// ---------------------------------------------------------------------------------------------
// The client.

/// A blocking client for one agent. Cheap to clone; clones share the pooled connection.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    connect_timeout: Duration,
    control_timeout: Duration,
    exec_idle_timeout: Option<Duration>,
    output_limit: u64,
    pool: Option<Arc<Pool>>,
}

impl Client {
    /// A client for `endpoint`, with the default deadlines, a 64 MiB output limit and a new
    /// connection per request.
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            control_timeout: DEFAULT_CONTROL_TIMEOUT,
            exec_idle_timeout: Some(DEFAULT_EXEC_IDLE_TIMEOUT),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            pool: None,
        }
    }

    /// How long a connect, with the hybrid-vsock handshake, may take (10 s).
    pub fn with_connect_timeout(mut self, t: Duration) -> Client {
        self.connect_timeout = t;
        self
    }

    /// How long a CONTROL may take in all, from sending it to the end of its ack (60 s); then
    /// [`Error::TimedOut`]. `read_file` and `write_file` apply it per chunk.
    pub fn with_control_timeout(mut self, t: Duration) -> Client {
        self.control_timeout = t;
        self
    }

    /// How long an exec may go without a byte in either direction (300 s); then
    /// [`Error::TimedOut`] and the exec is killed. A request's own `timeout_ms` raises it to
    /// `timeout_ms` + 10 s. `None`: no limit, for interactive sessions whose user can interrupt
    /// them.
    pub fn with_exec_idle_timeout(mut self, t: Option<Duration>) -> Client {
        self.exec_idle_timeout = t;
        self
    }

    /// The most stdout and stderr together that [`Client::exec_output`] and
    /// [`Client::exec_with_input`] collect (64 MiB); more is [`Error::OutputLimit`] and the
    /// exec is killed. The streaming [`Client::exec`] leaves the bound to its caller.
    pub fn with_output_limit(mut self, bytes: u64) -> Client {
        self.output_limit = bytes;
        self
    }

    /// Reuse one idle connection for the next request instead of a new connection per
    /// request (off by default, as supermachine's host does it). See the module docs: a
    /// pooled connection idles at most [`POOL_MAX_IDLE`], and a stale one is replaced by a
    /// fresh one, once, before any byte of the answer. Clones made after this call share the
    /// pool; `false` drops it.
    pub fn with_connection_reuse(mut self, reuse: bool) -> Client {
        self.pool = reuse.then(|| Arc::new(Pool::default()));
        self
    }

    /// The endpoint this client connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A new connection, within `within` (and the connect timeout).
    fn connect(&self, within: Duration) -> Result<Conn> {
        let t = self.connect_timeout.min(within);
        let err = |source| Error::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(p) => transport::connect_unix(p, t).map(Conn::new).map_err(err),
            Endpoint::Vsock { cid, port } => transport::connect_vsock_timeout(*cid, *port, t)
                .map(Conn::new)
                .map_err(err),
            Endpoint::HybridVsock { path, port } => {
                let start = Instant::now();
                let mut c = Conn::new(transport::connect_unix(path, t).map_err(err)?);
                c.hybrid_handshake(path, *port, t.saturating_sub(start.elapsed()))
                    .map_err(err)?;
                Ok(c)
            }
        }
    }

    /// A connection (the pooled one if it is usable) on which `op` succeeded, and its result.
    /// A pooled connection that turns out stale, gone before any byte of the answer, is
    /// replaced by a fresh one and `op` runs again, once.
    fn acquire<T>(
        &self,
        within: Duration,
        mut op: impl FnMut(&mut Conn) -> Result<T>,
    ) -> Result<(Conn, T)> {
        let mut conn = match self.pool.as_ref().and_then(|p| p.take()) {
            Some(c) => c,
            None => self.connect(within)?,
        };
        match op(&mut conn) {
            Ok(v) => Ok((conn, v)),
            Err(_) if conn.reused && conn.received == 0 && conn.gone => {
                drop(conn);
                let mut fresh = self.connect(within)?;
                let v = op(&mut fresh)?;
                Ok((fresh, v))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Client::acquire`], then the connection goes back to the pool.
    fn with_conn<T>(&self, within: Duration, op: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let (conn, v) = self.acquire(within, op)?;
        if let Some(p) = &self.pool {
            p.put(conn);
        }
        Ok(v)
    }

    /// Sends one CONTROL and returns its ack's fields.
    pub fn control<T: DeserializeOwned>(&self, action: &Control) -> Result<T> {
        self.control_json(action)
    }

    /// Sends any serialisable CONTROL body (for actions this client has no type for).
    pub fn control_json<T: DeserializeOwned>(&self, body: &impl Serialize) -> Result<T> {
        self.control_within(body, self.control_timeout)
    }

    /// A CONTROL whose connect, send and whole ack fit in `budget`.
    fn control_within<T: DeserializeOwned>(
        &self,
        body: &impl Serialize,
        budget: Duration,
    ) -> Result<T> {
        let payload = serde_json::to_vec(body)
            .map_err(|e| Error::Protocol(format!("CONTROL body does not serialise: {e}")))?;
        let frame = frame_bytes(FrameKind::Control, &payload)?;
        let wait = Wait::within(budget);
        let ack = self
            .with_conn(budget, |c| {
                c.send(&frame, wait, "the agent to read the CONTROL")?;
                let f = c.next_frame(wait, "the CONTROL ack")?;
                match FrameKind::from_u8(f.kind) {
                    Some(FrameKind::Control) => Ok(f.payload),
                    Some(FrameKind::Error) => Err(agent_error(&f.payload)),
                    Some(k) => Err(Error::Protocol(format!(
                        "expected a CONTROL ack, got {k:?}"
                    ))),
                    None => Err(CodecError::UnknownKind(f.kind).into()),
                }
            })
            .map_err(|e| name_action(e, &payload))?;
        let v: serde_json::Value = serde_json::from_slice(&ack)
            .map_err(|e| Error::Protocol(format!("ack is not JSON: {e}")))?;
        if v.get("ok") != Some(&serde_json::Value::Bool(true)) {
            let e: AckError = serde_json::from_value(v)
                .map_err(|e| Error::Protocol(format!("bad error ack: {e}")))?;
            return Err(Error::Agent {
                code: e.code,
                message: e.error,
            });
        }
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("bad ack: {e}")))
    }

    /// Waits until the agent answers `probe`, retrying failed connections and answers, and
    /// gives up after `timeout` whatever the guest does (accepting and then staying silent
    /// included). An agent's refusal ends the wait at once.
    pub fn wait_ready(&self, timeout: Duration) -> Result<ProbeInfo> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.control_within(&Control::Probe, self.control_timeout.min(left)) {
                Ok(p) => return Ok(p),
                Err(e @ Error::Agent { .. }) => return Err(e),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(
                    Duration::from_millis(20).min(timeout.saturating_sub(start.elapsed())),
                ),
            }
        }
    }

    /// Protocol version, kernel, uptime, CPUs, memory and the agent's own resource use.
    pub fn probe(&self) -> Result<ProbeInfo> {
        self.control(&Control::Probe)
    }

    /// Sets the guest wall clock (`sync_time`).
    pub fn sync_time(&self, t: SystemTime) -> Result<()> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.control::<Empty>(&Control::SyncTime {
            host_unix_ns: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        })
        .map(drop)
    }

    /// Parks every online CPU but the primary (aarch64 guests with smpark.ko), for a
    /// multi-vCPU snapshot; returns once all are parked. A no-op on one CPU.
    pub fn park(&self) -> Result<ParkStatus> {
        self.control(&Control::SmparkPark)
    }

    /// Releases the parked CPUs; returns once they all run again.
    pub fn unpark(&self) -> Result<ParkStatus> {
        self.control(&Control::SmparkUnpark)
    }

    /// Which CPUs are online and parked.
    pub fn park_status(&self) -> Result<ParkStatus> {
        self.control(&Control::SmparkStatus)
    }

    /// `sync(2)` in the guest.
    pub fn sync(&self) -> Result<()> {
        self.control::<Empty>(&Control::Sync).map(drop)
    }

    /// Drops the guest's page, dentry and inode caches.
    pub fn drop_caches(&self) -> Result<()> {
        self.control::<Empty>(&Control::DropVfsCaches).map(drop)
    }

    /// Powers off or reboots the guest. Returns once the agent has acknowledged.
    pub fn power(&self, what: PowerAction) -> Result<()> {
        self.control::<Empty>(&Control::Power { what }).map(drop)
    }

    /// Writes `data` to `path` in the guest atomically, with permission bits `mode`: one
    /// `write_file` up to [`FILE_CHUNK`] bytes, `write_file_chunk` pieces above.
    pub fn write_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        if data.len() as u64 <= FILE_CHUNK {
            return self
                .control::<Empty>(&Control::WriteFile {
                    path: path.into(),
                    data_b64: base64::encode(data),
                    mode: Some(mode),
                })
                .map(drop);
        }
        let token = format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let pieces: Vec<&[u8]> = data.chunks(FILE_CHUNK as usize).collect();
        let mut offset = 0u64;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            self.control::<Empty>(&Control::WriteFileChunk {
                path: path.into(),
                offset,
                data_b64: base64::encode(piece),
                last,
                token: token.clone(),
                mode: last.then_some(mode),
            })?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// Reads `path` from the guest in `read_file_chunk` pieces; files above `max_size` bytes
    /// are refused (by the agent, and again here).
    ///
    /// Memory grows only with the bytes that arrived: neither the size the agent claims nor
    /// `max_size` (`u64::MAX` is fine) is allocated up front. The transfer must add up: the
    /// file's length may not change between chunks, no chunk may be larger than asked or run
    /// past that length, and a chunk that brings nothing before the end is a short transfer.
    /// All are [`Error::Protocol`].
    pub fn read_file(&self, path: &str, max_size: u64) -> Result<Vec<u8>> {
        let mut data: Vec<u8> = Vec::new();
        let mut total: Option<u64> = None;
        loop {
            let offset = data.len() as u64;
            let c: FileChunk = self.control(&Control::ReadFileChunk {
                path: path.into(),
                offset,
                len: FILE_CHUNK,
                max_bytes: max_size,
            })?;
            match total {
                None if c.total_len > max_size => {
                    return Err(Error::Protocol(format!(
                        "{path}: the agent reports {} bytes, above max_size {max_size}",
                        c.total_len
                    )))
                }
                None => total = Some(c.total_len),
                Some(t) if t != c.total_len => {
                    return Err(Error::Protocol(format!(
                        "{path}: the file's length changed from {t} to {} bytes during the \
                         transfer (at offset {offset})",
                        c.total_len
                    )))
                }
                Some(_) => {}
            }
            let total = c.total_len;
            let piece = base64::decode(&c.data_b64)
                .map_err(|e| Error::Protocol(format!("read_file_chunk {path}: {e}")))?;
            let n = piece.len() as u64;
            if n > FILE_CHUNK {
                return Err(Error::Protocol(format!(
                    "{path}: a chunk of {n} bytes at offset {offset}, above the {FILE_CHUNK} asked"
                )));
            }
            if offset + n > total {
                return Err(Error::Protocol(format!(
                    "{path}: {n} bytes at offset {offset} run past the file's {total} bytes"
                )));
            }
            if n == 0 && offset < total {
                return Err(Error::Protocol(format!(
                    "{path}: short transfer: {offset} of {total} bytes, then an empty chunk"
                )));
            }
            data.extend_from_slice(&piece);
            if data.len() as u64 == total {
                return Ok(data);
            }
        }
    }

    /// The workload's pid, whether it runs and, once reaped, its exit code.
    pub fn workload_status(&self) -> Result<WorkloadState> {
        self.control(&Control::WorkloadStatus)
    }

    /// Waits until the workload ends, at most `timeout` (then [`Error::TimedOut`]).
    pub fn workload_wait(&self, timeout: Duration) -> Result<WorkloadState> {
        self.control_within(&Control::WorkloadWait, timeout)
    }

    /// Sends `signum` to the workload (`signal`); returns the pid signalled.
    pub fn workload_signal(&self, signum: i32) -> Result<i32> {
        self.control::<Signalled>(&Control::Signal { signum })
            .map(|s| s.pid)
    }

    /// The idle deadline of an exec of `req`.
    fn exec_idle(&self, req: &ExecRequest) -> Option<Duration> {
        let base = self.exec_idle_timeout?;
        Some(match req.timeout_ms {
            Some(ms) => base.max(Duration::from_millis(ms).saturating_add(EXEC_TIMEOUT_GRACE)),
            None => base,
        })
    }

    /// Starts an exec and returns its session; the caller streams stdin and reads events.
    /// Reads and writes have the exec idle deadline; the output is not limited here (the
    /// caller sees every event). The connection goes back to the pool (with connection
    /// reuse) when the [`Exec`] is dropped after EXIT with every [`ExecInput`] dropped.
    pub fn exec(&self, req: &ExecRequest) -> Result<Exec> {
        let payload = serde_json::to_vec(req)
            .map_err(|e| Error::Protocol(format!("REQUEST does not serialise: {e}")))?;
        let frame = frame_bytes(FrameKind::Request, &payload)?;
        let idle = self.exec_idle(req);
        let wait = Wait::idle(idle);
        let (conn, ()) = self.acquire(self.connect_timeout, |c| {
            c.send(&frame, wait, "the agent to read the REQUEST")
        })?;
        Ok(Exec {
            conn: Some(conn),
            writer: OnceLock::new(),
            idle,
            skip_limit: self.output_limit,
            exited: false,
            pool: self.pool.clone(),
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

/// Names the CONTROL action in a timeout or close, from its payload (error path only).
fn name_action(e: Error, payload: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct Action {
        action: String,
    }
    let action = || {
        serde_json::from_slice::<Action>(payload)
            .map(|a| a.action)
            .unwrap_or_else(|_| "?".into())
    };
    match e {
        Error::TimedOut {
            waiting_for,
            after,
            idle,
        } => Error::TimedOut {
            waiting_for: format!("{waiting_for} ({})", action()),
            after,
            idle,
        },
        Error::Closed { waiting_for } => Error::Closed {
            waiting_for: format!("{waiting_for} ({})", action()),
        },
        e => e,
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
                cap.left -= f.payload.len() as u64;
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
fn exit_status(payload: &[u8]) -> Result<ExitStatus> {
    ExitStatus::decode(payload)
        .ok_or_else(|| Error::Protocol(format!("EXIT payload of {} bytes", payload.len())))
}

// ---------------------------------------------------------------------------------------------
// Streaming execs.

/// The writing side of an exec, shared by [`Exec`] and its [`ExecInput`]s. A lock held per
/// frame keeps frames from interleaving.
#[derive(Debug)]
struct Writer {
    stream: UnixStream,
    idle: Option<Duration>,
    state: Mutex<WriterState>,
}

#[derive(Debug, Default)]
struct WriterState {
    /// A frame went out only in part (timeout or error): nothing more can be sent.
    broken: bool,
    /// Raw bytes were sent: the stream may be out of frame sync.
    raw: bool,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one frame of at most [`MAX_DATA_CHUNK`] payload bytes.
    fn frame(&self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        debug_assert!(payload.len() <= MAX_DATA_CHUNK);
        let mut st = self.lock();
        if st.broken {
            return Err(Error::Protocol(
                "an earlier write to this exec failed part-way; its input is closed".into(),
            ));
        }
        let mut buf = [0u8; MAX_WRITE];
        buf[..HEADER_LEN].copy_from_slice(&codec::header(kind, payload.len()));
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let wait = Wait::idle(self.idle);
        match send_all(
            self.stream.as_raw_fd(),
            &buf[..HEADER_LEN + payload.len()],
            wait,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => {
                st.broken = true;
                Err(wait.timed_out("the agent to read the exec's input"))
            }
            Err(e) => {
                st.broken = true;
                Err(e.into())
            }
        }
    }
}

/// A running exec: read its [`Event`]s; write stdin and control frames through [`Exec::input`].
///
/// An error from [`Exec::next_event`] ends the exec: its connection is shut down, on which the
/// agent kills the process group.
#[derive(Debug)]
pub struct Exec {
    conn: Option<Conn>,
    writer: OnceLock<Arc<Writer>>,
    idle: Option<Duration>,
    /// Bytes of skipped frames allowed in one `next_event`.
    skip_limit: u64,
    exited: bool,
    pool: Option<Arc<Pool>>,
}

/// The writing half of an exec: stdin, signals and resizes. Writes have the exec idle
/// deadline.
#[derive(Debug)]
pub struct ExecInput {
    w: Arc<Writer>,
}

impl Exec {
    fn writer(&self) -> Result<&Arc<Writer>> {
        if let Some(w) = self.writer.get() {
            return Ok(w);
        }
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| Error::Protocol("the exec's connection failed earlier".into()))?;
        let w = Arc::new(Writer {
            stream: conn.stream.try_clone()?,
            idle: self.idle,
            state: Mutex::default(),
        });
        let _ = self.writer.set(w);
        Ok(self.writer.get().expect("set above"))
    }

    /// A writer for stdin, signals and resizes, usable from another thread.
    pub fn input(&self) -> Result<ExecInput> {
        Ok(ExecInput {
            w: self.writer()?.clone(),
        })
    }

    /// The next output chunk or the exit status, waiting at most the exec idle deadline. An
    /// ERROR frame is [`Error::Agent`]; after EXIT there is no further event (an error).
    pub fn next_event(&mut self) -> Result<Event> {
        if self.exited {
            return Err(Error::Protocol(
                "the exec already ended: EXIT was its last event".into(),
            ));
        }
        let r = self.read_event();
        if r.is_err() {
            if let Some(c) = self.conn.take() {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        r
    }

    fn read_event(&mut self) -> Result<Event> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Protocol("the exec's connection failed earlier".into()))?;
        let wait = Wait::idle(self.idle);
        let mut skipped = 0u64;
        loop {
            let f = conn.next_frame(wait, "the exec's output or EXIT")?;
            match FrameKind::from_u8(f.kind) {
                Some(FrameKind::Stdout) => return Ok(Event::Stdout(f.payload)),
                Some(FrameKind::Stderr) => return Ok(Event::Stderr(f.payload)),
                Some(FrameKind::Exit) => {
                    let s = exit_status(&f.payload)?;
                    self.exited = true;
                    return Ok(Event::Exit(s));
                }
                Some(FrameKind::Error) => return Err(agent_error(&f.payload)),
                // Frames a newer agent may add are skipped, as supermachine's host does, but
                // not without end.
                _ => {
                    skipped += f.payload.len() as u64 + HEADER_LEN as u64;
                    if skipped > self.skip_limit {
                        return Err(Error::Protocol(format!(
                            "{skipped} bytes of frames this client does not know, and no event"
                        )));
                    }
                }
            }
        }
    }

    /// Sends a signal to the exec's process group.
    pub fn signal(&self, signal: u8) -> Result<()> {
        self.writer()?.frame(FrameKind::Signal, &[signal])
    }

    /// Resizes the exec's tty.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.writer()?
            .frame(FrameKind::Resize, &WinSize { cols, rows }.encode())
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let writer_clean = self.writer.get().map_or(true, |w| {
            let st = w.lock();
            Arc::strong_count(w) == 1 && !st.broken && !st.raw
        });
        match &self.pool {
            Some(pool) if self.exited && writer_clean && conn.clean() => pool.put(conn),
            // Not reusable: shut it down, so that an ExecInput still held elsewhere cannot keep
            // it open (the agent kills an exec whose host went away).
            _ => {
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl ExecInput {
    /// Streams `data` to the process's stdin, in frames of at most [`MAX_DATA_CHUNK`] bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.w.frame(FrameKind::Stdin, chunk)?;
        }
        Ok(())
    }

    /// Closes the process's stdin (an empty STDIN frame).
    pub fn close(&mut self) -> Result<()> {
        self.w.frame(FrameKind::Stdin, &[])
    }

    /// Sends a signal to the exec's process group.
    pub fn signal(&mut self, signal: u8) -> Result<()> {
        self.w.frame(FrameKind::Signal, &[signal])
    }

    /// Resizes the exec's tty.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        self.w
            .frame(FrameKind::Resize, &WinSize { cols, rows }.encode())
    }

    /// Writes raw bytes (tests of malformed input). The connection is not reused afterwards.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        let mut st = self.w.lock();
        st.raw = true;
        (&self.w.stream).write_all(bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_controls_and_cuts_long_text() {
        assert!(matches!(printable("plain text: ok"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\x1b[31mred\x07\nb\u{9b}c\u{202e}d"),
            "a\\u{1b}[31mred\\u{7}\\nb\\u{9b}c\\u{202e}d"
        );
        let long = "x".repeat(MAX_SHOWN + 10);
        let shown = printable(&long);
        assert!(shown.starts_with(&"x".repeat(MAX_SHOWN)));
        assert!(shown.ends_with("… (10 more characters)"), "{shown}");
        // Multi-byte text right at the limit is not cut.
        let wide = "é".repeat(MAX_SHOWN);
        assert!(matches!(printable(&wide), Cow::Borrowed(_)));
    }

    #[test]
    fn shell_codes_saturate() {
        let s = |code| ExitStatus {
            code,
            peak_rss_kib: 0,
        };
        assert_eq!(shell_code(&s(0)), 0);
        assert_eq!(shell_code(&s(137)), 137);
        assert_eq!(shell_code(&s(255)), 255);
        assert_eq!(shell_code(&s(256)), 255);
        assert_eq!(shell_code(&s(u32::MAX)), 255);
    }

    #[test]
    fn waits_round_up_and_expire() {
        assert_eq!(Wait::Idle(Duration::from_micros(1)).poll_ms(), Some(1));
        assert_eq!(Wait::Idle(Duration::MAX).poll_ms(), Some(libc::c_int::MAX));
        assert_eq!(Wait::Forever.poll_ms(), Some(-1));
        let past = Wait::Until {
            at: Instant::now(),
            budget: Duration::ZERO,
        };
        assert_eq!(past.poll_ms(), None);
        assert!(matches!(Wait::within(Duration::MAX), Wait::Forever));
    }

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
