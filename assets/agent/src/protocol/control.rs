//! The JSON bodies of CONTROL frames: every action, its name, and how an unknown one is refused.

use serde::{Deserialize, Serialize};

use super::UNKNOWN_ACTION;

/// Power-state change of the `power` extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Sync and power off (on x86 `-M microvm` without ACPI this halts; use `reboot` there
    /// together with the VMM's `-no-reboot`).
    Poweroff,
    /// Sync and reboot.
    Reboot,
}

/// The CONTROL frame, tagged by `action`. Unknown extra fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Control {
    /// `{"protocol":5}` plus this agent's [`ProbeInfo`](super::ProbeInfo) fields.
    Probe,
    /// `kill(pid, signum)` on the pid in [`WORKLOAD_PID_FILE`](super::WORKLOAD_PID_FILE); answers `{"pid":N}`.
    Signal {
        /// Signal number.
        signum: i32,
    },
    /// Write a whole file atomically (temp file in the same directory, fsync, rename).
    WriteFile {
        /// Path in the guest (relative: to the agent's cwd). Parents must exist.
        path: String,
        /// Contents, base64.
        data_b64: String,
        /// Permission bits; 0644 when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// One piece of a large file, in order; the file appears atomically after `last`.
    WriteFileChunk {
        /// Path in the guest.
        path: String,
        /// Where this piece goes; must equal the bytes received so far for `token`.
        offset: u64,
        /// The piece, base64.
        data_b64: String,
        /// This is the final piece: apply `mode` and rename onto `path`.
        #[serde(default)]
        last: bool,
        /// Names this transfer, so two transfers to one path never share a partial file.
        token: String,
        /// Permission bits, used with `last`; 0644 when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Read a whole regular file: `{"data_b64"}`.
    ReadFile {
        /// Path in the guest.
        path: String,
        /// Refuse files larger than this.
        max_bytes: u64,
    },
    /// Read part of a regular file: `{"data_b64","total_len"}`.
    ReadFileChunk {
        /// Path in the guest.
        path: String,
        /// First byte.
        offset: u64,
        /// Bytes wanted. The agent sends `min(len, 12 MiB)` bytes, fewer only at the end of the
        /// file (which `total_len` then marks); our client asks for [`FILE_CHUNK`](super::FILE_CHUNK).
        len: u64,
        /// Refuse files larger than this.
        max_bytes: u64,
    },
    /// `sync(2)`.
    Sync,
    /// Set CLOCK_REALTIME (after a snapshot restore).
    SyncTime {
        /// Host wall clock, nanoseconds since the Unix epoch.
        host_unix_ns: u64,
    },
    /// Sync, then drop the page, dentry and inode caches.
    DropVfsCaches,
    /// Park every online CPU but the primary (smpark.ko) for a multi-vCPU snapshot.
    SmparkPark,
    /// Release the parked CPUs.
    SmparkUnpark,
    /// Extension: report [`ParkStatus`](super::ParkStatus).
    SmparkStatus,
    /// Extension: answer, sync, then power off or reboot.
    Power {
        /// What to do.
        #[serde(rename = "power")]
        what: PowerAction,
    },
    /// Extension: the workload's [`WorkloadState`](super::WorkloadState).
    WorkloadStatus,
    /// Extension: wait until the workload has exited, then its [`WorkloadState`](super::WorkloadState).
    WorkloadWait,
}

/// Every `action` string [`Control`](super::Control) knows; anything else is [`UNKNOWN_ACTION`].
pub const ACTIONS: &[&str] = &[
    "probe",
    "signal",
    "write_file",
    "write_file_chunk",
    "read_file",
    "read_file_chunk",
    "sync",
    "sync_time",
    "drop_vfs_caches",
    "smpark_park",
    "smpark_unpark",
    "smpark_status",
    "power",
    "workload_status",
    "workload_wait",
];

/// Why a CONTROL payload was refused, as the ack's `error` text says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlParseError {
    /// A well-formed action this agent does not know.
    UnknownAction(String),
    /// Not JSON, no `action`, or fields of the wrong shape.
    Json(String),
}

impl std::fmt::Display for ControlParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlParseError::UnknownAction(_) => f.write_str(UNKNOWN_ACTION),
            ControlParseError::Json(e) => write!(f, "CONTROL JSON parse: {e}"),
        }
    }
}

impl std::error::Error for ControlParseError {}

impl Control {
    /// Parses a CONTROL payload, telling an unknown action from malformed JSON.
    pub fn parse(payload: &[u8]) -> Result<Control, ControlParseError> {
        serde_json::from_slice(payload).map_err(|e| {
            let action = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("action")?.as_str().map(str::to_owned));
            match action {
                Some(a) if !ACTIONS.contains(&a.as_str()) => ControlParseError::UnknownAction(a),
                _ => ControlParseError::Json(e.to_string()),
            }
        })
    }
}
