//! Connection reuse.

use supermachine_agent::client::{Error, Event};
use supermachine_agent::protocol::*;

use crate::fake::*;

/// A well-behaved agent that serves any number of requests per connection.
fn reusable() -> Fake {
    Fake::start(|mut s, _| {
        while let Some(f) = next_request(&mut s) {
            answer(&mut s, &f);
        }
    })
}

#[test]
fn connection_reuse_keeps_one_connection() {
    let fake = reusable();
    let c = fake.client().with_connection_reuse(true);
    let clone = c.clone();
    for _ in 0..10 {
        assert_eq!(c.exec_output(&sh("true")).unwrap().status.code, 0);
        assert_eq!(clone.probe().unwrap().protocol, 5);
        let mut exec = c.exec(&sh("true")).unwrap();
        assert!(matches!(exec.next_event().unwrap(), Event::Exit(_)));
    }
    assert_eq!(fake.connections(), 1);
    // The default: a connection per request.
    let fake = reusable();
    let c = fake.client();
    for _ in 0..5 {
        c.exec_output(&sh("true")).unwrap();
        c.probe().unwrap();
    }
    assert_eq!(fake.connections(), 10);
}

#[test]
fn an_exec_abandoned_before_exit_is_not_reused() {
    let fake = Fake::start(|mut s, _| {
        while let Some(f) = next_request(&mut s) {
            if f.kind == FrameKind::Request {
                send(&mut s, FrameKind::Stdout, b"running");
                linger(&mut s);
                return;
            }
            answer(&mut s, &f);
        }
    });
    let c = fake.client().with_connection_reuse(true);
    let mut exec = c.exec(&sh("sleep 100")).unwrap();
    assert_eq!(
        exec.next_event().unwrap(),
        Event::Stdout(b"running".to_vec())
    );
    drop(exec);
    assert_eq!(c.probe().unwrap().protocol, 5);
    assert_eq!(fake.connections(), 2);
}

#[test]
fn an_agent_that_closes_after_each_answer_works_with_reuse() {
    // supermachine's own agent serves one request per connection and closes.
    let fake = Fake::start(|mut s, _| {
        if let Some(f) = next_request(&mut s) {
            answer(&mut s, &f);
        }
    });
    let c = fake.client().with_connection_reuse(true);
    for _ in 0..5 {
        assert_eq!(c.probe().unwrap().protocol, 5);
        assert_eq!(c.exec_output(&sh("true")).unwrap().status.code, 0);
    }
    assert_eq!(fake.connections(), 10);
}

/// A fake whose first connection answers one request, then closes on the next without a byte
/// of answer, as an agent that timed it out or was restored from a snapshot would.
fn stale_after_one() -> Fake {
    Fake::start(|mut s, n| {
        let mut served = 0;
        while let Some(f) = next_request(&mut s) {
            if n == 0 && served == 1 {
                return;
            }
            answer(&mut s, &f);
            served += 1;
        }
    })
}

#[test]
fn a_stale_pooled_connection_is_retried_once() {
    // Connection 0 answers one request, then closes on the next without a byte of answer,
    // as an agent that timed it out or was restored from a snapshot would. The request goes
    // again on a fresh connection.
    let fake = stale_after_one();
    let c = fake.client().with_connection_reuse(true);
    assert_eq!(c.probe().unwrap().protocol, 5);
    assert_eq!(within(BOUND, || c.probe().unwrap()).protocol, 5);
    assert_eq!(fake.connections(), 2);
    // Same for an exec.
    let fake = stale_after_one();
    let c = fake.client().with_connection_reuse(true);
    c.exec_output(&sh("true")).unwrap();
    assert_eq!(
        within(BOUND, || c.exec_output(&sh("true")).unwrap())
            .status
            .code,
        0
    );
    assert_eq!(fake.connections(), 2);
    // Only once: when the fresh connection fails too, that is the error.
    let fake = Fake::start(|mut s, n| {
        if n == 0 {
            if let Some(f) = next_request(&mut s) {
                answer(&mut s, &f);
            }
            let _ = next_request(&mut s);
        }
    });
    let c = fake.client().with_connection_reuse(true);
    c.probe().unwrap();
    let e = within(BOUND, || c.probe().unwrap_err());
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    assert_eq!(fake.connections(), 2);
}
