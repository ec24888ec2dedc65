//! File actions: `write_file`, `write_file_chunk`, `read_file`, `read_file_chunk`, and the
//! REQUEST's `stage_files`.
//!
//! Paths mean the path as the guest sees it (symlinks included); a relative path is relative
//! to the agent's working directory. Writes are atomic: the bytes go to a temp file in the
//! target's directory, which is fsynced, given its mode and renamed onto the target, and which
//! is removed on any failure. Reads take regular files only, opened non-blocking, so a FIFO
//! planted by the workload cannot hang the agent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use supermachine_agent::base64;
use supermachine_agent::protocol::*;

use crate::server::{annotate, Fault};

/// Mode of a written file when the request names none.
const DEFAULT_MODE: u32 = 0o644;

/// Largest piece `read_file_chunk` returns: its base64 (16 MiB) still fits one frame with
/// the JSON around it.
const READ_CHUNK_MAX: u64 = 12 << 20;

fn ctx<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| annotate(e, format!("{what} {}", path.display()))
}

fn target(path: &str) -> Result<&Path, Fault> {
    let p = Path::new(path);
    if path.is_empty() || p.file_name().is_none() || path.contains('\0') {
        return Err(Fault::new(
            ErrorCode::InvalidArgument,
            format!("path {path:?} does not name a file"),
        ));
    }
    Ok(p)
}

fn decode(data_b64: &str) -> Result<Vec<u8>, Fault> {
    base64::decode(data_b64)
        .map_err(|e| Fault::new(ErrorCode::InvalidArgument, format!("bad base64: {e}")))
}

/// A name in `target`'s directory that nobody can guess: `.NAME.sm-<tag>.<random>`.
fn sibling(target: &Path, tag: &str) -> PathBuf {
    let mut r = [0u8; 8];
    // SAFETY: getrandom writes at most r.len() bytes into r.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    if n != r.len() as isize {
        // No entropy yet (very early boot): the clock still makes names unpredictable enough
        // for a temp file that create_new refuses to reuse.
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

    fn create(target: &Path) -> io::Result<Temp> {
        let path = sibling(target, "tmp");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(ctx("create", &path))?;
        Ok(Temp {
            path,
            file,
            committed: false,
        })
    }

    /// fsync, chmod, rename onto `target`.
    fn commit(mut self, target: &Path, mode: u32) -> io::Result<()> {
        self.file
            .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(ctx("chmod", &self.path))?;
        self.file.sync_all().map_err(ctx("fsync", &self.path))?;
        fs::rename(&self.path, target).map_err(ctx("rename onto", target))?;
        self.committed = true;
        Ok(())
    }
}

/// Writes `data` to `path` atomically.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut t = Temp::create(path)?;
    t.file.write_all(data).map_err(ctx("write", &t.path))?;
    t.commit(path, mode)
}

/// `write_file`.
pub fn write_whole(path: &str, data_b64: &str, mode: Option<u32>) -> Result<Empty, Fault> {
    let what = format!("write_file({path})");
    let p = target(path).map_err(|f| f.context(&what))?;
    let data = decode(data_b64).map_err(|f| f.context(&what))?;
    write_atomic(p, &data, mode.unwrap_or(DEFAULT_MODE))
        .map_err(|e| Fault::from_io(e).context(&what))?;
    Ok(Empty {})
}

/// The partial file of a chunked transfer: `.NAME.sm-part-TOKEN` beside the target.
fn partial(target: &Path, token: &str) -> Result<PathBuf, Fault> {
    let ok = !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(Fault::new(
            ErrorCode::InvalidArgument,
            format!("token {token:?} must be 1-64 characters of [A-Za-z0-9._-]"),
        ));
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
) -> Result<Empty, Fault> {
    let what = format!("write_file_chunk({path})");
    let run = || -> Result<(), Fault> {
        let p = target(path)?;
        let part = partial(p, token)?;
        let data = decode(data_b64)?;
        let io = |e| Fault::from_io(e);
        let mut opts = OpenOptions::new();
        opts.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        if offset == 0 {
            // A fresh transfer: start from nothing even if an old partial was left behind.
            opts.create(true).truncate(true);
        }
        let file = opts.open(&part).map_err(|e| io(ctx("open", &part)(e)))?;
        // From here on any failure removes the partial: the transfer cannot go on.
        let part = Temp {
            path: part,
            file,
            committed: false,
        };
        let len = part
            .file
            .metadata()
            .map_err(|e| io(ctx("stat", &part.path)(e)))?
            .len();
        if len != offset {
            part.keep();
            return Err(Fault::new(
                ErrorCode::InvalidArgument,
                format!("offset {offset} does not follow the {len} bytes received so far"),
            ));
        }
        part.file
            .write_all_at(&data, offset)
            .map_err(|e| io(ctx("write", &part.path)(e)))?;
        if last {
            part.commit(p, mode.unwrap_or(DEFAULT_MODE)).map_err(io)?;
        } else {
            part.keep();
        }
        Ok(())
    };
    run().map_err(|f| f.context(&what))?;
    Ok(Empty {})
}

/// Opens a regular file for reading without blocking on FIFOs or devices.
fn open_regular(p: &Path) -> Result<(File, u64), Fault> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| Fault::from_io(ctx("open", p)(e)))?;
    let meta = f
        .metadata()
        .map_err(|e| Fault::from_io(ctx("stat", p)(e)))?;
    if !meta.is_file() {
        return Err(Fault::new(
            ErrorCode::InvalidArgument,
            "not a regular file".to_string(),
        ));
    }
    Ok((f, meta.len()))
}

