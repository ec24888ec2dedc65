//! The connection edge: the wire vocabulary every connection speaks, and the one place where
//! typed errors become wire errors.
//!
//! Handlers ([`files`], [`system`], [`workload`], [`park`], and [`exec`](crate::exec)'s plan)
//! return errors of their own that name the action, the path and the cause; they know nothing
//! of frames or acks. A CONTROL action's error becomes a [`Fault`] here: the [`ErrorCode`] of
//! its class and its message, which [`ack`] sends as `{"ok":false,"error","code"}`. A
//! REQUEST's error (`exec::Error`) goes out as an ERROR frame with its text ([`send_error`]).
//! OS errors are classified by errno, also through [`annotate`](crate::oserror::annotate):
//! ENOSPC and EDQUOT are `no_space`, ENOENT `not_found`, EACCES and EPERM
//! `permission_denied`, any other `io`.
//!
//! This module imports the handlers' error types and no handler imports it, so the
//! dependencies run one way: [`server`](crate::server) → [`control`](crate::control) and
//! [`exec`](crate::exec) → edge → handlers.

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use supermachine_agent::codec;
use supermachine_agent::protocol::{Ack, AckError, ControlParseError, ErrorCode, FrameKind};

use crate::{files, oserror, park, sys, system, workload};

/// The writing half of a connection, shared by the threads of an exec. A `File`, because
/// `--exec-stdio` serves pipes and `read`/`write` work on sockets and pipes alike.
pub type Writer = Arc<Mutex<File>>;

/// How a connection goes on after a request.
#[derive(Debug)]
pub enum Next {
    /// Read the next request.
    Read,
    /// Close the connection.
    Close,
}

/// A failed operation as it goes on the wire.
#[derive(Debug)]
pub struct Fault {
    /// Its class, sent as the ack's `code`.
    pub code: ErrorCode,
    /// What failed: the action, the path and the cause.
    pub message: String,
}

impl Fault {
    /// A fault of class `code` whose message is `e`'s text.
    pub fn new(code: ErrorCode, e: impl fmt::Display) -> Fault {
        Fault {
            code,
            message: e.to_string(),
        }
    }
}

/// The class of an OS error, by its errno (also through
/// [`annotate`](crate::oserror::annotate)), else by its kind.
pub fn classify(e: &io::Error) -> ErrorCode {
    match (oserror::errno(e), e.kind()) {
        (Some(libc::ENOSPC), _) | (Some(libc::EDQUOT), _) => ErrorCode::NoSpace,
        (_, io::ErrorKind::NotFound) => ErrorCode::NotFound,
        (_, io::ErrorKind::PermissionDenied) => ErrorCode::PermissionDenied,
        _ => ErrorCode::Io,
    }
}

impl From<ControlParseError> for Fault {
    fn from(e: ControlParseError) -> Fault {
        let code = match e {
            ControlParseError::UnknownAction(_) => ErrorCode::UnknownAction,
            ControlParseError::Json(_) => ErrorCode::BadFrame,
        };
        Fault::new(code, e)
    }
}

impl From<files::Error> for Fault {
    fn from(e: files::Error) -> Fault {
        use files::Cause;
        let code = match &e.cause {
            Cause::Os { source, .. } => classify(source),
            Cause::OverMax { .. } | Cause::OverReadLimit(_) => ErrorCode::TooLarge,
            Cause::NotAFile(_)
            | Cause::Base64(_)
            | Cause::BadToken(_)
            | Cause::Gap { .. }
            | Cause::NotRegular
            | Cause::NotOurs { .. }
            | Cause::OffsetPastEnd { .. } => ErrorCode::InvalidArgument,
        };
        Fault::new(code, e)
    }
}

impl From<system::Refused> for Fault {
    fn from(e: system::Refused) -> Fault {
        Fault::new(ErrorCode::PermissionDenied, e)
    }
}

impl From<system::Error> for Fault {
    fn from(e: system::Error) -> Fault {
        let code = match &e {
            system::Error::Refused(_) => ErrorCode::PermissionDenied,
            system::Error::SetClock(source) | system::Error::DropCaches(source) => classify(source),
        };
        Fault::new(code, e)
    }
}

impl From<workload::Error> for Fault {
    fn from(e: workload::Error) -> Fault {
        let code = match &e {
            workload::Error::NoPid => ErrorCode::NoWorkload,
            workload::Error::Kill { source, .. } => classify(source),
        };
        Fault::new(code, e)
    }
}

impl From<park::Error> for Fault {
    fn from(e: park::Error) -> Fault {
        let code = match &e {
            park::Error::Refused(_) => ErrorCode::PermissionDenied,
            park::Error::Open { source, .. } => classify(source),
            // Any other ioctl failure is the module's own, whatever its errno says.
            park::Error::Ioctl { .. } if e.timed_out() => ErrorCode::TimedOut,
            park::Error::Ioctl { .. } => ErrorCode::Io,
            park::Error::NotLoaded { .. } => ErrorCode::Unsupported,
        };
        Fault::new(code, e)
    }
}

