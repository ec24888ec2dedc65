//! Blocking host client.
//!
//! A [`Client`] holds an [`Endpoint`]; every operation opens its own connection, so an exec
//! never waits behind another and a failed connection never poisons the next one. The
//! handshake is pipelined: the client sends `Hello` and its request back to back and reads both
//! answers, so an operation costs one round trip.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use crate::codec::{self, CodecError, Frame};
use crate::protocol::*;
use crate::transport;

/// Where the agent is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The agent's `--listen unix:PATH` socket.
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
    /// The agent answered with an error frame.
    Agent(ErrorBody),
    /// The agent sent something the protocol does not allow here.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { endpoint, source } => {
                write!(f, "connect to agent at {endpoint}: {source}")
            }
            Error::Codec(e) => write!(f, "agent connection: {e}"),
            Error::Agent(b) => write!(f, "agent: {:?}: {}", b.code, b.message),
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
    /// The process ended; no event follows.
    Exit(ExitStatus),
}

/// A connection after a successful handshake.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    hello_pending: bool,
}

impl Conn {
    fn read(&mut self) -> Result<Frame> {
        if self.hello_pending {
            self.hello_pending = false;
            let f = self.read()?;
            match f.ty {
                FrameType::HelloOk => {
                    let ok: HelloOk = f.json()?;
                    if ok.protocol != PROTOCOL_VERSION {
                        return Err(Error::Protocol(format!(
                            "agent speaks protocol {}, this client {PROTOCOL_VERSION}",
                            ok.protocol
                        )));
                    }
                }
                _ => return Err(unexpected(f)),
            }
        }
        match codec::read_frame(&mut self.stream)? {
            Some(f) if f.ty == FrameType::Error => Err(Error::Agent(f.json()?)),
            Some(f) => Ok(f),
            None => Err(Error::Codec(CodecError::Truncated)),
        }
    }

    fn reply<T: DeserializeOwned>(&mut self) -> Result<T> {
        let f = self.read()?;
        if f.ty != FrameType::Response {
            return Err(unexpected(f));
        }
        Ok(f.json()?)
    }

    fn send(&mut self, ty: FrameType, payload: &[u8]) -> Result<()> {
        codec::write_frame(&mut self.stream, ty, payload)?;
        Ok(())
    }
}

fn unexpected(f: Frame) -> Error {
    if let Ok(body) = f.json::<ErrorBody>() {
        if f.ty == FrameType::Error {
            return Error::Agent(body);
        }
    }
    Error::Protocol(format!("unexpected {:?} frame", f.ty))
}

