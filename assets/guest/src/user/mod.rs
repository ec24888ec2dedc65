//! A `user[:group]` string resolved against the image's own `/etc/passwd` and `/etc/group`,
//! as both PID 1s resolve it: the agent for an exec's `user`, init-oci for
//! `/.supermachine-user`. No NSS: the image's files are the only truth about its users.
//!
//! The semantics, chosen from runc's `GetExecUser` (what Docker and OCI runtimes do) and
//! upstream's init where they agree:
//! - the text before the first `:` is the user, the rest the group; an empty user is an
//!   error, an empty group (`root:`) means no group was given;
//! - a user of digits is a uid (it must fit 32 bits) and needs no passwd entry; its entry, if
//!   any, gives the primary group, the name and the home; any other user is a name that must
//!   be in `/etc/passwd`;
//! - a group of digits is a gid (32 bits); any other group is a name that must be in
//!   `/etc/group`; either replaces the primary group;
//! - a user with a passwd entry gets its primary group first, then every group that lists
//!   its name (`initgroups`); a uid without an entry gets no supplementary groups (runc's
//!   `setgroups([])`);
//! - a passwd line needs its first four fields (`name:password:uid:gid`); home is the sixth
//!   when present and not empty. Lines starting with `#` and lines whose ids are not numbers
//!   are skipped.
//!
//! [`table`] is the one test table both PID 1s are checked against: here, and in the guests
//! of `cargo xtask test`.

pub mod table;

use std::fmt;

/// A resolved identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups: the primary group first when the user has a passwd entry;
    /// empty otherwise.
    pub groups: Vec<u32>,
    /// Home directory from passwd, when the user has an entry that names one.
    pub home: Option<String>,
}

impl Ident {
    /// Root, the identity of a process given no user.
    pub fn root() -> Ident {
        Ident {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: Some("/root".into()),
        }
    }
}

/// Why a `user[:group]` string does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The user part (before any `:`) is empty; the whole string.
    EmptyUser(String),
    /// A user of digits that does not fit a uid.
    BadUid(String),
    /// A user name that `/etc/passwd` does not list.
    UnknownUser(String),
    /// A group of digits that does not fit a gid.
    BadGid(String),
    /// A group name that `/etc/group` does not list.
    UnknownGroup(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyUser(spec) => write!(f, "user {spec:?}: empty user name"),
            Error::BadUid(u) => write!(f, "user {u:?}: not a 32-bit uid"),
            Error::UnknownUser(u) => write!(f, "unknown user {u:?} (not in /etc/passwd)"),
            Error::BadGid(g) => write!(f, "group {g:?}: not a 32-bit gid"),
            Error::UnknownGroup(g) => write!(f, "unknown group {g:?} (not in /etc/group)"),
        }
    }
}

impl std::error::Error for Error {}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: Option<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0],
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).copied().filter(|h| !h.is_empty()),
            })
        })
}

/// `(name, gid, members)` of each well-formed group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
                .unwrap_or_default();
            Some((f[0], f[2].parse().ok()?, members))
        })
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` against the texts of `/etc/passwd` and `/etc/group` (empty when missing).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Ident, Error> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(Error::EmptyUser(spec.to_string()));
    }
    let (uid, entry) = if is_digits(user) {
        let uid: u32 = user.parse().map_err(|_| Error::BadUid(user.to_string()))?;
        (uid, passwd_entries(passwd).find(|e| e.uid == uid))
    } else {
        let e = passwd_entries(passwd)
            .find(|e| e.name == user)
            .ok_or_else(|| Error::UnknownUser(user.to_string()))?;
        (e.uid, Some(e))
    };
    let gid = match grp {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) if is_digits(g) => g.parse().map_err(|_| Error::BadGid(g.to_string()))?,
        Some(g) => group_entries(group)
            .find(|(n, _, _)| *n == g)
            .map(|(_, gid, _)| gid)
            .ok_or_else(|| Error::UnknownGroup(g.to_string()))?,
    };
    let groups = match &entry {
        None => Vec::new(),
        Some(e) => {
            let mut list = vec![gid];
            for (_, g, members) in group_entries(group) {
                if members.contains(&e.name) && !list.contains(&g) {
                    list.push(g);
                }
            }
            list
        }
    };
    Ok(Ident {
        uid,
        gid,
        groups,
        home: entry.and_then(|e| e.home).map(str::to_string),
    })
}

/// Resolves `spec` against this root's `/etc/passwd` and `/etc/group` (a missing or
/// unreadable file counts as empty: only numeric ids then resolve).
pub fn resolve_in_root(spec: &str) -> Result<Ident, Error> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::table::{Want, CASES, GROUP, PASSWD};
    use super::*;

    #[test]
    fn the_shared_table() {
        for case in CASES {
            let got = resolve(case.spec, PASSWD, GROUP);
            match (&case.want, &got) {
                (Want::Ident { uid, gid, groups }, Ok(i)) => {
                    assert_eq!(
                        (i.uid, i.gid, i.groups.as_slice()),
                        (*uid, *gid, *groups),
                        "{:?}",
                        case.spec
                    );
                }
                (Want::Error(part), Err(e)) => {
                    assert!(e.to_string().contains(part), "{:?}: {e}", case.spec);
                }
                _ => panic!("{:?}: want {:?}, got {got:?}", case.spec, case.want),
            }
        }
    }

    #[test]
    fn home_comes_from_the_entry() {
        assert_eq!(
            resolve("app", PASSWD, GROUP).unwrap().home.as_deref(),
            Some("/home/app")
        );
        assert_eq!(resolve("4242", PASSWD, GROUP).unwrap().home, None);
        assert_eq!(resolve("short", PASSWD, GROUP).unwrap().home, None);
    }

    #[test]
    fn missing_files_leave_only_numbers() {
        assert_eq!(resolve("7:8", "", "").unwrap().gid, 8);
        assert_eq!(
            resolve("app", "", ""),
            Err(Error::UnknownUser("app".into()))
        );
    }
}
