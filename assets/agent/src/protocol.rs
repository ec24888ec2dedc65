//! Wire protocol 5: frame kinds, limits and the JSON bodies of REQUEST and CONTROL frames.
//!
//! This is the protocol supermachine 0.7.108's host code speaks (its "protocol 5"); `PROTOCOL.md`
//! next to this crate is the normative description and marks this project's compatible
//! extensions. Data frames (stdin/stdout/stderr) carry raw bytes; REQUEST and CONTROL carry
//! UTF-8 JSON; file contents travel base64-encoded inside CONTROL JSON ([`crate::base64`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Protocol version this agent reports in `probe` (supermachine requires at least 5).
pub const PROTOCOL_VERSION: u32 = 5;

/// The AF_VSOCK port the agent listens on (supermachine's `DEFAULT_EXEC_GUEST_PORT`).
pub const DEFAULT_PORT: u32 = 1028;

/// Largest accepted payload length of one frame, 16 MiB, in both directions.
pub const MAX_FRAME_LEN: u32 = 16 << 20;

/// Largest single `write` the agent makes to its connection (header and payload bytes alike).
///
/// Why 16 KiB: Linux 6.12 builds non-linear socket buffers for virtio-vsock packets above
/// ~32 KiB, whose data spans several virtqueue descriptors; vhost-device-vsock 0.3.0 rejects
/// such packets (`DescriptorLengthTooSmall`) without completing them, and the stream stalls.
/// Frames may be up to [`MAX_FRAME_LEN`] long; the agent just writes them in pieces.
pub const MAX_WRITE: usize = 16 * 1024;

/// Largest payload the agent puts in one STDOUT/STDERR frame: header and payload then fit in
/// one [`MAX_WRITE`].
pub const MAX_DATA_CHUNK: usize = MAX_WRITE - crate::codec::HEADER_LEN;

/// Raw bytes per `write_file_chunk` / `read_file_chunk` (supermachine's own chunk size): the
/// base64 of 8 MiB, 10.7 MiB, stays under [`MAX_FRAME_LEN`].
pub const FILE_CHUNK: u64 = 8 << 20;

/// Console line prefix the agent prints once it accepts connections (`… port 1028`).
pub const READY_LINE: &str = "supermachine-agent: listening on AF_VSOCK port";

/// File the agent creates once it accepts connections (init-oci waits for it).
pub const READY_FILE: &str = "/run/supermachine-agent-ready";

/// File holding the workload's pid, written by whoever started it (supermachine's x86
/// `/.supermachine/launch`, or init-oci); `signal` acts on that pid.
pub const WORKLOAD_PID_FILE: &str = "/run/supermachine-workload.pid";

/// The error text of a CONTROL action the agent does not know; supermachine maps exactly this
/// string to "rebake the image".
pub const UNKNOWN_ACTION: &str = "unknown CONTROL action";

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Host → agent: bytes for the exec's stdin; an empty payload is EOF.
    Stdin = 0,
    /// Agent → host: bytes the exec wrote to stdout (or its tty).
    Stdout = 1,
    /// Agent → host: bytes the exec wrote to stderr.
    Stderr = 2,
    /// Host → agent: [`WinSize`], `u16 BE cols, u16 BE rows`.
    Resize = 3,
    /// Host → agent: one byte, a signal number for the exec's process group.
    Signal = 4,
    /// Agent → host: [`ExitStatus`]; the last frame of an exec.
    Exit = 5,
    /// Agent → host: UTF-8 text; terminal, the host stops reading.
    Error = 6,
    /// Host → agent: JSON [`Control`]; the agent answers one CONTROL frame of ack JSON.
    Control = 0xfe,
    /// Host → agent: JSON [`ExecRequest`]; starts an exec session.
    Request = 0xff,
}

impl FrameKind {
    /// Decodes a kind byte; `None` for a byte this version does not know.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        use FrameKind::*;
        Some(match b {
            0 => Stdin,
            1 => Stdout,
            2 => Stderr,
            3 => Resize,
            4 => Signal,
            5 => Exit,
            6 => Error,
            0xfe => Control,
            0xff => Request,
            _ => return None,
        })
    }
}

/// How an exec ended: the payload of [`FrameKind::Exit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit status, or 128 + the signal that killed the process.
    pub code: u32,
    /// Peak resident set size of the process in KiB (0 when unknown).
    pub peak_rss_kib: u64,
}

impl ExitStatus {
    /// Encoded length: `u32 BE code` + `u64 BE peak RSS`.
    pub const LEN: usize = 12;

