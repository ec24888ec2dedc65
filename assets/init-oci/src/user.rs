//! The workload's identity from `/.supermachine-user` and the image's `/etc/passwd` and
//! `/etc/group` (no NSS: the image's files are the only truth about its users).
//!
//! Resolution follows supermachine's init: a numeric user is taken as is (its passwd entry,
//! if any, gives the primary group and name); a user name must be in `/etc/passwd`; a group
//! after `:` overrides the primary group and, when it is a name, must be in `/etc/group`. A
//! user with a name also gets the supplementary groups that list it (`initgroups`).
//! Pure functions over the files' text, unit-tested and fuzzed
//! (`fuzz/fuzz_targets/init_files.rs`).

use crate::error::{Error, Result};

/// The identity the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary group first when the user has a name; empty
    /// otherwise).
    pub groups: Vec<u32>,
}

/// `(name, uid, gid)` of each well-formed passwd line.
fn passwd(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// `(name, gid, members)` of each well-formed group line.
fn groups(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` against the image's `passwd` and `group` texts (empty when missing).
pub fn resolve(spec: &str, passwd_text: &str, group_text: &str) -> Result<Identity> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, name) = if is_number(user) {
        let uid: u32 = user
            .parse()
            .map_err(|_| Error::UnknownUser(user.to_string()))?;
        match passwd(passwd_text).find(|e| e.1 == uid) {
            Some((name, _, gid)) => (uid, gid, Some(name)),
            None => (uid, 0, None),
        }
    } else {
        let (name, uid, gid) = passwd(passwd_text)
            .find(|e| e.0 == user)
            .ok_or_else(|| Error::UnknownUser(user.to_string()))?;
        (uid, gid, Some(name))
    };
    match group.filter(|g| !g.is_empty()) {
        Some(g) if is_number(g) => {
            gid = g.parse().map_err(|_| Error::UnknownGroup(g.to_string()))?;
        }
        Some(g) => {
            gid = groups(group_text)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| Error::UnknownGroup(g.to_string()))?;
        }
        None => {}
    }
    let groups = match name {
        Some(name) => {
            let mut list = vec![gid];
            for (_, g, members) in groups(group_text) {
                if members.contains(&name) && !list.contains(&g) {
                    list.push(g);
                }
            }
            list
        }
        None => Vec::new(),
    };
    Ok(Identity { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n# c\nbad\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\nstaff:x:50:\n";

    fn id(spec: &str) -> Result<Identity> {
        resolve(spec, PASSWD, GROUP)
    }

    #[test]
    fn names_numbers_and_groups() {
        assert_eq!(
            id("app").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10]
            }
        );
        assert_eq!(id("1000").unwrap().groups, vec![1000, 10]);
        assert_eq!(
            id("4242").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            id("app:staff").unwrap(),
            Identity {
                uid: 1000,
                gid: 50,
                groups: vec![50, 10]
            }
        );
        assert_eq!(id("4242:7").unwrap().gid, 7);
        assert_eq!(id("root:").unwrap().gid, 0);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(id("nosuch"), Err(Error::UnknownUser(u)) if u == "nosuch"));
        assert!(matches!(id("app:nosuch"), Err(Error::UnknownGroup(g)) if g == "nosuch"));
        assert!(matches!(id(""), Err(Error::UnknownUser(_))));
        assert!(matches!(id("99999999999"), Err(Error::UnknownUser(_))));
        assert!(resolve("app", "", "").is_err());
    }
}
