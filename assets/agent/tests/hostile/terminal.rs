//! Guest text on the terminal.

use supermachine_agent::client::{printable, Error};
use supermachine_agent::codec::encode;
use supermachine_agent::protocol::*;

use crate::fake::*;

#[test]
fn guest_error_text_is_printable() {
    let nasty = "no\x1b[2J\x1b]0;pwned\x07 such\nfile\u{202e}txt.exe\u{9b}";
    let check = |e: Error| {
        let shown = e.to_string();
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown:?}"
        );
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        match e {
            Error::Agent { message, .. } => assert_eq!(message, nasty),
            e => panic!("{e:?}"),
        }
    };
    let fake = answering(encode(FrameKind::Error, nasty.as_bytes()));
    check(fake.client().probe().unwrap_err());
    let fake = answering(encode(FrameKind::Error, nasty.as_bytes()));
    check(fake.client().exec_output(&sh("true")).unwrap_err());
    let ack = serde_json::json!({"ok": false, "error": nasty, "code": "not_found"});
    let fake = answering(encode(FrameKind::Control, ack.to_string().as_bytes()));
    let e = fake.client().probe().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    check(e);
    // Long text is cut.
    let fake = answering(encode(FrameKind::Error, &[b'x'; 100_000]));
    let shown = fake.client().probe().unwrap_err().to_string();
    assert!(
        shown.len() < 5000 && shown.contains("more characters"),
        "{}",
        shown.len()
    );
    assert_eq!(printable("fine"), "fine");
}
