//! The serial console: init-oci's only voice, and the one way the host talks back before the
//! agent runs.
//!
//! The host scans the console line by line for the markers below (supermachine's
//! `src/devices/serial.rs`) and, at the two pauses, pushes a token line (`R\n` for the kernel
//! cache, `P\n` before the workload) into the console's input, which [`wait_for_host`] reads.

use std::io::Write;
use std::time::Duration;

pub use init_oci::contract::Pause;

use crate::sys;

/// How long a pause waits for the host's token before going on.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(30);

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
    line(&pause.ready_line());
    match sys::read_with_timeout(0, 64, PAUSE_LIMIT) {
        Ok(Some(bytes)) if !bytes.is_empty() => {
            let token = String::from_utf8_lossy(&bytes);
            line(&pause.resumed_line(token.trim_end()));
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
