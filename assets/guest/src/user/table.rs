//! The user-resolution table both PID 1s are checked against: [`super::resolve`]'s unit test,
//! and `cargo xtask test`, which writes [`PASSWD`] and [`GROUP`] into guests of both arches
//! and runs `id` as each [`Case`]'s user.

/// The image's `/etc/passwd` of every case.
pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
# a comment
broken line
short:x:1001:1001
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

/// The image's `/etc/group` of every case.
pub const GROUP: &str = "\
root:x:0:
wheel:x:10:app,other
app:x:1000:
staff:x:50:short
nogroup:x:65534:
";

/// What a case resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// This identity.
    Ident {
        /// uid.
        uid: u32,
        /// Primary gid.
        gid: u32,
        /// Supplementary groups, in order.
        groups: &'static [u32],
    },
    /// An error whose text contains this.
    Error(&'static str),
}

/// One `user[:group]` string and what it resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// The string.
    pub spec: &'static str,
    /// Its resolution.
    pub want: Want,
}

const fn ok(spec: &'static str, uid: u32, gid: u32, groups: &'static [u32]) -> Case {
    Case {
        spec,
        want: Want::Ident { uid, gid, groups },
    }
}

const fn err(spec: &'static str, part: &'static str) -> Case {
    Case {
        spec,
        want: Want::Error(part),
    }
}

/// The cases.
pub const CASES: &[Case] = &[
    ok("app", 1000, 1000, &[1000, 10]),
    ok("1000", 1000, 1000, &[1000, 10]),
    ok("app:staff", 1000, 50, &[50, 10]),
    ok("app:7", 1000, 7, &[7, 10]),
    ok("root", 0, 0, &[0]),
    ok("root:", 0, 0, &[0]),
    ok("4242", 4242, 0, &[]),
    ok("4242:4343", 4242, 4343, &[]),
    ok("4242:staff", 4242, 50, &[]),
    ok("short", 1001, 1001, &[1001, 50]),
    ok("65534:65534", 65534, 65534, &[65534]),
    err("", "empty user name"),
    err(":staff", "empty user name"),
    err("ghost", "unknown user \"ghost\""),
    err("app:ghosts", "unknown group \"ghosts\""),
    err("99999999999", "not a 32-bit uid"),
    err("app:99999999999", "not a 32-bit gid"),
    err("-1", "unknown user \"-1\""),
];
