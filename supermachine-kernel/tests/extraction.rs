//! Extraction under abuse, through the x86_64 crate's public API: many processes at once with
//! readers checking every byte, and target directories that are full or read-only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use supermachine_kernel_x86_64 as x86;

const DIR_ENV: &str = "SUPERMACHINE_EXTRACT_CHILD_DIR";

/// Cargo's scratch directory for integration tests, under `target/`.
fn scratch_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Not a test of its own: the body of each child process of the test below.
#[test]
#[ignore]
fn child_extractor() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    for _ in 0..8 {
        x86::extract_all_to(Path::new(&dir)).unwrap();
    }
}

#[test]
fn sixteen_processes_extract_while_readers_verify_sha256() {
    let dir = scratch_root().join(format!("extract-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Start from stale files of the wrong content, so writers really replace them.
    std::fs::create_dir_all(&dir).unwrap();
    for a in x86::ASSETS {
        std::fs::write(dir.join(a.file_name), b"stale").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = x86::ASSETS
        .iter()
        .map(|a| {
            let (path, stop) = (dir.join(a.file_name), stop.clone());
            let (want, name) = (a.sha256, a.name);
            std::thread::spawn(move || {
                let (mut reads, mut stale) = (0u32, 0u32);
                while !stop.load(Ordering::SeqCst) {
                    let got = std::fs::read(&path).unwrap();
                    if got == b"stale" {
                        stale += 1;
                    } else {
                        assert_eq!(
                            sha256(&got),
                            want,
                            "{name}: a reader saw a partial or mixed file"
                        );
                    }
                    reads += 1;
                }
                (reads, stale)
            })
        })
        .collect();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..16)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child_extractor", "--ignored", "--quiet"])
                .env(DIR_ENV, &dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "an extractor process failed");
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        total += r.join().unwrap().0;
    }
    assert!(total > 0);
    for a in x86::ASSETS {
        let got = std::fs::read(dir.join(a.file_name)).unwrap();
        assert_eq!(sha256(&got), a.sha256, "{}", a.name);
    }
    assert!(
        temp_files(&dir).is_empty(),
        "temp files left: {:?}",
        temp_files(&dir)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small tmpfs mounted on a fresh directory, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(name: &str, size: &str) -> Option<SmallFs> {
        let dir = scratch_root().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A full or read-only target directory gives an error naming the path and the cause, and no
/// temp file is left. Needs root for the tmpfs mounts (root also ignores directory mode bits,
/// so a mount is the only honest read-only directory); skipped, and said, otherwise.
#[test]
fn full_and_read_only_directories_fail_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let Some(fs) = SmallFs::mount("extract-full", "1M") else {
        eprintln!("skipped: cannot mount tmpfs here");
        return;
    };
    let target = fs.0.join("bzImage");
    let e = x86::extract_kernel_to(&target).unwrap_err().to_string();
    assert!(e.contains(&target.display().to_string()), "{e}");
    assert!(e.contains("No space left"), "{e}");
    assert!(!target.exists());
    assert!(temp_files(&fs.0).is_empty(), "{:?}", temp_files(&fs.0));

    assert!(Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs.0)
        .status()
        .unwrap()
        .success());
    let e = x86::extract_supermachine_agent_to(&fs.0.join("agent"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Read-only file system") && e.contains("agent"),
        "{e}"
    );
    assert!(temp_files(&fs.0).is_empty());
}

/// A fresh scratch directory under the build dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = scratch_root().join(format!("extract-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on another thread and fails the test if it has not returned within 10 s: a
/// refusal that opened a FIFO would block forever.
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("extraction blocked")
}

/// Extracting onto `target` must fail, naming the path and `found`, with `kind`, and leave
/// the thing there as it was.
fn assert_refused(target: &Path, found: &str, kind: std::io::ErrorKind) {
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::symlink_metadata(target).unwrap();
    let t = target.to_path_buf();
    let e = within_10s(move || x86::extract_kernel_to(&t)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&target.display().to_string()) && msg.contains(found),
        "{msg}"
    );
    assert_eq!(e.kind(), kind, "{msg}");
    let after = std::fs::symlink_metadata(target).unwrap();
    assert_eq!(
        (before.ino(), before.mode()),
        (after.ino(), after.mode()),
        "{} was replaced",
        target.display()
    );
    assert!(temp_files(target.parent().unwrap()).is_empty());
}

#[test]
fn fifo_socket_and_directory_are_never_replaced() {
    let s = Scratch::new("special");
    let fifo = s.0.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    assert_refused(&fifo, "a FIFO", std::io::ErrorKind::AlreadyExists);
    let sock = s.0.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert_refused(&sock, "a socket", std::io::ErrorKind::AlreadyExists);
    let dir = s.0.join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"x").unwrap();
    assert_refused(&dir, "a directory", std::io::ErrorKind::IsADirectory);
    assert_eq!(std::fs::read(dir.join("inside")).unwrap(), b"x");
    // As root, the case the issue saw: a character device like /dev/null (1:3), made here in
    // the scratch directory; the real /dev/null is never touched.
    if is_root() {
        let null = s.0.join("null");
        let c = std::ffi::CString::new(null.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        if rc == 0 {
            assert_refused(
                &null,
                "a character device",
                std::io::ErrorKind::AlreadyExists,
            );
        } else {
            eprintln!("mknod refused here: {}", std::io::Error::last_os_error());
        }
    }
}

#[test]
fn a_symlink_is_replaced_never_written_through() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new("symlink");
    // A link to an identical, correctly moded file is not "already extracted".
    let real = s.0.join("real-bzImage");
    x86::extract_kernel_to(&real).unwrap();
    let real_ino = std::fs::metadata(&real).unwrap().ino();
    let link = s.0.join("bzImage");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    x86::extract_kernel_to(&link).unwrap();
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_file(), "the symlink was kept");
    assert_ne!(meta.ino(), real_ino);
    assert_eq!(std::fs::read(&link).unwrap(), x86::KERNEL_BYTES);
    assert_eq!(std::fs::metadata(&real).unwrap().ino(), real_ino);
    // A link to someone else's file: that file is left exactly as it was.
    let victim = s.0.join("victim");
    std::fs::write(&victim, b"not yours").unwrap();
    let link = s.0.join("agent");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    x86::extract_supermachine_agent_to(&link).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(std::fs::read(&link).unwrap(), x86::SUPERMACHINE_AGENT_BYTES);
    // A dangling link is replaced too.
    let dangling = s.0.join("busybox");
    std::os::unix::fs::symlink(s.0.join("nowhere"), &dangling).unwrap();
    x86::extract_busybox_to(&dangling).unwrap();
    assert!(std::fs::symlink_metadata(&dangling).unwrap().is_file());
    assert!(!s.0.join("nowhere").exists());
    assert!(temp_files(&s.0).is_empty(), "{:?}", temp_files(&s.0));
}

