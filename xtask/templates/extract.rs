//! Atomic extraction of the bundled assets.
//!
//! Every `extract_*` function goes through [`Asset::extract_to`]: the bytes go to a temp file
//! in the target's directory, are fsynced, get their mode, and are renamed over the target. A
//! concurrent reader sees the old file or the new one, never a partial one, and any number of
//! processes extracting the same path at once end with a correct file. An identical file
//! already in place is left alone, so extracting at every VMM start costs one read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One bundled file and what is known about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asset {
    /// Short name, e.g. `kernel` or `supermachine-agent`.
    pub name: &'static str,
    /// File name [`extract_all_to`](crate::extract_all_to) gives it.
    pub file_name: &'static str,
    /// The bytes.
    pub bytes: &'static [u8],
    /// Lower-case hex SHA-256 of [`bytes`](Self::bytes), as recorded in the manifest.
    pub sha256: &'static str,
    /// Version of what was built (kernel release, busybox version, crate version).
    pub version: &'static str,
    /// Where it was built from (pinned source package and recipe).
    pub source: &'static str,
    /// Unix permission bits it is extracted with.
    pub mode: u32,
}

fn context(asset: &str, path: &Path, op: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("extract {asset} to {}: {op}: {e}", path.display()),
    )
}

/// True when `path` already holds exactly `bytes` with permission bits `mode`.
fn is_identical(path: &Path, bytes: &[u8], mode: u32) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let Ok(meta) = f.metadata() else {
        return false;
    };
    if !meta.is_file() || meta.len() != bytes.len() as u64 || !mode_matches(&meta, mode) {
        return false;
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return off == bytes.len(),
            Ok(n) if bytes.get(off..off + n) == Some(&buf[..n]) => off += n,
            Ok(_) => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(unix)]
fn mode_matches(meta: &fs::Metadata, mode: u32) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777 == mode
}

#[cfg(not(unix))]
fn mode_matches(_: &fs::Metadata, _: u32) -> bool {
    true
}

#[cfg(unix)]
fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &File, _: u32) -> io::Result<()> {
    Ok(())
}

/// Removes the temp file unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = target
        .file_name()
        .map_or_else(|| "asset".into(), |n| n.to_string_lossy());
    target.with_file_name(format!(
        ".{name}.tmp-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Asset {
    /// Writes the asset to `path` atomically, with [`mode`](Self::mode), replacing any file
    /// there. With `parents`, missing parent directories are created first.
    ///
    /// # Errors
    /// The error names the asset, the path, the failed operation and the OS cause.
    pub fn extract_to(&self, path: &Path, parents: bool) -> io::Result<()> {
        if path.file_name().is_none() {
            return Err(context(
                self.name,
                path,
                "check path",
                io::Error::new(io::ErrorKind::InvalidInput, "path names no file"),
            ));
        }
        if parents {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)
                    .map_err(|e| context(self.name, path, "create parent directories", e))?;
            }
        }
        if is_identical(path, self.bytes, self.mode) {
            return Ok(());
        }
        let mut temp = TempFile {
            path: temp_path(path),
            armed: false,
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&temp.path)
            .map_err(|e| context(self.name, path, "create temp file", e))?;
        temp.armed = true;
        file.write_all(self.bytes)
            .map_err(|e| context(self.name, path, "write", e))?;
        set_mode(&file, self.mode).map_err(|e| context(self.name, path, "set mode", e))?;
        file.sync_all()
            .map_err(|e| context(self.name, path, "fsync", e))?;
        drop(file);
        fs::rename(&temp.path, path).map_err(|e| context(self.name, path, "rename into place", e))?;
        temp.armed = false;
        Ok(())
    }
}

/// Extracts `assets` into `dir` (created if missing) under their
/// [`file_name`](Asset::file_name)s and returns the paths, in the order given.
pub(crate) fn extract_all(assets: &[&Asset], dir: &Path) -> io::Result<Vec<PathBuf>> {
    assets
        .iter()
        .map(|a| {
            let p = dir.join(a.file_name);
            a.extract_to(&p, true).map(|()| p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
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
        EXEC.extract_to(&p, false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), EXEC.bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o755);
            let k = Asset { mode: 0o644, ..EXEC };
            k.extract_to(&p, false).unwrap();
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o644);
        }
        assert!(leftovers(&d).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn parents_only_when_asked() {
        let d = scratch("parents");
        let p = d.join("a/b/c/prog");
        let e = EXEC.extract_to(&p, false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("test-exec") && msg.contains(&p.display().to_string()), "{msg}");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        EXEC.extract_to(&p, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), EXEC.bytes);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn identical_file_is_not_rewritten() {
        let d = scratch("same");
        let p = d.join("prog");
        EXEC.extract_to(&p, false).unwrap();
        let before = fs::metadata(&p).unwrap().modified().unwrap();
        #[cfg(unix)]
        let ino = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&p).unwrap().ino()
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        EXEC.extract_to(&p, false).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(fs::metadata(&p).unwrap().ino(), ino, "file was replaced");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn errors_name_path_and_cause() {
        let d = scratch("errors");
        // The target is a directory: rename over it fails.
        let p = d.join("dir");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), b"x").unwrap();
        let msg = EXEC.extract_to(&p, false).unwrap_err().to_string();
        assert!(msg.contains(&p.display().to_string()) && msg.contains("rename"), "{msg}");
        assert!(leftovers(&d).is_empty(), "temp file left: {:?}", leftovers(&d));
        let msg = EXEC.extract_to(Path::new("/"), false).unwrap_err().to_string();
        assert!(msg.contains("names no file"), "{msg}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn read_only_directory_is_a_clear_error_without_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("ro");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        let p = d.join("prog");
        let r = EXEC.extract_to(&p, false);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        // root ignores directory permissions, so only other users see the refusal.
        if !is_root() {
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("create temp file") && msg.contains(&p.display().to_string()), "{msg}");
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
        let big = Asset { bytes: &BIG, mode: 0o644, ..EXEC };
        let other = Asset { bytes: &BIG[..1 << 20], mode: 0o644, ..EXEC };
        other.extract_to(&p, false).unwrap();
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
                        a.extract_to(&p, false).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        big.extract_to(&p, false).unwrap();
        stop.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(fs::read(&p).unwrap().len(), BIG.len());
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn extract_all_returns_paths_in_order() {
        let d = scratch("all");
        let k = Asset { name: "k", file_name: "k.img", mode: 0o644, ..EXEC };
        let paths = extract_all(&[&EXEC, &k], &d.join("sub")).unwrap();
        assert_eq!(paths, [d.join("sub/test-exec"), d.join("sub/k.img")]);
        fs::remove_dir_all(&d).unwrap();
    }
}
