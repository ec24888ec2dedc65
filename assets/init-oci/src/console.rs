//! The serial console: init-oci's only voice, and the one way the host talks back before the
//! agent runs.
//!
//! The host scans the console line by line for the markers below (supermachine's
//! `src/devices/serial.rs`) and, at the two pauses, pushes a token line (`R\n` for the kernel
//! cache, `P\n` before the workload) into the console's input, which [`wait_for_host`] reads.

use std::io::Write;
use std::time::Duration;

use crate::sys;

/// The host's `--snapshot-at` trigger, printed on stdout once the agent is ready.
pub const HEARTBEAT: &str = "[SUPERMACHINE-INIT] heartbeat counter=1";
/// The pre-exec snapshot trigger, right before the workload is forked.
pub const PRE_EXEC: &str = "init-oci: workload-pre-exec";
/// Prefix of the smpark state page's address line (then `0x…`).
pub const SMPARK_GPA: &str = "[SUPERMACHINE-SMPARK] state_gpa=";
/// Prefix of the line printed once the workload is gone (then `(exit=N)`).
pub const PARKING: &str = "init-oci: parking PID 1";
/// How long a pause waits for the host's token before going on.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(30);

/// One of the two host handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// `supermachine.kcache=1`: before the pivot, for the kernel-boot cache snapshot.
    Kcache,
    /// `supermachine.pre_exec_sync=1`: before the workload's fork.
    PreExec,
}

impl Pause {
    /// The marker's tag, `[SUPERMACHINE-KCACHE]` or `[SUPERMACHINE-PRE-EXEC]`.
    pub fn tag(self) -> &'static str {
        match self {
            Pause::Kcache => "[SUPERMACHINE-KCACHE]",
            Pause::PreExec => "[SUPERMACHINE-PRE-EXEC]",
        }
    }
}

/// Prints `init-oci: <msg>` on the console (stderr). Never panics, unlike `eprintln!`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::line(&format!("init-oci: {}", format_args!($($arg)*)))
    };
}

/// Writes one whole line to stderr, the console.
pub fn line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(format!("{text}\n").as_bytes());
    let _ = err.flush();
}

/// Writes one whole line to stdout, also the console (the heartbeat goes there, as upstream).
pub fn stdout_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{text}\n").as_bytes());
    let _ = out.flush();
}

/// Prints `<tag> ready`, waits up to [`PAUSE_LIMIT`] for a line on the console's input (fd
/// 0), then prints `<tag> resumed token=…` or `<tag> timeout …`. Returns whether the host
/// answered.
///
/// Input queued before `ready` is dropped first: supermachine's host pushes a token again
/// until it sees `resumed`, so an earlier pause's extra `R\n` may still sit in the queue and
/// must not pass for this pause's answer.
pub fn wait_for_host(pause: Pause) -> bool {
    let tag = pause.tag();
    if let Err(e) = sys::flush_input(0) {
        line(&format!("{tag} cannot drop stale console input: {e}"));
    }
    line(&format!("{tag} ready"));
    match sys::read_with_timeout(0, 64, PAUSE_LIMIT) {
        Ok(Some(bytes)) if !bytes.is_empty() => {
            let token = String::from_utf8_lossy(&bytes);
            line(&format!("{tag} resumed token={}", token.trim_end()));
            true
        }
        Ok(Some(_)) => {
            line(&format!("{tag} timeout: the console input is closed"));
            false
        }
        Ok(None) => {
            line(&format!(
                "{tag} timeout: no byte from the host in {PAUSE_LIMIT:?}"
            ));
            false
        }
        Err(e) => {
            line(&format!("{tag} timeout: {e}"));
            false
        }
    }
}