fn check_size(len: u64, max_bytes: u64) -> Result<(), Fault> {
    if len > max_bytes {
        return Err(Fault::new(
            ErrorCode::TooLarge,
            format!("file is {len} bytes; exceeds max_bytes={max_bytes}"),
        ));
    }
    Ok(())
}

/// Reads at most `n` bytes from the file's current position.
fn read_up_to(f: &mut File, n: u64, p: &Path) -> Result<Vec<u8>, Fault> {
    let mut buf = Vec::with_capacity(n.min(READ_CHUNK_MAX) as usize);
    f.take(n)
        .read_to_end(&mut buf)
        .map_err(|e| Fault::from_io(ctx("read", p)(e)))?;
    Ok(buf)
}

/// `read_file`: the whole file, at most `max_bytes`.
pub fn read_whole(path: &str, max_bytes: u64) -> Result<FileData, Fault> {
    let what = format!("read_file({path})");
    let run = || -> Result<FileData, Fault> {
        let p = target(path)?;
        let (mut f, len) = open_regular(p)?;
        check_size(len, max_bytes)?;
        if len > READ_CHUNK_MAX {
            return Err(Fault::new(
                ErrorCode::TooLarge,
                format!("file is {len} bytes; read_file answers up to {READ_CHUNK_MAX}, use read_file_chunk"),
            ));
        }
        let data = read_up_to(&mut f, len, p)?;
        Ok(FileData {
            data_b64: base64::encode(&data),
        })
    };
    run().map_err(|f| f.context(&what))
}

/// `read_file_chunk`: up to `len` bytes from `offset` (clamped to [`READ_CHUNK_MAX`]).
pub fn read_chunk(path: &str, offset: u64, len: u64, max_bytes: u64) -> Result<FileChunk, Fault> {
    let what = format!("read_file_chunk({path})");
    let run = || -> Result<FileChunk, Fault> {
        let p = target(path)?;
        let (mut f, total_len) = open_regular(p)?;
        check_size(total_len, max_bytes)?;
        if offset > total_len {
            return Err(Fault::new(
                ErrorCode::InvalidArgument,
                format!("offset {offset} > file len {total_len}"),
            ));
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Fault::from_io(ctx("seek", p)(e)))?;
        let n = len.min(READ_CHUNK_MAX).min(total_len - offset);
        let data = read_up_to(&mut f, n, p)?;
        Ok(FileChunk {
            data_b64: base64::encode(&data),
            total_len,
        })
    };
    run().map_err(|f| f.context(&what))
}

/// Writes the REQUEST's `stage_files`, each atomically, before the exec starts.
pub fn stage(files: &[StageFile]) -> Result<(), Fault> {
    for s in files {
        let what = format!("stage_file({})", s.path);
        let p = target(&s.path).map_err(|f| f.context(&what))?;
        let data = decode(&s.data_b64).map_err(|f| f.context(&what))?;
        write_atomic(p, &data, s.mode.unwrap_or(DEFAULT_MODE))
            .map_err(|e| Fault::from_io(e).context(&what))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smk-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn left(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn chunked_write_commits_on_last_and_refuses_gaps() {
        let d = dir("chunk");
        let t = d.join("f").to_string_lossy().into_owned();
        let b = |s: &[u8]| base64::encode(s);
        write_chunk(&t, 0, &b(b"abc"), false, "tok", None).unwrap();
        assert!(!Path::new(&t).exists());
        let e = write_chunk(&t, 7, &b(b"x"), false, "tok", None).unwrap_err();
        assert!(
            e.message.contains("offset 7 does not follow the 3 bytes"),
            "{}",
            e.message
        );
        write_chunk(&t, 3, &b(b"def"), true, "tok", Some(0o600)).unwrap();
        assert_eq!(fs::read(&t).unwrap(), b"abcdef");
        assert_eq!(
            fs::metadata(&t).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(left(&d), ["f"]);
        let e = write_chunk(&t, 0, "", false, "../x", None).unwrap_err();
        assert!(e.message.contains("token"), "{}", e.message);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn whole_writes_and_reads() {
        let d = dir("whole");
        let t = d.join("g").to_string_lossy().into_owned();
        write_whole(&t, &base64::encode(b"hello"), None).unwrap();
        assert_eq!(
            fs::metadata(&t).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let e = write_whole(&t, "ab", None).unwrap_err();
        assert_eq!(
            e.message,
            format!("write_file({t}): bad base64: length 2 is not a multiple of 4")
        );
        let missing = d.join("no/such").to_string_lossy().into_owned();
        let e = write_whole(&missing, "", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(left(&d), ["g"]);
        let r = read_whole(&t, 100).unwrap();
        assert_eq!(base64::decode(&r.data_b64).unwrap(), b"hello");
        let e = read_whole(&t, 3).unwrap_err();
        assert!(
            e.message.ends_with("file is 5 bytes; exceeds max_bytes=3"),
            "{}",
            e.message
        );
        let c = read_chunk(&t, 1, 2, 100).unwrap();
        assert_eq!(
            (base64::decode(&c.data_b64).unwrap(), c.total_len),
            (b"el".to_vec(), 5)
        );
        let e = read_chunk(&t, 9, 1, 100).unwrap_err();
        assert!(
            e.message.ends_with("offset 9 > file len 5"),
            "{}",
            e.message
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let d = dir("fifo");
        let f = d.join("p");
        let c = std::ffi::CString::new(f.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_whole(&f.to_string_lossy(), 10).unwrap_err();
        assert!(e.message.ends_with("not a regular file"), "{}", e.message);
        fs::remove_dir_all(&d).unwrap();
    }
}
