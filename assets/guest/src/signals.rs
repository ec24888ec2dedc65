//! Signal sets.

/// The set holding exactly `signals`.
pub fn set_of(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset and sigaddset initialise it, and a signal
    // number out of range only makes sigaddset fail, leaving the set as it was.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Whether `set` holds `signal`.
pub fn contains(set: &libc::sigset_t, signal: libc::c_int) -> bool {
    // SAFETY: set is an initialised sigset_t, only read.
    unsafe { libc::sigismember(set, signal) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_what_it_was_given() {
        let s = set_of(&[libc::SIGTERM, libc::SIGCHLD]);
        assert!(contains(&s, libc::SIGTERM) && contains(&s, libc::SIGCHLD));
        assert!(!contains(&s, libc::SIGINT));
    }
}
