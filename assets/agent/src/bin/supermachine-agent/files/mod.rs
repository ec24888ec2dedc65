//! File actions: `write_file`, `write_file_chunk`, `read_file`, `read_file_chunk`, and the
//! REQUEST's `stage_files`.
//!
//! Paths mean the path as the guest sees it (symlinks included); a relative path is relative
//! to the agent's working directory. Writes are atomic: the bytes go to a temp file in the
//! target's directory, which is fsynced, given its mode and renamed onto the target, and which
//! is removed on any failure. Reads take regular files only, opened non-blocking, so a FIFO
//! planted by the workload cannot hang the agent.
//!
//! Every failure is an [`Error`]: the action, the path the request gave and the [`Cause`];
//! the edge turns it into an ack's `code` and message.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use supermachine_agent::base64;
use supermachine_agent::protocol::*;

use crate::sys;

/// Mode of a written file when the request names none.
const DEFAULT_MODE: u32 = 0o644;

/// Largest piece `read_file_chunk` returns: its base64 (16 MiB) still fits one frame with
/// the JSON around it.
const READ_CHUNK_MAX: u64 = 12 << 20;

/// A failed file action.
#[derive(Debug)]
pub struct Error {
    /// The action: `write_file`, `write_file_chunk`, `read_file`, `read_file_chunk` or
    /// `stage_file`.
    pub action: &'static str,
    /// The path as the request gave it.
    pub path: String,
    /// Why it failed.
    pub cause: Cause,
}

/// Why a file action failed.
#[derive(Debug)]
pub enum Cause {
    /// The path (as given) is empty, holds a NUL byte or does not end in a file name.
    NotAFile(String),
    /// The data is not valid base64.
    Base64(String),
    /// A chunked transfer's token is not 1-64 characters of `[A-Za-z0-9._-]`.
    BadToken(String),
    /// A chunk's offset is not where the bytes received so far end.
    Gap {
        /// The chunk's offset.
        offset: u64,
        /// Bytes received so far.
        received: u64,
    },
    /// The path is not a regular file (a FIFO, a device, a directory).
    NotRegular,
    /// A chunked transfer's partial file is not the one the first chunk created: another
    /// name links to it, or someone else owns it (a planted hard link).
    NotOurs {
        /// Its link count.
        nlink: u64,
        /// Its owner.
        uid: u32,
    },
    /// The file is larger than the request's `max_bytes`.
    OverMax {
        /// The file's size.
        len: u64,
        /// The request's limit.
        max_bytes: u64,
    },
    /// The file is larger than one `read_file` answer may carry.
    OverReadLimit(u64),
    /// A read's offset lies past the end of the file.
    OffsetPastEnd {
        /// The requested offset.
        offset: u64,
        /// The file's size.
        len: u64,
    },
    /// A system call failed.
    Os {
        /// The operation, e.g. `rename onto`.
        op: &'static str,
        /// The file it acted on (the target or a temp file beside it).
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::NotAFile(path) => write!(f, "path {path:?} does not name a file"),
            Cause::Base64(e) => write!(f, "bad base64: {e}"),
            Cause::BadToken(token) => write!(
                f,
                "token {token:?} must be 1-64 characters of [A-Za-z0-9._-]"
            ),
            Cause::Gap { offset, received } => write!(
                f,
                "offset {offset} does not follow the {received} bytes received so far"
            ),
            Cause::NotRegular => f.write_str("not a regular file"),
            Cause::NotOurs { nlink, uid } => write!(
                f,
                "the partial file is not the one this transfer created ({nlink} links, owner \
                 uid {uid}); start again from offset 0"
            ),
            Cause::OverMax { len, max_bytes } => {
                write!(f, "file is {len} bytes; exceeds max_bytes={max_bytes}")
            }
            Cause::OverReadLimit(len) => write!(
                f,
                "file is {len} bytes or more; read_file answers up to {READ_CHUNK_MAX}, use \
                 read_file_chunk"
            ),
            Cause::OffsetPastEnd { offset, len } => write!(f, "offset {offset} > file len {len}"),
            Cause::Os { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
        }
    }
}

