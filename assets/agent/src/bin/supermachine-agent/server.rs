//! Accept loop, per-connection handshake and request dispatch.
//!
//! Each connection runs on its own thread inside `catch_unwind`, so a fault in one never
//! reaches another or the accept loop. Errors become wire errors here, at the edge, and nowhere
//! else.

use std::io;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use supermachine_agent::codec::{self, CodecError, Frame};
use supermachine_agent::protocol::*;
use supermachine_agent::transport::{Listener, Peer, VMADDR_CID_HOST};

use crate::{exec, files, log, park, system, workload, Config};

/// The writing half of a connection, shared by the threads of an exec.
pub type Writer = Arc<Mutex<UnixStream>>;

/// Connections served at once; further ones get `Busy` and are closed.
const MAX_CONNECTIONS: usize = 256;

/// A client has this long to send its `Hello`, so silent clients cannot pin threads forever.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed request, as it goes on the wire.
#[derive(Debug)]
pub struct Fault {
    pub code: ErrorCode,
    pub message: String,
}

impl Fault {
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
    /// Read the next frame.
    Read,
    /// This frame was already read and is the next request.
    Frame(Frame),
    /// Close the connection.
    Close,
}

/// Sends an error frame; the connection keeps serving when that write worked.
pub fn reply_error(out: &Writer, f: Fault) -> Next {
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    let body = ErrorBody {
        code: f.code,
        message: f.message,
    };
    match codec::write_json(&mut *w, FrameType::Error, &body) {
        Ok(()) => Next::Read,
        Err(_) => Next::Close,
    }
}

/// Sends a response frame.
pub fn reply(out: &Writer, body: &impl serde::Serialize) -> Next {
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    match codec::write_json(&mut *w, FrameType::Response, body) {
        Ok(()) => Next::Read,
        Err(_) => Next::Close,
    }
}

/// Replies with `r`'s value or its fault.
pub fn reply_result<T: serde::Serialize>(out: &Writer, r: Result<T, Fault>) -> Next {
    match r {
        Ok(v) => reply(out, &v),
        Err(f) => reply_error(out, f),
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
            log!("refused connection from {peer:?}: only the host (CID {VMADDR_CID_HOST}) may connect");
            continue;
        }
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut s = stream;
            let _ = codec::write_json(
                &mut s,
                FrameType::Error,
                &ErrorBody {
                    code: ErrorCode::Busy,
                    message: format!("agent is serving {MAX_CONNECTIONS} connections"),
                },
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = active.clone();
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if panic::catch_unwind(AssertUnwindSafe(|| handle(stream, &config))).is_err() {
                    log!("connection handler panicked; connection dropped, agent still serving");
                }
                guard.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log!("cannot start connection thread: {e}");
        }
    }
}

/// Reads the handshake; answers `HelloOk` or an error. True when the connection may go on.
fn handshake(reader: &mut UnixStream, out: &Writer) -> bool {
    let _ = reader.set_read_timeout(Some(HELLO_TIMEOUT));
    let fault = match codec::read_frame(reader) {
        Ok(Some(f)) if f.ty == FrameType::Hello => match f.json::<Hello>() {
            Ok(h) if h.protocol == PROTOCOL_VERSION => {
                let _ = reader.set_read_timeout(None);
                let ok = HelloOk {
                    protocol: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    features: FEATURES.iter().map(|s| s.to_string()).collect(),
                };
                let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
                return codec::write_json(&mut *w, FrameType::HelloOk, &ok).is_ok();
            }
            Ok(h) => Fault::new(
                ErrorCode::UnsupportedProtocol,
                format!(
                    "client speaks protocol {}, this agent speaks {PROTOCOL_VERSION}",
                    h.protocol
                ),
            ),
            Err(e) => Fault::new(ErrorCode::BadFrame, e.to_string()),
        },
        Ok(Some(f)) => Fault::new(
            ErrorCode::UnexpectedFrame,
            format!("expected Hello as the first frame, got {:?}", f.ty),
        ),
        Ok(None) => return false,
        Err(CodecError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Fault::new(
                ErrorCode::TimedOut,
                format!(
                    "no Hello within {} s of connecting",
                    HELLO_TIMEOUT.as_secs()
                ),
            )
        }
        Err(e) => codec_fault(&e),
    };
    reply_error(out, fault);
    false
}

fn codec_fault(e: &CodecError) -> Fault {
    let code = match e {
        CodecError::BadLength(_) => ErrorCode::FrameTooLarge,
        CodecError::UnknownType(_) => ErrorCode::UnexpectedFrame,
        _ => ErrorCode::BadFrame,
    };
    Fault::new(code, e.to_string())
}

fn handle(stream: UnixStream, config: &Config) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let out: Writer = Arc::new(Mutex::new(writer));
    let mut reader = stream;
    if !handshake(&mut reader, &out) {
        return;
    }
    let mut next = Next::Read;
    loop {
        let frame = match next {
            Next::Close => return,
            Next::Frame(f) => f,
            Next::Read => match codec::read_frame(&mut reader) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                // The stream is still in sync after these: answer and go on.
                Err(e @ (CodecError::UnknownType(_) | CodecError::BadJson { .. })) => {
                    next = reply_error(&out, codec_fault(&e));
                    continue;
                }
                Err(e @ CodecError::BadLength(_)) => {
                    reply_error(&out, codec_fault(&e));
                    return;
                }
                Err(_) => return,
            },
        };
        next = dispatch(frame, &mut reader, &out, config);
    }
}

fn dispatch(frame: Frame, reader: &mut UnixStream, out: &Writer, config: &Config) -> Next {
    if frame.ty != FrameType::Request {
        return reply_error(
            out,
            Fault::new(
                ErrorCode::UnexpectedFrame,
                format!("expected a Request frame, got {:?}", frame.ty),
            ),
        );
    }
    let req: Request = match frame.json() {
        Ok(r) => r,
        Err(e) => return reply_error(out, Fault::new(ErrorCode::BadFrame, e.to_string())),
    };
    match req {
        Request::Exec(e) => exec::run(&e, reader, out),
        Request::Probe => reply(out, &system::probe()),
        Request::SetTime { secs, nanos } => {
            reply_result(out, system::set_time(config, secs, nanos))
        }
        Request::Sync => {
            system::sync();
            reply(out, &Empty {})
        }
        Request::DropCaches => reply_result(out, system::drop_caches()),
        Request::Power { action } => match system::check_power(config) {
            Ok(()) => {
                reply(out, &Empty {});
                system::power(action)
            }
            Err(f) => reply_error(out, f),
        },
        Request::WriteFile { path, mode } => files::write(&path, mode, reader, out),
        Request::ReadFile { path, max_size } => files::read(&path, max_size, out),
        Request::WorkloadStatus => reply_result(out, workload::status()),
        Request::WorkloadWait => reply_result(out, workload::wait()),
        Request::WorkloadSignal(s) => reply_result(out, workload::signal(s.signal)),
        Request::Park => reply_result(out, park::park(config)),
        Request::Unpark => reply_result(out, park::unpark(config)),
        Request::ParkStatus => reply_result(out, park::status()),
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
