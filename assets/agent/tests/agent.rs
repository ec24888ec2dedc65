//! Host tests: the real `supermachine-agent` binary in `--listen unix:` mode, driven through the
//! public client. Same code path as in a guest apart from the socket type.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use supermachine_agent::client::{Client, Endpoint, Error, Event};
use supermachine_agent::codec::{self, encode};
use supermachine_agent::protocol::*;

/// A running agent that is killed (and its socket dir removed) on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
    client: Client,
}

impl Agent {
    fn start(extra: &[&str]) -> Agent {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smk-agent-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        // SUPERMACHINE_AGENT_BIN runs the suite against another build, e.g. the shipped
        // static binary (`cargo xtask test` does both).
        let bin = std::env::var_os("SUPERMACHINE_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_supermachine-agent").into());
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(["--workload", "/nonexistent/workload.json"])
            .args(extra)
            .spawn()
            .unwrap();
        let client = Client::new(Endpoint::Unix(sock));
        client
            .wait_ready(Duration::from_secs(20))
            .expect("agent ready");
        Agent { child, dir, client }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// A raw connection, for speaking bad protocol on purpose.
    fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(self.sock()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
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

#[test]
fn stdout_and_stderr_are_separate() {
    let a = Agent::start(&[]);
    let out = a
        .client
        .exec_output(&sh("echo out; echo err >&2; echo out2"))
        .unwrap();
    assert_eq!(out.stdout, b"out\nout2\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(0));
}

#[test]
fn exit_codes_and_signal_deaths() {
    let a = Agent::start(&[]);
    let code = |r: ExecRequest| a.client.exec_output(&r).unwrap().status;
    assert_eq!(code(ExecRequest::new(["true"])).code, Some(0));
    assert_eq!(code(ExecRequest::new(["false"])).code, Some(1));
    assert_eq!(code(sh("exit 127")).code, Some(127));
    let s = code(sh("kill -9 $$"));
    assert_eq!((s.code, s.signal), (None, Some(9)));
    let s = code(sh("kill -TERM $$"));
    assert_eq!(s.signal, Some(15));
}

#[test]
fn missing_binary_is_a_clear_error_and_the_agent_keeps_serving() {
    let a = Agent::start(&[]);
    match a
        .client
        .exec_output(&ExecRequest::new(["no-such-binary-xyz"]))
    {
        Err(Error::Agent(b)) => {
            assert_eq!(b.code, ErrorCode::NotFound);
            assert!(b.message.contains("no-such-binary-xyz"), "{}", b.message);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    match a.client.exec_output(&ExecRequest::new(["/no/such/path"])) {
        Err(Error::Agent(b)) => assert_eq!(b.code, ErrorCode::NotFound, "{}", b.message),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match a
        .client
        .exec_output(&ExecRequest::new(Vec::<String>::new()))
    {
        Err(Error::Agent(b)) => assert_eq!(b.code, ErrorCode::InvalidArgument),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(
        a.client
            .exec_output(&ExecRequest::new(["true"]))
            .unwrap()
            .status
            .code,
        Some(0)
    );
}

#[test]
fn stdin_is_streamed_and_closed() {
    let a = Agent::start(&[]);
    let mut req = ExecRequest::new(["cat"]);
    req.stdin = true;
    let input: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = a.client.exec_with_input(&req, &input).unwrap();
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input);
    assert_eq!(out.status.code, Some(0));
}

#[test]
fn large_output_streams_without_loss_and_rss_stays_bounded() {
    let a = Agent::start(&[]);
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
    assert_eq!(status.code, Some(0));
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
fn env_cwd_and_user_are_applied() {
    let a = Agent::start(&[]);
    let mut req = sh("echo \"$FOO|$HOME|$PATH\"; pwd");
    req.env = vec!["FOO=bar baz".into(), "PATH=/usr/bin:/bin".into()];
    req.cwd = Some("/tmp".into());
    let out = a.client.exec_output(&req).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bar baz|/root|/usr/bin:/bin\n/tmp\n"
    );

    let mut bad = ExecRequest::new(["true"]);
    bad.env = vec!["NOEQUALS".into()];
    assert!(
        matches!(a.client.exec_output(&bad), Err(Error::Agent(b)) if b.code == ErrorCode::InvalidArgument)
    );

    let mut req = sh("id -u; id -g");
    req.user = Some("nobody".into());
    let r = a.client.exec_output(&req);
    if is_root() {
        let out = r.unwrap();
        let nobody = std::fs::read_to_string("/etc/passwd").unwrap();
        let line = nobody.lines().find(|l| l.starts_with("nobody:")).unwrap();
        let f: Vec<&str> = line.split(':').collect();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n{}\n", f[2], f[3])
        );
        let mut req = sh("id -u; id -g");
        req.user = Some("4321:4322".into());
        let out = a.client.exec_output(&req).unwrap();
        assert_eq!(out.stdout, b"4321\n4322\n");
    } else {
        assert!(matches!(r, Err(Error::Agent(b)) if b.code == ErrorCode::PermissionDenied));
    }
    let mut req = ExecRequest::new(["true"]);
    req.user = Some("no-such-user-xyz".into());
    match a.client.exec_output(&req) {
        Err(Error::Agent(b)) => assert!(b.message.contains("no-such-user-xyz")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tty_mode_and_resize() {
    let a = Agent::start(&[]);
    let mut req = sh("test -t 0 && test -t 1 && echo is-a-tty; stty size; read _; stty size");
    req.tty = Some(TtySize { rows: 24, cols: 80 });
    req.stdin = true;
    let mut exec = a.client.exec(&req).unwrap();
    let mut input = exec.input().unwrap();
    let mut seen = Vec::new();
    let status = loop {
        match exec.next_event().unwrap() {
            Event::Stdout(b) => {
                seen.extend(b);
                if String::from_utf8_lossy(&seen).contains("24 80") && input_pending(&seen) {
                    input.resize(30, 100).unwrap();
                    input.write(b"go\n").unwrap();
                }
            }
            Event::Stderr(b) => panic!("tty mode has no separate stderr: {b:?}"),
            Event::Exit(s) => break s,
        }
    };
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("is-a-tty"), "{text}");
    assert!(text.contains("24 80"), "{text}");
    assert!(text.contains("30 100"), "{text}");
    assert_eq!(status.code, Some(0));

    fn input_pending(seen: &[u8]) -> bool {
        !String::from_utf8_lossy(seen).contains("go")
    }
}

#[test]
fn many_execs_in_parallel() {
    let a = Agent::start(&[]);
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let c = a.client.clone();
            std::thread::spawn(move || {
                let out = c.exec_output(&sh(&format!("sleep 0.2; echo {i}"))).unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Everything was reaped.
    let p = a.client.probe().unwrap();
    assert_eq!(p.zombies, 0);
}

#[test]
fn timeout_kills_and_reports() {
    let a = Agent::start(&[]);
    let mut req = sh("echo started; sleep 30");
    req.timeout_ms = Some(300);
    let t = Instant::now();
    let out = a.client.exec_output(&req).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(out.stdout, b"started\n");
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
}

#[test]
fn signals_reach_the_exec() {
    let a = Agent::start(&[]);
    let mut exec = a.client.exec(&sh("echo ready; sleep 30")).unwrap();
    assert_eq!(
        exec.next_event().unwrap(),
        Event::Stdout(b"ready\n".to_vec())
    );
    exec.signal(libc::SIGTERM).unwrap();
    assert_eq!(
        exec.next_event().unwrap(),
        Event::Exit(ExitStatus {
            code: None,
            signal: Some(15),
            timed_out: false
        })
    );
}

#[test]
fn host_disconnect_kills_the_exec() {
    let a = Agent::start(&[]);
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
    let a = Agent::start(&[]);
    // The shell exits at once; its background child becomes the agent's (subreaper) orphan.
    let out = a
        .client
        .exec_output(&sh("sleep 0.3 >/dev/null 2>&1 &"))
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.client.probe().unwrap().zombies, 0);
}

#[test]
fn binary_file_round_trip() {
    let a = Agent::start(&[]);
    let path = a.dir.join("blob.bin");
    let path = path.to_str().unwrap();
    let mut x: u32 = 12345;
    let data: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    a.client.write_file(path, 0o640, &data).unwrap();
    assert_eq!(
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert!(a.client.read_file(path, 10 << 20).unwrap() == data);
    // Overwrite is atomic and leaves no temp file.
    a.client.write_file(path, 0o600, b"small").unwrap();
    assert_eq!(a.client.read_file(path, 100).unwrap(), b"small");
    let leftovers: Vec<_> = std::fs::read_dir(&a.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("sm-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    match a.client.read_file(path, 2) {
        Err(Error::Agent(b)) => assert_eq!(b.code, ErrorCode::TooLarge),
        other => panic!("{other:?}"),
    }
    match a.client.read_file("/no/such/file", 2) {
        Err(Error::Agent(b)) => assert_eq!(b.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    match a.client.write_file("/no/such/dir/file", 0o644, b"x") {
        Err(Error::Agent(b)) => {
            assert_eq!(b.code, ErrorCode::NotFound);
            assert!(b.message.contains("/no/such/dir"), "{}", b.message);
        }
        other => panic!("{other:?}"),
    }
    match a.client.write_file("relative", 0o644, b"x") {
        Err(Error::Agent(b)) => assert_eq!(b.code, ErrorCode::InvalidArgument),
        other => panic!("{other:?}"),
    }
}

fn read_error(s: &mut UnixStream) -> ErrorBody {
    let f = codec::read_frame(s).unwrap().expect("an error frame");
    assert_eq!(f.ty, FrameType::Error, "{f:?}");
    f.json().unwrap()
}

fn hello() -> Vec<u8> {
    encode(FrameType::Hello, br#"{"protocol":1,"client":"test"}"#)
}

#[test]
fn bad_frames_get_clear_errors_and_the_agent_keeps_serving() {
    let a = Agent::start(&[]);

    // Oversized length: error, then the connection is closed.
    let mut s = a.raw();
    s.write_all(&[0xff, 0xff, 0xff, 0x7f, 0x10]).unwrap();
    assert_eq!(read_error(&mut s).code, ErrorCode::FrameTooLarge);
    assert!(codec::read_frame(&mut s).unwrap().is_none());

    // No hello first.
    let mut s = a.raw();
    s.write_all(&encode(FrameType::Request, br#"{"op":"probe"}"#))
        .unwrap();
    assert_eq!(read_error(&mut s).code, ErrorCode::UnexpectedFrame);

    // Wrong protocol version.
    let mut s = a.raw();
    s.write_all(&encode(FrameType::Hello, br#"{"protocol":99}"#))
        .unwrap();
    let e = read_error(&mut s);
    assert_eq!(e.code, ErrorCode::UnsupportedProtocol);
    assert!(e.message.contains("99"), "{}", e.message);

    // After a good hello: unknown type, invalid UTF-8, unknown op, wrong shape — each answered,
    // and the same connection still serves a probe.
    let mut s = a.raw();
    s.write_all(&hello()).unwrap();
    assert_eq!(
        codec::read_frame(&mut s).unwrap().unwrap().ty,
        FrameType::HelloOk
    );
    s.write_all(&encode(FrameType::Stdout, b"x")[..4]).unwrap();
    s.write_all(&[0x7e, b'x']).unwrap(); // type 0x7e, unknown
    assert_eq!(read_error(&mut s).code, ErrorCode::UnexpectedFrame);
    s.write_all(&encode(FrameType::Request, &[0xff, 0xfe, 0xfd]))
        .unwrap();
    assert_eq!(read_error(&mut s).code, ErrorCode::BadFrame);
    s.write_all(&encode(FrameType::Request, br#"{"op":"format_disk"}"#))
        .unwrap();
    assert_eq!(read_error(&mut s).code, ErrorCode::BadFrame);
    s.write_all(&encode(
        FrameType::Request,
        br#"{"op":"exec","argv":"notalist"}"#,
    ))
    .unwrap();
    assert_eq!(read_error(&mut s).code, ErrorCode::BadFrame);
    s.write_all(&encode(FrameType::Stdin, b"stray")).unwrap();
    assert_eq!(read_error(&mut s).code, ErrorCode::UnexpectedFrame);
    s.write_all(&encode(FrameType::Request, br#"{"op":"probe"}"#))
        .unwrap();
    let f = codec::read_frame(&mut s).unwrap().unwrap();
    assert_eq!(f.ty, FrameType::Response);
    let p: ProbeInfo = f.json().unwrap();
    assert_eq!(p.protocol, PROTOCOL_VERSION);

    // Truncated frames and silent clients do not block others.
    let mut stuck = Vec::new();
    for _ in 0..50 {
        let mut s = a.raw();
        s.write_all(&hello()[..3]).unwrap();
        stuck.push(s);
        let mut s = a.raw();
        s.write_all(&hello()).unwrap();
        s.write_all(&encode(FrameType::Request, br#"{"op":"pro"#)[..8])
            .unwrap();
        drop(s);
    }
    let silent = a.raw();
    assert_eq!(
        a.client
            .exec_output(&ExecRequest::new(["true"]))
            .unwrap()
            .status
            .code,
        Some(0)
    );
    drop(silent);
    drop(stuck);
}

#[test]
fn host_mode_refuses_to_touch_the_host() {
    let a = Agent::start(&[]);
    for r in [
        a.client.set_time(std::time::SystemTime::now()),
        a.client.power(PowerAction::Reboot),
    ] {
        match r {
            Err(Error::Agent(b)) => {
                assert_eq!(b.code, ErrorCode::PermissionDenied);
                assert!(b.message.contains("not PID 1"), "{}", b.message);
            }
            other => panic!("{other:?}"),
        }
    }
    a.client.sync().unwrap();
    let p = a.client.probe().unwrap();
    assert!(p.cpus_online >= 1 && p.mem_total_kib > 0 && !p.kernel_release.is_empty());
    assert!(p.threads >= 2 && p.open_fds >= 3);
}

#[test]
fn workload_runs_from_an_image_config() {
    let dir = std::env::temp_dir().join(format!("smk-wl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("workload.json");
    let out = dir.join("out");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"Entrypoint":["sh","-c"],"Cmd":["echo \"$GREETING $(pwd)\" > {}; read x < /dev/null; sleep 30"],"Env":["GREETING=hi"],"WorkingDir":"/tmp"}}"#,
            out.display()
        ),
    )
    .unwrap();
    let a = Agent::start(&["--workload", cfg.to_str().unwrap()]);
    let st = a.client.workload_status().unwrap();
    assert!(st.pid.is_some() && st.exit.is_none());
    a.client.workload_signal(libc::SIGTERM).unwrap();
    let st = a.client.workload_wait().unwrap();
    assert_eq!(st.exit.unwrap().signal, Some(libc::SIGTERM));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi /tmp\n");
    assert!(
        matches!(a.client.workload_signal(15), Err(Error::Agent(b)) if b.code == ErrorCode::NoWorkload)
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let b = Agent::start(&[]);
    assert!(
        matches!(b.client.workload_wait(), Err(Error::Agent(e)) if e.code == ErrorCode::NoWorkload)
    );
}

#[test]
fn raw_protocol_read_helper_sanity() {
    // The raw socket helper itself: a closed peer reads as EOF, not a hang.
    let a = Agent::start(&[]);
    let mut s = a.raw();
    s.write_all(&hello()).unwrap();
    let mut buf = Vec::new();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.read_to_end(&mut buf).unwrap();
    let (f, _) = codec::decode(&buf).unwrap().unwrap();
    assert_eq!(f.ty, FrameType::HelloOk);
}
