//! Endless output.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use supermachine_agent::client::{Client, Endpoint, Error, DEFAULT_OUTPUT_LIMIT};
use supermachine_agent::codec::{self, Frame};
use supermachine_agent::protocol::*;

use crate::fake::*;

/// A fake exec that writes STDOUT frames (or frames of `kind`) until the client goes away,
/// counting the bytes it got out, and records the frames the client sends after REQUEST.
struct Flood {
    fake: Fake,
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Frame>>>,
}

fn flood(kind: u8) -> Flood {
    flood_of(kind, MAX_WRITE - codec::HEADER_LEN)
}

/// [`flood`] of frames with `payload` bytes each (0: bare headers), written MAX_WRITE at a
/// time.
fn flood_of(kind: u8, payload: usize) -> Flood {
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(Vec::new()));
    let (s2, d2, g2) = (sent.clone(), done.clone(), got.clone());
    let fake = Fake::start(move |mut s, _| {
        if next_request(&mut s).is_none() {
            return;
        }
        let mut r = s.try_clone().unwrap();
        let g = g2.clone();
        std::thread::spawn(move || {
            while let Ok(Some(f)) = codec::read_frame(&mut r) {
                g.lock().unwrap().push(f);
            }
        });
        let mut one = vec![0x5a; codec::HEADER_LEN + payload];
        one[..codec::HEADER_LEN].copy_from_slice(&codec::header(FrameKind::Stdout, payload));
        one[0] = kind;
        let frame = one.repeat((MAX_WRITE / one.len()).max(1));
        while s.write_all(&frame).is_ok() {
            s2.fetch_add(frame.len() as u64, Ordering::SeqCst);
        }
        d2.store(true, Ordering::SeqCst);
    });
    Flood {
        fake,
        sent,
        done,
        got,
    }
}

impl Flood {
    /// Waits for the fake's writer to be cut off; returns the bytes it got out.
    fn cut_off(&self) -> u64 {
        let t = Instant::now();
        while !self.done.load(Ordering::SeqCst) {
            assert!(t.elapsed() < BOUND, "the flood was never cut off");
            std::thread::sleep(ms(5));
        }
        self.sent.load(Ordering::SeqCst)
    }
}

#[test]
fn endless_output_stops_at_the_limit_and_kills_the_exec() {
    let f = flood(FrameKind::Stdout as u8);
    let limit = 1 << 20;
    let c = f.fake.client().with_output_limit(limit);
    let e = within(BOUND, || c.exec_output(&sh("cat /dev/zero")).unwrap_err());
    assert!(
        matches!(e, Error::OutputLimit { limit: l } if l == limit),
        "{e:?}"
    );
    assert!(e.to_string().contains("killed"), "{e}");
    // Memory: the client read at most the limit; the rest is what the socket buffers held
    // when it closed.
    let sent = f.cut_off();
    assert!(sent < limit + (4 << 20), "the fake got {sent} bytes out");
    // The kill: SIGKILL for the process group, then the close (which the writer saw).
    let t = Instant::now();
    let killed = || {
        f.got
            .lock()
            .unwrap()
            .iter()
            .any(|f| f.kind == FrameKind::Signal && f.payload == [libc::SIGKILL as u8])
    };
    while !killed() {
        assert!(
            t.elapsed() < BOUND,
            "no SIGKILL frame: {:?}",
            f.got.lock().unwrap()
        );
        std::thread::sleep(ms(5));
    }
}

#[test]
fn the_default_output_limit_is_64_mib() {
    let f = flood(FrameKind::Stdout as u8);
    let c = Client::new(Endpoint::Unix(f.fake.sock.clone()));
    let e = within(Duration::from_secs(20), || {
        c.exec_output(&sh("cat /dev/zero")).unwrap_err()
    });
    assert!(
        matches!(e, Error::OutputLimit { limit } if limit == DEFAULT_OUTPUT_LIMIT),
        "{e:?}"
    );
    assert_eq!(DEFAULT_OUTPUT_LIMIT, 64 << 20);
    assert!(f.cut_off() < DEFAULT_OUTPUT_LIMIT + (4 << 20));
}

#[test]
fn frames_of_unknown_kinds_count_against_the_limit() {
    // Skipped frames still cost time: without a bound they would never end.
    let f = flood(0x42);
    let c = f.fake.client().with_output_limit(1 << 20);
    let e = within(BOUND, || c.exec_output(&sh("true")).unwrap_err());
    assert!(matches!(e, Error::OutputLimit { .. }), "{e:?}");
    let f = flood(0x42);
    let c = f.fake.client().with_output_limit(1 << 20);
    let mut exec = c.exec(&sh("true")).unwrap();
    let e = within(BOUND, || exec.next_event().unwrap_err());
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("does not know")),
        "{e:?}"
    );
}

#[test]
fn endless_empty_frames_use_up_the_limit_too() {
    // Issue 22: `01 00000000` (or an unknown kind with no payload) over and over read 13 GB in
    // 40 s: collecting counted payload bytes only. Every header counts now.
    for kind in [FrameKind::Stdout as u8, 0x42] {
        let f = flood_of(kind, 0);
        let limit = 1 << 20;
        let c = f.fake.client().with_output_limit(limit);
        let e = within(BOUND, || c.exec_output(&sh("true")).unwrap_err());
        assert!(
            matches!(e, Error::OutputLimit { limit: l } if l == limit),
            "kind {kind:#x}: {e:?}"
        );
        let sent = f.cut_off();
        assert!(
            sent < limit + (4 << 20),
            "kind {kind:#x}: {sent} bytes got out"
        );
        let e = within(BOUND, || c.exec_with_input(&sh("cat"), b"in").unwrap_err());
        assert!(
            matches!(e, Error::OutputLimit { .. }),
            "kind {kind:#x}: {e:?}"
        );
    }
}

#[test]
fn one_huge_frame_is_refused_from_its_header() {
    // 16 MiB announced, nothing sent: a payload-based check would wait for the bytes and time
    // out; the header check refuses at once.
    let fake = answering(codec::header(FrameKind::Stdout, MAX_FRAME_LEN as usize).to_vec());
    let c = fake.client().with_output_limit(1 << 20);
    let e = within(BOUND, || c.exec_output(&sh("true")).unwrap_err());
    assert!(matches!(e, Error::OutputLimit { .. }), "{e:?}");
}
