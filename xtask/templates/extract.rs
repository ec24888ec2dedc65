//! Atomic, non-clobbering extraction of the bundled assets; what it guarantees is documented
//! on [`Asset`], where users of the crate read it.

use std::error::Error;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::sys;

/// One bundled file and what is known about it. `{:?}` prints the metadata and the length,
/// not the bytes.
///
/// # Extraction
/// Every `extract_*` function goes through [`Asset::extract_to`]:
/// - **What is at the target first.** Nothing, a regular file or a symlink may be replaced. A
///   directory, device node, FIFO or socket never is: the call fails naming the path and what
///   it found. The check is made with `lstat`, so a symlink is looked at, never through.
/// - **Already extracted.** A regular file (not a symlink, whatever it points to) with the same
///   bytes and mode, owned by the extracting user, is left alone, so extracting at every VMM
///   start costs one read. An identical file another user owns is replaced, as its owner
///   could change it afterwards; in a sticky directory only root may replace it, and
///   otherwise the call fails naming the path.
/// - **Writing.** The bytes go to an unnamed `O_TMPFILE` in the target's directory where the
///   OS has one (Linux), else to a temp file with an unpredictable name; they are fsynced and
///   given their mode, and the file is renamed over the target. A rename replaces a symlink
///   itself, so nothing is ever written through one; a concurrent reader sees the old file or
///   the new one, never a partial one.
/// - **Crashes.** A writer killed mid-write leaves nothing with `O_TMPFILE`. Named temp files
///   (`.<name>.tmp-<pid>-<random>`) of writers that are no longer running, and over a minute
///   old, are removed by the next extraction to the same path.
/// - **Errors** name the asset, the path and the failed step. Their
///   [`source`](std::error::Error::source) is the OS error itself, so `raw_os_error()` works on
///   it, and their [`kind`](io::Error::kind) is its kind.
///
/// Extract into a directory that only your VMM's user can write to (under its state or cache
/// directory), **not** a world-writable one such as `std::env::temp_dir()`: another user can
/// pre-create or swap the target there between your extraction and your VMM reading the file,
/// and so choose the kernel or the agent that your VM boots.
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

impl fmt::Debug for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Asset")
            .field("name", &self.name)
            .field("file_name", &self.file_name)
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .field("version", &self.version)
            .field("source", &self.source)
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
}

/// The error behind every failed extraction: what was being done, and the OS error (or the
/// kind of file found that may not be replaced).
#[derive(Debug)]
struct ExtractError {
    asset: &'static str,
    path: PathBuf,
    step: &'static str,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Os(io::Error),
    Refused(&'static str),
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "extract {} to {}: ", self.asset, self.path.display())?;
        match &self.cause {
            Cause::Os(e) => write!(f, "{}: {e}", self.step),
            Cause::Refused(found) => write!(f, "refusing to replace {found}"),
        }
    }
}

impl Error for ExtractError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.cause {
            Cause::Os(e) => Some(e),
            Cause::Refused(_) => None,
        }
    }
}

/// Names the asset, path and step around an extraction's failures.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    asset: &'static str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(self, step: &'static str, e: io::Error) -> io::Error {
        let kind = e.kind();
        self.wrap(kind, step, Cause::Os(e))
    }

    fn wrap(self, kind: io::ErrorKind, step: &'static str, cause: Cause) -> io::Error {
        let path = self.path.to_path_buf();
        io::Error::new(
            kind,
            ExtractError {
                asset: self.asset,
                path,
                step,
                cause,
            },
        )
    }
}

/// What `lstat` found at the target.
enum Existing {
    Nothing,
    /// A symlink, replaced whatever it points to.
    Symlink,
    Regular(fs::Metadata),
}

/// Looks at the target without following it, and refuses what may not be replaced.
fn existing(ctx: Ctx<'_>) -> io::Result<Existing> {
    let meta = match fs::symlink_metadata(ctx.path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(ctx.err("lstat", e)),
    };
    let t = meta.file_type();
    if t.is_symlink() {
        return Ok(Existing::Symlink);
    }
    if t.is_file() {
        return Ok(Existing::Regular(meta));
    }
    let (kind, found) = if t.is_dir() {
        (io::ErrorKind::IsADirectory, "a directory")
    } else {
        (io::ErrorKind::AlreadyExists, special_kind(&t))
    };
    Err(ctx.wrap(kind, "check target", Cause::Refused(found)))
}

#[cfg(unix)]
fn special_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a file that is not a regular file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::FileType) -> &'static str {
    "a file that is not a regular file"
}

