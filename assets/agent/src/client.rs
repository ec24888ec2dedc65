//! Blocking host client for protocol 5.
//!
//! A [`Client`] holds an [`Endpoint`]; every operation opens its own connection (the agent
//! serves one REQUEST or one CONTROL per connection, as supermachine's host does), so an exec
//! never waits behind another and a failed connection never poisons the next one.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, CodecError, Frame};
use crate::protocol::*;
use crate::{base64, transport};

/// Where the agent is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket that carries the agent stream directly: the agent's `--listen unix:PATH`,
    /// or a VMM's per-connection bridge (supermachine's exec socket).
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
pub enum Error {
    /// Connecting to the endpoint failed.
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        source: io::Error,
    },
    /// A frame could not be read or written.
    Codec(CodecError),
    /// The agent refused: an ERROR frame (no `code`) or an `ok:false` ack.
    Agent {
        /// The error class, when the agent sent one (an extension of protocol 5).
        code: Option<ErrorCode>,
        /// The agent's text.
        message: String,
    },
    /// The agent sent something the protocol does not allow here.
    Protocol(String),
}

impl Error {
    /// The agent's error class, if this is an agent error that carried one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Agent { code, .. } => *code,
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { endpoint, source } => {
                write!(f, "connect to agent at {endpoint}: {source}")
            }
            Error::Codec(e) => write!(f, "agent connection: {e}"),
            Error::Agent {
                code: Some(c),
                message,
            } => write!(f, "agent: {c:?}: {message}"),
            Error::Agent {
                code: None,
                message,
            } => write!(f, "agent: {message}"),
            Error::Protocol(m) => write!(f, "agent protocol violation: {m}"),
        }
    }
}

impl std::error::Error for Error {}

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

/// A blocking client for one agent.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    connect_timeout: Duration,
    control_timeout: Option<Duration>,
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

fn read(stream: &mut UnixStream) -> Result<Frame> {
    match codec::read_frame(stream)? {
        Some(f) if f.kind == FrameKind::Error => Err(Error::Agent {
            code: None,
            message: String::from_utf8_lossy(&f.payload).into_owned(),
        }),
        Some(f) => Ok(f),
        None => Err(Error::Protocol(
            "the agent closed the connection without answering".into(),
        )),
    }
}

