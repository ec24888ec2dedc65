//! The workload: `/.supermachine/run-workload`, its exports, and `signal`.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use supermachine::wire::b64_encode;

use crate::client::Agent;
use crate::report::Report;
use crate::workload;

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
