//! The `/.supermachine-*` files of the bake's delta layer, parsed. Pure functions over the
//! files' bytes, unit-tested here and fuzzed by `fuzz/fuzz_targets/init_files.rs`.
//!
//! | file | format (as supermachine's bake writes it) | when missing or bad |
//! |---|---|---|
//! | `/.supermachine-cmd` | the workload's argv, one token per line; spaces and tabs at a line's start are dropped, empty lines skipped; at most [`MAX_TOKENS`] tokens from the first [`MAX_CMD_BYTES`] bytes | `/bin/sh` |
//! | `/.supermachine-workdir` | one path | stay in `/` |
//! | `/.supermachine-user` | `user[:group]`, names or numbers | stay root |
//! | `/.supermachine-hostname` | one name | the kernel's default |
//! | `/.supermachine-volumes` | one guest path per line, at most [`MAX_VOLUMES`] | none |
//! | `/.supermachine-virtiofs-binds` | `TAG<TAB>/guest/path` per line | none |
//!
//! Trailing whitespace (newline included) is trimmed from the one-value files.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::error::{Error, Result};

/// The workload's command file.
pub const CMD: &str = "/.supermachine-cmd";
/// The workload's working directory.
pub const WORKDIR: &str = "/.supermachine-workdir";
/// The workload's user.
pub const USER: &str = "/.supermachine-user";
/// The guest's hostname.
pub const HOSTNAME: &str = "/.supermachine-hostname";
/// Volume mount points.
pub const VOLUMES: &str = "/.supermachine-volumes";
/// virtio-fs shares and where they go.
pub const VIRTIOFS_BINDS: &str = "/.supermachine-virtiofs-binds";

/// supermachine's init has 64 argv slots, one of them for the terminating null.
pub const MAX_TOKENS: usize = 63;
/// The command file is read up to this many bytes (supermachine's `ARG_BUF - 1`).
pub const MAX_CMD_BYTES: usize = 65535;
/// Volumes beyond this many are ignored (supermachine's limit).
pub const MAX_VOLUMES: usize = 16;
/// The fallback workload.
pub const FALLBACK_SHELL: &str = "/bin/sh";

/// The workload's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// argv; `argv[0]` is resolved through `PATH` when it has no `/`.
    pub argv: Vec<OsString>,
    /// Tokens (or bytes, as tokens cut short) that did not fit and were left out.
    pub dropped: usize,
}

impl Command {
    /// `/bin/sh`, what runs when the command file is missing or unusable.
    pub fn fallback() -> Command {
        Command {
            argv: vec![OsString::from(FALLBACK_SHELL)],
            dropped: 0,
        }
    }
}

fn format(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Format {
        what,
        reason: reason.into(),
    }
}

/// Parses `/.supermachine-cmd`. An error means: use [`Command::fallback`].
pub fn parse_cmd(bytes: &[u8]) -> Result<Command> {
    let (bytes, cut) = if bytes.len() > MAX_CMD_BYTES {
        (&bytes[..MAX_CMD_BYTES], 1)
    } else {
        (bytes, 0)
    };
    let mut argv = Vec::new();
    let mut dropped = 0;
    for line in bytes.split(|&b| b == b'\n' || b == b'\r') {
        let start = line
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(line.len());
        let token = &line[start..];
        if token.is_empty() {
            continue;
        }
        if token.contains(&0) {
            return Err(format(
                "/.supermachine-cmd",
                format!("token {} has a NUL byte", argv.len() + 1),
            ));
        }
        if argv.len() == MAX_TOKENS {
            dropped += 1;
        } else {
            argv.push(OsString::from_vec(token.to_vec()));
        }
    }
    if argv.is_empty() {
        return Err(format("/.supermachine-cmd", "no command in it"));
    }
    Ok(Command {
        argv,
        dropped: dropped + cut,
    })
}

/// The value of a one-value file: its text without trailing whitespace, `None` when that
/// leaves nothing.
pub fn one_value(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    (end > 0).then(|| &bytes[..end])
}

/// `/.supermachine-user`: `None` when empty (stay root).
pub fn parse_user(bytes: &[u8]) -> Result<Option<String>> {
    let Some(v) = one_value(bytes) else {
        return Ok(None);
    };
    let s = std::str::from_utf8(v).map_err(|_| format("/.supermachine-user", "not UTF-8"))?;
    if s.contains(['\n', '\0']) {
        return Err(format("/.supermachine-user", "more than one line"));
    }
    Ok(Some(s.to_string()))
}

