//! The host's env service: a vsock stream to the host (CID 2), port 1026, that answers with
//! one [`crate::envjson`] document and closes.
//!
//! The wait is bounded: supermachine's VMM answers at once, but a VMM that serves nothing
//! there may never answer at all (vhost-device-vsock 0.3.0 sends no reset for a port without
//! a listener), and PID 1 must not hang on it.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use init_oci::contract::{ENV_PORT as PORT, HOST_CID};

use crate::envjson::{self, Env};
use crate::error::{Error, Result};
use crate::sys;

/// How long to wait for the host to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait, once connected, for the whole document.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Documents larger than this are refused.
pub const MAX_BYTES: usize = 1 << 20;

/// Fetches and parses the env document.
pub fn fetch() -> Result<Env> {
    let mut s = sys::vsock_connect(HOST_CID, PORT, CONNECT_TIMEOUT)
        .map_err(|e| Error::io(format!("env: connect to vsock {HOST_CID}:{PORT}"), e))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut doc = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready =
            sys::poll_readable(s.as_raw_fd(), left).map_err(|e| Error::io("env: poll", e))?;
        if !ready {
            return Err(Error::Timeout {
                what: "env: the host's document",
                after: READ_TIMEOUT,
            });
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                doc.extend_from_slice(&buf[..n]);
                if doc.len() > MAX_BYTES {
                    return Err(Error::Format {
                        what: "env JSON",
                        reason: format!("larger than {MAX_BYTES} bytes"),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::io("env: read", e)),
        }
    }
    envjson::parse(&doc)
}
