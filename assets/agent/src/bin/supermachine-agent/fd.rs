//! Descriptor helpers shared by the connection edge, the inbox and the exec loop: the
//! non-blocking mode they all run in, and waiting in `poll`.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::oserror::annotate;

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "fcntl(F_GETFL)".into(),
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "fcntl(F_SETFL)".into(),
        ));
    }
    Ok(())
}

/// A `pollfd` asking for `events` on `fd` (a negative `fd` is skipped by `poll`).
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `poll`'s timeout for `deadline`: -1 (none) without one, else the milliseconds left,
/// rounded up so that a wake-up never comes before the deadline.
pub fn timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_millis().min(libc::c_int::MAX as u128 - 1) as libc::c_int + 1
        }
    }
}

/// Waits until `fd` is ready for `events`, an error or hang-up shows, a signal interrupts,
/// or `deadline` passes. Callers retry their operation after it either way.
pub fn wait(fd: RawFd, events: libc::c_short, deadline: Option<Instant>) {
    let mut p = pollfd(fd, events);
    // SAFETY: p is one valid pollfd and the count passed is 1.
    unsafe { libc::poll(&mut p, 1, timeout_ms(deadline)) };
}
