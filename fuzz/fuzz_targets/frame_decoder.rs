//! The agent's frame decoder over arbitrary bytes, the way a connection consumes them.
//!
//! Properties: `decode` never panics or over-reads; a decoded frame re-encodes to exactly the
//! bytes it used; an unknown type byte leaves the stream in sync (the agent skips the frame);
//! a bad length stops the stream (the agent answers `frame_too_large` and closes); control
//! payloads go through the same JSON parsing the agent and the client do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use supermachine_agent::codec::{self, CodecError, HEADER_LEN};
use supermachine_agent::protocol::*;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match codec::decode(buf) {
            Ok(None) => {
                // Only a frame's prefix is left: nothing may have been consumed wrongly.
                break;
            }
            Ok(Some((frame, used))) => {
                assert!(used >= HEADER_LEN && used <= buf.len());
                assert_eq!(codec::encode(frame.ty, &frame.payload), &buf[..used]);
                match frame.ty {
                    FrameType::Hello => drop(frame.json::<Hello>()),
                    FrameType::Request => {
                        if let Ok(r) = frame.json::<Request>() {
                            // What the agent accepts, the client can send back unchanged.
                            let again: Request =
                                serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
                            assert_eq!(again, r);
                        }
                    }
                    FrameType::Signal => drop(frame.json::<SignalBody>()),
                    FrameType::Resize => drop(frame.json::<TtySize>()),
                    FrameType::Exit => drop(frame.json::<ExitStatus>()),
                    FrameType::Error => drop(frame.json::<ErrorBody>()),
                    FrameType::Response => drop(frame.json::<ProbeInfo>()),
                    _ => {}
                }
                buf = &buf[used..];
            }
            Err(CodecError::UnknownType(_)) => {
                let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                // The whole frame must be present, or the decoder would have asked for more.
                assert!(HEADER_LEN - 1 + len <= buf.len());
                buf = &buf[HEADER_LEN - 1 + len..];
            }
            Err(CodecError::BadLength(n)) => {
                assert!(n == 0 || n > MAX_FRAME_LEN);
                break;
            }
            Err(e) => panic!("decode over a slice can only fail on length or type: {e}"),
        }
    }
    // The blocking reader agrees with the slice decoder on the first frame.
    let mut r = data;
    match (codec::read_frame(&mut r), codec::decode(data)) {
        (Ok(Some(a)), Ok(Some((b, _)))) => assert_eq!(a, b),
        (Ok(None), _) => assert!(data.is_empty()),
        (Err(CodecError::Truncated), Ok(None)) => {}
        (Err(CodecError::BadLength(a)), Err(CodecError::BadLength(b))) => assert_eq!(a, b),
        (Err(CodecError::UnknownType(a)), Err(CodecError::UnknownType(b))) => assert_eq!(a, b),
        (a, b) => panic!("read_frame {a:?} and decode {b:?} disagree"),
    }
});
