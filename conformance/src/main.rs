//! `supermachine-conformance`: supermachine 0.7.108's own public client, pointed at a guest.
//!
//! ```text
//! supermachine-conformance initramfs --agent A --busybox B --out F
//! supermachine-conformance bundled --squashfs ROOT --out DIR
//! supermachine-conformance workload-script
//! supermachine-conformance check --socket S [--suite full|control] [--stress] [--json F]
//!                                [--ready-timeout SECS]
//! supermachine-conformance rtt --socket S [-n N]
//! supermachine-conformance exec --socket S [--timeout SECS] -- ARGV...
//! ```
//!
//! - `initramfs` builds the x86_64 initramfs exactly as supermachine does for a KVM boot
//!   (`Image::build_kvm_initramfs`).
//! - `bundled` bakes `ROOT` with `Image::bake_kvm_from_squashfs_auto`, which extracts the boot
//!   assets compiled into supermachine from its `supermachine-kernel` dependency (our crates,
//!   through the workspace's `[patch.crates-io]`) into `DIR`: `DIR/kernel` and the initramfs
//!   supermachine assembles from the bundled agent and busybox, `DIR/agent.cpio`.
//! - `workload-script` prints the `/.supermachine/run-workload` to bake into the root image.
//! - `check` runs the suite against a Unix socket where every connection reaches the guest
//!   agent's vsock port 1028 (what supermachine's VMM gives its client): one line per check,
//!   and a JSON report. It exits 0 only when every check passed.
//! - `rtt` prints the median round trip, in µs, of an exec of `true` (for the bench).
//! - `exec` runs one command with `ExecBuilder::output` (for poking at a guest by hand): its
//!   stdout and stderr are copied out, and it exits with the command's code.
//!
//! Only supermachine's public API is used: `Image::build_kvm_initramfs`,
//! `Image::bake_kvm_from_squashfs_auto`, `ExecBuilder` /
//! `ExecChild`, and `wire::send_control_with_ack` (plus its `wire::b64_*`).

mod checks;
mod client;
mod report;
mod stress;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use client::Agent;
use report::{Outcome, Report};

const USAGE: &str = "usage: supermachine-conformance <command>
  initramfs --agent A --busybox B --out F
  bundled --squashfs ROOT --out DIR
  workload-script
  check --socket S [--suite full|control] [--stress] [--json F] [--ready-timeout SECS]
  rtt --socket S [-n N]
  exec --socket S [--timeout SECS] -- ARGV...";

/// Concurrent execs fired when the agent first listens.
const BURST: usize = 50;
/// Sequential 1 MiB stdin round trips.
const ROUND_TRIPS: usize = 200;

fn main() {
    match dispatch() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("supermachine-conformance: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// The `--flag VALUE` pairs and bare flags after a subcommand.
#[derive(Debug)]
struct Flags(Vec<String>);

impl Flags {
    fn value(&mut self, flag: &str) -> Result<Option<String>> {
        match self.0.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) if i + 1 < self.0.len() => {
                let v = self.0.remove(i + 1);
                self.0.remove(i);
                Ok(Some(v))
            }
            Some(_) => bail!("{flag} needs a value\n{USAGE}"),
        }
    }

    fn need(&mut self, flag: &str) -> Result<String> {
        self.value(flag)?
            .with_context(|| format!("{flag} is required\n{USAGE}"))
    }

    fn switch(&mut self, flag: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|a| a != flag);
        self.0.len() != before
    }

    fn done(self) -> Result<()> {
        match self.0.first() {
            Some(a) => bail!("unexpected argument {a}\n{USAGE}"),
            None => Ok(()),
        }
    }
}

