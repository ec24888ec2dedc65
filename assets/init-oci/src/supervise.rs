//! PID 1's last job: the pre-exec marker (and pause), the workload as a child in its own
//! process group and identity, its pid in [`PID_FILE`], and then forever: reap every child,
//! forward signals to the workload, and once it is gone print the parking line.
//!
//! Signals are taken with `sigwaitinfo` on a blocked set ([`sys::SUPERVISED`]) instead of
//! handlers, so nothing runs asynchronously; every child empties its mask before exec.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use init_oci::contract::{parking_line, EXIT_BAD_USER, EXIT_NOT_RUN, PRE_EXEC};
use supermachine_guest::user::Ident;

use crate::console::{self, Pause};
use crate::error::Error;
use crate::files::Command;
use crate::say;
use crate::sys::{self, Exit};

/// What the workload runs as and where.
#[derive(Debug)]
pub struct Workload {
    /// Its argv.
    pub command: Command,
    /// Its identity: `None` stays root; an error means it will not run (exit 126).
    pub identity: Result<Option<Ident>, Error>,
}

/// Where the workload's pid goes (the agent's `signal` reads it).
pub use supermachine_guest::paths::WORKLOAD_PID as PID_FILE;
/// Without `supermachine.pre_exec_sync=1`, how long the pre-exec marker leads the fork (the
/// host's snapshot window, as in supermachine's init).
pub const PRE_EXEC_LEAD: Duration = Duration::from_millis(250);

/// Whether the workload's stdio goes to the console: `SUPERMACHINE_GUEST_STDIO` set to
/// `1`, `true`, `yes`, `on`, `console` or `inherit` (by default it is `/dev/null`: a busy
/// workload's logs would saturate the emulated serial port).
fn stdio_to_console() -> bool {
    std::env::var("SUPERMACHINE_GUEST_STDIO").is_ok_and(|v| {
        matches!(
            v.as_str(),
            "1" | "true" | "yes" | "on" | "console" | "inherit"
        )
    })
}

fn stdio() -> Stdio {
    if stdio_to_console() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Forks and execs the workload; its pid, or the exit status to record when it never ran.
fn spawn(w: Workload) -> Result<i32, i32> {
    let identity: Option<Ident> = match w.identity {
        Ok(i) => i,
        Err(e) => {
            say!("{e}");
            return Err(EXIT_BAD_USER);
        }
    };
    let Some((program, args)) = w.command.argv.split_first() else {
        return Err(EXIT_NOT_RUN);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (sigprocmask, setgroups, setgid, setuid) on data it owns.
    unsafe {
        cmd.pre_exec(move || {
            sys::unblock_all_signals()?;
            match &identity {
                Some(id) => sys::drop_privileges(id.uid, id.gid, &id.groups),
                None => Ok(()),
            }
        });
    }
    match cmd.spawn() {
        Ok(child) => Ok(child.id() as i32),
        Err(e) => {
            say!("child execvp({}): {e}", program.to_string_lossy());
            Err(EXIT_NOT_RUN)
        }
    }
}

/// Reports the workload's end and parks.
fn parked(exit: Exit) {
    match exit {
        Exit::Code(c) => say!("child exited {c}"),
        Exit::Signal(s) => say!("child killed by signal {s}"),
    }
    say_parking(exit.number());
}

/// Syncs, then prints the parking line of `code`.
fn say_parking(code: i32) {
    sys::sync();
    console::line(&parking_line(code));
}

/// Runs the workload and supervises forever. `agent` is the agent's pid, whose end is
/// reported.
pub fn run(w: Workload, pre_exec_sync: bool, agent: Option<i32>) -> ! {
    console::line(PRE_EXEC);
    if pre_exec_sync {
        console::wait_for_host(Pause::PreExec);
    } else {
        std::thread::sleep(PRE_EXEC_LEAD);
    }
    let mut workload = match spawn(w) {
        Ok(pid) => {
            if let Err(e) = std::fs::write(PID_FILE, format!("{pid}\n")) {
                say!("write {PID_FILE}: {e}");
            }
            Some(pid)
        }
        Err(code) => {
            say_parking(code);
            None
        }
    };
    loop {
        let sig = sys::wait_signal();
        if sig != libc::SIGCHLD {
            if let Some(pid) = workload {
                // The workload may have just exited: nothing to forward to then.
                let _ = sys::kill(pid, sig);
            }
            continue;
        }
        while let Some((pid, exit)) = sys::reap_one() {
            if Some(pid) == workload {
                workload = None;
                parked(exit);
            } else if Some(pid) == agent {
                say!("the agent (pid {pid}) ended: status {}", exit.number());
            }
        }
    }
}

/// What PID 1 does when everything else went wrong: reap children forever.
pub fn park_forever() -> ! {
    sys::block_supervised_signals();
    loop {
        if sys::wait_signal() == libc::SIGCHLD {
            while sys::reap_one().is_some() {}
        }
    }
}
