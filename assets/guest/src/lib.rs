//! The guest contract, written once: what the agent (PID 1 on x86_64) and init-oci (PID 1 on
//! aarch64) both do inside the guest, so one user string, one sysctl list and one path mean
//! the same thing under either.
//!
//! - [`user`]: a `user[:group]` string resolved against the image's `/etc/passwd` and
//!   `/etc/group`, with the one test table ([`user::table`]) both PID 1s are checked against;
//! - [`sysctl`]: the boot-time hardening sysctls;
//! - [`signals`]: signal sets;
//! - [`poll`]: waiting for one descriptor with a deadline;
//! - [`paths`]: the files the agent and init-oci pass each other.
//!
//! Only `libc`, no serde: it is linked into both static guest binaries.

pub mod paths;
pub mod poll;
pub mod signals;
pub mod sysctl;
pub mod user;