impl Client {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            connect_timeout: Duration::from_secs(10),
        }
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

    /// Opens a connection, sends `Hello` and then `req`.
    fn open(&self, req: &Request) -> Result<Conn> {
        let mut stream = self.connect()?;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            client: concat!("supermachine-agent-client/", env!("CARGO_PKG_VERSION")).into(),
        };
        // One write for both frames: one packet on the wire, one round trip.
        let mut buf = codec::encode(
            FrameType::Hello,
            &serde_json::to_vec(&hello).map_err(io::Error::other)?,
        );
        buf.extend(codec::encode(
            FrameType::Request,
            &serde_json::to_vec(req).map_err(io::Error::other)?,
        ));
        stream.write_all(&buf)?;
        Ok(Conn {
            stream,
            hello_pending: true,
        })
    }

    fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T> {
        self.open(req)?.reply()
    }

    /// Waits until the agent answers a handshake, retrying connection failures until `timeout`.
    /// This is the readiness check a VMM uses after boot.
    pub fn wait_ready(&self, timeout: Duration) -> Result<ProbeInfo> {
        let start = std::time::Instant::now();
        loop {
            match self.probe() {
                Ok(p) => return Ok(p),
                Err(e @ (Error::Agent(_) | Error::Protocol(_))) => return Err(e),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Version, kernel, uptime, CPUs, memory and the agent's own resource use.
    pub fn probe(&self) -> Result<ProbeInfo> {
        self.call(&Request::Probe)
    }

    /// Sets the guest wall clock.
    pub fn set_time(&self, t: SystemTime) -> Result<()> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.call::<Empty>(&Request::SetTime {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        })
        .map(drop)
    }

    /// Parks every online CPU but the primary (aarch64 guests with smpark.ko), for a
    /// multi-vCPU snapshot; returns once all are parked. A no-op on one CPU.
    pub fn park(&self) -> Result<ParkStatus> {
        self.call(&Request::Park)
    }

    /// Releases the parked CPUs; returns once they all run again.
    pub fn unpark(&self) -> Result<ParkStatus> {
        self.call(&Request::Unpark)
    }

    /// Which CPUs are online and parked.
    pub fn park_status(&self) -> Result<ParkStatus> {
        self.call(&Request::ParkStatus)
    }

    /// `sync(2)` in the guest.
    pub fn sync(&self) -> Result<()> {
        self.call::<Empty>(&Request::Sync).map(drop)
    }

    /// Drops the guest's page, dentry and inode caches.
    pub fn drop_caches(&self) -> Result<()> {
        self.call::<Empty>(&Request::DropCaches).map(drop)
    }

    /// Powers off or reboots the guest. Returns once the agent has acknowledged.
    pub fn power(&self, action: PowerAction) -> Result<()> {
        self.call::<Empty>(&Request::Power { action }).map(drop)
    }

    /// Writes `data` to `path` in the guest atomically, with permission bits `mode`.
    pub fn write_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut c = self.open(&Request::WriteFile {
            path: path.into(),
            mode,
        })?;
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            c.send(FrameType::Data, chunk)?;
        }
        c.send(FrameType::Data, &[])?;
        let info: FileInfo = c.reply()?;
        if info.size != data.len() as u64 {
            return Err(Error::Protocol(format!(
                "agent wrote {} bytes of {}",
                info.size,
                data.len()
            )));
        }
        Ok(())
    }

    /// Reads `path` from the guest; fails with [`ErrorCode::TooLarge`] above `max_size` bytes.
    pub fn read_file(&self, path: &str, max_size: u64) -> Result<Vec<u8>> {
        let mut c = self.open(&Request::ReadFile {
            path: path.into(),
            max_size,
        })?;
        let info: FileInfo = c.reply()?;
        let mut data = Vec::with_capacity(info.size.min(max_size) as usize);
        loop {
            let f = c.read()?;
            match f.ty {
                FrameType::Data if f.payload.is_empty() => break,
                FrameType::Data if (data.len() + f.payload.len()) as u64 <= max_size => {
                    data.extend_from_slice(&f.payload)
                }
                FrameType::Data => return Err(Error::Protocol("file exceeds max_size".into())),
                _ => return Err(unexpected(f)),
            }
        }
        Ok(data)
    }

    /// The workload's pid and, once it has ended, its exit status.
    pub fn workload_status(&self) -> Result<WorkloadState> {
        self.call(&Request::WorkloadStatus)
    }

    /// Blocks until the workload ends.
    pub fn workload_wait(&self) -> Result<WorkloadState> {
        self.call(&Request::WorkloadWait)
    }

    /// Sends `signal` to the workload.
    pub fn workload_signal(&self, signal: i32) -> Result<()> {
        self.call::<Empty>(&Request::WorkloadSignal(SignalBody { signal }))
            .map(drop)
    }

    /// Starts an exec and returns its session; the caller streams stdin and reads events.
    pub fn exec(&self, req: &ExecRequest) -> Result<Exec> {
        let mut conn = self.open(&Request::Exec(req.clone()))?;
        let started: ExecStarted = conn.reply()?;
        Ok(Exec {
            conn,
            pid: started.pid,
        })
    }

    /// Runs an exec to completion with `stdin` as its input (when `req.stdin` is set) and
    /// collects its output.
    pub fn exec_with_input(&self, req: &ExecRequest, stdin: &[u8]) -> Result<Output> {
        let mut exec = self.exec(req)?;
        let writer = if req.stdin {
            let mut input = exec.input()?;
            let data = stdin.to_vec();
            Some(std::thread::spawn(move || -> Result<()> {
                // The process may exit without reading everything: a broken pipe is not an error.
                let _ = input.write(&data);
                let _ = input.close();
                Ok(())
            }))
        } else {
            None
        };
        let mut out = Output::default();
        loop {
            match exec.next_event()? {
                Event::Stdout(b) => out.stdout.extend(b),
                Event::Stderr(b) => out.stderr.extend(b),
                Event::Exit(s) => {
                    out.status = s;
                    break;
                }
            }
        }
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(out)
    }

    /// Runs an exec to completion with no stdin and collects its output.
    pub fn exec_output(&self, req: &ExecRequest) -> Result<Output> {
        self.exec_with_input(req, &[])
    }
}

/// A running exec: read its [`Event`]s; write stdin and control frames through [`Exec::input`].
#[derive(Debug)]
pub struct Exec {
    conn: Conn,
    pid: i32,
}

/// The writing half of an exec: stdin, signals and resizes.
#[derive(Debug)]
pub struct ExecInput {
    stream: UnixStream,
}

impl Exec {
    /// The guest pid of the process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A writer for stdin, signals and resizes, usable from another thread.
    pub fn input(&self) -> Result<ExecInput> {
        Ok(ExecInput {
            stream: self.conn.stream.try_clone()?,
        })
    }

    /// The next output chunk or the exit status.
    pub fn next_event(&mut self) -> Result<Event> {
        let f = self.conn.read()?;
        Ok(match f.ty {
            FrameType::Stdout => Event::Stdout(f.payload),
            FrameType::Stderr => Event::Stderr(f.payload),
            FrameType::Exit => Event::Exit(f.json()?),
            _ => return Err(unexpected(f)),
        })
    }

    /// Sends a signal to the exec's process group.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.input()?.signal(signal)
    }

    /// Resizes the exec's tty.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.input()?.resize(rows, cols)
    }
}

impl ExecInput {
    /// Streams `data` to the process's stdin, in chunks.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            codec::write_frame(&mut self.stream, FrameType::Stdin, chunk)?;
        }
        Ok(())
    }

    /// Closes the process's stdin.
    pub fn close(&mut self) -> Result<()> {
        codec::write_frame(&mut self.stream, FrameType::Stdin, &[])?;
        Ok(())
    }

    /// Sends a signal to the exec's process group.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        codec::write_json(&mut self.stream, FrameType::Signal, &SignalBody { signal })?;
        Ok(())
    }

    /// Resizes the exec's tty.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        codec::write_json(&mut self.stream, FrameType::Resize, &TtySize { rows, cols })?;
        Ok(())
    }
}
