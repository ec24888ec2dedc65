//! Extraction under abuse, through the x86_64 crate's public API: many processes at once with
//! readers checking every byte, and target directories that are full or read-only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use supermachine_kernel_x86_64 as x86;

use crate::util;

const DIR_ENV: &str = "SUPERMACHINE_EXTRACT_CHILD_DIR";

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
    let dir = util::build_dir().join(format!("extract-race-{}", std::process::id()));
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
                            util::sha256(&got),
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
                .args([
                    "--exact",
                    "extraction_tests::child_extractor",
                    "--ignored",
                    "--quiet",
                ])
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
        assert_eq!(util::sha256(&got), a.sha256, "{}", a.name);
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
        let dir = util::build_dir().join(format!("{name}-{}", std::process::id()));
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
    if !crate::setup::is_root() {
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
