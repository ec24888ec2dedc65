//! Waiting for one descriptor, with a deadline that interruptions and early wake-ups do not
//! stretch or cut short.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// `poll(2)`'s timeout for `deadline`: -1 (none) without one, else the milliseconds left,
/// rounded up so that a wake-up never comes before the deadline.
pub fn timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// Waits until `fd` reports one of `events` or `deadline` passes (`None`: no deadline).
/// Returns the reported events, or `None` once the deadline has passed. `EINTR` and a wake-up
/// before the deadline (poll rounds to milliseconds) wait again for the time left.
pub fn wait(
    fd: RawFd,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> io::Result<Option<libc::c_short>> {
    loop {
        let ms = timeout_ms(deadline);
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: p is one valid pollfd, alive for the call, and the count passed is 1.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(Some(p.revents));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn reports_readable_and_times_out_no_earlier_than_its_deadline() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = Instant::now();
        let d = t + Duration::from_millis(30);
        assert_eq!(wait(b.as_raw_fd(), libc::POLLIN, Some(d)).unwrap(), None);
        assert!(Instant::now() >= d);
        a.write_all(b"x").unwrap();
        let r = wait(b.as_raw_fd(), libc::POLLIN, None).unwrap();
        assert!(r.is_some_and(|e| e & libc::POLLIN != 0));
    }
}
