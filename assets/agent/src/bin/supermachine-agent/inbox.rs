//! A connection's reading half: a buffer in front of the stream.
//!
//! Frames are parsed out of large reads, so a burst of small frames (STDIN, SIGNAL) costs one
//! `read`, not two per frame. The buffer belongs to the connection, not to one request: bytes
//! that arrive past the end of an exec stay for the next request.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use supermachine_agent::codec::{self, CodecError, Frame, HEADER_LEN};
use supermachine_agent::protocol::MAX_FRAME_LEN;

use crate::{spare, sys};

/// What one read asks for: a large STDIN frame arrives in few reads.
const READ_SIZE: usize = 64 * 1024;

/// The buffer's size between large frames; it grows with the bytes of a large frame as they
/// arrive (doubling, up to the frame: the codec caps frames at `MAX_FRAME_LEN`), never to a
/// length a header merely claims, and shrinks back once that frame is consumed.
const RESTING_SIZE: usize = 2 * READ_SIZE;

/// A stream with a read buffer. Unread bytes are `buf[start..end]`.
pub struct Inbox {
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

thread_local! {
    /// The resting buffer of this thread's last connection, for its next: a fresh one is an
    /// `mmap` of 128 KiB, faulted in as it fills and unmapped at the connection's end.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for Inbox {
    fn drop(&mut self) {
        spare::keep(&SPARE, std::mem::take(&mut self.buf), RESTING_SIZE);
    }
}

impl Inbox {
    /// Buffers `file`.
    pub fn new(file: File) -> Inbox {
        Inbox {
            file,
            buf: spare::take(&SPARE, RESTING_SIZE),
            start: 0,
            end: 0,
        }
    }

