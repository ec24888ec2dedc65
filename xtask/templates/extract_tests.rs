//! Unit tests of the extraction core on small stand-in assets; the hostile cases (FIFOs,
//! sockets, directories, symlinks, stale temp files) run against the real x86_64 crate in
//! `supermachine-kernel/tests/extraction.rs`.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static BIG: [u8; 3 << 20] = [0xa5; 3 << 20];

const EXEC: Asset = Asset {
    name: "test-exec",
    file_name: "test-exec",
    bytes: b"\x7fELF pretend program",
    sha256: "",
    version: "1",
    source: "test",
    mode: 0o755,
};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "smk-extract-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn writes_overwrites_and_sets_modes() {
    let d = scratch("modes");
    let p = d.join("prog");
    fs::write(&p, b"old contents that are longer than the new ones").unwrap();
    EXEC.extract_to(&p).unwrap();
    assert_eq!(fs::read(&p).unwrap(), EXEC.bytes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        let k = Asset {
            mode: 0o644,
            ..EXEC
        };
        k.extract_to(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
    }
    assert!(leftovers(&d).is_empty());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn parents_only_when_asked() {
    let d = scratch("parents");
    let p = d.join("a/b/c/prog");
    let e = EXEC.extract_to(&p).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("test-exec") && msg.contains(&p.display().to_string()),
        "{msg}"
    );
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    EXEC.extract_to_with_parents(&p).unwrap();
    assert_eq!(fs::read(&p).unwrap(), EXEC.bytes);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn identical_file_is_not_rewritten() {
    let d = scratch("same");
    let p = d.join("prog");
    EXEC.extract_to(&p).unwrap();
    let before = fs::metadata(&p).unwrap().modified().unwrap();
    #[cfg(unix)]
    let ino = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&p).unwrap().ino()
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    EXEC.extract_to(&p).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino, "file was replaced");
    }
    fs::remove_dir_all(&d).unwrap();
}

/// Issue 22: in a sticky world-writable directory another user planted an identical file,
/// and extraction took it for its own, leaving it to that user to change.
#[cfg(unix)]
#[test]
fn identical_file_of_another_user_is_rewritten() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return; // only root can hand a file to another user
    }
    let d = scratch("owner");
    let p = d.join("prog");
    EXEC.extract_to(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    let ino = fs::metadata(&p).unwrap().ino();
    EXEC.extract_to(&p).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!(m.uid(), 0, "still owned by uid {}", m.uid());
    assert_ne!(m.ino(), ino, "the planted file was kept");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn errors_name_path_and_cause_and_keep_the_os_error() {
    let d = scratch("errors");
    let p = d.join("missing-dir/prog");
    let e = EXEC.extract_to(&p).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&p.display().to_string()) && msg.contains("test-exec"),
        "{msg}"
    );
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    let os = e
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    assert_eq!(os, Some(2), "the OS error (ENOENT) is the source: {e:?}");
    assert!(
        leftovers(&d).is_empty(),
        "temp file left: {:?}",
        leftovers(&d)
    );
    let msg = EXEC.extract_to(Path::new("/")).unwrap_err().to_string();
    assert!(msg.contains("names no"), "{msg}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn debug_shows_metadata_not_bytes() {
    let big = Asset {
        bytes: &BIG,
        ..EXEC
    };
    let s = format!("{big:?}");
    assert!(
        s.contains("len: 3145728") && s.contains("mode: 0o755"),
        "{s}"
    );
    assert!(s.len() < 300, "Debug dumps {} characters", s.len());
}

#[test]
fn temp_names_are_unpredictable() {
    let d = Path::new("/x");
    assert_ne!(temp_path(d, "k"), temp_path(d, "k"));
}

#[cfg(unix)]
#[test]
fn read_only_directory_is_a_clear_error_without_leftovers() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch("ro");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
    let p = d.join("prog");
    let r = EXEC.extract_to(&p);
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    // root ignores directory permissions, so only other users see the refusal.
    if !is_root() {
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("create temp file") && msg.contains(&p.display().to_string()),
            "{msg}"
        );
    }
    assert!(leftovers(&d).is_empty());
    fs::remove_dir_all(&d).unwrap();
}

#[cfg(unix)]
fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })
        .unwrap_or(false)
}

#[test]
fn concurrent_extractors_and_a_reader_never_see_a_partial_file() {
    let d = scratch("race");
    let p = d.join("kernel");
    let big = Asset {
        bytes: &BIG,
        mode: 0o644,
        ..EXEC
    };
    let other = Asset {
        bytes: &BIG[..1 << 20],
        mode: 0o644,
        ..EXEC
    };
    other.extract_to(&p).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                let got = fs::read(&p).unwrap();
                assert!(
                    got.len() == BIG.len() || got.len() == 1 << 20,
                    "reader saw a partial file of {} bytes",
                    got.len()
                );
                assert!(got.iter().all(|b| *b == 0xa5));
                reads += 1;
            }
            reads
        })
    };
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                let a = if i % 2 == 0 { big } else { other };
                for _ in 0..4 {
                    a.extract_to(&p).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    big.extract_to(&p).unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(fs::read(&p).unwrap().len(), BIG.len());
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn extract_into_creates_the_directory_and_returns_the_path() {
    let d = scratch("all");
    let k = Asset {
        name: "k",
        file_name: "k.img",
        mode: 0o644,
        ..EXEC
    };
    assert_eq!(k.extract_into(&d.join("sub")).unwrap(), d.join("sub/k.img"));
    assert_eq!(fs::read(d.join("sub/k.img")).unwrap(), EXEC.bytes);
    fs::remove_dir_all(&d).unwrap();
}
