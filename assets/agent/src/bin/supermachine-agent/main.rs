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
//! - [`state`]: the process-wide state (reaper, exec cgroups, smpark, idle connections), one
//!   value made here and passed beside [`Config`]; no other module keeps a static.
//! - [`server`]: accept loop and dispatcher: each request's first frame goes to [`exec`] or
//!   [`control`]. Connection threads are reused (one is kept idle); [`inbox`] buffers each
//!   connection's reads; connections are non-blocking throughout.
//! - [`sys`]: the OS boundary, every system call outside the vfork child (that mode, `poll`,
//!   signals, mounts, clocks, the reaper's `wait4`, …).
//! - [`edge`]: the wire vocabulary (`Writer`, `Next`, ERROR frames, acks) and the one
//!   mapping of typed errors to an `ErrorCode` and message; errors become wire errors only
//!   there.
//! - [`control`]: CONTROL actions to handlers, results to acks.
//! - [`exec`], [`spawn`]: REQUEST sessions (one poll loop each, a cgroup per exec) and
//!   vfork-style spawn; passwd/group resolution is the guest contract's
//!   ([`supermachine_guest::user`]), shared with init-oci.
//! - [`files`], [`system`], [`workload`], [`park`]: the actions' handlers. Each returns an
//!   error type of its own naming the action, path and cause, and imports neither
//!   [`server`] nor [`edge`]: dependencies run server → control/exec → edge → handlers.
//! - [`oserror`]: OS errors with the operation and path that failed, errno kept.
//! - [`stdio`]: the `--exec-stdio` and `--tcp-stdio` modes.

mod control;
mod edge;
mod exec;
mod files;
mod inbox;
mod oserror;
mod park;
mod pid1;
mod reaper;
mod server;
mod spare;
mod spawn;
mod state;
mod stdio;
mod sys;
mod system;
mod workload;

use std::fmt;
use std::io;
use std::num::ParseIntError;
use std::sync::Arc;

use supermachine_agent::protocol::{DEFAULT_PORT, READY_FILE, READY_LINE};
use supermachine_agent::transport::{ListenAddr, Listener};

use state::State;

/// Writes one line to stderr (the console in a guest). Never panics, unlike `eprintln!`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        // One write per line: `write_fmt` on unbuffered stderr writes each piece on its own,
        // and a kernel message on the console could land inside the line (seen: the ready
        // line split by a clocksource message, so the host never matched it).
        let line = format!("supermachine-agent: {}\n", format_args!($($arg)*));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
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

/// Why the command line names no mode.
#[derive(Debug, PartialEq, Eq)]
enum ArgsError {
    /// `--tcp-stdio`'s port is not a number below 65536.
    BadPort {
        /// The argument as given.
        port: String,
        /// Why it does not parse.
        source: ParseIntError,
    },
    /// `--listen`'s address is neither `vsock:PORT` nor `unix:PATH`.
    Listen(String),
    /// Arguments of no mode.
    Unexpected(Vec<String>),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::BadPort { port, source } => {
                write!(f, "--tcp-stdio: bad port {port:?}: {source}\n{USAGE}")
            }
            ArgsError::Listen(why) => f.write_str(why),
            ArgsError::Unexpected(args) => write!(f, "unexpected arguments {args:?}\n{USAGE}"),
        }
    }
}

/// Why the agent stopped serving (or never started).
#[derive(Debug)]
enum Error {
    /// The command line names no mode.
    Args(ArgsError),
    /// An OS error, naming the operation ([`oserror::annotate`]) where the cause does not.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Args(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Args(ArgsError::BadPort { source, .. }) => Some(source),
            Error::Args(_) => None,
            Error::Io(e) => Some(e),
        }
    }
}

fn parse_args(args: &[String]) -> Result<Mode, ArgsError> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        [] => Ok(Mode::Daemon(ListenAddr::Vsock(DEFAULT_PORT))),
        ["--exec-stdio"] => Ok(Mode::ExecStdio),
        ["--tcp-stdio", host, port] => port
            .parse()
            .map(|p| Mode::TcpStdio(host.to_string(), p))
            .map_err(|source| ArgsError::BadPort {
                port: port.to_string(),
                source,
            }),
        ["--listen", addr] => addr.parse().map(Mode::Daemon).map_err(ArgsError::Listen),
        _ => Err(ArgsError::Unexpected(args.to_vec())),
    }
}

fn daemon(addr: ListenAddr, state: &'static State) -> Result<(), Error> {
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
    state
        .reaper
        .start()
        .map_err(|e| Error::Io(oserror::annotate(e, "start reaper thread".into())))?;
    // Its errors name the address already.
    let listener = Listener::bind(&addr).map_err(Error::Io)?;
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
    server::serve(listener, Arc::new(config), state)
}

fn run(mode: Mode, state: &'static State) -> Result<(), Error> {
    match mode {
        Mode::Daemon(addr) => daemon(addr, state),
        Mode::ExecStdio => stdio::exec_stdio(&Config { guest: true }, state).map_err(Error::Io),
        Mode::TcpStdio(host, port) => stdio::tcp_stdio(&host, port).map_err(Error::Io),
    }
}

fn main() {
    let is_pid1 = std::process::id() == 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let state = State::leak_new();
    let result = parse_args(&args)
        .map_err(Error::Args)
        .and_then(|mode| run(mode, state));
    if let Err(e) = result {
        log!("{e}");
        if !is_pid1 {
            std::process::exit(2);
        }
    }
    // PID 1 must never exit (the kernel would panic and the VM be lost): keep reaping
    // and idle so the console still shows what went wrong.
    if is_pid1 {
        let _ = state.reaper.start();
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<Mode, ArgsError> {
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
            .to_string()
            .contains("bad port"));
        assert!(args(&["--hostname", "h"])
            .unwrap_err()
            .to_string()
            .contains("--hostname"));
    }
}