#[test]
fn errors_keep_the_os_error_as_their_source() {
    let s = Scratch::new("source");
    let target = s.0.join("no-such-dir/bzImage");
    let e = x86::extract_kernel_to(&target).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains(&target.display().to_string()), "{e}");
    let os = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error);
    assert_eq!(os, Some(libc::ENOENT), "{e:?}");
}

/// Not a test of its own: the body of the child process of the test below, which dies of
/// SIGXFSZ halfway through writing the kernel.
#[test]
#[ignore]
fn child_extractor_with_a_small_file_size_limit() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let limit = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    let _ = x86::extract_kernel_to(&Path::new(&dir).join("bzImage"));
}

#[test]
fn a_killed_writer_leaves_no_temp_file() {
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::new("killed");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_extractor_with_a_small_file_size_limit",
            "--ignored",
            "--quiet",
        ])
        .env(DIR_ENV, &s.0)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGXFSZ), "{status:?}");
    assert!(!s.0.join("bzImage").exists());
    assert!(temp_files(&s.0).is_empty(), "{:?}", temp_files(&s.0));
}

#[test]
fn stale_temp_files_of_dead_writers_are_swept() {
    let s = Scratch::new("sweep");
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mut alive = Command::new("sleep").arg("60").spawn().unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    let make = |name: String, mtime: Option<std::time::SystemTime>| {
        let p = s.0.join(name);
        let f = std::fs::File::create(&p).unwrap();
        if let Some(t) = mtime {
            f.set_modified(t).unwrap();
        }
        p
    };
    let stale = make(
        format!(".bzImage.tmp-{dead_pid}-0123456789abcdef"),
        Some(old),
    );
    let recent = make(format!(".bzImage.tmp-{dead_pid}-fedcba9876543210"), None);
    let live = make(
        format!(".bzImage.tmp-{}-00000000deadbeef", alive.id()),
        Some(old),
    );
    let other = make(
        format!(".busybox.tmp-{dead_pid}-00000000deadbeef"),
        Some(old),
    );
    x86::extract_kernel_to(&s.0.join("bzImage")).unwrap();
    let _ = alive.kill();
    let _ = alive.wait();
    assert!(!stale.exists(), "a dead writer's old temp file was kept");
    assert!(recent.exists(), "a temp file under a minute old was swept");
    assert!(live.exists(), "a live writer's temp file was swept");
    assert!(other.exists(), "another asset's temp file was swept");
}
