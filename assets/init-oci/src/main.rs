//! `init-oci`: PID 1 of supermachine aarch64 guests, run from the initramfs as `/init`.
//!
//! # Contract (what a VMM embedder reproduces)
//! The initramfs holds `/init` (this program), `/supermachine-agent` and, optionally,
//! `/smpark.ko`, plus a `/dev/console` node. The root filesystem is the first virtio-blk
//! device. Kernel command-line parameters, all optional:
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `sm.root=DEV` | `/dev/vda` | block device holding the read-only root image |
//! | `sm.rootfstype=T` | `squashfs` | its filesystem type |
//! | `sm.upper_size=SZ` | `50%` | size of the tmpfs holding the overlay's writable layer |
//! | `sm.hostname=NAME` | `supermachine` | guest hostname (set by init-oci) |
//!
//! Steps: mount devtmpfs, /proc and /sys; wait up to 5 s for the root device; mount it
//! read-only on `/lower`; tmpfs on `/upper`; overlay on `/newroot`; tmpfs `/newroot/run` with the
//! agent copied to `/run/supermachine/supermachine-agent`; load `/smpark.ko` with
//! `finit_module` when it is there and more than one CPU is online; move /dev, /proc and /sys
//! into the new root; make it `/`; set the hostname; exec the agent as PID 1 with no
//! arguments (argv is `["supermachine-agent"]`: the agent's daemon mode takes none and does
//! not set the hostname, supermachine's contract). Any failure prints one
//! `init-oci: FATAL: …` line on the console and powers off (PSCI); it never hangs. The one
//! exception is a hostname the kernel refuses (longer than 64 bytes, say): that prints an
//! `init-oci: sethostname …` warning and the guest keeps the kernel's default.
//!
//! The same contract as the x86_64 init script (`xtask/src/vm/init.rs`), so one VMM serves both.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

mod cmdline;
use cmdline::{parse_cmdline, Config};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} has a NUL byte")))
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    let c = |s: &str| cstr(s).map_err(|e| e.to_string());
    let (s, t, f, d) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are NUL-terminated strings alive for the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r != 0 {
        return Err(format!(
            "mount {fstype} {src} on {target}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn move_mount(from: &str, to: &str) -> Result<(), String> {
    let (f, t) = (
        cstr(from).map_err(|e| e.to_string())?,
        cstr(to).map_err(|e| e.to_string())?,
    );
    // SAFETY: valid NUL-terminated paths; MS_MOVE takes no fstype or data.
    let r = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "move mount {from} to {to}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn online_cpus() -> i64 {
    // SAFETY: sysconf takes no pointers.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// Loads a kernel module from `path` with `finit_module`.
fn load_module(path: &str) -> Result<(), String> {
    let f = fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let params = c"";
    // SAFETY: a valid open fd, an empty NUL-terminated parameter string, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            params.as_ptr(),
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "finit_module {path}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn setup(c: &Config) -> Result<CString, String> {
    let nosuid = libc::MS_NOSUID;
    let nodev = libc::MS_NODEV;
    let noexec = libc::MS_NOEXEC;
    mount("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755")?;
    mount("proc", "/proc", "proc", nosuid | nodev | noexec, "")?;
    mount("sysfs", "/sys", "sysfs", nosuid | nodev | noexec, "")?;
    // virtio-mmio devices probe asynchronously: give the root device up to 5 s.
    let start = Instant::now();
    while !Path::new(&c.root).exists() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "root device {} did not appear (is a virtio-blk disk attached?)",
                c.root
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    mount(&c.root, "/lower", &c.fstype, libc::MS_RDONLY, "")
        .map_err(|e| format!("{e} (read-only root {} as {})", c.root, c.fstype))?;
    mount(
        "upper",
        "/upper",
        "tmpfs",
        0,
        &format!("mode=0755,size={}", c.upper_size),
    )?;
    for d in ["/upper/data", "/upper/work", "/newroot"] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    mount(
        "overlay",
        "/newroot",
        "overlay",
        0,
        "lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work",
    )?;
    for d in ["dev", "proc", "sys", "run"] {
        fs::create_dir_all(format!("/newroot/{d}"))
            .map_err(|e| format!("mkdir /newroot/{d}: {e}"))?;
    }
    mount("run", "/newroot/run", "tmpfs", nosuid | nodev, "mode=0755")?;
    let agent = "/newroot/run/supermachine/supermachine-agent";
    fs::create_dir_all("/newroot/run/supermachine")
        .map_err(|e| format!("mkdir /newroot/run/supermachine: {e}"))?;
    fs::copy("/supermachine-agent", agent)
        .map_err(|e| format!("copy /supermachine-agent to {agent}: {e}"))?;
    fs::set_permissions(agent, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {agent}: {e}"))?;
    if Path::new("/smpark.ko").exists() && online_cpus() > 1 {
        load_module("/smpark.ko")?;
    }
    // Free the initramfs copies before the old root becomes unreachable.
    for f in ["/supermachine-agent", "/smpark.ko"] {
        let _ = fs::remove_file(f);
    }
    for m in ["dev", "proc", "sys"] {
        move_mount(&format!("/{m}"), &format!("/newroot/{m}"))?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    move_mount(".", "/")?;
    let dot = c".";
    // SAFETY: chroot with a valid NUL-terminated path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(format!(
            "chroot into the new root: {}",
            io::Error::last_os_error()
        ));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    cstr("/run/supermachine/supermachine-agent").map_err(|e| e.to_string())
}

/// Sets the guest hostname (the agent does not). A refusal is a warning, not fatal: the
/// guest keeps the kernel's default name.
fn set_hostname(name: &str) {
    // SAFETY: the pointer and length describe the name's bytes, alive for the call.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        let _ = writeln!(
            io::stderr(),
            "init-oci: sethostname {name:?}: {}",
            io::Error::last_os_error()
        );
    }
}

/// Prints the failure, powers off, and never returns.
fn fatal(msg: &str) -> ! {
    let _ = writeln!(io::stderr(), "init-oci: FATAL: {msg}");
    // SAFETY: sync and reboot take no pointers; as PID 1 reboot ends the VM.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let cmdline = fs::read_to_string("/proc/cmdline");
    // /proc is not mounted yet; mount it first to read the command line.
    let config = match cmdline {
        Ok(c) => parse_cmdline(&c),
        Err(_) => {
            if let Err(e) = mount("proc", "/proc", "proc", 0, "") {
                fatal(&e);
            }
            let c = parse_cmdline(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
            // SAFETY: unmounting the proc instance mounted just above.
            unsafe { libc::umount2(c"/proc".as_ptr(), 0) };
            c
        }
    };
    let agent = match setup(&config) {
        Ok(a) => a,
        Err(e) => fatal(&e),
    };
    set_hostname(&config.hostname);
    // The agent's daemon mode takes no arguments.
    let argv0 = c"supermachine-agent";
    let argv = [argv0.as_ptr(), std::ptr::null()];
    // SAFETY: agent and argv[0] are NUL-terminated and argv ends with a null pointer.
    unsafe { libc::execv(agent.as_ptr(), argv.as_ptr()) };
    fatal(&format!(
        "exec {}: {}",
        agent.to_string_lossy(),
        io::Error::last_os_error()
    ));
}