fn dispatch() -> Result<i32> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().with_context(|| USAGE.to_string())?;
    let mut f = Flags(args.collect());
    match cmd.as_str() {
        "initramfs" => {
            let agent = PathBuf::from(f.need("--agent")?);
            let busybox = PathBuf::from(f.need("--busybox")?);
            let out = PathBuf::from(f.need("--out")?);
            f.done()?;
            supermachine::Image::build_kvm_initramfs(&agent, &busybox, &[], &out)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("Image::build_kvm_initramfs")?;
            Ok(0)
        }
        "bundled" => {
            let root = PathBuf::from(f.need("--squashfs")?);
            let out = PathBuf::from(f.need("--out")?);
            f.done()?;
            supermachine::Image::bake_kvm_from_squashfs_auto(&root, &out)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("Image::bake_kvm_from_squashfs_auto")?;
            Ok(0)
        }
        "workload-script" => {
            f.done()?;
            print!("{}", workload::script());
            Ok(0)
        }
        "check" => {
            let agent = Agent {
                socket: PathBuf::from(f.need("--socket")?),
            };
            let suite = f.value("--suite")?.unwrap_or_else(|| "full".into());
            let stress = f.switch("--stress");
            let json = f.value("--json")?.map(PathBuf::from);
            let ready: u64 = match f.value("--ready-timeout")? {
                Some(v) => v.parse().context("--ready-timeout SECS")?,
                None => 120,
            };
            f.done()?;
            let report = check(&agent, &suite, stress, Duration::from_secs(ready))?;
            if let Some(p) = json {
                report.write(&p)?;
            }
            Ok(if report.all_passed() { 0 } else { 1 })
        }
        "rtt" => {
            let agent = Agent {
                socket: PathBuf::from(f.need("--socket")?),
            };
            let n: usize = match f.value("-n")? {
                Some(v) => v.parse().context("-n N")?,
                None => 200,
            };
            f.done()?;
            println!("{}", rtt(&agent, n.max(1))?);
            Ok(0)
        }
        "exec" => {
            // split_off leaves the flags before `--` in f.0.
            let argv = match f.0.iter().position(|a| a == "--") {
                Some(i) => f.0.split_off(i).split_off(1),
                None => bail!("exec: the command goes after `--`\n{USAGE}"),
            };
            let agent = Agent {
                socket: PathBuf::from(f.need("--socket")?),
            };
            let secs: u64 = match f.value("--timeout")? {
                Some(v) => v.parse().context("--timeout SECS")?,
                None => 600,
            };
            f.done()?;
            exec(&agent, argv, Duration::from_secs(secs))
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}

/// Runs the suite. With `stress`, the burst goes first, before any other connection, so it
/// meets the agent the moment it listens (the caller starts us when the guest says so).
fn check(a: &Agent, suite: &str, stress: bool, ready: Duration) -> Result<Report> {
    if !matches!(suite, "full" | "control") {
        bail!("--suite {suite}: expected full or control");
    }
    let mut r = Report::new(suite);
    if stress {
        stress::burst(&mut r, a, BURST);
    }
    let t = Instant::now();
    match a.wait_ready(ready) {
        Ok(attempts) => r.record(Outcome {
            name: "ready",
            pass: true,
            ms: t.elapsed().as_millis(),
            detail: format!("`/bin/true` answered (attempt {attempts})"),
        }),
        Err(e) => {
            r.record(Outcome {
                name: "ready",
                pass: false,
                ms: t.elapsed().as_millis(),
                detail: format!("{e:#}"),
            });
            // Nothing else can pass; say so rather than time out every check.
            return Ok(r);
        }
    }
    if suite == "full" {
        checks::exec(&mut r, a);
    }
    checks::control(&mut r, a);
    if suite == "full" {
        checks::workload(&mut r, a);
    }
    if stress {
        stress::stdin_round_trips(&mut r, a, ROUND_TRIPS);
    }
    Ok(r)
}

/// Median µs of an exec of `true` through `ExecBuilder::output`, after 5 warm-up runs.
fn rtt(a: &Agent, n: usize) -> Result<u128> {
    let once = || -> Result<u128> {
        let t = Instant::now();
        let o = a
            .exec(["true"])
            .timeout(Duration::from_secs(30))
            .output()
            .context("exec true")?;
        if !o.success() {
            bail!("`true` ended with {}", o.status);
        }
        Ok(t.elapsed().as_micros())
    };
    for _ in 0..5 {
        once()?;
    }
    let mut v = (0..n).map(|_| once()).collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    Ok(v[v.len() / 2])
}

/// Runs `argv` once; copies its output out and returns its exit code.
fn exec(a: &Agent, argv: Vec<String>, timeout: Duration) -> Result<i32> {
    use std::io::Write;
    if argv.is_empty() {
        bail!("exec: no command");
    }
    let o = a.exec(argv).timeout(timeout).output().context("exec")?;
    std::io::stdout().write_all(&o.stdout)?;
    std::io::stderr().write_all(&o.stderr)?;
    eprintln!(
        "supermachine-conformance: {} ({} stdout bytes, {} stderr bytes, {:.1?}{})",
        o.status,
        o.stdout.len(),
        o.stderr.len(),
        o.duration,
        if o.timed_out { ", timed out" } else { "" }
    );
    Ok(o.status.code().unwrap_or(128))
}
