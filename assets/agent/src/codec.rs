//! Frames: one kind byte, a `u32` big-endian payload length, the payload.
//!
//! The decoder checks the length before it allocates, so a hostile peer cannot make either side
//! reserve more than one maximum-size frame. [`decode`] is a pure function over a byte slice,
//! which is what the fuzz target drives; [`read_frame`] is the blocking form used on sockets.
//! [`write_frame`] never hands the socket more than [`MAX_WRITE`] bytes per `write`.

use std::fmt;
use std::io::{self, Read, Write};

pub use crate::protocol::HEADER_LEN;
use crate::protocol::{FrameKind, MAX_FRAME_LEN, MAX_WRITE};

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind.
    pub kind: FrameKind,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Why a frame could not be decoded.
#[derive(Debug)]
pub enum CodecError {
    /// The length field is above [`MAX_FRAME_LEN`]. The stream cannot be resynchronised.
    TooLong(u32),
    /// The kind byte is unknown. The frame's bytes were consumed; the stream is still in sync.
    UnknownKind(u8),
    /// The peer closed the stream in the middle of a frame.
    Truncated,
    /// The underlying read or write failed.
    Io(io::Error),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooLong(n) => write!(f, "frame len {n} > MAX_FRAME_LEN {MAX_FRAME_LEN}"),
            CodecError::UnknownKind(t) => write!(f, "unknown frame kind 0x{t:02x}"),
            CodecError::Truncated => write!(f, "stream ended in the middle of a frame"),
            CodecError::Io(e) => write!(f, "frame I/O failed: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl From<io::Error> for CodecError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CodecError::Truncated
        } else {
            CodecError::Io(e)
        }
    }
}

/// Validates a header; returns the raw kind byte and the payload length.
fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize), CodecError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLong(len));
    }
    Ok((h[0], len as usize))
}

/// The header of a frame of `kind` with `len` payload bytes.
pub fn header(kind: FrameKind, len: usize) -> [u8; HEADER_LEN] {
    let l = (len as u32).to_be_bytes();
    [kind as u8, l[0], l[1], l[2], l[3]]
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, else the frame and the number of
/// bytes it used. An unknown kind byte yields [`CodecError::UnknownKind`]; the caller can skip
/// the frame's `HEADER_LEN + len` bytes and go on.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, len) = parse_header(h)?;
    let Some(payload) = buf[HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    let kind = FrameKind::from_u8(kind).ok_or(CodecError::UnknownKind(kind))?;
    Ok(Some((
        Frame {
            kind,
            payload: payload.to_vec(),
        },
        HEADER_LEN + len,
    )))
}

/// Encodes a frame into a new buffer (tests, fuzzing and small host-side frames).
pub fn encode(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header(kind, payload.len()));
    buf.extend_from_slice(payload);
    buf
}

/// Reads one frame. `Ok(None)` means the peer closed the stream cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, CodecError> {
    let mut h = [0u8; HEADER_LEN];
    // Distinguish a clean close (no byte of the next frame) from a truncated frame.
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(CodecError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (kind, len) = parse_header(&h)?;
    // Grow with what arrives instead of trusting the length: a peer that announces 16 MiB and
    // sends nothing costs nothing.
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let got = r.by_ref().take(len as u64).read_to_end(&mut payload)?;
    if got < len {
        return Err(CodecError::Truncated);
    }
    let kind = FrameKind::from_u8(kind).ok_or(CodecError::UnknownKind(kind))?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame, at most [`MAX_WRITE`] bytes per `write` call. Callers sharing a stream
/// hold its lock across the call, so frames never interleave.
pub fn write_frame(w: &mut impl Write, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME_LEN as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame payload of {} bytes exceeds MAX_FRAME_LEN {MAX_FRAME_LEN}",
                payload.len()
            ),
        ));
    }
    // The header goes out with the first piece of payload: one packet for small frames.
    let first = payload.len().min(MAX_WRITE - HEADER_LEN);
    let mut buf = [0u8; MAX_WRITE];
    buf[..HEADER_LEN].copy_from_slice(&header(kind, payload.len()));
    buf[HEADER_LEN..HEADER_LEN + first].copy_from_slice(&payload[..first]);
    w.write_all(&buf[..HEADER_LEN + first])?;
    for piece in payload[first..].chunks(MAX_WRITE) {
        w.write_all(piece)?;
    }
    Ok(())
}

