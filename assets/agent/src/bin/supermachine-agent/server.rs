//! Accept loop and the connection edge: the first frame of a connection picks REQUEST (an exec)
//! or CONTROL (one action and its ack); failures become ERROR frames or `ok:false` acks here.
//!
//! Each connection runs on its own thread inside `catch_unwind`, so a fault in one never
//! reaches another or the accept loop.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use supermachine_agent::codec::{self, CodecError, Frame};
use supermachine_agent::protocol::*;
use supermachine_agent::transport::{Listener, Peer, VMADDR_CID_HOST};

use crate::inbox::Inbox;
use crate::{control, exec, log, park, Config};

/// The writing half of a connection, shared by the threads of an exec. A `File`, because
/// `--exec-stdio` serves pipes and `read`/`write` work on sockets and pipes alike.
pub type Writer = Arc<Mutex<File>>;

/// Connections served at once; further ones get an ERROR frame and are closed.
const MAX_CONNECTIONS: usize = 256;

/// A client has this long to send its first frame, so silent clients cannot pin threads.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused connections logged per second at most: any guest process can make the agent
/// refuse a connection, and the console is shared.
const REFUSALS_LOGGED_PER_SEC: u32 = 5;

/// A failed operation, before it goes on the wire.
#[derive(Debug)]
pub struct Fault {
    /// Its class, sent as the ack's `code`.
    pub code: ErrorCode,
    /// What failed: the action, the path and the cause.
    pub message: String,
}

impl Fault {
    /// A fault of class `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Fault {
        Fault {
            code,
            message: message.into(),
        }
    }

    /// Classifies an OS error, also through [`annotate`]; its message already names the
    /// operation and path.
    pub fn from_io(e: io::Error) -> Fault {
        let errno = e.raw_os_error().or_else(|| {
            let inner = e.get_ref()?;
            match inner.downcast_ref::<Annotated>() {
                Some(a) => a.source.raw_os_error(),
                None => inner.downcast_ref::<io::Error>()?.raw_os_error(),
            }
        });
        let code = match (errno, e.kind()) {
            (Some(libc::ENOSPC), _) | (Some(libc::EDQUOT), _) => ErrorCode::NoSpace,
            (_, io::ErrorKind::NotFound) => ErrorCode::NotFound,
            (_, io::ErrorKind::PermissionDenied) => ErrorCode::PermissionDenied,
            _ => ErrorCode::Io,
        };
        Fault::new(code, e.to_string())
    }

    /// The same fault with `what` in front of its message (supermachine's `action(path): …`).
    pub fn context(mut self, what: impl std::fmt::Display) -> Fault {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// An OS error with the operation (and path) that failed. It keeps the original error, so
/// [`Fault::from_io`] still sees its errno (ENOSPC must reach the host as `no_space`).
#[derive(Debug)]
pub struct Annotated {
    what: String,
    source: io::Error,
}

impl std::fmt::Display for Annotated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Annotated {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `e`, with `what` (the operation and path) in front of its message.
pub fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), Annotated { what, source: e })
}

/// How a connection goes on after a request.
#[derive(Debug)]
pub enum Next {
    /// Read the next request.
    Read,
    /// Close the connection.
    Close,
}

/// Sends a terminal ERROR frame.
pub fn send_error(out: &Writer, message: &str) -> Next {
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    match codec::write_frame(&mut *w, FrameKind::Error, message.as_bytes()) {
        Ok(()) => Next::Read,
        Err(_) => Next::Close,
    }
}

/// Only the host may talk to the agent: a vsock peer must be `VMADDR_CID_HOST`. Processes in
/// the guest reach the agent only as the local CID (or `VMADDR_CID_LOCAL`) and are refused.
fn allowed(peer: Peer) -> bool {
    match peer {
        Peer::Vsock(cid) => cid == VMADDR_CID_HOST,
        Peer::Unix => true,
    }
}

/// Logs a refusal unless this second's budget is spent.
fn log_refusal(peer: Peer) {
    static WINDOW: Mutex<(u64, u32)> = Mutex::new((0, 0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    if w.0 != now {
        if w.1 > REFUSALS_LOGGED_PER_SEC {
            log!(
                "{} more refused connections not logged",
                w.1 - REFUSALS_LOGGED_PER_SEC
            );
        }
        *w = (now, 0);
    }
    w.1 += 1;
    if w.1 <= REFUSALS_LOGGED_PER_SEC {
        log!("refused connection from {peer:?}: only the host (CID {VMADDR_CID_HOST}) may connect");
    }
}

/// Serves forever. Accept errors (EMFILE, ENOMEM) are logged and retried, never fatal.
pub fn serve(listener: Listener, config: Arc<Config>) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if !allowed(peer) {
            log_refusal(peer);
            continue;
        }
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut s = stream;
            let msg = format!("busy: the agent is serving {MAX_CONNECTIONS} connections");
            let _ = codec::write_frame(&mut s, FrameKind::Error, msg.as_bytes());
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        dispatch(stream, &config, &active);
    }
}

/// An idle connection thread, waiting for its next connection.
type IdleWorker = SyncSender<UnixStream>;

