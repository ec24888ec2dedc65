//! Length-prefixed frames: `u32` little-endian length, one type byte, payload.
//!
//! The length counts the type byte and the payload, so it is at least 1 and at most
//! [`MAX_FRAME_LEN`]. The decoder checks the length before it allocates, so a hostile peer
//! cannot make either side reserve more than one maximum-size frame. [`decode`] is a pure
//! function over a byte slice, which is what the fuzz target drives; [`read_frame`] is the
//! blocking form used on sockets.

use std::fmt;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::{FrameType, MAX_FRAME_LEN};

/// Bytes before the payload: 4 length bytes and the type byte.
pub const HEADER_LEN: usize = 5;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Frame type.
    pub ty: FrameType,
    /// Payload bytes (JSON for control frames, raw bytes for data frames).
    pub payload: Vec<u8>,
}

impl Frame {
    /// Parses the payload as the JSON body `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        serde_json::from_slice(&self.payload).map_err(|e| CodecError::BadJson {
            ty: self.ty,
            reason: e.to_string(),
        })
    }
}

/// Why a frame could not be decoded.
#[derive(Debug)]
pub enum CodecError {
    /// The length field is 0 or above [`MAX_FRAME_LEN`]. The stream cannot be resynchronised.
    BadLength(u32),
    /// The type byte is unknown. The frame's bytes were consumed; the stream is still in sync.
    UnknownType(u8),
    /// A control frame's payload is not the expected JSON (or not UTF-8).
    BadJson {
        /// The frame's type.
        ty: FrameType,
        /// serde_json's description.
        reason: String,
    },
    /// The peer closed the stream in the middle of a frame.
    Truncated,
    /// The underlying read or write failed.
    Io(io::Error),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadLength(n) => {
                write!(f, "frame length {n} is outside 1..={MAX_FRAME_LEN}")
            }
            CodecError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            CodecError::BadJson { ty, reason } => {
                write!(f, "bad JSON in {ty:?} frame: {reason}")
            }
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

/// Validates a header; returns the payload length and the raw type byte.
fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(usize, u8), CodecError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(CodecError::BadLength(len));
    }
    Ok((len as usize - 1, h[4]))
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, else the frame and the number of
/// bytes it used. An unknown type byte yields [`CodecError::UnknownType`]; the caller can skip
/// the frame's `HEADER_LEN + payload` bytes and go on.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (len, ty) = parse_header(header)?;
    let Some(payload) = buf[HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    let ty = FrameType::from_u8(ty).ok_or(CodecError::UnknownType(ty))?;
    Ok(Some((
        Frame {
            ty,
            payload: payload.to_vec(),
        },
        HEADER_LEN + len,
    )))
}

/// Encodes a frame into a new buffer.
///
/// # Panics
/// Never for payloads up to `MAX_FRAME_LEN - 1` bytes; larger payloads are a caller bug and
/// are refused with an `InvalidInput` error by [`write_frame`] before this is reached.
pub fn encode(ty: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    buf.push(ty as u8);
    buf.extend_from_slice(payload);
    buf
}

/// Reads one frame. `Ok(None)` means the peer closed the stream cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    // Distinguish a clean close (no byte of the next frame) from a truncated frame.
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(CodecError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (len, ty) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let ty = FrameType::from_u8(ty).ok_or(CodecError::UnknownType(ty))?;
    Ok(Some(Frame { ty, payload }))
}

/// Writes one frame with a single `write_all`, so frames from threads sharing a locked writer
/// never interleave.
pub fn write_frame(w: &mut impl Write, ty: FrameType, payload: &[u8]) -> io::Result<()> {
    if payload.len() >= MAX_FRAME_LEN as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame payload of {} bytes exceeds the maximum",
                payload.len()
            ),
        ));
    }
    w.write_all(&encode(ty, payload))
}

/// Writes a control frame whose payload is `body` as JSON.
pub fn write_json(w: &mut impl Write, ty: FrameType, body: &impl Serialize) -> io::Result<()> {
    let payload = serde_json::to_vec(body).map_err(io::Error::other)?;
    write_frame(w, ty, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ExitStatus;

    #[test]
    fn round_trip() {
        let bytes = encode(FrameType::Stdout, b"hello");
        assert_eq!(bytes, [6, 0, 0, 0, 0x21, b'h', b'e', b'l', b'l', b'o']);
        let (f, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.ty, FrameType::Stdout);
        assert_eq!(f.payload, b"hello");
        assert_eq!(read_frame(&mut &bytes[..]).unwrap().unwrap(), f);
    }

    #[test]
    fn partial_input_is_incomplete_not_an_error() {
        let bytes = encode(FrameType::Data, &[7; 100]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_bad_lengths_before_allocating() {
        let huge = [0xff, 0xff, 0xff, 0xff, 0x21];
        assert!(matches!(
            decode(&huge),
            Err(CodecError::BadLength(u32::MAX))
        ));
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(CodecError::BadLength(_))
        ));
        let zero = [0, 0, 0, 0, 0x21];
        assert!(matches!(decode(&zero), Err(CodecError::BadLength(0))));
    }

    #[test]
    fn unknown_type_and_truncation() {
        let bytes = [1, 0, 0, 0, 0x7e];
        assert!(matches!(decode(&bytes), Err(CodecError::UnknownType(0x7e))));
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
        assert!(matches!(
            read_frame(&mut &[3, 0, 0][..]),
            Err(CodecError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[3, 0, 0, 0, 0x21, 1][..]),
            Err(CodecError::Truncated)
        ));
    }

    #[test]
    fn json_errors_name_the_frame() {
        let f = Frame {
            ty: FrameType::Request,
            payload: vec![0xff, 0xfe],
        };
        let e = f
            .json::<crate::protocol::Request>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("Request"), "{e}");
    }

    #[test]
    fn protocol_md_worked_examples_are_exact() {
        let hello = encode(
            FrameType::Hello,
            br#"{"protocol":1,"client":"doc-example"}"#,
        );
        assert_eq!(hello[..5], [0x26, 0, 0, 0, 0x01]);
        let probe = encode(FrameType::Request, br#"{"op":"probe"}"#);
        assert_eq!(probe[..5], [0x0f, 0, 0, 0, 0x10]);
        let exit = ExitStatus {
            code: Some(0),
            ..ExitStatus::default()
        };
        let mut buf = Vec::new();
        write_json(&mut buf, FrameType::Exit, &exit).unwrap();
        assert_eq!(buf[..5], [0x1d, 0, 0, 0, 0x23]);
        assert_eq!(&buf[5..], br#"{"code":0,"timed_out":false}"#);
        assert_eq!(encode(FrameType::Stdin, b"")[..], [1, 0, 0, 0, 0x20]);
    }

    #[test]
    fn write_refuses_oversized_payload() {
        let mut out = Vec::new();
        let big = vec![0u8; MAX_FRAME_LEN as usize];
        assert!(write_frame(&mut out, FrameType::Data, &big).is_err());
        assert!(out.is_empty());
    }
}
