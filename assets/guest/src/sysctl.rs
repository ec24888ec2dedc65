//! The boot-time sysctls both PID 1s write under `/proc/sys` (`assets/kernel/recommended.config`
//! says why each): symlinks, hard links, FIFOs and regular files in sticky world-writable
//! directories are protected, kernel pointers are hidden even from root, and io_uring is kept
//! for root only. init-oci adds `kernel.modules_disabled` once it has loaded smpark.ko.

use std::io;

/// `(name, value)` of each hardening sysctl.
pub const HARDENING: &[(&str, &str)] = &[
    ("fs.protected_symlinks", "1"),
    ("fs.protected_hardlinks", "1"),
    ("fs.protected_fifos", "1"),
    ("fs.protected_regular", "1"),
    ("kernel.kptr_restrict", "2"),
    ("kernel.io_uring_disabled", "1"),
];

/// Closes module loading: init-oci writes it after the hardening ones, once smpark.ko is in
/// (nothing loads a module later: supermachine's aarch64 path runs no insmod). The x86_64
/// kernel has no modules, so the agent has nothing to close there.
pub const CLOSE_MODULES: (&str, &str) = ("kernel.modules_disabled", "1");

/// The file of sysctl `name` (`kernel.kptr_restrict` → `/proc/sys/kernel/kptr_restrict`).
pub fn path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// Writes each of `sysctls`; returns the ones that failed, with the path and the error (a
/// kernel without io_uring has no such file: the caller logs and goes on).
pub fn write_all(sysctls: &[(&str, &str)]) -> Vec<(String, io::Error)> {
    sysctls
        .iter()
        .filter_map(|(name, value)| {
            let p = path(name);
            std::fs::write(&p, value).err().map(|e| (p, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dotted_names_become_proc_paths() {
        assert_eq!(
            super::path("fs.protected_regular"),
            "/proc/sys/fs/protected_regular"
        );
    }
}
