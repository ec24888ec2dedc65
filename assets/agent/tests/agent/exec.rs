//! Execs through the public client: output, exit codes, stdin, tty, env, timeouts, signals,
//! staged files and chains, and the processes they leave behind.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use supermachine_agent::base64;
use supermachine_agent::client::Event;
use supermachine_agent::protocol::*;

use crate::harness::*;

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

/// argv[0] without a `/` is looked for along the exec's PATH as `execvp` does: a directory or
/// a file without an execute bit by that name is passed over, the first file that runs wins,
/// relative PATH entries resolve from the exec's cwd, and nothing that runs is "not found".
#[test]
fn path_search_passes_over_what_cannot_run() {
    use std::os::unix::fs::PermissionsExt;
    let a = Agent::start();
    let root = scratch("path");
    let (dir, plain, runs) = (root.join("d1"), root.join("d2"), root.join("d3"));
    std::fs::create_dir_all(dir.join("smk-prog")).unwrap();
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("smk-prog"), "#!/bin/sh\necho plain\n").unwrap();
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(runs.join("smk-prog"), "#!/bin/sh\necho \"runs $0\"\n").unwrap();
    std::fs::set_permissions(
        runs.join("smk-prog"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let run = |path: String, cwd: Option<&Path>| {
        let mut req = ExecRequest::new(["smk-prog"]);
        req.env.insert("PATH".into(), path);
        req.cwd = cwd.map(|c| c.display().to_string());
        a.client.exec_output(&req).unwrap()
    };
    let d = |p: &Path| p.display().to_string();
    let out = run(format!("{}::{}:{}", d(&dir), d(&plain), d(&runs)), None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // A script's $0 is the file the kernel ran.
    let want = format!("runs {}/smk-prog", d(&runs));
    assert_eq!(
        (out.status.code, text.trim()),
        (0, want.as_str()),
        "{out:?}"
    );
    let out = run("d3".into(), Some(&root));
    assert_eq!(
        out.status.code, 0,
        "a relative PATH entry, from cwd: {out:?}"
    );
    // A hostile PATH: a symlink loop, a name past PATH_MAX, then 10,000 missing directories
    // (the whole PATH under the kernel's 128 KiB for one environment string).
    // Every entry costs the child one failing execve; each is passed over, the search ends in
    // "not found" and the agent serves on.
    std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
    let long = [
        format!("{}/loop", d(&root)),
        format!("/{}", "x".repeat(5000)),
    ]
    .into_iter()
    .chain((0..10_000).map(|i| format!("/n/{i}")))
    .collect::<Vec<_>>()
    .join(":");
    for path in [
        format!("{}:{}", d(&dir), d(&plain)),
        "/no/such/dir".into(),
        long,
    ] {
        let out = run(path, None);
        assert_eq!(out.status.code, 127);
        assert_eq!(out.stderr, b"smk-prog: command not found\n");
    }
    assert_eq!(a.client.exec_output(&sh("true")).unwrap().status.code, 0);
    let _ = std::fs::remove_dir_all(&root);
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

/// Issue 22: in host mode a `setsid` daemon that keeps stdout open survives the process-group
/// kill, and the exec never ended. After a timeout or the host's SIGKILL, output still open
/// past a short grace is closed and EXIT 137 sent.
#[test]
fn a_kill_ends_the_exec_although_an_escaped_daemon_holds_its_stdout() {
    let a = Agent::start();
    let pids = a.path("daemon.pid");
    let script = format!("setsid sh -c 'echo $$ >> {pids}; exec sleep 30' & sleep 30");
    // The deadline.
    let mut req = sh(&script);
    req.timeout_ms = Some(300);
    let t = Instant::now();
    let out = a.client.exec_output(&req).unwrap();
    assert_eq!(out.status.code, 137);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The host's SIGKILL.
    let mut exec = a.client.exec(&sh(&script)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    exec.signal(libc::SIGKILL as u8).unwrap();
    loop {
        match exec.next_event().unwrap() {
            Event::Exit(s) => {
                assert_eq!(s.code, 137);
                break;
            }
            _ => continue,
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The daemons escaped (host mode has no cgroup); they are the test's to end.
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
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