    /// The stream's descriptor.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads once into the buffer: `Ok(0)` is end of stream; a non-blocking stream with nothing
    /// to read gives `WouldBlock`.
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > RESTING_SIZE {
                self.buf.truncate(RESTING_SIZE);
                self.buf.shrink_to_fit();
            }
        }
        if self.buf.len() - self.end < READ_SIZE {
            // Move the unread bytes to the front, and grow when a frame needs more room.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            // A header claiming 16 MiB with little behind it costs what arrived, not 16 MiB:
            // 100 connections doing that took the agent to 1.6 GB when it sized the buffer
            // from the header (issue 22).
            let frame = self.pending_frame_len();
            let mut need = self.end + READ_SIZE;
            if frame > need {
                need = need.max((self.buf.len() * 2).min(frame));
            }
            if need > self.buf.len() {
                self.buf.resize(need, 0);
            }
        }
        loop {
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The whole length of the frame whose header is buffered: 0 without a full header, or
    /// with a length over `MAX_FRAME_LEN` (which [`Inbox::frame`] reports instead of growing).
    fn pending_frame_len(&self) -> usize {
        match self.buf[self.start..self.end].first_chunk::<HEADER_LEN>() {
            Some(h) => match u32::from_be_bytes([h[1], h[2], h[3], h[4]]) {
                len if len <= MAX_FRAME_LEN => HEADER_LEN + len as usize,
                _ => 0,
            },
            None => 0,
        }
    }

    /// Whether bytes are buffered that no frame has consumed yet.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// The next complete frame from the buffer, without reading. A frame of unknown kind is
    /// consumed and reported as [`CodecError::UnknownKind`]; the stream stays in sync.
    pub fn frame(&mut self) -> Result<Option<Frame>, CodecError> {
        match codec::decode(&self.buf[self.start..self.end]) {
            Ok(Some((frame, used))) => {
                self.start += used;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(CodecError::UnknownKind(k)) => {
                // decode found the whole frame before looking at its kind.
                self.start += self.pending_frame_len();
                Err(CodecError::UnknownKind(k))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits up to `wait` for a whole frame on a non-blocking stream. A timeout is
    /// `CodecError::Io` of kind `TimedOut`; `Ok(None)`: the peer closed between frames.
    pub fn read_frame_within(&mut self, wait: Duration) -> Result<Option<Frame>, CodecError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(f) = self.frame()? {
                return Ok(Some(f));
            }
            match self.fill() {
                Ok(0) if self.has_buffered() => return Err(CodecError::Truncated),
                Ok(0) => return Ok(None),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(CodecError::from(e)),
            }
            if Instant::now() >= deadline {
                return Err(CodecError::Io(io::ErrorKind::TimedOut.into()));
            }
            sys::wait(self.fd(), libc::POLLIN, Some(deadline));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use supermachine_agent::protocol::FrameKind;

    fn pair() -> (Inbox, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (Inbox::new(File::from(std::os::fd::OwnedFd::from(a))), b)
    }

    #[test]
    fn frames_split_and_batched_arrive_whole_and_in_order() {
        let (mut inbox, mut peer) = pair();
        let mut bytes = codec::encode(FrameKind::Stdin, b"one");
        bytes.extend(codec::encode(FrameKind::Signal, &[15]));
        let big = vec![7u8; 300 * 1024];
        bytes.extend(codec::encode(FrameKind::Stdin, &big));
        let writer = std::thread::spawn(move || {
            for piece in bytes.chunks(4099) {
                peer.write_all(piece).expect("write");
            }
        });
        let a = inbox
            .read_frame_within(Duration::from_secs(5))
            .expect("read")
            .expect("frame");
        assert_eq!((a.kind, &a.payload[..]), (FrameKind::Stdin, &b"one"[..]));
        let b = inbox
            .read_frame_within(Duration::from_secs(5))
            .expect("read")
            .expect("frame");
        assert_eq!((b.kind, &b.payload[..]), (FrameKind::Signal, &[15u8][..]));
        let c = inbox
            .read_frame_within(Duration::from_secs(5))
            .expect("read")
            .expect("frame");
        assert_eq!(c.payload, big);
        writer.join().expect("writer");
        assert!(inbox
            .read_frame_within(Duration::from_secs(5))
            .expect("clean close")
            .is_none());
        assert!(inbox.buf.len() <= RESTING_SIZE, "the buffer shrank back");
    }

    #[test]
    fn a_claimed_length_costs_only_what_arrives() {
        let (a, mut peer) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("non-blocking");
        let mut inbox = Inbox::new(File::from(std::os::fd::OwnedFd::from(a)));
        peer.write_all(&codec::header(FrameKind::Stdin, MAX_FRAME_LEN as usize))
            .expect("write");
        peer.write_all(&vec![1u8; 100 * 1024]).expect("write");
        let got = inbox.read_frame_within(Duration::from_millis(200));
        assert!(
            matches!(&got, Err(CodecError::Io(e)) if e.kind() == io::ErrorKind::TimedOut),
            "{got:?}"
        );
        assert!(
            inbox.buf.len() <= 4 * RESTING_SIZE,
            "{} bytes of buffer for 100 KiB received",
            inbox.buf.len()
        );
    }

    #[test]
    fn unknown_kinds_are_skipped_and_truncation_is_reported() {
        let (mut inbox, mut peer) = pair();
        peer.write_all(&[0x42, 0, 0, 0, 2, 9, 9]).expect("write");
        peer.write_all(&codec::encode(FrameKind::Stdin, b"ok"))
            .expect("write");
        peer.write_all(&[FrameKind::Stdin as u8, 0, 0, 0, 9, 1])
            .expect("write");
        drop(peer);
        assert!(matches!(
            inbox.read_frame_within(Duration::from_secs(5)),
            Err(CodecError::UnknownKind(0x42))
        ));
        let f = inbox
            .read_frame_within(Duration::from_secs(5))
            .expect("read")
            .expect("frame");
        assert_eq!(f.payload, b"ok");
        assert!(matches!(
            inbox.read_frame_within(Duration::from_secs(5)),
            Err(CodecError::Truncated)
        ));
    }
}
