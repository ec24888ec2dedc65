//! The conformance checks: what supermachine 0.7.108's client expects of a guest, each driven
//! through its public API only. Groups: [`exec`] (REQUEST sessions), [`control`] (CONTROL
//! actions) and [`workload`] (`/.supermachine/run-workload` and `signal`).

use std::io::Read;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::json;
use supermachine::wire::{b64_decode, b64_encode};

use crate::client::{run_strict, Agent};
use crate::report::Report;
use crate::workload;

/// A deterministic pseudo-random buffer (xorshift), so a corrupted byte is visible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Where two buffers first differ, for failure details.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "{} of {} bytes, first difference at {i}",
            got.len(),
            want.len()
        ),
        None => format!("{} of {} bytes", got.len(), want.len()),
    }
}

/// `seq 1 SEQ_8MIB` prints exactly 8 MiB (6 888 888 bytes for 1..=999 999, then 187 465
/// eight-byte lines): a large, checkable stdout from one process, with no pipe in between.
pub const SEQ_8MIB: u32 = 1_187_464;

/// What `seq 1 n` prints.
pub fn seq_output(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.extend_from_slice(i.to_string().as_bytes());
        v.push(b'\n');
    }
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// REQUEST sessions: exit codes, stdio, env/cwd, stage files, chains, signals, tty.
pub fn exec(r: &mut Report, a: &Agent) {
    r.check("uname", || {
        let o = a
            .exec(["uname", "-srm"])
            .timeout(Duration::from_secs(30))
            .output()?;
        let s = text(&o.stdout);
        ensure!(o.success(), "uname ended with {}", o.status);
        ensure!(
            s.starts_with("Linux ") && s.ends_with("x86_64"),
            "unexpected uname: {s:?}"
        );
        Ok(s)
    });
    r.check("exit-code", || {
        let code = |argv: &[&str]| -> Result<Option<i32>> {
            let o = a
                .exec(argv.iter().copied())
                .timeout(Duration::from_secs(30))
                .output()?;
            Ok(o.status.code())
        };
        let got = [
            code(&["true"])?,
            code(&["false"])?,
            code(&["sh", "-c", "exit 7"])?,
            code(&["/no/such/binary"])?,
        ];
        ensure!(
            got == [Some(0), Some(1), Some(7), Some(127)],
            "true/false/exit 7/missing binary gave {got:?}, want 0/1/7/127"
        );
        Ok("0 1 7 127 (missing binary)".into())
    });
    r.check("stdin-1mib", || {
        let input = Arc::new(pattern(1 << 20, 1));
        let f = run_strict(
            a.exec(["cat"]),
            Some(Arc::clone(&input)),
            Duration::from_secs(120),
        )
        .map_err(|e| anyhow!("{e}"))?;
        ensure!(
            f.code == Some(0),
            "cat ended with {:?}: {}",
            f.code,
            text(&f.stderr)
        );
        ensure!(
            f.stdout == *input,
            "cat returned {}",
            first_difference(&f.stdout, &input)
        );
        Ok("1048576 bytes byte-exact".into())
    });
    r.check("stdout-8mib", || {
        let want = seq_output(SEQ_8MIB);
        let o = a
            .exec(["seq", "1", &SEQ_8MIB.to_string()])
            .timeout(Duration::from_secs(180))
            .output()?;
        ensure!(
            o.success(),
            "ended with {} (timed out {})",
            o.status,
            o.timed_out
        );
        ensure!(
            o.stdout == want,
            "stdout: {}",
            first_difference(&o.stdout, &want)
        );
        Ok(format!("{} bytes in {:.1?}", want.len(), o.duration))
    });
    r.check("exec-signals-default", || {
        // A fresh exec must not inherit ignored signals from the agent (a Rust program
        // ignores SIGPIPE): with SIGPIPE ignored, `yes | head` never ends.
        let o = a
            .exec(["grep", "SigIgn", "/proc/self/status"])
            .timeout(Duration::from_secs(30))
            .output()?;
        let ign = text(&o.stdout);
        ensure!(
            ign.split_whitespace().nth(1) == Some("0000000000000000"),
            "the exec starts with ignored signals: {ign:?}"
        );
        let o = a
            .exec(["sh", "-c", "yes | head -c 1048576 | wc -c"])
            .timeout(Duration::from_secs(30))
            .output()?;
        ensure!(
            o.success() && text(&o.stdout) == "1048576" && o.stderr.is_empty(),
            "`yes | head` gave {} (timed out {}), stdout {:?}, stderr {:?}",
            o.status,
            o.timed_out,
            text(&o.stdout),
            text(&o.stderr)
        );
        Ok("nothing ignored; `yes | head` ends".into())
    });
    r.check("stderr-separate", || {
        let o = a
            .exec(["sh", "-c", "echo out; echo err >&2; echo out2"])
            .timeout(Duration::from_secs(30))
            .output()?;
        ensure!(
            o.stdout == b"out\nout2\n" && o.stderr == b"err\n",
            "stdout {:?} stderr {:?}",
            text(&o.stdout),
            text(&o.stderr)
        );
        Ok("stdout and stderr apart".into())
    });
    r.check("env-cwd", || {
        let o = a
            .exec(["sh", "-c", "echo \"$CONF_A|$CONF_B\"; pwd"])
            .env("CONF_A", "alpha")
            .env("CONF_B", "with space")
            .cwd("/tmp")
            .timeout(Duration::from_secs(30))
            .output()?;
        let s = text(&o.stdout);
        ensure!(s == "alpha|with space\n/tmp", "got {s:?}");
        let o = a
            .exec(["true"])
            .cwd("/no/such/dir")
            .timeout(Duration::from_secs(30))
            .output()?;
        ensure!(
            o.status.code() == Some(127),
            "a missing cwd gave {}",
            o.status
        );
        Ok("env merged, cwd applied, missing cwd -> 127".into())
    });
    r.check("exec-defaults", || {
        // Without `cwd`, an exec starts where supermachine's x86 agent runs: `/` (the launch
        // script never changes directory); PATH finds the usual directories.
        let o = a
            .exec(["sh", "-c", "pwd; echo \"$PATH\""])
            .timeout(Duration::from_secs(30))
            .output()?;
        let s = text(&o.stdout);
        let mut lines = s.lines();
        let (cwd, path) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        ensure!(cwd == "/", "default cwd {cwd:?}, want \"/\"");
        let dirs: Vec<&str> = path.split(':').collect();
        ensure!(
            ["/bin", "/usr/bin", "/sbin", "/usr/sbin"]
                .iter()
                .all(|d| dirs.contains(d)),
            "PATH {path:?} misses one of /bin /usr/bin /sbin /usr/sbin"
        );
        Ok(format!("cwd /, PATH {path}"))
    });
    r.check("stage-file-chain", || {
        let o = a
            .exec(["/tmp/conformance-stage.sh", "one"])
            .stage_file_mode(
                "/tmp/conformance-stage.sh",
                b"#!/bin/sh\necho \"staged $1\"\n".to_vec(),
                0o755,
            )
            .chain(["sh", "-c", "stat -c %a /tmp/conformance-stage.sh"])
            .chain(["sh", "-c", "exit 4"])
            .chain(["echo", "not reached"])
            .timeout(Duration::from_secs(30))
            .output()?;
        let s = text(&o.stdout);
        ensure!(
            s == "staged one\n755" && o.status.code() == Some(4),
            "stdout {s:?}, {} (want `staged one`, `755`, exit 4)",
            o.status
        );
        Ok("staged 0755, chain stopped at exit 4".into())
    });
    r.check("sigterm-143", || {
        let mut child = a
            .exec(["sh", "-c", "echo started; exec sleep 60"])
            .spawn()?;
        drop(child.stdin());
        let mut out = child.stdout().context("no stdout handle")?;
        let signaler = child.signaler();
        // Never wait forever for the first line.
        let guard = thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            while !seen.ends_with(b"started\n") {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            seen
        });
        let t = Instant::now();
        while !guard.is_finished() && t.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(10));
        }
        if !guard.is_finished() {
            let _ = signaler.abort();
            bail!("the exec printed nothing within 30 s");
        }
        child.signal(15)?;
        let t = Instant::now();
        let st = child.wait()?;
        ensure!(st.code() == Some(143), "SIGTERM gave {st}, want 143");
        Ok(format!("143 after {:.0?}", t.elapsed()))
    });
    r.check("timeout-137", || {
        let o = a
            .exec(["sleep", "60"])
            .timeout(Duration::from_secs(1))
            .output()?;
        ensure!(
            o.timed_out && o.status.code() == Some(137),
            "timed_out {} status {}",
            o.timed_out,
            o.status
        );
        Ok(format!("137 after {:.1?}", o.duration))
    });
    r.check("tty-winsize", || {
        let o = a
            .exec(["sh", "-c", "stty size; tty"])
            .tty(true)
            .winsize(120, 40)
            .timeout(Duration::from_secs(30))
            .output()?;
        let s = text(&o.stdout).replace('\r', "");
        ensure!(o.success(), "ended with {}: {s:?}", o.status);
        ensure!(s.starts_with("40 120\n/dev/pts/"), "got {s:?}");
        ensure!(
            o.stderr.is_empty(),
            "stderr not merged: {:?}",
            text(&o.stderr)
        );
        Ok(s.replace('\n', " "))
    });
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// CONTROL actions.
pub fn control(r: &mut Report, a: &Agent) {
    let t = Duration::from_secs(30);
    r.check("probe-protocol", || {
        let ack = a.control(&json!({"action": "probe"}), t)?;
        let p = ack["protocol"]
            .as_u64()
            .context("no `protocol` in the ack")?;
        ensure!(
            p >= 5,
            "protocol {p} < 5 (supermachine 0.7.108 asks for a rebake)"
        );
        Ok(format!("protocol {p}"))
    });
    r.check("sync", || {
        a.control(&json!({"action": "sync"}), t)?;
        Ok("ok".into())
    });
    r.check("sync-time", || {
        a.control(&json!({"action": "sync_time", "host_unix_ns": now_ns()}), t)?;
        let guest: i64 = a.sh("date +%s")?.trim().parse().context("date +%s")?;
        let host = (now_ns() / 1_000_000_000) as i64;
        ensure!(
            (guest - host).abs() <= 10,
            "guest clock {guest}, host {host}"
        );
        match a.control(&json!({"action": "sync_time"}), t) {
            Ok(_) => bail!("sync_time without host_unix_ns was accepted"),
            Err(e) => Ok(format!(
                "clock within {} s; missing field: {e}",
                (guest - host).abs()
            )),
        }
    });
    r.check("drop-vfs-caches", || {
        a.control(&json!({"action": "drop_vfs_caches"}), t)?;
        Ok("ok".into())
    });
    r.check("file-chunks-3mib", || {
        const CHUNK: usize = 1 << 20;
        let path = "/tmp/conformance-chunked.bin";
        let data = pattern(3 * CHUNK, 3);
        let token = format!("conf{}", std::process::id());
        let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut req = json!({
                "action": "write_file_chunk",
                "path": path,
                "offset": (i * CHUNK) as u64,
                "data_b64": b64_encode(c),
                "last": last,
                "token": token,
            });
            if last {
                req["mode"] = json!(0o640);
            }
            a.control(&req, t)
                .with_context(|| format!("write_file_chunk {i}"))?;
        }
        let mut back = Vec::new();
        let mut total = None;
        while back.len() < data.len() {
            let ack = a
                .control(
                    &json!({
                        "action": "read_file_chunk",
                        "path": path,
                        "offset": back.len() as u64,
                        "len": CHUNK as u64,
                        "max_bytes": 32u64 << 20,
                    }),
                    t,
                )
                .with_context(|| format!("read_file_chunk at {}", back.len()))?;
            total = ack["total_len"].as_u64();
            let part = b64_decode(ack["data_b64"].as_str().context("no data_b64")?)
                .map_err(|e| anyhow!("data_b64: {e}"))?;
            if part.is_empty() {
                break;
            }
            back.extend_from_slice(&part);
        }
        ensure!(
            total == Some(data.len() as u64),
            "total_len {total:?}, want {}",
            data.len()
        );
        ensure!(back == data, "read back {}", first_difference(&back, &data));
        let extra = a.sh(&format!(
            "stat -c %a {path}; ls -a /tmp | grep -c supermachine-write.partial || true"
        ))?;
        ensure!(
            extra == "640\n0\n",
            "mode and partial-file count: {:?} (want 640, 0)",
            extra
        );
        Ok("3 MiB in 3 chunks, mode 640, no partial left".into())
    });
    r.check("unknown-action", || {
        match a.control(&json!({"action": "conformance-no-such-action"}), t) {
            Ok(ack) => bail!("accepted: {ack}"),
            Err(e) if e.to_string().contains("unknown CONTROL action") => Ok(e.to_string()),
            Err(e) => bail!("error {e:?} does not say `unknown CONTROL action`"),
        }
    });
}

