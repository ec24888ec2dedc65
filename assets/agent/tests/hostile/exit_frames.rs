//! EXIT out of place.

use supermachine_agent::client::{shell_code, Error, Event};
use supermachine_agent::codec::encode;
use supermachine_agent::protocol::*;

use crate::fake::*;

#[test]
fn duplicate_and_misplaced_exit_frames() {
    // EXIT, more output, EXIT again: the first EXIT ends the exec.
    let mut dup = encode(FrameKind::Exit, &exit_payload(3));
    dup.extend(encode(FrameKind::Stdout, b"late"));
    dup.extend(encode(FrameKind::Exit, &exit_payload(0)));
    let fake = answering(dup);
    let c = fake.client();
    let out = within(BOUND, || c.exec_output(&sh("true")).unwrap());
    assert_eq!((out.status.code, out.stdout.len()), (3, 0));
    let mut exec = c.exec(&sh("true")).unwrap();
    assert!(matches!(exec.next_event().unwrap(), Event::Exit(s) if s.code == 3));
    let e = exec.next_event().unwrap_err();
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("already ended")),
        "{e:?}"
    );
    // EXIT where a CONTROL ack is due.
    let fake = answering(encode(FrameKind::Exit, &exit_payload(0)));
    let e = within(BOUND, || fake.client().probe().unwrap_err());
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("got Exit")),
        "{e:?}"
    );
    // An EXIT too short to hold a code.
    let fake = answering(encode(FrameKind::Exit, &[0, 0]));
    let e = within(BOUND, || {
        fake.client().exec_output(&sh("true")).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("EXIT payload of 2 bytes")),
        "{e:?}"
    );
    // EXIT before anything was asked: taken as the answer, harmlessly.
    let early = Fake::start(|mut s, _| {
        send(&mut s, FrameKind::Exit, &exit_payload(0));
        linger(&mut s);
    });
    assert_eq!(
        within(BOUND, || early.client().exec_output(&sh("true")).unwrap())
            .status
            .code,
        0
    );
}

#[test]
fn a_duplicate_exit_is_never_read_as_the_next_answer() {
    // With connection reuse, the stray second EXIT must not answer the next request: that
    // connection is dropped, and the next request goes on a fresh one.
    let fake = Fake::start(|mut s, n| {
        while let Some(f) = next_request(&mut s) {
            answer(&mut s, &f);
            if n == 0 {
                send(&mut s, FrameKind::Exit, &exit_payload(9));
            }
        }
    });
    let c = fake.client().with_connection_reuse(true);
    assert_eq!(c.exec_output(&sh("true")).unwrap().status.code, 0);
    std::thread::sleep(ms(50));
    assert_eq!(c.exec_output(&sh("true")).unwrap().status.code, 0);
    assert_eq!(c.probe().unwrap().protocol, 5);
    assert_eq!(fake.connections(), 2);
}

#[test]
fn hostile_exit_codes_cannot_overflow() {
    for (code, shell) in [(u32::MAX, 255), (256, 255), (128 + 255, 255), (137, 137)] {
        let fake = answering(encode(FrameKind::Exit, &exit_payload(code)));
        let s = fake.client().exec_output(&sh("true")).unwrap().status;
        assert_eq!(s.code, code);
        assert_eq!(shell_code(&s), shell, "{code}");
    }
    let s = ExitStatus {
        code: u32::MAX,
        peak_rss_kib: 0,
    };
    assert_eq!(s.signal(), None);
}
