//! Mounts: the pseudo-filesystems (both phases), the image layers and the overlay root
//! (phase 1), virtio-fs shares and volumes (phase 2). Each failure is one console line.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::files::Bind;
use crate::{say, sys};

struct Pseudo {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    data: Option<&'static str>,
    /// Mode of the directory created for it.
    mode: u32,
}

/// In order: later entries live inside earlier ones. supermachine's init mounts the same
/// set (with the same options), so images see what they see there.
const PSEUDO: &[Pseudo] = &[
    Pseudo {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        data: None,
        mode: 0o755,
    },
    Pseudo {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        data: None,
        mode: 0o755,
    },
    Pseudo {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        data: None,
        mode: 0o755,
    },
    Pseudo {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        mode: 0o755,
    },
    Pseudo {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        data: Some("size=256m,mode=1777"),
        mode: 0o1777,
    },
    // A tmpfs root is 1777 unless told otherwise: /tmp and /run writable for every user.
    Pseudo {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        data: None,
        mode: 0o1777,
    },
    Pseudo {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        data: None,
        mode: 0o755,
    },
    // favordynmods: the agent moves every exec into a cgroup of its own; without it each move
    // waits for an RCU grace period, about 3 ms under TCG.
    Pseudo {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        data: Some("favordynmods"),
        mode: 0o755,
    },
];

fn mkdir(path: &str, mode: u32) {
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path);
}

/// Mounts what is missing of [`PSEUDO`] (a mount point already mounted is left alone, so the
/// second phase finds the first phase's moved mounts), then makes `/tmp/.X11-unix` and
/// `/run/dbus`, which X servers and D-Bus clients expect.
pub fn pseudo_filesystems() {
    for m in PSEUDO {
        if sys::is_mountpoint(Path::new(m.target)) {
            continue;
        }
        mkdir(m.target, m.mode);
        if let Err(e) = sys::mount(m.source, m.target, Some(m.fstype), 0, m.data) {
            say!("{e}");
        }
    }
    mkdir("/tmp/.X11-unix", 0o1777);
    let _ = fs::set_permissions(
        "/tmp/.X11-unix",
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    );
    mkdir("/run/dbus", 0o755);
}

/// `/dev/vda` … `/dev/vdz`.
pub fn disk(index: usize) -> Option<String> {
    (index < 26).then(|| format!("/dev/vd{}", (b'a' + index as u8) as char))
}

/// How many `/dev/vd?` nodes exist, counting from `vda` up to the first gap.
pub fn disk_count() -> usize {
    (0..26)
        .take_while(|&i| disk(i).is_some_and(|d| Path::new(&d).exists()))
        .count()
}

/// How long phase 1 waits for the first disk's node before deciding there is none.
pub const FIRST_DISK_WAIT: Duration = Duration::from_secs(1);

/// Waits up to [`FIRST_DISK_WAIT`] for `/dev/vda`.
pub fn wait_for_first_disk() -> bool {
    let start = Instant::now();
    loop {
        if Path::new("/dev/vda").exists() {
            return true;
        }
        if start.elapsed() > FIRST_DISK_WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mounts `/dev/vda`, `/dev/vdb`, … read-only as squashfs on `/lower-0`, `/lower-1`, …,
/// stopping at the first disk that is missing or does not mount (volumes come after the
/// layers). Returns how many mounted, and why the scan stopped when a disk failed.
pub fn mount_layers() -> (usize, Option<Error>) {
    let mut n = 0;
    while let Some(dev) = disk(n) {
        if !Path::new(&dev).exists() {
            return (n, None);
        }
        let lower = format!("/lower-{n}");
        mkdir(&lower, 0o755);
        if let Err(e) = sys::mount(&dev, &lower, Some("squashfs"), libc::MS_RDONLY, None) {
            let _ = fs::remove_dir(&lower);
            return (n, Some(e));
        }
        n += 1;
    }
    (n, None)
}

/// The overlay's options for `layers` lower layers: the last disk is the top one.
pub fn overlay_options(layers: usize) -> String {
    let lowers: Vec<String> = (0..layers).rev().map(|i| format!("/lower-{i}")).collect();
    format!(
        "lowerdir={},upperdir=/upper/upper,workdir=/upper/work",
        lowers.join(":")
    )
}

/// A tmpfs on `/upper` and the overlay of `layers` layers on `/newroot`.
pub fn mount_overlay(layers: usize) -> Result<()> {
    mkdir("/upper", 0o755);
    mkdir("/newroot", 0o755);
    sys::mount("tmpfs", "/upper", Some("tmpfs"), 0, Some("mode=0755"))?;
    mkdir("/upper/upper", 0o755);
    mkdir("/upper/work", 0o755);
    sys::mount(
        "overlay",
        "/newroot",
        Some("overlay"),
        0,
        Some(&overlay_options(layers)),
    )
}

/// Mounts each virtio-fs share at its path (parents created), before the volumes, which may
/// sit inside a share.
pub fn virtiofs_binds(binds: &[Bind]) {
    for b in binds {
        mkdir(&b.path, 0o755);
        match sys::mount(&b.tag, &b.path, Some("virtiofs"), 0, None) {
            Ok(()) => say!("mounted virtio-fs {} -> {}", b.tag, b.path),
            Err(e) => say!("{e}"),
        }
    }
}

/// Mounts the volumes: the last `paths.len()` disks, in order, as ext4, read-write.
pub fn volumes(paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    let total = disk_count();
    if paths.len() > total {
        say!(
            "{} volumes requested but only {total} /dev/vd* devices: no volume mounted",
            paths.len()
        );
        return;
    }
    for (i, path) in paths.iter().enumerate() {
        let Some(dev) = disk(total - paths.len() + i) else {
            continue;
        };
        mkdir(path, 0o755);
        match sys::mount(&dev, path, Some("ext4"), 0, None) {
            Ok(()) => say!("mounted {dev} -> {path} (ext4, rw)"),
            Err(e) => say!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_order_and_names() {
        assert_eq!(
            overlay_options(2),
            "lowerdir=/lower-1:/lower-0,upperdir=/upper/upper,workdir=/upper/work"
        );
        assert_eq!(
            overlay_options(1),
            "lowerdir=/lower-0,upperdir=/upper/upper,workdir=/upper/work"
        );
        assert_eq!(disk(0).as_deref(), Some("/dev/vda"));
        assert_eq!(disk(25).as_deref(), Some("/dev/vdz"));
        assert_eq!(disk(26), None);
    }
}
