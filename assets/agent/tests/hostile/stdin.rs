//! Stdin that nobody reads.

use supermachine_agent::client::Error;
use supermachine_agent::protocol::*;

use crate::fake::*;

#[test]
fn an_exec_that_never_reads_stdin_still_returns_at_exit() {
    // EXIT right after the REQUEST; the fake never reads again and holds the connection.
    let fake = Fake::start(|mut s, _| {
        if next_request(&mut s).is_some() {
            send(&mut s, FrameKind::Stdout, b"bye");
            send(&mut s, FrameKind::Exit, &exit_payload(0));
            stall();
        }
    });
    let stdin = vec![1u8; 32 << 20];
    let out = within(BOUND, || {
        fake.client()
            .exec_with_input(&ExecRequest::new(["cat"]), &stdin)
            .unwrap()
    });
    assert_eq!((out.stdout.as_slice(), out.status.code), (&b"bye"[..], 0));
    // No EXIT and no reading: the idle deadline.
    let fake = Fake::start(|_s, _| stall());
    let e = within(BOUND, || {
        fake.quick()
            .exec_with_input(&ExecRequest::new(["cat"]), &stdin)
            .unwrap_err()
    });
    assert!(
        matches!(&e, Error::TimedOut { waiting_for, idle: true, .. } if waiting_for.contains("stdin")),
        "{e:?}"
    );
}
