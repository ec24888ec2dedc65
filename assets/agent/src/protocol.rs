//! Wire protocol: frame types, limits and the JSON bodies of control frames.
//!
//! `PROTOCOL.md` next to this crate is the normative description; this module is its Rust
//! form. Control frames carry UTF-8 JSON; data frames (stdin/stdout/stderr/file data) carry
//! raw bytes, so binary data never goes through JSON.

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The AF_VSOCK port the agent listens on (the convention of Kata and Apple's vminitd).
pub const DEFAULT_PORT: u32 = 1024;

/// Largest accepted value of a frame's length field (type byte + payload), 1 MiB.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Largest payload a sender puts in one data frame: a whole frame (header included) is then
/// at most 16 KiB and goes out in one `write`.
///
/// Why 16 KiB: Linux 6.12 builds non-linear socket buffers for virtio-vsock packets above
/// ~32 KiB, whose data spans several virtqueue descriptors; vhost-device-vsock 0.3.0 rejects
/// such packets (`DescriptorLengthTooSmall`) without completing them, and the stream stalls.
/// Writes of at most 16 KiB keep every packet in one descriptor, on every backend.
pub const MAX_DATA_CHUNK: usize = 16 * 1024 - crate::codec::HEADER_LEN;

/// Console line the agent prints once it accepts connections.
pub const READY_LINE: &str = "supermachine-agent: ready";

/// File the agent creates once it accepts connections.
pub const READY_MARKER: &str = "/run/supermachine-agent.ready";

/// Default location of the workload (image config) file inside the guest.
pub const WORKLOAD_CONFIG: &str = "/etc/supermachine/workload.json";

/// Features this agent build offers, sent in [`HelloOk::features`].
pub const FEATURES: &[&str] = &[
    "exec", "tty", "signal", "resize", "files", "probe", "time", "sync", "power", "workload",
];

/// The type byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client → agent, JSON [`Hello`]. Must be the first frame of a connection.
    Hello = 0x01,
    /// Agent → client, JSON [`HelloOk`].
    HelloOk = 0x02,
    /// Agent → client, JSON [`ErrorBody`]. Answers a failed request.
    Error = 0x03,
    /// Client → agent, JSON [`Request`].
    Request = 0x10,
    /// Agent → client, JSON; its shape depends on the request (see `PROTOCOL.md`).
    Response = 0x11,
    /// Client → agent, raw bytes for the exec's stdin. Empty payload closes stdin.
    Stdin = 0x20,
    /// Agent → client, raw bytes the exec wrote to stdout (or to its tty).
    Stdout = 0x21,
    /// Agent → client, raw bytes the exec wrote to stderr.
    Stderr = 0x22,
    /// Agent → client, JSON [`ExitStatus`]. The last frame of an exec.
    Exit = 0x23,
    /// Client → agent, JSON [`SignalBody`]: signal the running exec's process group.
    Signal = 0x24,
    /// Client → agent, JSON [`TtySize`]: resize the running exec's tty.
    Resize = 0x25,
    /// Either way, raw file bytes of a write/read file transfer. Empty payload ends it.
    Data = 0x30,
}

impl FrameType {
    /// Decodes a type byte; `None` for a byte this version does not know.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => HelloOk,
            0x03 => Error,
            0x10 => Request,
            0x11 => Response,
            0x20 => Stdin,
            0x21 => Stdout,
            0x22 => Stderr,
            0x23 => Exit,
            0x24 => Signal,
            0x25 => Resize,
            0x30 => Data,
            _ => return None,
        })
    }
}

/// Body of [`FrameType::Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks; must equal the agent's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Free-form client name, logged by the agent.
    #[serde(default)]
    pub client: String,
}

/// Body of [`FrameType::HelloOk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// Protocol version the agent speaks.
    pub protocol: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Operations this agent offers (see [`FEATURES`]).
    pub features: Vec<String>,
}

/// Machine-readable error class of an [`ErrorBody`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded (bad JSON, invalid UTF-8, wrong shape).
    BadFrame,
    /// The length field exceeded [`MAX_FRAME_LEN`] or was zero; the connection is closed.
    FrameTooLarge,
    /// The type byte is unknown or not valid at this point of the conversation.
    UnexpectedFrame,
    /// The client's protocol version differs from the agent's; the connection is closed.
    UnsupportedProtocol,
    /// The request was well-formed but its arguments are invalid.
    InvalidArgument,
    /// A path or binary does not exist.
    NotFound,
    /// The operating system refused the operation for lack of permission.
    PermissionDenied,
    /// A size limit was exceeded (file larger than `max_size`, ...).
    TooLarge,
    /// No space left on the guest filesystem.
    NoSpace,
    /// There is no workload, or it has not been started.
    NoWorkload,
    /// The agent is at its connection limit.
    Busy,
    /// Any other operating-system error; `message` names the operation and the cause.
    Io,
    /// The guest lacks what the operation needs (for `park`: the smpark module).
    Unsupported,
    /// The operation did not complete in time (for `park`: a CPU did not park).
    TimedOut,
}

/// Body of [`FrameType::Error`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Error class.
    pub code: ErrorCode,
    /// Human-readable description naming the operation, the path and the cause.
    pub message: String,
}

/// Terminal size of a tty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Body of [`FrameType::Signal`] and of the `workload_signal` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalBody {
    /// Signal number (Linux numbering, e.g. 15 for SIGTERM).
    pub signal: i32,
}

