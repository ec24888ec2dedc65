//! Phase 1, from the initramfs: pseudo-filesystems, `lo`, smpark.ko, the kernel-cache pause,
//! then the overlay of the image layers, made the root, and `/init` run again from it.

use std::fs::File;
use std::path::Path;

use init_oci::contract::{KCACHE_DONE, SMPARK_GPA, SMPARK_KO, STATE_GPA};
use supermachine_guest::sysctl;

use crate::cmdline::Cmdline;
use crate::console::{self, Pause};
use crate::error::Error;
use crate::{mounts, net, say, sys};

/// Where phase 1 left the process when it returns (it returns only when it did not exec
/// the overlay's `/init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still in the initramfs: no layer mounted, or the overlay failed.
    Initramfs,
    /// In the overlay, but its `/init` could not be executed: go on with this binary.
    Overlay,
}

/// Runs phase 1. Returns only when it could not exec the overlay's `/init`.
pub fn run(cmdline: &Cmdline) -> Outcome {
    mounts::pseudo_filesystems();
    net::configure_loopback();
    load_smpark();
    set_sysctls();
    let done = std::env::var(KCACHE_DONE).is_ok_and(|v| v.starts_with('1'));
    if cmdline.kcache && !done {
        console::wait_for_host(Pause::Kcache);
    }
    pivot()
}

/// Loads smpark.ko when there is more than one CPU to park, then publishes the state page's
/// address. A missing module file is silent (a bake without one); every failure is a line.
fn load_smpark() {
    if !Path::new(SMPARK_KO).exists() {
        return;
    }
    let cpus = sys::online_cpus();
    if cpus < 2 {
        say!("1 CPU online: smpark.ko not loaded (no other CPU to park)");
        return;
    }
    let loaded = File::open(SMPARK_KO)
        .map_err(|e| Error::io(format!("open {SMPARK_KO}"), e))
        .and_then(|f| {
            sys::finit_module(&f).map_err(|e| Error::io("load smpark.ko: finit_module", e))
        });
    if let Err(e) = loaded {
        say!("{e}");
        return;
    }
    say!("smpark.ko loaded ({cpus} CPUs online)");
    // An older module has no such file: then the host falls back to the agent's unpark.
    if let Ok(gpa) = std::fs::read_to_string(STATE_GPA) {
        let gpa = gpa.trim();
        if gpa.starts_with("0x") {
            console::line(&format!("{SMPARK_GPA}{gpa}"));
        } else {
            say!("{STATE_GPA}: unexpected {gpa:?}");
        }
    }
}

/// Writes the guest contract's hardening sysctls, then [`sysctl::CLOSE_MODULES`] (smpark.ko is
/// loaded above); a failure is a line (a kernel without io_uring has no such file).
fn set_sysctls() {
    let failed = sysctl::write_all(sysctl::HARDENING)
        .into_iter()
        .chain(sysctl::write_all(&[sysctl::CLOSE_MODULES]));
    for (path, e) in failed {
        say!("{}", Error::io(format!("write {path}"), e));
    }
}

/// Mounts the layers and the overlay, moves the pseudo-filesystems into it, makes it the root
/// and execs its `/init` with `SUPERMACHINE_KCACHE_DONE=1` as the whole environment.
fn pivot() -> Outcome {
    if !mounts::wait_for_first_disk() {
        say!("no /dev/vda: no image layers; staying in the initramfs");
        return Outcome::Initramfs;
    }
    let (layers, stopped) = mounts::mount_layers();
    if layers == 0 {
        let why = stopped.map_or_else(String::new, |e| format!(" ({e})"));
        say!("/dev/vda is not a squashfs layer{why}; staying in the initramfs");
        return Outcome::Initramfs;
    }
    say!("{layers} squashfs layer(s) under a tmpfs overlay");
    if let Err(e) = mounts::mount_overlay(layers) {
        say!("{e}; staying in the initramfs");
        return Outcome::Initramfs;
    }
    for d in ["dev", "proc", "sys"] {
        let to = format!("/newroot/{d}");
        let _ = std::fs::create_dir_all(&to);
        if let Err(e) = sys::move_mount(&format!("/{d}"), &to) {
            say!("{e}");
        }
    }
    let moved = std::env::set_current_dir("/newroot")
        .map_err(|e| Error::io("chdir /newroot", e))
        .and_then(|()| sys::move_mount(".", "/"))
        .and_then(|()| sys::chroot("."))
        .and_then(|()| std::env::set_current_dir("/").map_err(|e| Error::io("chdir /", e)));
    if let Err(e) = moved {
        say!("{e}; staying in the initramfs");
        return Outcome::Initramfs;
    }
    let env = format!("{KCACHE_DONE}=1");
    let e = sys::execve("/init", &[&env]);
    say!("{e}; going on in the overlay with this init");
    Outcome::Overlay
}
