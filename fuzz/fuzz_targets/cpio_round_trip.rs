//! The initramfs (newc cpio) writer: arbitrary entries in, the kernel's format out.
//!
//! Properties: every entry the writer accepts reads back with its name, type, permission bits
//! (type bits passed in `perm` never leak into the type), device numbers and bytes; the archive
//! and every entry start on 4-byte boundaries; the same entries give the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use vm_rig::cpio;

#[derive(Arbitrary, Debug)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    perm: u32,
    kind: Kind,
}

fn build(entries: &[Input]) -> Vec<u8> {
    let mut a = cpio::Archive::new();
    for e in entries {
        match &e.kind {
            Kind::Dir => a.dir(&e.name, e.perm),
            Kind::File(d) => a.file(&e.name, e.perm, d),
            Kind::Symlink(t) => a.symlink(&e.name, t),
            Kind::CharDev(ma, mi) => a.char_dev(&e.name, e.perm, *ma, *mi),
        };
    }
    a.finish()
}

fuzz_target!(|entries: Vec<Input>| {
    // The writer's documented precondition (it panics otherwise): a name the kernel reads
    // back as written.
    if entries
        .iter()
        .any(|e| e.name.is_empty() || e.name.contains('\0') || e.name == "TRAILER!!!")
    {
        return;
    }
    let bytes = build(&entries);
    assert_eq!(bytes.len() % 4, 0);
    assert_eq!(bytes, build(&entries), "not deterministic");
    let parsed = cpio::parse(&bytes).expect("the writer's output does not parse");
    assert_eq!(parsed.len(), entries.len());
    for (e, p) in entries.iter().zip(&parsed) {
        assert_eq!(p.name, e.name);
        let (ty, perm, rdev, data): (u32, u32, (u32, u32), &[u8]) = match &e.kind {
            Kind::Dir => (0o040000, e.perm & 0o7777, (0, 0), &[]),
            Kind::File(d) => (0o100000, e.perm & 0o7777, (0, 0), d),
            Kind::Symlink(t) => (0o120000, 0o777, (0, 0), t.as_bytes()),
            Kind::CharDev(ma, mi) => (0o020000, e.perm & 0o7777, (*ma, *mi), &[]),
        };
        assert_eq!(p.mode, ty | perm, "{e:?}");
        assert_eq!(p.rdev, rdev);
        assert_eq!(p.data, data);
    }
});