impl fmt::Display for Error {
    /// `action(path): cause`, supermachine's form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}): {}", self.action, self.path, self.cause)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Wraps an OS error of `op` on `path` as a [`Cause`].
fn os<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Cause + 'a {
    move |source| Cause::Os {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `f`, naming `action` and `path` on its failure.
fn act<T>(
    action: &'static str,
    path: &str,
    f: impl FnOnce() -> Result<T, Cause>,
) -> Result<T, Error> {
    f().map_err(|cause| Error {
        action,
        path: path.to_string(),
        cause,
    })
}

fn target(path: &str) -> Result<&Path, Cause> {
    let p = Path::new(path);
    if path.is_empty() || p.file_name().is_none() || path.contains('\0') {
        return Err(Cause::NotAFile(path.to_string()));
    }
    Ok(p)
}

fn decode(data_b64: &str) -> Result<Vec<u8>, Cause> {
    base64::decode(data_b64).map_err(Cause::Base64)
}

/// A name in `target`'s directory that nobody can guess: `.NAME.sm-<tag>.<random>`.
fn sibling(target: &Path, tag: &str) -> PathBuf {
    let mut r = [0u8; 8];
    // Never wait for the CRNG: on supermachine's HVF machine there is no RNDR and no
    // `rng-seed`, so until virtio-rng has fed it, a blocking getrandom would hold this
    // request (and its connection) for as long as that takes.
    if sys::getrandom_nonblocking(&mut r).ok() != Some(r.len()) {
        // No entropy yet (very early boot, EAGAIN): the clock still makes names unpredictable
        // enough for a temp file that create_new refuses to reuse.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        r = t.to_ne_bytes();
    }
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.sm-{tag}.{:016x}", u64::from_ne_bytes(r)))
}

/// A temp file that removes itself unless committed.
struct Temp {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Temp {
    /// Keeps the file where it is, uncommitted (a chunked transfer's partial between pieces).
    fn keep(mut self) {
        self.committed = true;
    }

    fn create(target: &Path) -> Result<Temp, Cause> {
        let path = sibling(target, "tmp");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(os("create", &path))?;
        Ok(Temp {
            path,
            file,
            committed: false,
        })
    }

    /// fsync, chmod, rename onto `target`.
    fn commit(mut self, target: &Path, mode: u32) -> Result<(), Cause> {
        self.file
            .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(os("chmod", &self.path))?;
        self.file.sync_all().map_err(os("fsync", &self.path))?;
        fs::rename(&self.path, target).map_err(os("rename onto", target))?;
        self.committed = true;
        Ok(())
    }
}

/// Writes `data` to `path` atomically.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Cause> {
    let mut t = Temp::create(path)?;
    t.file.write_all(data).map_err(os("write", &t.path))?;
    t.commit(path, mode)
}

/// Decodes `data_b64` and writes it to `path` atomically.
fn write_decoded(path: &str, data_b64: &str, mode: Option<u32>) -> Result<(), Cause> {
    let p = target(path)?;
    let data = decode(data_b64)?;
    write_atomic(p, &data, mode.unwrap_or(DEFAULT_MODE))
}

/// `write_file`.
pub fn write_whole(path: &str, data_b64: &str, mode: Option<u32>) -> Result<Empty, Error> {
    act("write_file", path, || write_decoded(path, data_b64, mode))?;
    Ok(Empty {})
}

/// The partial file of a chunked transfer: `.NAME.sm-part-TOKEN` beside the target.
fn partial(target: &Path, token: &str) -> Result<PathBuf, Cause> {
    let ok = !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(Cause::BadToken(token.to_string()));
    }
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    Ok(target.with_file_name(format!(".{name}.sm-part-{token}")))
}

/// `write_file_chunk`: pieces arrive in order; `last` commits.
pub fn write_chunk(
    path: &str,
    offset: u64,
    data_b64: &str,
    last: bool,
    token: &str,
    mode: Option<u32>,
) -> Result<Empty, Error> {
    act("write_file_chunk", path, || {
        let p = target(path)?;
        let part = partial(p, token)?;
        let data = decode(data_b64)?;
        let mut opts = OpenOptions::new();
        // O_NONBLOCK: a FIFO planted at the name must fail the open (ENXIO), not hang it.
        opts.write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        if offset == 0 {
            // A fresh transfer starts from a file of its own: whatever has the name (an old
            // partial, or a hard link planted there, whose target must not be truncated) is
            // unlinked, and the new file is created exclusively.
            match fs::remove_file(&part) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(os("remove the old", &part)(e)),
            }
            opts.create_new(true);
        }
        let file = opts.open(&part).map_err(os("open", &part))?;
        let meta = file.metadata().map_err(os("stat", &part))?;
        // From here on any failure removes the partial (by name: a planted link's target is
        // untouched): the transfer cannot go on.
        let part = Temp {
            path: part,
            file,
            committed: false,
        };
        // Later chunks reopen it by name: it must still be the file the first chunk made
        // (which create_new vouches for). On a filesystem that records no owners (vfat, an
        // id-mapped share) that check fails: use write_file there, or a path on the overlay.
        let me = sys::geteuid();
        if offset > 0 && (!meta.is_file() || meta.nlink() != 1 || meta.uid() != me) {
            return Err(Cause::NotOurs {
                nlink: meta.nlink(),
                uid: meta.uid(),
            });
        }
        let received = meta.len();
        if received != offset {
            part.keep();
            return Err(Cause::Gap { offset, received });
        }
        part.file
            .write_all_at(&data, offset)
            .map_err(os("write", &part.path))?;
        if last {
            part.commit(p, mode.unwrap_or(DEFAULT_MODE))
        } else {
            part.keep();
            Ok(())
        }
    })?;
    Ok(Empty {})
}

