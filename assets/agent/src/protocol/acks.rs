//! The JSON acks of CONTROL frames: the error ack with its [`ErrorCode`], and each action's
//! answer.

use serde::{Deserialize, Serialize};

/// Machine-readable class of a failure: the `code` extension beside `error` in an ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or its JSON could not be decoded.
    BadFrame,
    /// A length field exceeded [`MAX_FRAME_LEN`](super::MAX_FRAME_LEN); the connection is closed.
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

/// Empty exec cgroups the agent keeps between execs for the next ones, each with its
/// `cgroup.procs` open, so at most this many descriptors over its idle count
/// ([`ProbeInfo::open_fds`]) are by design, not leaks.
pub const EXEC_CGROUP_POOL: usize = 4;

/// Where the agent makes each exec's cgroup v2 (`<this>/N`), pooled ones included: guest root
/// sees them there and may remove them.
pub const EXEC_CGROUP_PARENT: &str = "/sys/fs/cgroup/supermachine-exec";

/// Answer to `probe`: `protocol` is the contract; the rest are extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Protocol version, [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
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
    /// Open file descriptors of the agent, counting the up to [`EXEC_CGROUP_POOL`] it keeps
    /// open between execs.
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
    /// Pid from [`WORKLOAD_PID_FILE`](super::WORKLOAD_PID_FILE).
    pub pid: i32,
    /// Whether it still runs.
    pub running: bool,
    /// Its exit code (or 128 + signal), when the agent reaped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
}
