//! Host tests: the real `supermachine-agent` binary in `--listen unix:` (and `--exec-stdio`,
//! `--tcp-stdio`) mode, driven through the public client and through raw frames. Same code path
//! as in a guest apart from the socket type.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use supermachine_agent::base64;
use supermachine_agent::client::{Client, Endpoint, Error, Event};
use supermachine_agent::codec::{self, encode};
use supermachine_agent::protocol::*;

fn agent_bin() -> PathBuf {
    // SUPERMACHINE_AGENT_BIN runs the suite against another build, e.g. the shipped static
    // binary (`cargo xtask test` does both).
    std::env::var_os("SUPERMACHINE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_supermachine-agent").into())
}

fn scratch(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "smk-agent-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running agent that is killed (and its socket dir removed) on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
    client: Client,
}

impl Agent {
    fn start() -> Agent {
        let dir = scratch("unix");
        let sock = dir.join("agent.sock");
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            // Execs start from the agent's own environment (the launch script's exports).
            .env("SM_AGENT_BASE", "inherited")
            .spawn()
            .unwrap();
        let client = Client::new(Endpoint::Unix(sock));
        client
            .wait_ready(Duration::from_secs(20))
            .expect("agent ready");
        Agent { child, dir, client }
    }

    /// A raw connection, for speaking bad protocol on purpose.
    fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(self.dir.join("agent.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Reads one frame from a raw connection.
fn frame(s: &mut impl Read) -> codec::Frame {
    codec::read_frame(s).unwrap().expect("a frame, not EOF")
}

/// The text of the ERROR frame the agent must send next.
fn error_text(s: &mut impl Read) -> String {
    let f = frame(s);
    assert_eq!(
        f.kind,
        FrameKind::Error,
        "{:?}",
        String::from_utf8_lossy(&f.payload)
    );
    String::from_utf8(f.payload).unwrap()
}

/// The JSON of the CONTROL ack the agent must send next.
fn ack(s: &mut impl Read) -> serde_json::Value {
    let f = frame(s);
    assert_eq!(f.kind, FrameKind::Control);
    serde_json::from_slice(&f.payload).unwrap()
}

fn control(a: &Agent, body: serde_json::Value) -> serde_json::Value {
    let mut s = a.raw();
    s.write_all(&encode(FrameKind::Control, body.to_string().as_bytes()))
        .unwrap();
    ack(&mut s)
}

#[test]
fn stdout_and_stderr_are_separate() {
    let a = Agent::start();
    let out = a
        .client
        .exec_output(&sh("echo out; echo err >&2; echo out2"))
        .unwrap();
    assert_eq!(out.stdout, b"out\nout2\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, 0);
}

#[test]
fn exit_codes_and_signal_deaths() {
    let a = Agent::start();
    let code = |s: &str| a.client.exec_output(&sh(s)).unwrap().status.code;
    assert_eq!(code("exit 3"), 3);
    assert_eq!(code("kill -9 $$"), 137);
    assert_eq!(code("kill -15 $$"), 143);
    let out = a
        .client
        .exec_output(&sh("head -c 3000000 /dev/zero > /dev/null"))
        .unwrap();
    assert!(out.status.peak_rss_kib > 0, "EXIT carries the peak RSS");
}

#[test]
fn missing_binary_and_bad_cwd_exit_127_and_the_agent_keeps_serving() {
    let a = Agent::start();
    let out = a
        .client
        .exec_output(&ExecRequest::new(["/no/such/binary"]))
        .unwrap();
    assert_eq!(out.status.code, 127);
    let out = a
        .client
        .exec_output(&ExecRequest::new(["no-such-command-xyz"]))
        .unwrap();
    assert_eq!(out.status.code, 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-command-xyz"));
    let mut req = ExecRequest::new(["true"]);
    req.cwd = Some("/no/such/dir".into());
    let out = a.client.exec_output(&req).unwrap();
    assert_eq!(out.status.code, 127);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chdir"),
        "{out:?}"
    );
    assert_eq!(a.client.exec_output(&sh("true")).unwrap().status.code, 0);
}

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
fn stdin_is_streamed_byte_exact_and_closed() {
    let a = Agent::start();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    let out = a
        .client
        .exec_with_input(&ExecRequest::new(["cat"]), &data)
        .unwrap();
    assert_eq!(out.status.code, 0);
    assert!(out.stdout == data, "1 MiB through cat came back changed");
    // Without input the host sends EOF at once: cat ends.
    let out = a.client.exec_output(&ExecRequest::new(["cat"])).unwrap();
    assert_eq!((out.status.code, out.stdout.len()), (0, 0));
}

#[test]
fn large_output_streams_without_loss_and_rss_stays_bounded() {
    let a = Agent::start();
    let before = a.client.probe().unwrap().rss_kib;
    const N: u64 = 64 << 20;
    let mut exec = a
        .client
        .exec(&sh(&format!(
            "head -c {N} /dev/urandom | tee /dev/stderr | md5sum >&2"
        )))
        .unwrap();
    let (mut out, mut err) = (0u64, Vec::new());
    let mut peak = before;
    let mut events = 0u64;
    let status = loop {
        match exec.next_event().unwrap() {
            Event::Stdout(b) => out += b.len() as u64,
            Event::Stderr(b) => err.extend_from_slice(&b),
            Event::Exit(s) => break s,
        }
        events += 1;
        if events % 256 == 0 {
            peak = peak.max(a.client.probe().unwrap().rss_kib);
        }
    };
    assert_eq!(status.code, 0);
    assert_eq!(out, 0, "tee wrote everything to stderr; stdout got nothing");
    // stderr carries the N bytes followed by md5sum's line of the same bytes.
    let (data, sum_line) = err.split_at(N as usize);
    let digest = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(sum_line).split_whitespace().next(),
        String::from_utf8_lossy(&digest.stdout)
            .split_whitespace()
            .next(),
        "stream corrupted"
    );
    assert!(
        peak < before + 16 * 1024,
        "agent RSS grew from {before} KiB to {peak} KiB"
    );
}

#[test]
fn host_disconnect_kills_the_exec() {
    let a = Agent::start();
    let marker = a.dir.join("pid");
    let exec = a
        .client
        .exec(&sh(&format!(
            "echo $$ > {}; exec sleep 30",
            marker.display()
        )))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(exec);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive after disconnect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn orphans_are_reaped() {
    let a = Agent::start();
    // The shell exits at once; its background child becomes the agent's (subreaper) orphan.
    let out = a
        .client
        .exec_output(&sh("sleep 0.3 >/dev/null 2>&1 &"))
        .unwrap();
    assert_eq!(out.status.code, 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.client.probe().unwrap().zombies, 0);
}

#[test]
fn env_cwd_and_user_are_applied() {
    let a = Agent::start();
    let mut req = sh("echo \"$FOO|$SM_AGENT_BASE|$(pwd)\"; id -u");
    req.env.insert("FOO".into(), "bar baz".into());
    req.cwd = Some("/tmp".into());
    let out = a.client.exec_output(&req).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("bar baz|inherited|"), "{text}");
    assert!(text.contains("|/tmp\n"), "{text}");
    if is_root() {
        let mut req = sh("id -u; id -g");
        req.user = Some("65534:65534".into());
        let out = a.client.exec_output(&req).unwrap();
        assert_eq!(out.stdout, b"65534\n65534\n");
    }
    let mut req = sh("true");
    req.user = Some("no-such-user-xyz".into());
    let e = a.client.exec_output(&req).unwrap_err();
    assert!(e.to_string().contains("no-such-user-xyz"), "{e}");
}

#[test]
fn tty_mode_with_winsize_and_resize() {
    let a = Agent::start();
    let mut req = sh("stty size; read x; stty size; tty");
    req.tty = true;
    req.cols = Some(120);
    req.rows = Some(40);
    let mut exec = a.client.exec(&req).unwrap();
    let mut input = exec.input().unwrap();
    let mut text = String::new();
    let mut resized = false;
    let status = loop {
        match exec.next_event().unwrap() {
            Event::Stdout(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Event::Stderr(b) => panic!("stderr in tty mode: {b:?}"),
            Event::Exit(s) => break s,
        }
        if !resized && text.contains("40 120") {
            resized = true;
            input.resize(100, 30).unwrap();
            input.write(b"go\n").unwrap();
        }
    };
    assert_eq!(status.code, 0, "{text}");
    assert!(text.contains("40 120\r\n"), "{text:?}");
    assert!(text.contains("30 100\r\n"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
}

#[test]
fn many_execs_in_parallel() {
    let a = Agent::start();
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let c = a.client.clone();
            std::thread::spawn(move || c.exec_output(&sh(&format!("echo {i}"))).unwrap())
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let out = t.join().unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
}

#[test]
fn timeout_kills_with_137() {
    let a = Agent::start();
    let mut req = sh("sleep 30");
    req.timeout_ms = Some(300);
    let t = Instant::now();
    let out = a.client.exec_output(&req).unwrap();
    assert_eq!(out.status.code, 137);
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn signal_frames_reach_the_exec() {
    let a = Agent::start();
    let mut exec = a.client.exec(&sh("echo up; exec sleep 30")).unwrap();
    assert_eq!(exec.next_event().unwrap(), Event::Stdout(b"up\n".to_vec()));
    exec.signal(15).unwrap();
    assert!(matches!(exec.next_event().unwrap(), Event::Exit(s) if s.code == 143));
}

#[test]
fn stage_files_and_chain() {
    let a = Agent::start();
    let script = a.path("staged.sh");
    let mut req = ExecRequest::new(["sh", &script]);
    req.stage_files.push(StageFile {
        path: script.clone(),
        data_b64: base64::encode(b"echo staged\n"),
        mode: Some(0o700),
    });
    req.chain = vec![
        vec!["echo".into(), "second".into()],
        vec!["sh".into(), "-c".into(), "exit 4".into()],
        vec!["echo".into(), "never".into()],
    ];
    let out = a.client.exec_output(&req).unwrap();
    assert_eq!(out.stdout, b"staged\nsecond\n");
    assert_eq!(out.status.code, 4);
    let mode = std::fs::metadata(&script).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
}

#[test]
fn files_round_trip_whole_and_chunked() {
    let a = Agent::start();
    let p = a.path("blob");
    let data: Vec<u8> = (0..(9u32 << 20) + 77)
        .map(|i| (i ^ (i >> 9)) as u8)
        .collect();
    a.client.write_file(&p, 0o640, &data).unwrap();
    assert!(a.client.read_file(&p, 64 << 20).unwrap() == data);
    let e = a.client.read_file(&p, 100).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    // Only the target remains: no temp or partial files.
    let names: Vec<_> = std::fs::read_dir(&a.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let v = control(
        &a,
        serde_json::json!({"action":"read_file","path":p,"max_bytes":5}),
    );
    assert_eq!(v["ok"], false);
    let small = a.path("small");
    let v = control(
        &a,
        serde_json::json!({"action":"write_file","path":small,"data_b64":"aGk="}),
    );
    assert_eq!(v, serde_json::json!({"ok":true}));
    let v = control(
        &a,
        serde_json::json!({"action":"read_file","path":small,"max_bytes":5}),
    );
    assert_eq!(v["data_b64"], "aGk=");
}

#[test]
fn probe_and_host_mode_refusals() {
    let a = Agent::start();
    let p = a.client.probe().unwrap();
    assert_eq!(p.protocol, 5);
    assert!(p.pid > 1 && p.threads >= 2 && p.rss_kib > 0, "{p:?}");
    assert!(a.client.sync().is_ok());
    for e in [
        a.client
            .sync_time(std::time::SystemTime::now())
            .unwrap_err(),
        a.client.power(PowerAction::Reboot).unwrap_err(),
        a.client.park().unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
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
fn signal_without_a_workload_pid_is_an_error() {
    if Path::new(WORKLOAD_PID_FILE).exists() {
        return; // a real supermachine guest's file on this host: not ours to signal.
    }
    let a = Agent::start();
    let e = a.client.workload_signal(15).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoWorkload));
    assert!(
        e.to_string().contains("no workload pid recorded yet"),
        "{e}"
    );
}

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

#[test]
fn client_errors_name_the_cause() {
    let c = Client::new(Endpoint::Unix("/nonexistent/agent.sock".into()));
    let e = c.probe().unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/agent.sock"));
}
