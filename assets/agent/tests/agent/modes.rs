//! The one-connection modes: `--exec-stdio` and `--tcp-stdio`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use supermachine_agent::codec::encode;
use supermachine_agent::protocol::*;

use crate::harness::*;

#[test]
fn exec_stdio_serves_one_connection_on_stdin_and_stdout() {
    let mut child = Command::new(agent_bin())
        .arg("--exec-stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&encode(
            FrameKind::Request,
            br#"{"argv":["sh","-c","cat; echo done"]}"#,
        ))
        .unwrap();
    stdin
        .write_all(&encode(FrameKind::Stdin, b"piped\n"))
        .unwrap();
    stdin.write_all(&encode(FrameKind::Stdin, b"")).unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut text = Vec::new();
    let exit = loop {
        let f = frame(&mut out);
        match f.kind {
            FrameKind::Stdout => text.extend(f.payload),
            FrameKind::Exit => break ExitStatus::decode(&f.payload).unwrap(),
            k => panic!("unexpected {k:?}"),
        }
    };
    assert_eq!((exit.code, &text[..]), (0, &b"piped\ndone\n"[..]));
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn tcp_stdio_bridges_bytes() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"echo:").unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut child = Command::new(agent_bin())
        .args(["--tcp-stdio", "127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping").unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "echo:ping");
    server.join().unwrap();
    assert!(child.wait().unwrap().success());
}