/// True when the regular file `lstat` saw at `path` still is that file, belongs to this
/// process's user and holds exactly `bytes` with permission bits `mode`.
fn is_identical(path: &Path, seen: &fs::Metadata, bytes: &[u8], mode: u32) -> bool {
    // Without flags that neither follow a swapped-in symlink nor block on a swapped-in FIFO,
    // opening the target is not safe: always rewrite instead.
    let Some(flags) = sys::NOFOLLOW_NONBLOCK else {
        return false;
    };
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(flags);
    }
    #[cfg(not(unix))]
    let _ = flags;
    let Ok(mut f) = options.open(path) else {
        return false;
    };
    let Ok(meta) = f.metadata() else {
        return false;
    };
    if !meta.is_file()
        || !same_file(seen, &meta)
        || meta.len() != bytes.len() as u64
        || !mode_matches(&meta, mode)
        || !owned_by_us(&meta)
    {
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
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    true
}

#[cfg(unix)]
fn owned_by_us(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == sys::effective_uid()
}

#[cfg(not(unix))]
fn owned_by_us(_: &fs::Metadata) -> bool {
    true
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

/// A named temp file, removed unless it was renamed into place.
struct TempName {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempName {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.tmp-")
}

/// `.<name>.tmp-<pid>-<random>`: the pid lets a later extraction tell a dead writer's file
/// from a live one's; the random part (from std's per-process random hash keys) makes the
/// name unpredictable to other users of the directory.
fn temp_path(dir: &Path, file_name: &str) -> PathBuf {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    dir.join(format!(
        "{}{}-{:016x}",
        temp_prefix(file_name),
        std::process::id(),
        h.finish()
    ))
}

/// Temp files of writers older than this, and no longer running, are stale.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Removes the temp files that writers of `file_name` in `dir` left when they were killed.
/// Best effort: extraction works the same when this fails.
fn sweep_stale(dir: &Path, file_name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = temp_prefix(file_name);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || sys::process_alive(pid) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if meta.is_file() && old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` with `mode` to a new file in `dir` and returns its (temporary) name.
fn write_temp(
    ctx: Ctx<'_>,
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
    mode: u32,
) -> io::Result<TempName> {
    let fill = |file: &mut File| -> io::Result<()> {
        file.write_all(bytes).map_err(|e| ctx.err("write", e))?;
        set_mode(file, mode).map_err(|e| ctx.err("set mode", e))?;
        file.sync_all().map_err(|e| ctx.err("fsync", e))
    };
    if let Some(mut file) = sys::unnamed_file(dir) {
        fill(&mut file)?;
        let path = temp_path(dir, file_name);
        if sys::link(&file, &path).is_ok() {
            return Ok(TempName { path, armed: true });
        }
        // No way to name it (no /proc, no CAP_DAC_READ_SEARCH): write a named file instead.
    }
    let mut temp = TempName {
        path: temp_path(dir, file_name),
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
        .map_err(|e| ctx.err("create temp file", e))?;
    temp.armed = true;
    fill(&mut file)?;
    Ok(temp)
}

impl Asset {
    /// Writes the asset to `path` atomically with [`mode`](Self::mode); the parent directory
    /// must exist. Replaces a regular file or a symlink (the link itself, never what it points
    /// to); refuses a directory, device node, FIFO or socket. See [`Asset`](Self#extraction) for
    /// the guarantees, and for why the directory must not be world-writable.
    ///
    /// # Errors
    /// Names the asset, the path and the failed step; its `source()` is the OS error. A refusal
    /// names the kind of file found, with [`io::ErrorKind::IsADirectory`] for a directory and
    /// [`io::ErrorKind::AlreadyExists`] for the others.
    pub fn extract_to(&self, path: &Path) -> io::Result<()> {
        self.extract(path, false)
    }

    /// Like [`extract_to`](Self::extract_to), creating missing parent directories first.
    ///
    /// # Errors
    /// As [`extract_to`](Self::extract_to), and when a parent directory cannot be created.
    pub fn extract_to_with_parents(&self, path: &Path) -> io::Result<()> {
        self.extract(path, true)
    }

    /// Extracts into `dir` (created if missing) under [`file_name`](Self::file_name) and
    /// returns the path.
    pub(crate) fn extract_into(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join(self.file_name);
        self.extract(&path, true).map(|()| path)
    }

    fn extract(&self, path: &Path, parents: bool) -> io::Result<()> {
        let ctx = Ctx {
            asset: self.name,
            path,
        };
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "path names no UTF-8 file name");
            return Err(ctx.err("check path", e));
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if parents {
            fs::create_dir_all(dir).map_err(|e| ctx.err("create parent directories", e))?;
        }
        sweep_stale(dir, file_name);
        if let Existing::Regular(seen) = existing(ctx)? {
            if is_identical(path, &seen, self.bytes, self.mode) {
                return Ok(());
            }
        }
        let mut temp = write_temp(ctx, dir, file_name, self.bytes, self.mode)?;
        // Look again just before the rename, which would replace a FIFO or device node made
        // meanwhile as readily as a file.
        existing(ctx)?;
        fs::rename(&temp.path, path).map_err(|e| ctx.err("rename into place", e))?;
        temp.armed = false;
        Ok(())
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