/// How a process ended; body of [`FrameType::Exit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Terminating signal, when a signal killed the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// True when the agent killed the process because its `timeout_ms` expired.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// Shell-style code: the exit code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// The `exec` request: run a program in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`. No shell.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to (and overriding) the default environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; defaults to the user's home, else `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `uid`, `uid:gid`, `name` or `name:group`, resolved from the guest's own
    /// `/etc/passwd` and `/etc/group`. Defaults to root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a new pseudo-terminal of this initial size (stderr then joins stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// When true the client streams stdin frames; when false stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group with SIGKILL after this many milliseconds.
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
}

/// Power-state change requested by [`Request::Power`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Sync and power off (on x86 `-M microvm` without ACPI this halts; use `reboot` there
    /// together with the VMM's `-no-reboot`).
    Poweroff,
    /// Sync and reboot.
    Reboot,
}

/// Body of [`FrameType::Request`], tagged by `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a program; see [`ExecRequest`].
    Exec(ExecRequest),
    /// Report [`ProbeInfo`].
    Probe,
    /// Set the guest wall clock (CLOCK_REALTIME).
    SetTime {
        /// Seconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds, below 1e9.
        nanos: u32,
    },
    /// `sync(2)`.
    Sync,
    /// Sync, then drop the page, dentry and inode caches.
    DropCaches,
    /// Answer, sync, then power off or reboot the guest.
    Power {
        /// What to do.
        action: PowerAction,
    },
    /// Write a file atomically: the client follows with [`FrameType::Data`] frames and an empty
    /// one; the agent writes a temp file in the same directory, fsyncs and renames it.
    WriteFile {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits of the new file.
        mode: u32,
    },
    /// Read a file: the agent answers [`FileInfo`], then data frames and an empty one.
    ReadFile {
        /// Absolute path in the guest.
        path: String,
        /// Refuse files larger than this many bytes.
        max_size: u64,
    },
    /// Report the workload's [`WorkloadState`].
    WorkloadStatus,
    /// Wait until the workload exits, then report its [`WorkloadState`].
    WorkloadWait,
    /// Send a signal to the workload.
    WorkloadSignal(SignalBody),
    /// Park every online CPU but the primary (smpark.ko), for a multi-vCPU snapshot; answers
    /// [`ParkStatus`] once all of them are parked. A no-op on one CPU.
    Park,
    /// Release the parked CPUs; answers [`ParkStatus`] once they all run again.
    Unpark,
    /// Report [`ParkStatus`].
    ParkStatus,
}

/// Answer to [`Request::Park`], [`Request::Unpark`] and [`Request::ParkStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkStatus {
    /// Whether smpark.ko is loaded (`/dev/smpark` exists). Without it only one CPU is
    /// supported: park and unpark are then no-ops.
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

/// Answer to [`Request::Exec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    /// Guest pid of the started process.
    pub pid: i32,
}

/// Answer to [`Request::Probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Agent crate version.
    pub agent_version: String,
    /// Protocol version.
    pub protocol: u32,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Guest uptime in milliseconds.
    pub uptime_ms: u64,
    /// Online CPUs.
    pub cpus_online: u32,
    /// MemTotal in KiB.
    pub mem_total_kib: u64,
    /// MemAvailable in KiB.
    pub mem_available_kib: u64,
    /// The agent's own pid (1 in a guest).
    pub pid: i32,
    /// Open file descriptors of the agent.
    pub open_fds: u32,
    /// Threads of the agent.
    pub threads: u32,
    /// Zombie children of the agent not yet reaped.
    pub zombies: u32,
    /// Resident set size of the agent in KiB.
    pub rss_kib: u64,
    /// Guest wall clock, seconds since the Unix epoch.
    pub unix_secs: i64,
}

/// Answer to [`Request::ReadFile`] (before the data) and [`Request::WriteFile`] (after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// File size in bytes.
    pub size: u64,
}

/// Answer to the workload requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadState {
    /// Pid of the workload's main process, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// How it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
}

/// An empty JSON object, the answer to requests with nothing to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The workload file: the subset of an OCI image config (`config` object) the agent honours.
/// Field names are the OCI ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`, `KEY=VALUE` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

impl ImageConfig {
    /// The exec the workload becomes: `Entrypoint ++ Cmd`, with env, cwd and user applied.
    /// `None` when both are empty.
    pub fn to_exec(&self) -> Option<ExecRequest> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.clone().unwrap_or_default());
        if argv.is_empty() {
            return None;
        }
        Some(ExecRequest {
            argv,
            env: self.env.clone().unwrap_or_default(),
            cwd: self.working_dir.clone().filter(|s| !s.is_empty()),
            user: self.user.clone().filter(|s| !s.is_empty()),
            ..ExecRequest::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_types_round_trip() {
        for b in 0..=255u8 {
            if let Some(t) = FrameType::from_u8(b) {
                assert_eq!(t as u8, b);
            }
        }
        assert_eq!(FrameType::from_u8(0x7f), None);
    }

    #[test]
    fn request_json_shape_is_the_documented_one() {
        let r = Request::Exec(ExecRequest::new(["true"]));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"exec","argv":["true"],"env":[],"stdin":false}"#
        );
        let r: Request = serde_json::from_str(r#"{"op":"workload_signal","signal":15}"#).unwrap();
        assert_eq!(r, Request::WorkloadSignal(SignalBody { signal: 15 }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }

    #[test]
    fn image_config_joins_entrypoint_and_cmd() {
        let c: ImageConfig = serde_json::from_str(
            r#"{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["A=1"],"WorkingDir":"/tmp"}"#,
        )
        .unwrap();
        let e = c.to_exec().unwrap();
        assert_eq!(e.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(e.cwd.as_deref(), Some("/tmp"));
        assert!(ImageConfig::default().to_exec().is_none());
    }

    #[test]
    fn shell_code() {
        let s = ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        };
        assert_eq!(s.shell_code(), 137);
    }
}
