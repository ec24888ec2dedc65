//! The files the agent and init-oci (and the host, through the agent) pass each other.

/// The file the agent writes once it listens; init-oci waits for it before starting the
/// workload.
pub const AGENT_READY: &str = "/run/supermachine-agent-ready";

/// The workload's pid, written by its supervisor (init-oci, or the agent's own workload
/// runner) and read by the agent's `signal` control message.
pub const WORKLOAD_PID: &str = "/run/supermachine-workload.pid";
