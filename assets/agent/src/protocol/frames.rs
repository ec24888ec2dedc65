//! The frame kinds and the binary payloads of EXIT and RESIZE frames.

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Host → agent: bytes for the exec's stdin; an empty payload is EOF.
    Stdin = 0,
    /// Agent → host: bytes the exec wrote to stdout (or its tty).
    Stdout = 1,
    /// Agent → host: bytes the exec wrote to stderr.
    Stderr = 2,
    /// Host → agent: [`WinSize`], `u16 BE cols, u16 BE rows`.
    Resize = 3,
    /// Host → agent: one byte, a signal number for the exec's process group.
    Signal = 4,
    /// Agent → host: [`ExitStatus`]; the last frame of an exec.
    Exit = 5,
    /// Agent → host: UTF-8 text; terminal, the host stops reading.
    Error = 6,
    /// Host → agent: JSON [`Control`](super::Control); the agent answers one CONTROL frame of ack JSON.
    Control = 0xfe,
    /// Host → agent: JSON [`ExecRequest`](super::ExecRequest); starts an exec session.
    Request = 0xff,
}

impl FrameKind {
    /// Decodes a kind byte; `None` for a byte this version does not know.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        use FrameKind::*;
        Some(match b {
            0 => Stdin,
            1 => Stdout,
            2 => Stderr,
            3 => Resize,
            4 => Signal,
            5 => Exit,
            6 => Error,
            0xfe => Control,
            0xff => Request,
            _ => return None,
        })
    }
}

/// How an exec ended: the payload of [`FrameKind::Exit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit status, or 128 + the signal that killed the process.
    pub code: u32,
    /// Peak resident set size of the process in KiB (0 when unknown).
    pub peak_rss_kib: u64,
}

impl ExitStatus {
    /// Encoded length: `u32 BE code` + `u64 BE peak RSS`.
    pub const LEN: usize = 12;

    /// The 12-byte payload.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.code.to_be_bytes());
        b[4..].copy_from_slice(&self.peak_rss_kib.to_be_bytes());
        b
    }

    /// Decodes a payload; the RSS is optional (4 bytes are enough), fewer than 4 is `None`.
    pub fn decode(p: &[u8]) -> Option<ExitStatus> {
        let code = u32::from_be_bytes(*p.first_chunk::<4>()?);
        let peak_rss_kib = p
            .get(4..12)
            .and_then(|r| r.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        Some(ExitStatus { code, peak_rss_kib })
    }

    /// The signal that killed the process, when `code` is above 128.
    pub fn signal(&self) -> Option<i32> {
        (self.code > 128 && self.code < 128 + 65).then(|| self.code as i32 - 128)
    }
}

/// A terminal size: the payload of [`FrameKind::Resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl WinSize {
    /// The 4-byte payload, `u16 BE cols, u16 BE rows`.
    pub fn encode(&self) -> [u8; 4] {
        let (c, r) = (self.cols.to_be_bytes(), self.rows.to_be_bytes());
        [c[0], c[1], r[0], r[1]]
    }

    /// Decodes a payload of exactly 4 bytes.
    pub fn decode(p: &[u8]) -> Option<WinSize> {
        let b: [u8; 4] = p.try_into().ok()?;
        Some(WinSize {
            cols: u16::from_be_bytes([b[0], b[1]]),
            rows: u16::from_be_bytes([b[2], b[3]]),
        })
    }
}
