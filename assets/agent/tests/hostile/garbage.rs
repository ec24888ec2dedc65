//! Garbage and huge lengths.

use supermachine_agent::client::Error;
use supermachine_agent::codec::{self, encode, CodecError};
use supermachine_agent::protocol::*;

use crate::counting::peak_heap;
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

#[test]
fn acks_that_amplify_in_memory_are_refused_or_skipped() {
    // Issue 22: `{"ok":true,"x":[0,0,…]}` took the client to 280 MB, `[{},{},…]` to 193 MB.
    // One CONTROL frame of about 16 MiB: `head`, then `item,` repeated, then `0]}`.
    let frame = |head: &str, item: &str| {
        let n = (MAX_FRAME_LEN as usize - head.len() - 8) / (item.len() + 1);
        let mut ack = Vec::with_capacity(MAX_FRAME_LEN as usize);
        ack.extend_from_slice(head.as_bytes());
        for _ in 0..n {
            ack.extend_from_slice(item.as_bytes());
            ack.push(b',');
        }
        ack.extend_from_slice(b"0]}");
        encode(FrameKind::Control, &ack)
    };
    for item in ["0", "{}"] {
        let fake = answering(frame(r#"{"ok":true,"x":["#, item));
        let client = fake.client();
        let (e, peak) = peak_heap(move || within(BOUND, || client.probe().unwrap_err()));
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("above the 65536")),
            "{e:?}"
        );
        assert!(peak < 100 << 20, "probe: {peak} bytes of heap at once");
        // A file read may have a whole frame of ack: what it does not name is skipped, not
        // built.
        let fake = answering(frame(
            r#"{"ok":true,"data_b64":"","total_len":0,"x":["#,
            item,
        ));
        let client = fake.client();
        let (data, peak) =
            peak_heap(move || within(PATIENT, || client.read_file("/f", 1 << 20).unwrap()));
        assert!(data.is_empty());
        assert!(peak < 100 << 20, "read_file: {peak} bytes of heap at once");
    }
}
