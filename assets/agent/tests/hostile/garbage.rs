//! Garbage and huge lengths.

use supermachine_agent::client::Error;
use supermachine_agent::codec::{self, encode, CodecError};
use supermachine_agent::protocol::*;

use crate::fake::*;

#[test]
fn garbage_and_huge_lengths_are_refused_before_allocating() {
    let probe = |bytes: &[u8]| {
        let fake = answering(bytes.to_vec());
        within(BOUND, || fake.client().probe().unwrap_err())
    };
    // Text where a frame belongs: 'H' is no kind, "TTP/" no sane length.
    let e = probe(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    assert!(
        matches!(e, Error::Codec(CodecError::TooLong(0x5454_502f))),
        "{e:?}"
    );
    let e = probe(&[0xff; 5]);
    assert!(
        matches!(e, Error::Codec(CodecError::TooLong(u32::MAX))),
        "{e:?}"
    );
    assert!(e.to_string().contains("MAX_FRAME_LEN"), "{e}");
    // An unknown kind where the ack is due.
    let e = probe(&[0x42, 0, 0, 0, 1, 0]);
    assert!(
        matches!(e, Error::Codec(CodecError::UnknownKind(0x42))),
        "{e:?}"
    );
    // A 16 MiB announcement with nothing behind it costs no 16 MiB: it just times out.
    let fake = answering(codec::header(FrameKind::Control, MAX_FRAME_LEN as usize).to_vec());
    let e = within(BOUND, || fake.quick().probe().unwrap_err());
    assert!(e.is_timeout(), "{e:?}");
    // An ack that is not JSON, or not an ack.
    let e = probe(&encode(FrameKind::Control, b"\x00\x01not json"));
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("not JSON")),
        "{e:?}"
    );
    let e = probe(&encode(FrameKind::Control, br#"{"ok":true}"#));
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("bad ack")),
        "{e:?}"
    );
    // During an exec: a huge length ends it at once.
    let fake = answering([0x01, 0xff, 0xff, 0xff, 0xff].to_vec());
    let e = within(BOUND, || {
        fake.client().exec_output(&sh("true")).unwrap_err()
    });
    assert!(matches!(e, Error::Codec(CodecError::TooLong(_))), "{e:?}");
}