    /// The 12-byte payload.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.code.to_be_bytes());
        b[4..].copy_from_slice(&self.peak_rss_kib.to_be_bytes());
        b
    }

    /// Decodes a payload; the RSS is optional (4 bytes are enough), fewer than 4 is `None`.
    pub fn decode(p: &[u8]) -> Option<ExitStatus> {
        let code = u32::from_be_bytes(*p.first_chunk::<4>()?);
        let peak_rss_kib = p
            .get(4..12)
            .and_then(|r| r.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        Some(ExitStatus { code, peak_rss_kib })
    }

    /// The signal that killed the process, when `code` is above 128.
    pub fn signal(&self) -> Option<i32> {
        (self.code > 128 && self.code < 128 + 65).then(|| self.code as i32 - 128)
    }
}

/// A terminal size: the payload of [`FrameKind::Resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl WinSize {
    /// The 4-byte payload, `u16 BE cols, u16 BE rows`.
    pub fn encode(&self) -> [u8; 4] {
        let (c, r) = (self.cols.to_be_bytes(), self.rows.to_be_bytes());
        [c[0], c[1], r[0], r[1]]
    }

    /// Decodes a payload of exactly 4 bytes.
    pub fn decode(p: &[u8]) -> Option<WinSize> {
        let b: [u8; 4] = p.try_into().ok()?;
        Some(WinSize {
            cols: u16::from_be_bytes([b[0], b[1]]),
            rows: u16::from_be_bytes([b[2], b[3]]),
        })
    }
}

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
    /// `{"protocol":5}` plus this agent's [`ProbeInfo`] fields.
    Probe,
    /// `kill(pid, signum)` on the pid in [`WORKLOAD_PID_FILE`]; answers `{"pid":N}`.
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
        /// Bytes wanted; the agent may send fewer (at most [`FILE_CHUNK`] × 1.5).
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
    /// Extension: report [`ParkStatus`].
    SmparkStatus,
    /// Extension: answer, sync, then power off or reboot.
    Power {
        /// What to do.
        #[serde(rename = "power")]
        what: PowerAction,
    },
    /// Extension: the workload's [`WorkloadState`].
    WorkloadStatus,
    /// Extension: wait until the workload has exited, then its [`WorkloadState`].
    WorkloadWait,
}

/// Every `action` string [`Control`] knows; anything else is [`UNKNOWN_ACTION`].
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

/// Machine-readable class of a failure: the `code` extension beside `error` in an ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or its JSON could not be decoded.
    BadFrame,
    /// A length field exceeded [`MAX_FRAME_LEN`]; the connection is closed.
    FrameTooLarge,
    /// The frame kind is not valid at this point of the conversation.
    UnexpectedFrame,
    /// The CONTROL action is unknown.
    UnknownAction,
    /// The request was well-formed but its arguments are invalid.
    InvalidArgument,
    /// A path or binary does not exist.
    NotFound,
    /// The operating system refused the operation for lack of permission.
    PermissionDenied,
    /// A size limit was exceeded (file larger than `max_bytes`, ...).
    TooLarge,
    /// No space left on the guest filesystem.
    NoSpace,
    /// There is no workload pid recorded.
    NoWorkload,
    /// The agent is at its connection limit.
    Busy,
    /// Any other operating-system error; the message names the operation and the cause.
    Io,
    /// The guest lacks what the operation needs (for `smpark_park`: the module).
    Unsupported,
    /// The operation did not complete in time.
    TimedOut,
}

/// A failed CONTROL action, as its ack carries it: `{"ok":false,"error":…,"code":…}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckError {
    /// Always false.
    pub ok: bool,
    /// Human-readable text naming the action, the path and the cause.
    pub error: String,
    /// Extension: the error class (absent from other agents' acks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

/// A successful ack: `{"ok":true}` plus the fields of `T`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack<T> {
    /// Always true.
    pub ok: bool,
    /// The action's answer.
    #[serde(flatten)]
    pub body: T,
}

/// An answer with no fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Answer to `signal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signalled {
    /// The pid signalled.
    pub pid: i32,
}

/// Answer to `read_file`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    /// Contents, base64.
    pub data_b64: String,
}

/// Answer to `read_file_chunk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    /// The bytes from `offset`, base64.
    pub data_b64: String,
    /// The file's whole length.
    pub total_len: u64,
}

/// Answer to `smpark_park`, `smpark_unpark` and `smpark_status` (fields are an extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkStatus {
    /// Whether smpark.ko is loaded (`/dev/smpark` exists).
    pub module_loaded: bool,
    /// Online CPUs.
    pub online: Vec<u32>,
    /// CPUs in smpark's parked loop now.
    pub parked: Vec<u32>,
    /// The CPU that is never parked.
    pub primary: u32,
    /// Successful parks since the module was loaded.
    pub parks: u64,
}

