//! The JSON body of a REQUEST frame: what to run, and the files to stage before it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WinSize;

/// A file written before the exec starts (REQUEST `stage_files`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFile {
    /// Path in the guest; parent directories must exist.
    pub path: String,
    /// Contents, standard base64 with padding.
    pub data_b64: String,
    /// Permission bits; 0644 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// The REQUEST frame: run a program (and a `&&` chain after it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` without `/` is looked up in `PATH`. No shell.
    pub argv: Vec<String>,
    /// Variables added to (and overriding) the default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; when absent the agent's own (`/` in a guest), or with `user` that
    /// user's home. A failed chdir exits 127.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run on a new pseudo-terminal; stderr then joins stdout.
    #[serde(default)]
    pub tty: bool,
    /// Initial tty columns (with `rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// Initial tty rows (with `cols`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Files written atomically before `argv` starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_files: Vec<StageFile>,
    /// Programs run after `argv`, each only if the previous one exited 0 (`&&`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Vec<String>>,
    /// Extension: `uid`, `uid:gid`, `name` or `name:group` from the guest's own
    /// `/etc/passwd` and `/etc/group`. Root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extension: kill the process group with SIGKILL after this many milliseconds
    /// (EXIT then carries 137).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl ExecRequest {
    /// An exec of `argv` with every other field at its default.
    pub fn new<I, S>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }

    /// The initial tty size: the request's, else 80×24.
    pub fn winsize(&self) -> WinSize {
        WinSize {
            cols: self.cols.filter(|&c| c > 0).unwrap_or(80),
            rows: self.rows.filter(|&r| r > 0).unwrap_or(24),
        }
    }
}
