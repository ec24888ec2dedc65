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
//! `tests/hostile/` proves each point against a fake agent that sends garbage, huge lengths,
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

mod conn;
mod control;
mod error;
mod exec;
mod files;
mod stream;
mod wait;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transport;

use conn::{Conn, Pool};
pub use error::{printable, shell_code, Error, Result};
pub use exec::{Event, Output};
pub use stream::{Exec, ExecInput};

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
        /// Guest port, normally [`DEFAULT_PORT`](crate::protocol::DEFAULT_PORT).
        port: u32,
    },
    /// Plain AF_VSOCK (host kernel with vhost-vsock).
    Vsock {
        /// Guest CID.
        cid: u32,
        /// Guest port, normally [`DEFAULT_PORT`](crate::protocol::DEFAULT_PORT).
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
    /// [`Client::exec_with_input`] collect (64 MiB), counting every frame's 5-byte header (so
    /// endless empty frames run into it too); more is [`Error::OutputLimit`] and the exec is
    /// killed. The streaming [`Client::exec`] leaves the bound to its caller.
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
}
