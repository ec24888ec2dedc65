//! The client's [`Error`], and [`printable`] and [`shell_code`], which keep guest text and
//! guest exit codes from misleading whoever reads them.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::time::Duration;

use crate::codec::CodecError;
use crate::protocol::{ErrorCode, ExitStatus};

/// Characters of an error message [`Error`]'s `Display` shows.
const MAX_SHOWN: usize = 4096;

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

/// Characters that must not reach a terminal raw: the controls (Cc: C0, C1, DEL) and every
/// character of Unicode's categories Cf (format: bidi marks and overrides, zero-width
/// characters, the BOM, tags), Zl and Zp (line and paragraph separators), which reorder,
/// hide or break what is shown. The Cf/Zl/Zp ranges are Unicode 15's.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{890}'..='\u{891}'
                | '\u{8e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// `text` made safe to print on a terminal: control, format and separator characters (see
/// `unprintable`) escaped as `\n`, `\u{1b}`, `\u{200e}`, …, and anything past 4096 characters cut off with a
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
        // Issue 22: LRM, RLM, ALM, the line and paragraph separators, ZWSP, the BOM and a tag
        // character reached displayed errors raw.
        for c in [
            '\u{200e}',
            '\u{200f}',
            '\u{61c}',
            '\u{2028}',
            '\u{2029}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            let raw = format!("a{c}b");
            let shown = printable(&raw);
            assert_eq!(
                shown,
                format!("a{}b", c.escape_default()),
                "U+{:04X}",
                c as u32
            );
        }
        // Ordinary non-ASCII text stays as it is.
        assert!(matches!(printable("é ü 日本 עברית"), Cow::Borrowed(_)));
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
}
