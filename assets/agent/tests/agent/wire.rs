//! The connection and the raw wire: reuse of one connection, malformed input, and the
//! client's errors for each cause.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use supermachine_agent::client::{Client, Endpoint, Error};
use supermachine_agent::codec::{self, encode};
use supermachine_agent::protocol::*;

use crate::harness::*;

#[test]
fn a_reused_connection_serves_request_after_request() {
    let a = Agent::start();
    let reusing = a.client.clone().with_connection_reuse(true);
    // A program that is not found ends before the agent reads the EOF sent with the REQUEST:
    // that stray STDIN must not be taken as the next request's first frame.
    for _ in 0..3 {
        let out = reusing
            .exec_output(&ExecRequest::new(["no-such-command-xyz"]))
            .unwrap();
        assert_eq!(out.status.code, 127);
        let out = reusing
            .exec_with_input(&ExecRequest::new(["cat"]), b"again")
            .unwrap();
        assert_eq!((out.status.code, &out.stdout[..]), (0, &b"again"[..]));
        assert!(reusing.probe().unwrap().pid > 0);
    }
}

#[test]
fn one_connection_may_carry_further_requests() {
    let a = Agent::start();
    let mut s = a.raw();
    let probe = encode(FrameKind::Control, br#"{"action":"probe"}"#);
    s.write_all(&probe).unwrap();
    assert_eq!(ack(&mut s)["protocol"], 5);
    s.write_all(&encode(FrameKind::Request, br#"{"argv":["echo","x"]}"#))
        .unwrap();
    s.write_all(&encode(FrameKind::Stdin, b"")).unwrap();
    assert_eq!(frame(&mut s).payload, b"x\n");
    assert_eq!(frame(&mut s).kind, FrameKind::Exit);
    s.write_all(&probe).unwrap();
    assert_eq!(ack(&mut s)["ok"], true);
}

#[test]
fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() {
    let a = Agent::start();
    let request = |json: &str| {
        let mut s = a.raw();
        s.write_all(&encode(FrameKind::Request, json.as_bytes()))
            .unwrap();
        error_text(&mut s)
    };
    // Wrong first frame.
    let mut s = a.raw();
    s.write_all(&encode(FrameKind::Stdin, b"x")).unwrap();
    assert_eq!(
        error_text(&mut s),
        "first frame must be REQUEST(0xff) or CONTROL(0xfe), got 0x0"
    );
    // Unknown kind byte.
    let mut s = a.raw();
    s.write_all(&[0x42, 0, 0, 0, 0]).unwrap();
    assert!(error_text(&mut s).ends_with("got 0x42"));
    // Oversized length.
    let mut s = a.raw();
    s.write_all(&[0xff, 0x01, 0, 0, 1]).unwrap();
    assert_eq!(
        error_text(&mut s),
        "frame len 16777217 > MAX_FRAME_LEN 16777216"
    );
    // Garbage.
    let mut s = a.raw();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let f = codec::read_frame(&mut s).unwrap().unwrap();
    assert_eq!(f.kind, FrameKind::Error);
    // Bad REQUEST JSON and bad fields.
    assert!(request("{").starts_with("REQUEST JSON parse:"));
    assert!(
        request(r#"{"argv":["x"],"env":{"A":1}}"#).starts_with("REQUEST JSON parse: invalid type")
    );
    assert_eq!(request(r#"{"argv":[]}"#), "REQUEST.argv is empty");
    assert_eq!(
        request(r#"{"argv":["true"],"chain":[["true"],[]]}"#),
        "REQUEST.chain[1] is empty"
    );
    let staged = a.path("never");
    let msg = request(&format!(
        r#"{{"argv":["true"],"stage_files":[{{"path":"{staged}","data_b64":"a"}}]}}"#
    ));
    assert_eq!(
        msg,
        format!("stage_file({staged}): bad base64: length 1 is not a multiple of 4")
    );
    assert!(!Path::new(&staged).exists());
    // CONTROL errors are acks.
    let v = control(&a, serde_json::json!({"action":"frobnicate"}));
    assert_eq!(v["error"], "unknown CONTROL action");
    assert_eq!(v["code"], "unknown_action");
    let mut s = a.raw();
    s.write_all(&encode(FrameKind::Control, b"{1:2}")).unwrap();
    let v = ack(&mut s);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .starts_with("CONTROL JSON parse: key must be a string"));
    let v = control(
        &a,
        serde_json::json!({"action":"write_file","path":"/no/such/dir/f","data_b64":""}),
    );
    let text = v["error"].as_str().unwrap();
    assert!(
        text.starts_with("write_file(/no/such/dir/f): create /no/such/dir/.f.sm-tmp."),
        "{text}"
    );
    assert!(
        text.ends_with("No such file or directory (os error 2)"),
        "{text}"
    );
    let v = control(&a, serde_json::json!({"action":"sync_time"}));
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("missing field `host_unix_ns`"));
    // A client that says nothing is cut off, with a reason.
    let mut s = a.raw();
    let t = Instant::now();
    assert!(error_text(&mut s).starts_with("timed out"));
    assert!(t.elapsed() < Duration::from_secs(15));
    // Still serving.
    assert_eq!(
        a.client.exec_output(&sh("echo ok")).unwrap().stdout,
        b"ok\n"
    );
}

#[test]
fn client_errors_name_the_cause() {
    let c = Client::new(Endpoint::Unix("/nonexistent/agent.sock".into()));
    let e = c.probe().unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/agent.sock"));
}

/// Issue 22: 100 connections, each with a header claiming 16 MiB and 100 KiB behind it, took
/// the agent from 0.9 MB to 1.6 GB: it sized its buffer from the header. It grows with what
/// arrives now.
#[test]
fn claimed_frame_lengths_cost_the_agent_only_what_arrives() {
    let a = Agent::start();
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = a.raw();
        s.write_all(&codec::header(FrameKind::Control, MAX_FRAME_LEN as usize))
            .unwrap();
        s.write_all(&vec![b' '; 100 * 1024]).unwrap();
        held.push(s);
    }
    // Let the agent read what it was sent.
    std::thread::sleep(Duration::from_millis(500));
    let p = a.client.probe().unwrap();
    assert!(
        p.rss_kib < 100 << 10,
        "agent RSS {} KiB with 100 claimed 16 MiB frames open",
        p.rss_kib
    );
    drop(held);
}

/// A connection thread keeps its read buffer for its next connection: whatever a connection
/// left in it (half a header, a frame cut short, a buffer grown by a large frame) must not be
/// read as the next connection's bytes.
#[test]
fn a_connection_cut_mid_frame_leaves_nothing_to_the_next() {
    let a = Agent::start();
    let probe = encode(FrameKind::Control, br#"{"action":"probe"}"#);
    let settle = || std::thread::sleep(Duration::from_millis(100));
    // A probe answered, then 3 bytes of a header, then gone.
    let mut s = a.raw();
    s.write_all(&probe).unwrap();
    assert_eq!(ack(&mut s)["protocol"], 5);
    s.write_all(&probe[..3]).unwrap();
    drop(s);
    settle();
    // A frame claiming 1 MiB, 300 KiB of it (the buffer grows past its resting size), gone.
    let mut s = a.raw();
    s.write_all(&codec::header(FrameKind::Control, 1 << 20))
        .unwrap();
    s.write_all(&vec![b'{'; 300 * 1024]).unwrap();
    drop(s);
    settle();
    // A frame cut inside its payload, gone.
    let mut s = a.raw();
    s.write_all(&probe[..probe.len() - 4]).unwrap();
    drop(s);
    settle();
    // Each next connection starts clean: its own first frame, parsed from its own bytes.
    for _ in 0..3 {
        let mut s = a.raw();
        s.write_all(&probe).unwrap();
        assert_eq!(ack(&mut s)["protocol"], 5);
        settle();
    }
}
