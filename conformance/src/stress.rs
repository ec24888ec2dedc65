//! The stress group, where upstream's 0.7.70 agent was seen to be flaky: execs fired
//! concurrently the moment the agent listens, and many large stdin round trips in a row. Every
//! exec goes through [`run_strict`], so a dropped connection or a hang is counted, not retried
//! or waited out.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use crate::checks::pattern;
use crate::client::{run_strict, Agent, Failure};
use crate::report::Report;

/// Per-exec deadline in the stress group (TCG is slow, but not this slow).
const LIMIT: Duration = Duration::from_secs(60);
/// The round-trip loop stops after this many failures: the verdict is already known.
const MAX_FAILURES: usize = 3;

/// Fires `n` execs at once, each on its own connection; every one must answer.
pub fn burst(r: &mut Report, a: &Agent, n: usize) {
    r.check("burst-at-ready", || {
        let gate = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (a, gate) = (a.clone(), Arc::clone(&gate));
                thread::spawn(move || {
                    gate.wait();
                    let f = run_strict(a.exec(["echo", &format!("burst-{i}")]), None, LIMIT)?;
                    let want = format!("burst-{i}\n");
                    if f.code != Some(0) || f.stdout != want.as_bytes() {
                        return Err(Failure::Other(format!(
                            "exit {:?}, stdout {:?}",
                            f.code,
                            String::from_utf8_lossy(&f.stdout)
                        )));
                    }
                    Ok(())
                })
            })
            .collect();
        let (mut dropped, mut hung, mut other) = (0, 0, Vec::new());
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(Failure::Dropped)) => dropped += 1,
                Ok(Err(Failure::Hung(_))) => hung += 1,
                Ok(Err(e)) => other.push(e.to_string()),
                Err(_) => other.push("client thread panicked".into()),
            }
        }
        let ok = n - dropped - hung - other.len();
        ensure!(
            ok == n,
            "{ok}/{n} answered; {dropped} dropped, {hung} hung, {} other{}",
            other.len(),
            other
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        Ok(format!("{n}/{n} answered, none dropped or hung"))
    });
}

/// `n` round trips of 1 MiB through `cat`, one after the other.
pub fn stdin_round_trips(r: &mut Report, a: &Agent, n: usize) {
    r.check("stdin-1mib-x200", || {
        let input = Arc::new(pattern(1 << 20, 7));
        let start = Instant::now();
        let mut failures = Vec::new();
        let mut done = 0;
        for i in 0..n {
            done += 1;
            match run_strict(a.exec(["cat"]), Some(Arc::clone(&input)), LIMIT) {
                Ok(f) if f.code == Some(0) && f.stdout == *input => {}
                Ok(f) => failures.push(format!(
                    "#{i}: exit {:?}, {} of {} bytes back",
                    f.code,
                    f.stdout.len(),
                    input.len()
                )),
                Err(e) => failures.push(format!("#{i}: {e}")),
            }
            if failures.len() >= MAX_FAILURES {
                break;
            }
        }
        if !failures.is_empty() {
            bail!(
                "{} failed of {done} run (stopped after {MAX_FAILURES}): {}",
                failures.len(),
                failures.join("; ")
            );
        }
        Ok(format!(
            "{n} x 1 MiB byte-exact, {:.0?} per round trip",
            start.elapsed() / n as u32
        ))
    });
}