/// The JSON of a CONTROL ack: `{"ok":true, …}` for a value, `{"ok":false,"error","code"}` for
/// an error.
pub fn ack<T: Serialize, E: Into<Fault>>(r: Result<T, E>) -> serde_json::Result<Vec<u8>> {
    match r {
        Ok(body) => serde_json::to_vec(&Ack { ok: true, body }),
        Err(e) => {
            let f = e.into();
            serde_json::to_vec(&AckError {
                ok: false,
                error: f.message,
                code: Some(f.code),
            })
        }
    }
}

/// Sends a CONTROL ack frame.
pub fn send_ack(out: &Writer, json: &[u8]) -> Next {
    send(out, FrameKind::Control, json)
}

/// Sends a terminal ERROR frame whose text is `e`'s.
pub fn send_error(out: &Writer, e: impl fmt::Display) -> Next {
    send(out, FrameKind::Error, e.to_string().as_bytes())
}

fn send(out: &Writer, kind: FrameKind, payload: &[u8]) -> Next {
    let w = out.lock().unwrap_or_else(|e| e.into_inner());
    match codec::write_frame(&mut Blocking(&w), kind, payload) {
        Ok(()) => Next::Read,
        Err(_) => Next::Close,
    }
}

/// Blocking writes on a connection kept non-blocking (so an exec's poll loop needs no flag
/// changes): a full socket buffer waits in `poll` for room.
pub struct Blocking<'a>(pub &'a File);

impl std::io::Write for Blocking<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match (&*self.0).write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    sys::wait(std::os::fd::AsRawFd::as_raw_fd(self.0), libc::POLLOUT, None);
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oserror::annotate;

    #[test]
    fn annotated_os_errors_keep_their_class() {
        let full = annotate(
            io::Error::from_raw_os_error(libc::ENOSPC),
            "write /tmp/x".into(),
        );
        let f = Fault::new(classify(&full), &full);
        assert_eq!(f.code, ErrorCode::NoSpace);
        assert!(
            f.message.starts_with("write /tmp/x: No space left"),
            "{}",
            f.message
        );
        let missing = annotate(io::Error::from_raw_os_error(libc::ENOENT), "open /a".into());
        assert_eq!(classify(&missing), ErrorCode::NotFound);
        let other = annotate(io::Error::from_raw_os_error(libc::EIO), "read /b".into());
        assert_eq!(classify(&other), ErrorCode::Io);
        let denied = annotate(io::Error::from_raw_os_error(libc::EPERM), "kill 7".into());
        assert_eq!(classify(&denied), ErrorCode::PermissionDenied);
    }

    fn fault(e: impl Into<Fault>) -> (ErrorCode, String) {
        let f = e.into();
        (f.code, f.message)
    }

    #[test]
    fn file_errors_get_their_class_and_keep_their_text() {
        let missing = std::env::temp_dir().join(format!("smk-edge-{}/no/such", std::process::id()));
        let missing = missing.to_string_lossy().into_owned();
        let (code, message) = fault(files::write_whole(&missing, "", None).unwrap_err());
        assert_eq!(code, ErrorCode::NotFound);
        assert!(
            message.starts_with(&format!("write_file({missing}): create ")),
            "{message}"
        );
        let (code, message) = fault(files::write_whole("/tmp/x", "ab", None).unwrap_err());
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert_eq!(
            message,
            "write_file(/tmp/x): bad base64: length 2 is not a multiple of 4"
        );
        let (code, _) = fault(files::read_whole("/proc/self/exe", 1).unwrap_err());
        assert_eq!(code, ErrorCode::TooLarge);
    }

    #[test]
    fn handler_errors_get_their_class() {
        let host = crate::Config { guest: false };
        let (code, message) = fault(system::refuse_on_host(&host, "power").unwrap_err());
        assert_eq!(code, ErrorCode::PermissionDenied);
        assert!(message.starts_with("power: refused: "), "{message}");
        let (code, _) = fault(park::park(&host, &park::Parking::new()).unwrap_err());
        assert_eq!(code, ErrorCode::PermissionDenied);
        let (code, message) = fault(workload::Error::NoPid);
        assert_eq!(code, ErrorCode::NoWorkload);
        assert_eq!(
            message,
            "no workload pid recorded yet (workload may not be running)"
        );
        let timed_out = park::Error::Ioctl {
            op: "park",
            source: io::Error::from_raw_os_error(libc::ETIMEDOUT),
        };
        let (code, message) = fault(timed_out);
        assert_eq!(code, ErrorCode::TimedOut);
        assert!(message.ends_with("see the guest console)"), "{message}");
        let denied = park::Error::Ioctl {
            op: "park",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(fault(denied).0, ErrorCode::Io);
        let unknown = ControlParseError::UnknownAction("x".into());
        assert_eq!(fault(unknown).0, ErrorCode::UnknownAction);
    }
}
