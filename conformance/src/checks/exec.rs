//! REQUEST sessions: exit codes, stdio, env/cwd, stage files, chains, signals, tty.

use std::io::Read;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{first_difference, pattern, seq_output, text, SEQ_8MIB};
use crate::client::{run_strict, Agent};
use crate::report::Report;

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