/// Idle connection threads kept: starting a thread (stack, TLS, clone) is a visible part of an
/// exec's round trip under TCG, and supermachine opens a connection per exec, one at a time.
const IDLE_WORKERS: usize = 1;

static IDLE: Mutex<Vec<IdleWorker>> = Mutex::new(Vec::new());

/// Hands `stream` to an idle connection thread, or starts one.
fn dispatch(stream: UnixStream, config: &Arc<Config>, active: &Arc<AtomicUsize>) {
    let idle = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let stream = match idle {
        Some(w) => match w.send(stream) {
            Ok(()) => return,
            // That thread is gone (it never is while listed, but the stream must not be lost).
            Err(e) => e.0,
        },
        None => stream,
    };
    let (config, counter) = (config.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("conn".into())
        .stack_size(256 * 1024)
        .spawn(move || worker(stream, &config, &counter));
    if let Err(e) = spawned {
        // The stream went with the failed closure and is closed.
        active.fetch_sub(1, Ordering::SeqCst);
        log!("cannot start connection thread: {e}");
    }
}

/// Serves connections: the first, then whichever the accept loop hands over while idle.
fn worker(first: UnixStream, config: &Config, active: &AtomicUsize) {
    let (tx, rx) = mpsc::sync_channel(1);
    let mut stream = first;
    loop {
        serve_connection(stream, config);
        active.fetch_sub(1, Ordering::SeqCst);
        {
            let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() >= IDLE_WORKERS {
                return;
            }
            idle.push(tx.clone());
        }
        match rx.recv() {
            Ok(s) => stream = s,
            Err(_) => return,
        }
    }
}

/// Serves one socket connection to its end.
fn serve_connection(stream: UnixStream, config: &Config) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    serve_stream(
        File::from(OwnedFd::from(stream)),
        File::from(OwnedFd::from(writer)),
        config,
    );
}

/// Serves one connection, reading `reader` and answering on `writer`, to its end; a panic in
/// a handler drops only this connection.
pub fn serve_stream(reader: File, writer: File, config: &Config) {
    let out: Writer = Arc::new(Mutex::new(writer));
    if panic::catch_unwind(AssertUnwindSafe(|| handle(reader, &out, config))).is_err() {
        log!("connection handler panicked; connection dropped, agent still serving");
    }
}

fn wrong_first(kind: u8) -> String {
    format!("first frame must be REQUEST(0xff) or CONTROL(0xfe), got 0x{kind:x}")
}

/// Sets `SO_RCVTIMEO` (no effect on pipes, whose peer is the local VMM process).
fn set_read_timeout(f: &File, t: Option<Duration>) {
    let t = t.unwrap_or_default();
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as _,
    };
    // SAFETY: tv is a valid timeval and the length passed is its size.
    unsafe {
        libc::setsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Reads the next request frame, with the first-frame deadline. `None`: close.
fn next_request(reader: &mut Inbox, out: &Writer) -> Option<Frame> {
    // A frame already buffered (sent right after the previous EXIT) needs no wait.
    let r = match reader.frame() {
        Ok(None) => {
            set_read_timeout(reader.file(), Some(FIRST_FRAME_TIMEOUT));
            let r = reader.read_frame();
            set_read_timeout(reader.file(), None);
            r
        }
        other => other,
    };
    let message = match r {
        Ok(Some(f)) => return Some(f),
        Ok(None) => return None,
        Err(CodecError::UnknownKind(k)) => wrong_first(k),
        Err(CodecError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            format!(
                "timed out: no REQUEST or CONTROL within {} s",
                FIRST_FRAME_TIMEOUT.as_secs()
            )
        }
        Err(e @ CodecError::TooLong(_)) => e.to_string(),
        Err(_) => return None,
    };
    send_error(out, &message);
    None
}

fn handle(reader: File, out: &Writer, config: &Config) {
    let mut reader = Inbox::new(reader);
    loop {
        let Some(frame) = next_request(&mut reader, out) else {
            return;
        };
        park::unpin_if_released();
        let next = match frame.kind {
            FrameKind::Request => exec::run(&frame.payload, &mut reader, out, config),
            FrameKind::Control => control::answer(&frame.payload, out, config),
            k => {
                send_error(out, &wrong_first(k as u8));
                Next::Close
            }
        };
        if let Next::Close = next {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_os_errors_keep_their_class() {
        let full = annotate(
            io::Error::from_raw_os_error(libc::ENOSPC),
            "write /tmp/x".into(),
        );
        let f = Fault::from_io(full);
        assert_eq!(f.code, ErrorCode::NoSpace);
        assert!(
            f.message.starts_with("write /tmp/x: No space left"),
            "{}",
            f.message
        );
        let missing = annotate(io::Error::from_raw_os_error(libc::ENOENT), "open /a".into());
        assert_eq!(Fault::from_io(missing).code, ErrorCode::NotFound);
        let other = annotate(io::Error::from_raw_os_error(libc::EIO), "read /b".into());
        assert_eq!(Fault::from_io(other).code, ErrorCode::Io);
    }
}