impl Client {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            connect_timeout: Duration::from_secs(10),
            control_timeout: Some(Duration::from_secs(60)),
        }
    }

    /// How long a CONTROL action may take before [`Error::Codec`] with a timeout (60 s).
    pub fn with_control_timeout(mut self, t: Duration) -> Client {
        self.control_timeout = Some(t);
        self
    }

    /// The endpoint this client connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn connect(&self) -> Result<UnixStream> {
        let r = match &self.endpoint {
            Endpoint::Unix(p) => UnixStream::connect(p),
            Endpoint::HybridVsock { path, port } => {
                transport::connect_hybrid_vsock(path, *port, self.connect_timeout)
            }
            Endpoint::Vsock { cid, port } => transport::connect_vsock(*cid, *port),
        };
        r.map_err(|source| Error::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        })
    }

    /// Sends one CONTROL and returns its ack's fields.
    pub fn control<T: DeserializeOwned>(&self, action: &Control) -> Result<T> {
        self.control_json(action)
    }

    /// Sends any serialisable CONTROL body (for actions this client has no type for).
    pub fn control_json<T: DeserializeOwned>(&self, body: &impl Serialize) -> Result<T> {
        let mut s = self.connect()?;
        s.set_read_timeout(self.control_timeout)?;
        s.set_write_timeout(self.control_timeout)?;
        codec::write_json(&mut s, FrameKind::Control, body)?;
        let f = read(&mut s)?;
        if f.kind != FrameKind::Control {
            return Err(Error::Protocol(format!(
                "expected a CONTROL ack, got {:?}",
                f.kind
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&f.payload)
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

    /// Waits until the agent answers `probe`, retrying connection failures until `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<ProbeInfo> {
        let start = std::time::Instant::now();
        loop {
            match self.probe() {
                Ok(p) => return Ok(p),
                Err(e @ Error::Agent { .. }) => return Err(e),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
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
            host_unix_ns: d.as_nanos() as u64,
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

    /// Reads `path` from the guest in `read_file_chunk` pieces; the agent refuses files above
    /// `max_size` bytes.
    pub fn read_file(&self, path: &str, max_size: u64) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let c: FileChunk = self.control(&Control::ReadFileChunk {
                path: path.into(),
                offset: data.len() as u64,
                len: FILE_CHUNK,
                max_bytes: max_size,
            })?;
            if c.total_len > max_size {
                return Err(Error::Protocol(format!(
                    "{path}: the agent reports {} bytes, above max_size {max_size}",
                    c.total_len
                )));
            }
            let piece = base64::decode(&c.data_b64)
                .map_err(|e| Error::Protocol(format!("read_file_chunk {path}: {e}")))?;
            if data.len() as u64 + piece.len() as u64 > c.total_len {
                return Err(Error::Protocol(format!(
                    "{path}: more bytes than total_len {}",
                    c.total_len
                )));
            }
            data.extend_from_slice(&piece);
            if data.len() as u64 >= c.total_len {
                return Ok(data);
            }
            if piece.is_empty() {
                return Err(Error::Protocol(format!(
                    "{path}: no progress at offset {} of {}",
                    data.len(),
                    c.total_len
                )));
            }
        }
    }

    /// The workload's pid, whether it runs and, once reaped, its exit code.
    pub fn workload_status(&self) -> Result<WorkloadState> {
        self.control(&Control::WorkloadStatus)
    }

    /// Blocks until the workload ends.
    pub fn workload_wait(&self) -> Result<WorkloadState> {
        let c = Client {
            control_timeout: None,
            ..self.clone()
        };
        c.control(&Control::WorkloadWait)
    }

    /// Sends `signum` to the workload (`signal`); returns the pid signalled.
    pub fn workload_signal(&self, signum: i32) -> Result<i32> {
        self.control::<Signalled>(&Control::Signal { signum })
            .map(|s| s.pid)
    }

    /// Starts an exec and returns its session; the caller streams stdin and reads events.
    pub fn exec(&self, req: &ExecRequest) -> Result<Exec> {
        let mut stream = self.connect()?;
        codec::write_json(&mut stream, FrameKind::Request, req)?;
        Ok(Exec { stream })
    }

    /// Runs an exec to completion with `stdin` as its input, then EOF, and collects its output.
    pub fn exec_with_input(&self, req: &ExecRequest, stdin: &[u8]) -> Result<Output> {
        let mut exec = self.exec(req)?;
        let mut input = exec.input()?;
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            // The process may exit without reading everything: a broken pipe is not an error.
            let _ = input.write(&data);
            let _ = input.close();
        });
        let mut out = Output::default();
        let result = loop {
            match exec.next_event() {
                Ok(Event::Stdout(b)) => out.stdout.extend(b),
                Ok(Event::Stderr(b)) => out.stderr.extend(b),
                Ok(Event::Exit(s)) => {
                    out.status = s;
                    break Ok(out);
                }
                Err(e) => break Err(e),
            }
        };
        // After EXIT nobody reads our stdin: unblock the writer instead of waiting for it.
        let _ = exec.stream.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        result
    }

    /// Runs an exec to completion with empty stdin and collects its output.
    pub fn exec_output(&self, req: &ExecRequest) -> Result<Output> {
        self.exec_with_input(req, &[])
    }
}

/// A running exec: read its [`Event`]s; write stdin and control frames through [`Exec::input`].
#[derive(Debug)]
pub struct Exec {
    stream: UnixStream,
}

/// The writing half of an exec: stdin, signals and resizes.
#[derive(Debug)]
pub struct ExecInput {
    stream: UnixStream,
}

impl Exec {
    /// A writer for stdin, signals and resizes, usable from another thread.
    pub fn input(&self) -> Result<ExecInput> {
        Ok(ExecInput {
            stream: self.stream.try_clone()?,
        })
    }

    /// The next output chunk or the exit status. An ERROR frame is [`Error::Agent`].
    pub fn next_event(&mut self) -> Result<Event> {
        loop {
            let f = read(&mut self.stream)?;
            return Ok(match f.kind {
                FrameKind::Stdout => Event::Stdout(f.payload),
                FrameKind::Stderr => Event::Stderr(f.payload),
                FrameKind::Exit => {
                    Event::Exit(ExitStatus::decode(&f.payload).ok_or_else(|| {
                        Error::Protocol(format!("EXIT payload of {} bytes", f.payload.len()))
                    })?)
                }
                // Frames a newer agent may add are skipped, as supermachine's host does.
                _ => continue,
            });
        }
    }

    /// Sends a signal to the exec's process group.
    pub fn signal(&self, signal: u8) -> Result<()> {
        self.input()?.signal(signal)
    }

    /// Resizes the exec's tty.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.input()?.resize(cols, rows)
    }
}

impl ExecInput {
    /// Streams `data` to the process's stdin, in frames of at most [`MAX_DATA_CHUNK`] bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            codec::write_frame(&mut self.stream, FrameKind::Stdin, chunk)?;
        }
        Ok(())
    }

    /// Closes the process's stdin (an empty STDIN frame).
    pub fn close(&mut self) -> Result<()> {
        codec::write_frame(&mut self.stream, FrameKind::Stdin, &[])?;
        Ok(())
    }

    /// Sends a signal to the exec's process group.
    pub fn signal(&mut self, signal: u8) -> Result<()> {
        codec::write_frame(&mut self.stream, FrameKind::Signal, &[signal])?;
        Ok(())
    }

    /// Resizes the exec's tty.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        let ws = WinSize { cols, rows };
        codec::write_frame(&mut self.stream, FrameKind::Resize, &ws.encode())?;
        Ok(())
    }

    /// Writes raw bytes (tests of malformed input).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }
}
