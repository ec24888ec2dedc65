//! `supermachine-agent`: the guest's PID 1 and control agent.
//!
//! ```text
//! supermachine-agent [--listen vsock:PORT|unix:PATH] [--hostname NAME] [--workload FILE]
//! ```
//!
//! # Implementation Design
//! - `main`: arguments → [`Config`] → [`run`]. Never returns while PID 1.
//! - [`pid1`]: mounts, hostname, OOM protection, signal forwarding.
//! - [`reaper`]: the only `waitpid` caller; reaps orphans, routes statuses to waiters.
//! - [`server`]: accept loop, handshake, dispatch; errors become wire errors only there.
//! - [`exec`], [`spawn`], [`user`]: the exec operation, fork/exec, passwd/group resolution.
//! - [`files`], [`system`], [`workload`]: the other operations.
//! - [`park`]: secondary-vCPU parking through smpark.ko, for snapshots.

mod exec;
mod files;
mod park;
mod pid1;
mod reaper;
mod server;
mod spawn;
mod system;
mod user;
mod workload;

use std::sync::Arc;

use supermachine_agent::protocol::{DEFAULT_PORT, READY_LINE, READY_MARKER, WORKLOAD_CONFIG};
use supermachine_agent::transport::{ListenAddr, Listener};

/// Writes one line to stderr (the console in a guest). Never panics, unlike `eprintln!`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("supermachine-agent: {}\n", format_args!($($arg)*)),
        );
    }};
}

/// Settings from the command line.
#[derive(Debug)]
pub struct Config {
    /// Running as the guest's init: do PID-1 setup, allow power and clock changes.
    pub pid1: bool,
    listen: ListenAddr,
    hostname: String,
    workload: String,
    ready_marker: Option<String>,
}

const USAGE: &str = "usage: supermachine-agent [--listen vsock:PORT|unix:PATH] [--hostname NAME] [--workload FILE] [--ready-marker FILE]";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Config, String> {
    let pid1 = std::process::id() == 1;
    let mut c = Config {
        pid1,
        listen: ListenAddr::Vsock(DEFAULT_PORT),
        hostname: "supermachine".into(),
        workload: WORKLOAD_CONFIG.into(),
        ready_marker: pid1.then(|| READY_MARKER.into()),
    };
    let mut args = args;
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => c.listen = value("--listen")?.parse()?,
            "--hostname" => c.hostname = value("--hostname")?,
            "--workload" => c.workload = value("--workload")?,
            "--ready-marker" => c.ready_marker = Some(value("--ready-marker")?),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(c)
}

fn run(config: Config) -> Result<(), String> {
    if config.pid1 {
        pid1::forward_signals();
        pid1::setup(&config.hostname);
    } else {
        pid1::become_subreaper();
    }
    reaper::start().map_err(|e| format!("start reaper thread: {e}"))?;
    let listener = Listener::bind(&config.listen).map_err(|e| e.to_string())?;
    workload::start(&config.workload);
    if let Some(marker) = &config.ready_marker {
        if let Err(e) = std::fs::write(marker, format!("{}\n", std::process::id())) {
            log!("write ready marker {marker}: {e}");
        }
    }
    let where_ = match &config.listen {
        ListenAddr::Vsock(p) => format!("vsock port {p}"),
        ListenAddr::Unix(p) => format!("unix:{}", p.display()),
    };
    log!(
        "{} on {where_}",
        READY_LINE.trim_start_matches("supermachine-agent: ")
    );
    server::serve(listener, Arc::new(config))
}

fn main() {
    let is_pid1 = std::process::id() == 1;
    let result = parse_args(std::env::args().skip(1)).and_then(run);
    if let Err(e) = result {
        log!("{e}");
        if !is_pid1 {
            std::process::exit(2);
        }
    }
    // PID 1 must never exit (the kernel would panic and the VM be lost): keep reaping
    // and idle so the console still shows what went wrong.
    if is_pid1 {
        let _ = reaper::start();
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<Config, String> {
        parse_args(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_errors() {
        let c = args(&[]).unwrap();
        assert_eq!(c.listen, ListenAddr::Vsock(1024));
        let c = args(&["--listen", "unix:/tmp/x", "--hostname", "h"]).unwrap();
        assert_eq!(c.listen, ListenAddr::Unix("/tmp/x".into()));
        assert_eq!(c.hostname, "h");
        assert!(args(&["--listen"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
    }
}
