//! Streaming execs: [`Client::exec`] hands back an [`Exec`] to read events from and
//! [`ExecInput`]s to write stdin, signals and resizes through, from any thread.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use super::conn::{agent_error, frame_bytes, Conn, Pool};
use super::exec::exit_status;
use super::wait::{send_all, Wait};
use super::{Client, Error, Event, Result};
use crate::codec::{self, HEADER_LEN};
use crate::protocol::*;

impl Client {
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
}

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