/// Answer to `probe`: `protocol` is the contract; the rest are extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Agent crate version.
    #[serde(default)]
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    #[serde(default)]
    pub kernel_release: String,
    /// Guest uptime in milliseconds.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Online CPUs.
    #[serde(default)]
    pub cpus_online: u32,
    /// MemTotal in KiB.
    #[serde(default)]
    pub mem_total_kib: u64,
    /// MemAvailable in KiB.
    #[serde(default)]
    pub mem_available_kib: u64,
    /// The agent's own pid (1 in an x86 guest).
    #[serde(default)]
    pub pid: i32,
    /// Open file descriptors of the agent.
    #[serde(default)]
    pub open_fds: u32,
    /// Threads of the agent.
    #[serde(default)]
    pub threads: u32,
    /// Zombie children of the agent not yet reaped.
    #[serde(default)]
    pub zombies: u32,
    /// Resident set size of the agent in KiB.
    #[serde(default)]
    pub rss_kib: u64,
    /// Guest wall clock, seconds since the Unix epoch.
    #[serde(default)]
    pub unix_secs: i64,
}

/// Answer to `workload_status` and `workload_wait`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadState {
    /// Pid from [`WORKLOAD_PID_FILE`].
    pub pid: i32,
    /// Whether it still runs.
    pub running: bool,
    /// Its exit code (or 128 + signal), when the agent reaped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_kinds_round_trip() {
        for b in 0..=255u8 {
            if let Some(t) = FrameKind::from_u8(b) {
                assert_eq!(t as u8, b);
            }
        }
        assert_eq!(FrameKind::from_u8(0x7f), None);
    }

    #[test]
    fn exit_payload_is_supermachines() {
        let e = ExitStatus {
            code: 0,
            peak_rss_kib: 0x610,
        };
        assert_eq!(e.encode(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x06, 0x10]);
        assert_eq!(ExitStatus::decode(&e.encode()), Some(e));
        assert_eq!(
            ExitStatus::decode(&[0, 0, 0, 143]).map(|e| e.signal()),
            Some(Some(15))
        );
        assert_eq!(ExitStatus::decode(&[0, 0, 1]), None);
        let ws = WinSize {
            cols: 120,
            rows: 40,
        };
        assert_eq!(ws.encode(), [0, 120, 0, 40]);
        assert_eq!(WinSize::decode(&ws.encode()), Some(ws));
        assert_eq!(WinSize::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn request_json_shape() {
        let mut r = ExecRequest::new(["true"]);
        r.env.insert("A".into(), "1".into());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"argv":["true"],"env":{"A":"1"},"tty":false}"#
        );
        let r: ExecRequest =
            serde_json::from_str(r#"{"argv":["x"],"tty":true,"cols":120,"rows":40,"extra":1}"#)
                .unwrap();
        assert_eq!(
            r.winsize(),
            WinSize {
                cols: 120,
                rows: 40
            }
        );
    }

    #[test]
    fn control_parse_tells_unknown_from_malformed() {
        assert_eq!(
            Control::parse(br#"{"action":"probe","x":1}"#),
            Ok(Control::Probe)
        );
        assert_eq!(
            Control::parse(br#"{"action":"signal","signum":15}"#),
            Ok(Control::Signal { signum: 15 })
        );
        let e = Control::parse(br#"{"action":"frobnicate"}"#).unwrap_err();
        assert_eq!(e.to_string(), UNKNOWN_ACTION);
        let e = Control::parse(br#"{"action":"sync_time"}"#).unwrap_err();
        assert!(
            e.to_string().contains("missing field `host_unix_ns`"),
            "{e}"
        );
        let e = Control::parse(br#"{"nope":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("CONTROL JSON parse:"), "{e}");
        // Every listed action parses with its fields, so the list and the enum agree.
        for a in ACTIONS {
            let e = Control::parse(format!(r#"{{"action":"{a}"}}"#).as_bytes());
            assert!(
                !matches!(e, Err(ControlParseError::UnknownAction(_))),
                "{a}"
            );
        }
    }

    #[test]
    fn acks_flatten_their_body() {
        let a = Ack {
            ok: true,
            body: Signalled { pid: 7 },
        };
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"ok":true,"pid":7}"#);
        let e = AckError {
            ok: false,
            error: UNKNOWN_ACTION.into(),
            code: Some(ErrorCode::UnknownAction),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ok":false,"error":"unknown CONTROL action","code":"unknown_action"}"#
        );
    }
}