/// Writes a frame whose payload is `body` as JSON.
pub fn write_json(
    w: &mut impl Write,
    kind: FrameKind,
    body: &impl serde::Serialize,
) -> io::Result<()> {
    let payload = serde_json::to_vec(body).map_err(io::Error::other)?;
    write_frame(w, kind, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode(FrameKind::Stdout, b"hello");
        assert_eq!(bytes, [1, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let (f, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.kind, FrameKind::Stdout);
        assert_eq!(f.payload, b"hello");
        assert_eq!(read_frame(&mut &bytes[..]).unwrap().unwrap(), f);
        // An empty STDIN is EOF: a valid zero-length frame.
        assert_eq!(encode(FrameKind::Stdin, b""), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn partial_input_is_incomplete_not_an_error() {
        let bytes = encode(FrameKind::Request, &[7; 100]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_long_frames_before_allocating() {
        let huge = [0xff, 0x01, 0x00, 0x00, 0x01];
        let e = decode(&huge).unwrap_err();
        assert_eq!(e.to_string(), "frame len 16777217 > MAX_FRAME_LEN 16777216");
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(CodecError::TooLong(16777217))
        ));
        // A 16 MiB announcement with nothing behind it is a truncation, not an allocation.
        let empty = [0xff, 0x01, 0x00, 0x00, 0x00];
        assert!(matches!(
            read_frame(&mut &empty[..]),
            Err(CodecError::Truncated)
        ));
    }

    #[test]
    fn unknown_kind_and_truncation() {
        let bytes = [0x7e, 0, 0, 0, 1, 9];
        assert!(matches!(decode(&bytes), Err(CodecError::UnknownKind(0x7e))));
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
        assert!(matches!(
            read_frame(&mut &[1, 0, 0][..]),
            Err(CodecError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[1, 0, 0, 0, 3, 1][..]),
            Err(CodecError::Truncated)
        ));
    }

    /// Records the size of every `write` call.
    struct Writes(Vec<usize>, Vec<u8>);
    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.push(b.len());
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn large_frames_go_out_in_small_writes() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut w = Writes(Vec::new(), Vec::new());
        write_frame(&mut w, FrameKind::Control, &payload).unwrap();
        assert!(w.0.iter().all(|&n| n <= MAX_WRITE), "{:?}", w.0);
        assert_eq!(w.1, encode(FrameKind::Control, &payload));
        let mut small = Writes(Vec::new(), Vec::new());
        write_frame(&mut small, FrameKind::Stdout, &[1; MAX_WRITE - HEADER_LEN]).unwrap();
        assert_eq!(small.0, [MAX_WRITE]);
    }

    #[test]
    fn protocol_md_worked_examples_are_exact() {
        assert_eq!(
            encode(FrameKind::Control, br#"{"action":"probe"}"#)[..5],
            [0xfe, 0, 0, 0, 0x12]
        );
        assert_eq!(
            encode(FrameKind::Request, br#"{"argv":["cat"]}"#)[..5],
            [0xff, 0, 0, 0, 0x10]
        );
        let exit = crate::protocol::ExitStatus {
            code: 0,
            peak_rss_kib: 416,
        };
        assert_eq!(
            encode(FrameKind::Exit, &exit.encode()),
            [5, 0, 0, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xa0]
        );
        let e = CodecError::TooLong(16777217).to_string();
        assert_eq!(
            encode(FrameKind::Error, e.as_bytes())[..5],
            [6, 0, 0, 0, 0x2b]
        );
    }

    #[test]
    fn write_refuses_oversized_payload() {
        let mut out = Vec::new();
        let big = vec![0u8; MAX_FRAME_LEN as usize + 1];
        assert!(write_frame(&mut out, FrameKind::Stdin, &big).is_err());
        assert!(out.is_empty());
    }
}