/// `/.supermachine-hostname`: `None` when empty. The kernel takes at most 64 bytes.
pub fn parse_hostname(bytes: &[u8]) -> Result<Option<String>> {
    let Some(v) = one_value(bytes) else {
        return Ok(None);
    };
    let s = std::str::from_utf8(v).map_err(|_| format("/.supermachine-hostname", "not UTF-8"))?;
    if s.len() > 64 || s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format(
            "/.supermachine-hostname",
            format!("{s:?} is not a hostname (1..=64 bytes, no whitespace)"),
        ));
    }
    Ok(Some(s.to_string()))
}

/// `/.supermachine-workdir`: `None` when empty.
pub fn parse_workdir(bytes: &[u8]) -> Result<Option<OsString>> {
    let Some(v) = one_value(bytes) else {
        return Ok(None);
    };
    if v.contains(&0) {
        return Err(format("/.supermachine-workdir", "NUL byte in the path"));
    }
    Ok(Some(OsString::from_vec(v.to_vec())))
}

/// `/.supermachine-volumes`: the mount points, in disk order, and how many were ignored.
pub fn parse_volumes(text: &str) -> (Vec<String>, usize) {
    let all: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let ignored = all.len().saturating_sub(MAX_VOLUMES);
    (all.into_iter().take(MAX_VOLUMES).collect(), ignored)
}

/// One virtio-fs share to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The device's tag.
    pub tag: String,
    /// The absolute guest path.
    pub path: String,
}

/// `/.supermachine-virtiofs-binds`: the well-formed lines, and the others (to report).
pub fn parse_binds(text: &str) -> (Vec<Bind>, Vec<String>) {
    let (mut binds, mut bad) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        match line.split_once('\t') {
            Some((tag, path)) if !tag.is_empty() && path.starts_with('/') => binds.push(Bind {
                tag: tag.to_string(),
                path: path.to_string(),
            }),
            _ => bad.push(line.to_string()),
        }
    }
    (binds, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(c: &Command) -> Vec<String> {
        c.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn cmd_as_the_bake_writes_it() {
        let c = parse_cmd(b"/bin/sh\n-c\necho \"a b\"; exit 3\n").unwrap();
        assert_eq!(argv(&c), ["/bin/sh", "-c", "echo \"a b\"; exit 3"]);
        assert_eq!(c.dropped, 0);
        // Leading blanks dropped, trailing kept, CR ends a token, empty lines skipped.
        let c = parse_cmd(b"  sleep\r\n\n\t 1 \n").unwrap();
        assert_eq!(argv(&c), ["sleep", "1 "]);
    }

    #[test]
    fn cmd_limits_and_refusals() {
        let many: String = (0..70).map(|i| format!("t{i}\n")).collect();
        let c = parse_cmd(many.as_bytes()).unwrap();
        assert_eq!(c.argv.len(), MAX_TOKENS);
        assert_eq!(c.dropped, 70 - MAX_TOKENS);
        assert!(parse_cmd(b"").is_err());
        assert!(parse_cmd(b" \n\t\r\n").is_err());
        assert!(parse_cmd(b"sh\n-c\0x\n").is_err());
        // Not UTF-8 is still a path the kernel can try.
        assert_eq!(parse_cmd(b"\xff\xfe\n").unwrap().argv.len(), 1);
        let long = vec![b'a'; MAX_CMD_BYTES + 10];
        assert_eq!(parse_cmd(&long).unwrap().dropped, 1);
    }

    #[test]
    fn one_value_files() {
        assert_eq!(
            parse_user(b"app:wheel\n").unwrap().as_deref(),
            Some("app:wheel")
        );
        assert_eq!(parse_user(b" \n").unwrap(), None);
        assert!(parse_user(b"a\nb\n").is_err());
        assert_eq!(parse_hostname(b"box\r\n").unwrap().as_deref(), Some("box"));
        assert!(parse_hostname(b"two words").is_err());
        assert!(parse_hostname(&[b'h'; 65]).is_err());
        assert_eq!(
            parse_workdir(b"/home/app\n").unwrap(),
            Some(OsString::from("/home/app"))
        );
        assert_eq!(parse_workdir(b"").unwrap(), None);
    }

    #[test]
    fn volumes_and_binds() {
        let (v, ignored) = parse_volumes("/data\n\n/cache\n");
        assert_eq!(v, ["/data", "/cache"]);
        assert_eq!(ignored, 0);
        let many: String = (0..20).map(|i| format!("/v{i}\n")).collect();
        assert_eq!(parse_volumes(&many).1, 4);
        let (b, bad) = parse_binds("src\t/work\nnotab\n\t/x\ntag\trelative\n");
        assert_eq!(
            b,
            [Bind {
                tag: "src".into(),
                path: "/work".into()
            }]
        );
        assert_eq!(bad, ["notab", "\t/x", "tag\trelative"]);
    }
}
