//! OS errors with the operation (and path) that failed.
//!
//! [`annotate`] puts the operation in front of an [`io::Error`]'s message while keeping the
//! error itself, so [`errno`] still finds the number the kernel gave: the edge classifies
//! ENOSPC as `no_space` and ENOENT as `not_found` however deep the context is. A leaf module:
//! handlers and the edge both use it, it uses neither.

use std::fmt;
use std::io;

/// An OS error with the operation (and path) that failed.
#[derive(Debug)]
pub struct Annotated {
    /// What was attempted, e.g. `write /tmp/x`.
    what: String,
    /// The OS error.
    source: io::Error,
}

impl fmt::Display for Annotated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Annotated {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `e`, with `what` (the operation and path) in front of its message; same kind and errno.
pub fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), Annotated { what, source: e })
}

/// The errno behind `e`, also through [`annotate`] (one level, which is all it adds).
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        let inner = e.get_ref()?;
        match inner.downcast_ref::<Annotated>() {
            Some(a) => a.source.raw_os_error(),
            None => inner.downcast_ref::<io::Error>()?.raw_os_error(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_keeps_the_errno_and_names_the_operation() {
        let e = annotate(io::Error::from_raw_os_error(libc::EIO), "read /b".into());
        assert_eq!(errno(&e), Some(libc::EIO));
        assert!(e.to_string().starts_with("read /b: "), "{e}");
        assert_eq!(errno(&io::Error::other("no number")), None);
    }
}
