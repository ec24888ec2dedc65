//! init-oci's error type. Every error ends up as one `init-oci: …` console line and a
//! documented fallback; none stops PID 1.

use std::fmt;
use std::io;
use std::time::Duration;

/// What went wrong.
#[derive(Debug)]
pub enum Error {
    /// A system call failed: `op` names it and its operands.
    Sys {
        /// What was attempted, e.g. `mount squashfs /dev/vda on /lower-0`.
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// A string handed to the kernel has a NUL byte inside.
    Nul(String),
    /// A contract file (or the env JSON) does not have its documented shape.
    Format {
        /// The file or stream.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Something the host should have done did not happen in time.
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The workload's `user[:group]` does not resolve in the image's `/etc/passwd` and
    /// `/etc/group`.
    User(supermachine_guest::user::Error),
}

/// init-oci's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A failed system call, with the error of the last one.
    pub fn last_os(op: impl Into<String>) -> Error {
        Error::Sys {
            op: op.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// A failed operation with the given I/O error.
    pub fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Sys {
            op: op.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sys { op, source } => write!(f, "{op}: {source}"),
            Error::Nul(s) => write!(f, "{s:?} has a NUL byte"),
            Error::Format { what, reason } => write!(f, "{what}: {reason}"),
            Error::Timeout { what, after } => write!(f, "{what}: nothing after {after:?}"),
            Error::User(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sys { source, .. } => Some(source),
            Error::User(e) => Some(e),
            _ => None,
        }
    }
}
