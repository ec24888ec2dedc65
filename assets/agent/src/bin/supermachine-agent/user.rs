//! Resolving `user` strings against the container's own `/etc/passwd` and `/etc/group`.
//!
//! No NSS: the agent runs in the container's root, whose files are the only truth about its
//! users. Parsing is a pure function over the files' text so it can be tested and fuzzed.
//! Failures are an [`Error`] naming the user or group that could not be resolved.

use std::fmt;

/// A resolved identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (primary gid first).
    pub groups: Vec<u32>,
    /// Home directory from passwd, if the user is listed.
    pub home: Option<String>,
}

impl Ident {
    /// Root, the identity of an exec without `user`.
    pub fn root() -> Ident {
        Ident {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: Some("/root".into()),
        }
    }
}

/// Why a `user` string does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The user part of the spec (before any `:`) is empty.
    EmptyUser(String),
    /// The group part of the spec (after the `:`) is empty.
    EmptyGroup(String),
    /// A user name that `/etc/passwd` does not list.
    UnknownUser(String),
    /// A user that is neither listed nor a number.
    BadUid(String),
    /// A group name that `/etc/group` does not list.
    UnknownGroup(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyUser(spec) => write!(f, "user {spec:?}: empty user name"),
            Error::EmptyGroup(spec) => write!(f, "user {spec:?}: empty group name"),
            Error::UnknownUser(user) => write!(f, "user {user:?} not found in /etc/passwd"),
            Error::BadUid(user) => write!(f, "user {user:?}: bad uid"),
            Error::UnknownGroup(group) => write!(f, "group {group:?} not found in /etc/group"),
        }
    }
}

impl std::error::Error for Error {}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each well-formed group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `uid`, `uid:gid`, `name`, `name:group` (and mixes) like Docker does.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Ident, Error> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(Error::EmptyUser(spec.to_string()));
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| Error::UnknownUser(user.to_string()))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user.parse().map_err(|_| Error::BadUid(user.to_string()))?,
    };
    let gid = match grp {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some("") => return Err(Error::EmptyGroup(spec.to_string())),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| Error::UnknownGroup(g.to_string()))?,
        },
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(Ident {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.home.to_string()).filter(|h| !h.is_empty()),
    })
}

/// Reads the guest's files and resolves `spec`.
pub fn resolve_in_root(spec: &str) -> Result<Ident, Error> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\nstaff:x:50:\n";

    #[test]
    fn names_and_numbers() {
        let i = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!((i.uid, i.gid), (1000, 1000));
        assert_eq!(i.groups, [1000, 10]);
        assert_eq!(i.home.as_deref(), Some("/home/app"));

        let i = resolve("1000:staff", PASSWD, GROUP).unwrap();
        assert_eq!((i.uid, i.gid), (1000, 50));

        let i = resolve("4242:4343", PASSWD, GROUP).unwrap();
        assert_eq!((i.uid, i.gid, i.home), (4242, 4343, None));

        let i = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((i.uid, i.gid), (4242, 0));
    }

    #[test]
    fn errors_name_what_is_missing() {
        assert!(resolve("ghost", PASSWD, GROUP)
            .unwrap_err()
            .to_string()
            .contains("ghost"));
        assert!(resolve("app:ghosts", PASSWD, GROUP)
            .unwrap_err()
            .to_string()
            .contains("ghosts"));
        assert!(resolve("", PASSWD, GROUP).is_err());
        assert!(resolve("app:", PASSWD, GROUP).is_err());
    }
}
