//! A `newc` (SVR4, no CRC) cpio writer for initramfs images, so no external `cpio` is needed.
//!
//! Format (Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte
//! ASCII header of `070701` and 13 eight-digit hex fields, the NUL-terminated name, padding to 4
//! bytes, the data, padding to 4 bytes; the archive ends with an entry named `TRAILER!!!`.
//! Timestamps and owners are fixed (0), so the same inputs always give the same bytes.

/// File type bits of `mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
// The x86 init no longer ships `bin/sh`, but the writer keeps symlinks: the fuzz target
// round-trips them and a VMM embedding this writer may need them.
#[allow(dead_code)]
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
/// Permission bits (with setuid, setgid and sticky): what callers may pass as `perm`.
const PERM_MASK: u32 = 0o7777;
/// Name of the last entry.
const TRAILER: &str = "TRAILER!!!";

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    ino: u32,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// # Panics
    /// On a name the kernel would read differently (empty, with a NUL, or the trailer's) and
    /// on data over 4 GiB: every caller passes its own fixed names, so these are caller bugs.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        assert!(
            !name.is_empty() && !name.contains('\0') && (name != TRAILER || mode == 0),
            "cpio entry name {name:?} cannot be archived"
        );
        let size = u32::try_from(data.len()).expect("cpio entry over 4 GiB");
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
    }

    /// Adds a directory (parents must be added first).
    pub fn dir(&mut self, name: &str, perm: u32) -> &mut Self {
        self.entry(name, S_IFDIR | (perm & PERM_MASK), (0, 0), &[]);
        self
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(name, S_IFREG | (perm & PERM_MASK), (0, 0), data);
        self
    }

    /// Adds a symlink to `target`.
    #[allow(dead_code)]
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
        self
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(name, S_IFCHR | (perm & PERM_MASK), (major, minor), &[]);
        self
    }

    /// Appends the trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, (0, 0), &[]);
        self.buf
    }
}

/// An initramfs of `/dev/console`, empty `/proc` and `/sys`, and the given (name, contents)
/// files at the root.
pub fn initramfs(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut a = Archive::new();
    a.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755);
    for (name, bytes) in files {
        let mode = if name.ends_with(".ko") { 0o644 } else { 0o755 };
        a.file(name, mode, bytes);
    }
    a.finish()
}

/// One parsed entry (used by tests and the fuzz round trip, `fuzz/fuzz_targets/cpio_round_trip.rs`).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive.
    pub name: String,
    /// Type and permission bits.
    pub mode: u32,
    /// Device numbers for device nodes.
    pub rdev: (u32, u32),
    /// File contents or symlink target.
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer.
#[cfg_attr(not(test), allow(dead_code))]
pub fn parse(mut b: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let h = b.get(..110).ok_or(format!("truncated header at {off}"))?;
        if &h[..6] != b"070701" {
            return Err(format!("bad magic at {off}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let (mode, size, rmaj, rmin, namesize) = (
            field(1)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = 110 + namesize;
        let name = b.get(110..name_end - 1).ok_or("truncated name")?;
        let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
        let data_start = (name_end + 3) & !3;
        let data = b
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        let next = (data_start + size + 3) & !3;
        if name == TRAILER {
            return Ok(out);
        }
        out.push(Entry {
            name,
            mode,
            rdev: (rmaj, rmin),
            data,
        });
        b = b.get(next..).ok_or("truncated padding")?;
        off += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        let mut a = Archive::new();
        a.dir("bin", 0o755)
            .file("bin/busybox", 0o755, b"\x7fELF12345")
            .symlink("bin/sh", "busybox")
            .char_dev("dev/console", 0o600, 5, 1)
            .file("init", 0o755, b"#!/bin/sh\n");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        let e = parse(&bytes).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[1].name, "bin/busybox");
        assert_eq!(e[1].mode, S_IFREG | 0o755);
        assert_eq!(e[1].data, b"\x7fELF12345");
        assert_eq!(e[2].data, b"busybox");
        assert_eq!(e[3].rdev, (5, 1));
        assert_eq!(e[3].mode & 0o170000, S_IFCHR);
    }

    #[test]
    fn header_is_the_documented_layout() {
        let mut a = Archive::new();
        a.file("a", 0o644, b"xyz");
        let b = a.finish();
        let h = std::str::from_utf8(&b[..110]).unwrap();
        assert_eq!(&h[..6], "070701");
        assert_eq!(&h[14..22], "000081a4"); // S_IFREG | 0644
        assert_eq!(&h[54..62], "00000003"); // filesize
        assert_eq!(&h[94..102], "00000002"); // namesize incl. NUL
        assert_eq!(&b[110..112], b"a\0");
        assert_eq!(&b[112..115], b"xyz");
    }

    #[test]
    fn deterministic() {
        let build = || {
            let mut a = Archive::new();
            a.dir("x", 0o755).file("x/y", 0o600, b"data");
            a.finish()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse(b"nope").is_err());
        assert!(parse(&[b'0'; 200]).is_err());
    }
}
