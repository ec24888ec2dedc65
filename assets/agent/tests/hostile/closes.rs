//! Early closes.

use std::io::Write;

use supermachine_agent::client::{Error, Event};
use supermachine_agent::codec::{self, encode, CodecError};
use supermachine_agent::protocol::*;

use crate::fake::*;

#[test]
fn early_closes_are_errors() {
    let closing = Fake::start(|s, _| drop(s));
    let c = closing.client();
    let e = within(BOUND, || c.probe().unwrap_err());
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    let e = within(BOUND, || c.exec_output(&sh("true")).unwrap_err());
    assert!(
        matches!(&e, Error::Closed { waiting_for } if waiting_for == "EXIT"),
        "{e:?}"
    );
    let answer_then_close = |bytes: Vec<u8>| {
        Fake::start(move |mut s, _| {
            if next_request(&mut s).is_some() {
                let _ = s.write_all(&bytes);
            }
        })
    };
    // In the middle of a header, and of a payload.
    let fake = answer_then_close(vec![0xfe, 0, 0]);
    let e = within(BOUND, || fake.client().probe().unwrap_err());
    assert!(matches!(e, Error::Codec(CodecError::Truncated)), "{e:?}");
    let mut cut = codec::header(FrameKind::Stdout, 100).to_vec();
    cut.extend([1; 10]);
    let fake = answer_then_close(cut);
    let e = within(BOUND, || {
        fake.client().exec_output(&sh("true")).unwrap_err()
    });
    assert!(matches!(e, Error::Codec(CodecError::Truncated)), "{e:?}");
    // Output, then the close instead of EXIT.
    let fake = answer_then_close(encode(FrameKind::Stdout, b"partial"));
    let c = fake.client();
    let e = within(BOUND, || c.exec_output(&sh("true")).unwrap_err());
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    let mut exec = c.exec(&sh("true")).unwrap();
    assert_eq!(
        exec.next_event().unwrap(),
        Event::Stdout(b"partial".to_vec())
    );
    assert!(matches!(exec.next_event(), Err(Error::Closed { .. })));
}