/// The workload: `/.supermachine/run-workload` runs, its exports reach execs, and `signal`
/// errors without a recorded pid and reaches it with one.
pub fn workload(r: &mut Report, a: &Agent) {
    let t = Duration::from_secs(30);
    let started = r.check("workload-runs", || {
        let s = poll_file(a, workload::STARTED, Duration::from_secs(20))?;
        let want = format!(" {} {}", workload::ENV_VALUE, workload::WORKDIR);
        ensure!(s.ends_with(&want), "{} holds {s:?}", workload::STARTED);
        Ok(s)
    });
    r.check("workload-env-exported", || {
        let v = a.sh(&format!("echo \"${}\"", workload::ENV_NAME))?;
        ensure!(
            v.trim() == workload::ENV_VALUE,
            "execs see {}={:?}",
            workload::ENV_NAME,
            v.trim()
        );
        Ok(format!("{}={}", workload::ENV_NAME, v.trim()))
    });
    r.check("signal-without-pid", || {
        // The launch script records the pid before the agent starts, so the window "no pid
        // yet" is made by hiding the file (what the agent sees is the same), then restored.
        let pidfile = workload::PID_FILE;
        let saved = format!("{pidfile}.conformance");
        a.sh(&format!("mv {pidfile} {saved}"))?;
        let result = (|| -> Result<String> {
            let missing = match a.control(&json!({"action": "signal", "signum": 15}), t) {
                Ok(ack) => bail!("no pid file, yet signal answered {ack}"),
                Err(e) => e.to_string(),
            };
            a.control(
                &json!({"action": "write_file", "path": pidfile,
                        "data_b64": b64_encode(b"not-a-pid\n")}),
                t,
            )
            .context("write a garbage pid file")?;
            let garbage = match a.control(&json!({"action": "signal", "signum": 15}), t) {
                Ok(ack) => bail!("garbage pid file, yet signal answered {ack}"),
                Err(e) => e.to_string(),
            };
            Ok(format!("missing: {missing}; garbage: {garbage}"))
        })();
        a.sh(&format!("mv {saved} {pidfile}"))
            .context("restore the pid file")?;
        result
    });
    r.check("workload-signal", || {
        ensure!(started, "the workload never started");
        let s = a.sh(&format!("cat {}", workload::STARTED))?;
        let pid: u64 = s
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .context("no pid in the started marker")?;
        let ack = a.control(&json!({"action": "signal", "signum": 15}), t)?;
        ensure!(
            ack["pid"].as_u64() == Some(pid),
            "ack {ack}, workload pid {pid}"
        );
        let term = poll_file(a, workload::TERMINATED, Duration::from_secs(20))?;
        ensure!(term == "term", "{} holds {term:?}", workload::TERMINATED);
        Ok(format!("SIGTERM reached pid {pid}, trap ran"))
    });
}

/// Polls `cat path` until it succeeds; returns the trimmed contents.
fn poll_file(a: &Agent, path: &str, limit: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match a.sh(&format!("cat {path}")) {
            Ok(s) => return Ok(s.trim().to_string()),
            Err(e) if start.elapsed() > limit => {
                return Err(e.context(format!("{path} not there after {limit:?}")))
            }
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_exactly_8_mib() {
        assert_eq!(seq_output(SEQ_8MIB).len(), 8 << 20);
        assert_eq!(seq_output(3), b"1\n2\n3\n");
    }

    #[test]
    fn pattern_is_deterministic_and_not_flat() {
        assert_eq!(pattern(4096, 1), pattern(4096, 1));
        assert_ne!(pattern(4096, 1), pattern(4096, 2));
        let p = pattern(4096, 1);
        assert!(p.iter().any(|&b| b != p[0]));
    }
}