/// Opens a regular file for reading without blocking on FIFOs or devices.
fn open_regular(p: &Path) -> Result<(File, u64), Cause> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(os("open", p))?;
    let meta = f.metadata().map_err(os("stat", p))?;
    if !meta.is_file() {
        return Err(Cause::NotRegular);
    }
    Ok((f, meta.len()))
}

fn check_size(len: u64, max_bytes: u64) -> Result<(), Cause> {
    if len > max_bytes {
        return Err(Cause::OverMax { len, max_bytes });
    }
    Ok(())
}

/// Reads at most `n` bytes from the file's current position.
fn read_up_to(f: &mut File, n: u64, p: &Path) -> Result<Vec<u8>, Cause> {
    let mut buf = Vec::with_capacity(n.min(READ_CHUNK_MAX) as usize);
    f.take(n).read_to_end(&mut buf).map_err(os("read", p))?;
    Ok(buf)
}

/// The contents of a file whose `st_size` is 0: procfs files report 0 whatever they hold, and
/// read back as empty successes when trusted (issue 22). Read to the end instead, at most
/// [`READ_CHUNK_MAX`]; `None` when the size is known. (sysfs attributes report 4096 whatever
/// they hold: `read_chunk` takes an early end of file as the end.)
fn contents_if_unsized(f: &mut File, len: u64, p: &Path) -> Result<Option<Vec<u8>>, Cause> {
    if len != 0 {
        return Ok(None);
    }
    let data = read_up_to(f, READ_CHUNK_MAX + 1, p)?;
    if data.len() as u64 > READ_CHUNK_MAX {
        return Err(Cause::OverReadLimit(data.len() as u64));
    }
    Ok(Some(data))
}

/// `read_file`: the whole file, at most `max_bytes`.
pub fn read_whole(path: &str, max_bytes: u64) -> Result<FileData, Error> {
    act("read_file", path, || {
        let p = target(path)?;
        let (mut f, len) = open_regular(p)?;
        if let Some(data) = contents_if_unsized(&mut f, len, p)? {
            check_size(data.len() as u64, max_bytes)?;
            return Ok(FileData {
                data_b64: base64::encode(&data),
            });
        }
        check_size(len, max_bytes)?;
        if len > READ_CHUNK_MAX {
            return Err(Cause::OverReadLimit(len));
        }
        let data = read_up_to(&mut f, len, p)?;
        Ok(FileData {
            data_b64: base64::encode(&data),
        })
    })
}

/// `read_file_chunk`: up to `len` bytes from `offset` (clamped to [`READ_CHUNK_MAX`]).
pub fn read_chunk(path: &str, offset: u64, len: u64, max_bytes: u64) -> Result<FileChunk, Error> {
    act("read_file_chunk", path, || {
        let p = target(path)?;
        let (mut f, total_len) = open_regular(p)?;
        if let Some(data) = contents_if_unsized(&mut f, total_len, p)? {
            let total_len = data.len() as u64;
            check_size(total_len, max_bytes)?;
            if offset > total_len {
                return Err(Cause::OffsetPastEnd {
                    offset,
                    len: total_len,
                });
            }
            let end = offset.saturating_add(len).min(total_len);
            return Ok(FileChunk {
                data_b64: base64::encode(&data[offset as usize..end as usize]),
                total_len,
            });
        }
        check_size(total_len, max_bytes)?;
        if offset > total_len {
            return Err(Cause::OffsetPastEnd {
                offset,
                len: total_len,
            });
        }
        f.seek(SeekFrom::Start(offset)).map_err(os("seek", p))?;
        let n = len.min(READ_CHUNK_MAX).min(total_len - offset);
        let data = read_up_to(&mut f, n, p)?;
        // The end of the file came early (a sysfs attribute's 4096, a file that shrank): it
        // ends there, so the chunk is whole and the host stops.
        let total_len = if (data.len() as u64) < n {
            offset + data.len() as u64
        } else {
            total_len
        };
        Ok(FileChunk {
            data_b64: base64::encode(&data),
            total_len,
        })
    })
}

/// Writes the REQUEST's `stage_files`, each atomically, before the exec starts.
pub fn stage(files: &[StageFile]) -> Result<(), Error> {
    for s in files {
        act("stage_file", &s.path, || {
            write_decoded(&s.path, &s.data_b64, s.mode)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
