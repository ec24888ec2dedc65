//! Thin helpers over supermachine's public client (`ExecBuilder`, `ExecChild`,
//! `wire::send_control_with_ack`): nothing here speaks the wire format itself.
//!
//! [`run_strict`] is the stress suite's exec: unlike `ExecBuilder::output`, it never retries a
//! connection the agent closed without answering (so a dropped connection is counted, not
//! hidden), it streams optional stdin, and it gives up on an exec that produces no EXIT within a
//! deadline (so a hung agent is counted, not waited for).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use supermachine::{ExecBuilder, ExecEof};

/// STDIN is streamed in frames of this size, like a pipe would deliver it.
const STDIN_CHUNK: usize = 64 * 1024;

/// How a strict exec ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (128 + N for a signal), as supermachine reports it.
    pub code: Option<i32>,
    /// Everything the exec wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the exec wrote to stderr.
    pub stderr: Vec<u8>,
}

/// Why a strict exec did not finish.
#[derive(Debug)]
pub enum Failure {
    /// The agent closed the connection before any output or EXIT (supermachine's "setup
    /// failure", which `output()` would silently retry).
    Dropped,
    /// No EXIT within the deadline; the connection was torn down.
    Hung(Duration),
    /// Anything else (an ERROR frame, a mid-stream close, a socket error).
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Dropped => f.write_str("connection closed without any answer"),
            Failure::Hung(d) => write!(f, "no EXIT within {d:?}"),
            Failure::Other(e) => f.write_str(e),
        }
    }
}

/// Runs `b` once, without retry: feeds `input` (or EOF at once), collects stdout and stderr,
/// and aborts the connection when no EXIT arrives within `limit`.
pub fn run_strict(
    b: ExecBuilder,
    input: Option<Arc<Vec<u8>>>,
    limit: Duration,
) -> Result<Finished, Failure> {
    let mut child = b
        .spawn()
        .map_err(|e| Failure::Other(format!("spawn: {e}")))?;
    let stdin = child.stdin();
    let feeder = match (stdin, input) {
        (Some(mut w), Some(data)) => Some(thread::spawn(move || {
            for chunk in data.chunks(STDIN_CHUNK) {
                if w.write_all(chunk).is_err() {
                    return;
                }
            }
            let _ = w.close();
        })),
        // Dropping the handle sends EOF.
        (w, _) => {
            drop(w);
            None
        }
    };
    let drain = |r: Option<Box<dyn Read + Send>>| {
        r.map(|mut r| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        })
    };
    let out = drain(child.stdout().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr().map(|s| Box::new(s) as Box<dyn Read + Send>));

    let (done_tx, done_rx) = channel::<()>();
    let fired = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let signaler = child.signaler();
        let fired = Arc::clone(&fired);
        thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
                fired.store(true, Ordering::SeqCst);
                let _ = signaler.abort();
            }
        })
    };
    let status = child.wait();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let join =
        |h: Option<thread::JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (stdout, stderr) = (join(out), join(err));
    if fired.load(Ordering::SeqCst) {
        return Err(Failure::Hung(limit));
    }
    match status {
        Ok(st) => Ok(Finished {
            code: st.code(),
            stdout,
            stderr,
        }),
        Err(e) => {
            let setup = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<ExecEof>())
                .is_some_and(ExecEof::is_setup_failure);
            Err(if setup {
                Failure::Dropped
            } else {
                Failure::Other(e.to_string())
            })
        }
    }
}

/// The exec socket of one guest.
#[derive(Debug, Clone)]
pub struct Agent {
    /// A Unix socket where each connection reaches the agent's vsock port 1028.
    pub socket: PathBuf,
}

impl Agent {
    /// A builder for `argv` on this guest.
    pub fn exec<I, S>(&self, argv: I) -> ExecBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecBuilder::new(self.socket.clone()).argv(argv)
    }

    /// `sh -c script` with `ExecBuilder::output` and a timeout; fails unless it exits 0, and
    /// returns its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let o = self
            .exec(["sh", "-c", script])
            .timeout(Duration::from_secs(60))
            .output()
            .with_context(|| format!("exec `{script}`"))?;
        if !o.success() {
            bail!(
                "`{script}` ended with {} (timed out: {}); stderr: {}",
                o.status,
                o.timed_out,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// One CONTROL action and its ack; `Err` carries the agent's `error` text.
    pub fn control(&self, action: &Value, timeout: Duration) -> std::io::Result<Value> {
        supermachine::wire::send_control_with_ack(&self.socket, action, Some(timeout))
    }

    /// Like supermachine's own cold-boot gate: `/bin/true` with a 5 s timeout every 200 ms
    /// until it exits 0, for at most `limit`. Returns the number of attempts.
    pub fn wait_ready(&self, limit: Duration) -> Result<u32> {
        let start = Instant::now();
        let mut last = String::from("no attempt");
        let mut attempts = 0;
        while start.elapsed() < limit {
            attempts += 1;
            match self
                .exec(["/bin/true"])
                .timeout(Duration::from_secs(5))
                .output()
            {
                Ok(o) if o.success() => return Ok(attempts),
                Ok(o) => last = format!("status {} (timed out: {})", o.status, o.timed_out),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(200));
        }
        bail!("`/bin/true` did not succeed within {limit:?} ({attempts} attempts; last: {last})")
    }
}
