//! Deadlines and the raw socket calls that keep to them: non-blocking sends and receives, and
//! `poll(2)` with the deadline's timeout.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::Error;

/// How long one step of an operation may wait.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    /// Until this instant: the whole operation's deadline (`budget` after its start).
    Until { at: Instant, budget: Duration },
    /// This long without progress.
    Idle(Duration),
    /// No limit (only where the caller asked for none).
    Forever,
}

impl Wait {
    pub(super) fn within(budget: Duration) -> Wait {
        match Instant::now().checked_add(budget) {
            Some(at) => Wait::Until { at, budget },
            None => Wait::Forever,
        }
    }

    pub(super) fn idle(t: Option<Duration>) -> Wait {
        t.map_or(Wait::Forever, Wait::Idle)
    }

    /// The instant this wait ends, from now (`None`: never).
    pub(super) fn deadline(&self) -> Option<Instant> {
        match *self {
            Wait::Until { at, .. } => Some(at),
            Wait::Idle(d) => Instant::now().checked_add(d),
            Wait::Forever => None,
        }
    }

    pub(super) fn timed_out(&self, waiting_for: &str) -> Error {
        let (after, idle) = match *self {
            Wait::Until { budget, .. } => (budget, false),
            Wait::Idle(d) => (d, true),
            Wait::Forever => (Duration::MAX, false),
        };
        Error::TimedOut {
            waiting_for: waiting_for.into(),
            after,
            idle,
        }
    }
}

/// Waits for `events` on `fd`; `Ok(None)` when `wait` ran out first.
pub(super) fn poll_fd(
    fd: RawFd,
    events: libc::c_short,
    wait: Wait,
) -> io::Result<Option<libc::c_short>> {
    // A whole operation's deadline, once passed, ends it even with bytes waiting: a peer that
    // trickles must not stretch it by always having one more byte ready. (An idle wait of
    // zero, by contrast, is a readiness probe and still polls.)
    if let Wait::Until { at, .. } = wait {
        if Instant::now() >= at {
            return Ok(None);
        }
    }
    supermachine_guest::poll::wait(fd, events, wait.deadline())
}

/// One non-blocking send that never raises SIGPIPE.
pub(super) fn send_nb(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking receive into `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub(super) unsafe fn recv_nb(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees ptr is valid for writes of len bytes.
    let n = unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends all of `bytes`, waiting for room as `wait` allows. `Ok(false)`: the wait ran out.
pub(super) fn send_all(fd: RawFd, mut bytes: &[u8], wait: Wait) -> io::Result<bool> {
    while !bytes.is_empty() {
        match send_nb(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if poll_fd(fd, libc::POLLOUT, wait)?.is_none() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The peer is gone: the kinds a stale pooled connection fails with.
pub(super) fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_end_at_their_deadline() {
        let at = Instant::now();
        let past = Wait::Until {
            at,
            budget: Duration::ZERO,
        };
        assert_eq!(past.deadline(), Some(at));
        assert_eq!(Wait::Forever.deadline(), None);
        assert_eq!(Wait::Idle(Duration::MAX).deadline(), None);
        assert!(Wait::Idle(Duration::from_secs(1)).deadline() > Some(at));
        assert!(matches!(Wait::within(Duration::MAX), Wait::Forever));
    }

    #[test]
    fn a_passed_deadline_ends_the_wait_though_bytes_are_ready() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"x").unwrap();
        let past = Wait::Until {
            at: Instant::now(),
            budget: Duration::ZERO,
        };
        assert_eq!(poll_fd(b.as_raw_fd(), libc::POLLIN, past).unwrap(), None);
        // A zero idle wait is a probe: it sees the byte.
        let probe = poll_fd(b.as_raw_fd(), libc::POLLIN, Wait::Idle(Duration::ZERO)).unwrap();
        assert!(probe.is_some_and(|e| e & libc::POLLIN != 0));
    }
}
