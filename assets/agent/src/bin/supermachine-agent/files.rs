//! `write_file` (atomic: temp file in the same directory, fsync, rename) and `read_file`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use supermachine_agent::codec::{self, CodecError};
use supermachine_agent::protocol::*;

use crate::server::{annotate, reply, reply_error, Fault, Next, Writer};

fn ctx<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| annotate(e, format!("{what} {}", path.display()))
}

fn absolute(path: &str) -> Result<&Path, Fault> {
    let p = Path::new(path);
    if !p.is_absolute() || p.file_name().is_none() {
        return Err(Fault::new(
            ErrorCode::InvalidArgument,
            format!("path {path:?} must be absolute and name a file"),
        ));
    }
    Ok(p)
}

/// A temp file that removes itself unless committed.
struct Temp {
    path: PathBuf,
    file: Option<File>,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn create_temp(target: &Path, mode: u32) -> io::Result<Temp> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().unwrap_or(Path::new("/"));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.sm-tmp.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .open(&tmp)
        .map_err(ctx("create", &tmp))?;
    Ok(Temp {
        path: tmp,
        file: Some(file),
    })
}

/// Receives data frames until the empty one. The reply always comes after that frame, so the
/// connection stays in sync even when the write failed half-way (ENOSPC, say).
pub fn write(path: &str, mode: u32, reader: &mut UnixStream, out: &Writer) -> Next {
    let target = absolute(path);
    let mut temp = target
        .as_ref()
        .map_err(|f| Fault::new(f.code, f.message.clone()))
        .and_then(|t| create_temp(t, mode).map_err(Fault::from_io));
    let mut size = 0u64;
    loop {
        let frame = match codec::read_frame(reader) {
            Ok(Some(f)) => f,
            Err(CodecError::UnknownType(_)) => continue,
            _ => return Next::Close,
        };
        if frame.ty != FrameType::Data {
            return reply_error(
                out,
                Fault::new(
                    ErrorCode::UnexpectedFrame,
                    format!("write_file: expected Data frames, got {:?}", frame.ty),
                ),
            );
        }
        if frame.payload.is_empty() {
            break;
        }
        if let Ok(t) = &mut temp {
            let file = t.file.as_mut().expect("temp file is open until commit");
            match file.write_all(&frame.payload) {
                Ok(()) => size += frame.payload.len() as u64,
                Err(e) => temp = Err(Fault::from_io(ctx("write", &t.path)(e))),
            }
        }
    }
    let commit = temp.and_then(|mut t| {
        let file = t.file.as_ref().expect("temp file is open until commit");
        let target = target.expect("temp exists only for a valid target");
        // create_new honoured the umask; the requested mode is what the caller asked for.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .and_then(|()| file.sync_all())
            .map_err(ctx("fsync", &t.path))
            .and_then(|()| fs::rename(&t.path, target).map_err(ctx("rename into", target)))
            .map_err(Fault::from_io)?;
        t.file = None;
        Ok(())
    });
    match commit {
        Ok(()) => reply(out, &FileInfo { size }),
        Err(f) => reply_error(out, f),
    }
}

/// Sends `FileInfo`, the file's bytes in data frames, and an empty data frame.
pub fn read(path: &str, max_size: u64, out: &Writer) -> Next {
    let opened = absolute(path).and_then(|p| {
        let f = File::open(p).map_err(|e| Fault::from_io(ctx("open", p)(e)))?;
        let meta = f
            .metadata()
            .map_err(|e| Fault::from_io(ctx("stat", p)(e)))?;
        if !meta.is_file() {
            return Err(Fault::new(
                ErrorCode::InvalidArgument,
                format!("read_file {path}: not a regular file"),
            ));
        }
        if meta.len() > max_size {
            return Err(Fault::new(
                ErrorCode::TooLarge,
                format!(
                    "read_file {path}: {} bytes exceeds max_size {max_size}",
                    meta.len()
                ),
            ));
        }
        Ok((f, meta.len()))
    });
    let (file, size) = match opened {
        Ok(v) => v,
        Err(f) => return reply_error(out, f),
    };
    if let Next::Close = reply(out, &FileInfo { size }) {
        return Next::Close;
    }
    // Send exactly `size` bytes even if the file changes meanwhile, so the answer never
    // exceeds what FileInfo promised.
    let mut src = file.take(size);
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A read error after FileInfo cannot be reported in-band: close, the client sees
            // a truncated transfer.
            Err(_) => return Next::Close,
        };
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        if codec::write_frame(&mut *w, FrameType::Data, &buf[..n]).is_err() {
            return Next::Close;
        }
        if n == 0 {
            return Next::Read;
        }
    }
}
