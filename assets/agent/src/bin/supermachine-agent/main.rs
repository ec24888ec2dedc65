//! `supermachine-agent`: the guest's control agent (PID 1 on x86_64, init-oci's child on
//! aarch64), speaking supermachine's protocol 5.
//!
//! ```text
//! supermachine-agent                       daemon: AF_VSOCK port 1028 (what supermachine runs)
//! supermachine-agent --exec-stdio          serve one connection on stdin/stdout
//! supermachine-agent --tcp-stdio HOST PORT byte bridge between stdin/stdout and TCP
//! supermachine-agent --listen vsock:PORT|unix:PATH   daemon elsewhere (unix: host tests)
//! ```
//!
//! # Implementation Design
//! - `main`: arguments → [`Mode`] → [`run`]. Never returns while PID 1.
//! - [`pid1`]: mounts (devpts included), OOM protection, signal forwarding.
//! - [`reaper`]: the only `wait4` caller; reaps orphans, routes statuses to waiters.
//! - [`server`]: accept loop and the connection edge; errors become wire errors only there.
//! - [`control`]: CONTROL actions to handlers, results to acks.
//! - [`exec`], [`spawn`], [`user`]: REQUEST sessions, fork/exec, passwd/group resolution.
//! - [`files`], [`system`], [`workload`], [`park`]: the actions' handlers.
//! - [`stdio`]: the `--exec-stdio` and `--tcp-stdio` modes.

mod control;
mod exec;
mod files;
mod inbox;
mod park;
mod pid1;
mod reaper;
mod server;
mod spawn;
mod stdio;
mod system;
mod user;
mod workload;

use std::sync::Arc;

use supermachine_agent::protocol::{DEFAULT_PORT, READY_FILE, READY_LINE};
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

/// What the handlers may do.
#[derive(Debug)]
pub struct Config {
    /// Serving a guest (vsock daemon or `--exec-stdio`): clock, power and parking act on the
    /// machine. False in host test mode (`--listen unix:`).
    pub guest: bool,
}

/// What to run, from the command line.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Accept connections.
    Daemon(ListenAddr),
    /// One connection on stdin/stdout.
    ExecStdio,
    /// Copy bytes between stdin/stdout and a TCP peer.
    TcpStdio(String, u16),
}

const USAGE: &str = "usage: supermachine-agent [--exec-stdio | --tcp-stdio HOST PORT | --listen vsock:PORT|unix:PATH]";

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        [] => Ok(Mode::Daemon(ListenAddr::Vsock(DEFAULT_PORT))),
        ["--exec-stdio"] => Ok(Mode::ExecStdio),
        ["--tcp-stdio", host, port] => port
            .parse()
            .map(|p| Mode::TcpStdio(host.to_string(), p))
            .map_err(|e| format!("--tcp-stdio: bad port {port:?}: {e}\n{USAGE}")),
        ["--listen", addr] => addr.parse().map(Mode::Daemon),
        _ => Err(format!("unexpected arguments {a:?}\n{USAGE}")),
    }
}

fn daemon(addr: ListenAddr) -> Result<(), String> {
    let config = Config {
        guest: matches!(addr, ListenAddr::Vsock(_)),
    };
    if std::process::id() == 1 {
        pid1::forward_signals();
    } else {
        pid1::become_subreaper();
    }
    if config.guest {
        pid1::setup();
    }
    reaper::start().map_err(|e| format!("start reaper thread: {e}"))?;
    let listener = Listener::bind(&addr).map_err(|e| e.to_string())?;
    match &addr {
        ListenAddr::Vsock(p) => {
            // The console line's text is supermachine's agent's; READY_LINE is its prefix.
            log!(
                "{} {p}",
                READY_LINE.trim_start_matches("supermachine-agent: ")
            );
            let _ = std::fs::create_dir_all("/run");
            if let Err(e) = std::fs::write(READY_FILE, "1") {
                log!("write {READY_FILE}: {e}");
            }
        }
        ListenAddr::Unix(p) => log!("listening on unix:{}", p.display()),
    }
    server::serve(listener, Arc::new(config))
}

fn run(mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Daemon(addr) => daemon(addr),
        Mode::ExecStdio => stdio::exec_stdio(&Config { guest: true }),
        Mode::TcpStdio(host, port) => stdio::tcp_stdio(&host, port),
    }
}

fn main() {
    let is_pid1 = std::process::id() == 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(run);
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

    fn args(s: &[&str]) -> Result<Mode, String> {
        parse_args(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_process_contract() {
        assert_eq!(args(&[]), Ok(Mode::Daemon(ListenAddr::Vsock(1028))));
        assert_eq!(args(&["--exec-stdio"]), Ok(Mode::ExecStdio));
        assert_eq!(
            args(&["--tcp-stdio", "127.0.0.1", "80"]),
            Ok(Mode::TcpStdio("127.0.0.1".into(), 80))
        );
        assert_eq!(
            args(&["--listen", "unix:/tmp/x"]),
            Ok(Mode::Daemon(ListenAddr::Unix("/tmp/x".into())))
        );
        assert!(args(&["--tcp-stdio", "h", "x"])
            .unwrap_err()
            .contains("bad port"));
        assert!(args(&["--hostname", "h"])
            .unwrap_err()
            .contains("--hostname"));
    }
}
