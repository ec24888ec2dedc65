//! The agent's frame decoder over arbitrary bytes, the way a connection consumes them.
//!
//! Properties: `decode` never panics or over-reads; a decoded frame re-encodes to exactly the
//! bytes it used; an unknown kind byte leaves the stream in sync (the agent skips the frame);
//! a length above 16 MiB stops the stream (the agent answers ERROR and closes); payloads go
//! through the same parsing the agent and the client do.
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
                assert_eq!(codec::encode(frame.kind, &frame.payload), &buf[..used]);
                match frame.kind {
                    FrameKind::Request => {
                        if let Ok(r) = serde_json::from_slice::<ExecRequest>(&frame.payload) {
                            // What the agent accepts, the client can send back unchanged.
                            let again: ExecRequest =
                                serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
                            assert_eq!(again, r);
                        }
                    }
                    FrameKind::Control => {
                        if let Ok(c) = Control::parse(&frame.payload) {
                            let again = Control::parse(&serde_json::to_vec(&c).unwrap()).unwrap();
                            assert_eq!(again, c);
                        }
                    }
                    FrameKind::Resize => {
                        if let Some(w) = WinSize::decode(&frame.payload) {
                            assert_eq!(&w.encode()[..], &frame.payload[..]);
                        }
                    }
                    FrameKind::Exit => {
                        assert_eq!(
                            ExitStatus::decode(&frame.payload).is_some(),
                            frame.payload.len() >= 4
                        );
                    }
                    _ => {}
                }
                buf = &buf[used..];
            }
            Err(CodecError::UnknownKind(_)) => {
                let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                // The whole frame must be present, or the decoder would have asked for more.
                assert!(HEADER_LEN + len <= buf.len());
                buf = &buf[HEADER_LEN + len..];
            }
            Err(CodecError::TooLong(n)) => {
                assert!(n > MAX_FRAME_LEN);
                break;
            }
            Err(e) => panic!("decode over a slice can only fail on length or kind: {e}"),
        }
    }
    // The blocking reader agrees with the slice decoder on the first frame.
    let mut r = data;
    match (codec::read_frame(&mut r), codec::decode(data)) {
        (Ok(Some(a)), Ok(Some((b, _)))) => assert_eq!(a, b),
        (Ok(None), _) => assert!(data.is_empty()),
        (Err(CodecError::Truncated), Ok(None)) => {}
        (Err(CodecError::TooLong(a)), Err(CodecError::TooLong(b))) => assert_eq!(a, b),
        (Err(CodecError::UnknownKind(a)), Err(CodecError::UnknownKind(b))) => assert_eq!(a, b),
        (a, b) => panic!("read_frame {a:?} and decode {b:?} disagree"),
    }
});
