//! init-oci's contract with supermachine's host and bake, in one place: where the bake puts
//! things, which vsock port serves the environment, what init-oci prints on the console for
//! the host to react to, and the exit statuses it records. The `/.supermachine-*` files and
//! their parsers are [`crate::files`]; the kernel command line is [`crate::cmdline`]; the env
//! document is [`crate::envjson`]. The host side (`xtask`'s rig) and the fuzz targets import
//! these instead of restating them.

/// The host's vsock CID.
pub const HOST_CID: u32 = 2;
/// The host's env service port (the env JSON document, [`crate::envjson`]).
pub const ENV_PORT: u32 = 1026;

/// The agent, from the bake's delta layer (init-oci starts it).
pub const AGENT: &str = "/supermachine-agent";
/// Where the bake puts smpark.ko in the initramfs.
pub const SMPARK_KO: &str = "/supermachine-smpark.ko";
/// The module's sysfs file with its state page's guest-physical address.
pub const STATE_GPA: &str = "/sys/kernel/smpark/state_gpa";
/// The environment variable that tells the re-executed init the kernel-cache pause is done.
pub const KCACHE_DONE: &str = "SUPERMACHINE_KCACHE_DONE";

/// The host's `--snapshot-at` trigger, printed on stdout once the agent is ready.
pub const HEARTBEAT: &str = "[SUPERMACHINE-INIT] heartbeat counter=1";
/// The pre-exec snapshot trigger, right before the workload is forked.
pub const PRE_EXEC: &str = "init-oci: workload-pre-exec";
/// Prefix of the smpark state page's address line (then `0x…`).
pub const SMPARK_GPA: &str = "[SUPERMACHINE-SMPARK] state_gpa=";
/// Prefix of the line printed once the workload is gone ([`parking_line`]).
pub const PARKING: &str = "init-oci: parking PID 1";

/// The line printed once the workload is gone with status `exit`.
pub fn parking_line(exit: i32) -> String {
    format!("{PARKING} (exit={exit})")
}

/// One of the two host handshakes on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// `supermachine.kcache=1`: before the pivot, for the kernel-boot cache snapshot.
    Kcache,
    /// `supermachine.pre_exec_sync=1`: before the workload's fork.
    PreExec,
}

impl Pause {
    /// Both pauses.
    pub const ALL: [Pause; 2] = [Pause::Kcache, Pause::PreExec];

    /// The marker's tag, `[SUPERMACHINE-KCACHE]` or `[SUPERMACHINE-PRE-EXEC]`.
    pub fn tag(self) -> &'static str {
        match self {
            Pause::Kcache => "[SUPERMACHINE-KCACHE]",
            Pause::PreExec => "[SUPERMACHINE-PRE-EXEC]",
        }
    }

    /// The line init-oci prints when it starts waiting (`<tag> ready`).
    pub fn ready_line(self) -> String {
        format!("{} ready", self.tag())
    }

    /// The line init-oci prints when the host answered with `token` (its line, without the
    /// line end).
    pub fn resumed_line(self, token: &str) -> String {
        format!("{} resumed token={token}", self.tag())
    }

    /// The token line supermachine's host pushes into the console's input in answer (any
    /// line ends the wait; these are the host's).
    pub fn token(self) -> &'static [u8] {
        match self {
            Pause::Kcache => b"R\n",
            Pause::PreExec => b"P\n",
        }
    }
}

/// Exit status recorded when the workload's user cannot be resolved.
pub const EXIT_BAD_USER: i32 = 126;
/// Exit status recorded when the workload cannot be executed.
pub const EXIT_NOT_RUN: i32 = 127;
