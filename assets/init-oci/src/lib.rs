//! init-oci's contract, importable: what supermachine's host and bake hand PID 1 and what it
//! answers. The binary (`src/main.rs`) is PID 1 itself; this library is the part others
//! (`xtask`'s rig and end-to-end suites, the fuzz targets) must agree with:
//! - [`contract`]: paths, the env service's port, console markers and pauses, exit statuses;
//! - [`files`]: the `/.supermachine-*` files of the delta layer and their parsers;
//! - [`cmdline`]: the `supermachine.*` words of the kernel command line;
//! - [`envjson`]: the env document of [`contract::ENV_PORT`];
//! - [`error`]: the error these parsers (and PID 1) report.
//!
//! Pure code over bytes and text: no system call, so it builds and is tested on any host.

pub mod cmdline;
pub mod contract;
pub mod envjson;
pub mod error;
pub mod files;
