//! CONTROL requests: the generic [`Client::control`] and the typed calls built on it
//! (probe, time, CPU parking, sync, power, the workload).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::conn::{agent_error, frame_bytes};
use super::wait::Wait;
use super::{Client, Error, Result};
use crate::codec::CodecError;
use crate::protocol::*;

/// The largest ack of an action that carries no file data: a lying agent's 16 MiB ack of
/// `[0,0,…]` took the client to 280 MB when acks went through `serde_json::Value` (issue 22).
pub const MAX_CONTROL_ACK: usize = 64 << 10;

/// How long the ack of the CONTROL `payload` may be: a whole frame for the file reads, whose
/// acks carry up to 12 MiB of base64, and for actions this client has no type for (sent
/// through [`Client::control_json`]: their caller knows their size); else
/// [`MAX_CONTROL_ACK`].
fn ack_limit(action: &str) -> usize {
    let file_read = action == "read_file" || action == "read_file_chunk";
    if file_read || !ACTIONS.contains(&action) {
        MAX_FRAME_LEN as usize
    } else {
        MAX_CONTROL_ACK
    }
}

/// The `action` of a CONTROL payload, `?` when it has none.
fn action_of(payload: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Named {
        action: String,
    }
    serde_json::from_slice::<Named>(payload)
        .map(|n| n.action)
        .unwrap_or_else(|_| "?".into())
}

/// An ack straight into its typed struct (fields it does not name are skipped without being
/// built), or the agent's error; never through a `serde_json::Value`.
fn parse_ack<T: DeserializeOwned>(ack: &[u8], action: &str) -> Result<T> {
    let limit = ack_limit(action);
    if ack.len() > limit {
        return Err(Error::Protocol(format!(
            "{action}: an ack of {} bytes, above the {limit} this action's ack may have",
            ack.len()
        )));
    }
    #[derive(serde::Deserialize)]
    struct Verdict {
        ok: bool,
    }
    let verdict: Verdict = serde_json::from_slice(ack).map_err(|e| {
        Error::Protocol(if e.is_data() {
            format!("bad ack: {e}")
        } else {
            format!("ack is not JSON: {e}")
        })
    })?;
    if !verdict.ok {
        let e: AckError = serde_json::from_slice(ack)
            .map_err(|e| Error::Protocol(format!("bad error ack: {e}")))?;
        return Err(Error::Agent {
            code: e.code,
            message: e.error,
        });
    }
    serde_json::from_slice(ack).map_err(|e| Error::Protocol(format!("bad ack: {e}")))
}

impl Client {
    /// Sends one CONTROL and returns its ack's fields.
    pub fn control<T: DeserializeOwned>(&self, action: &Control) -> Result<T> {
        self.control_json(action)
    }

    /// Sends any serialisable CONTROL body (for actions this client has no type for).
    pub fn control_json<T: DeserializeOwned>(&self, body: &impl Serialize) -> Result<T> {
        self.control_within(body, self.control_timeout)
    }

    /// A CONTROL whose connect, send and whole ack fit in `budget`.
    fn control_within<T: DeserializeOwned>(
        &self,
        body: &impl Serialize,
        budget: Duration,
    ) -> Result<T> {
        let payload = serde_json::to_vec(body)
            .map_err(|e| Error::Protocol(format!("CONTROL body does not serialise: {e}")))?;
        let frame = frame_bytes(FrameKind::Control, &payload)?;
        let wait = Wait::within(budget);
        let ack = self
            .with_conn(budget, |c| {
                c.send(&frame, wait, "the agent to read the CONTROL")?;
                let f = c.next_frame(wait, "the CONTROL ack")?;
                match FrameKind::from_u8(f.kind) {
                    Some(FrameKind::Control) => Ok(f.payload),
                    Some(FrameKind::Error) => Err(agent_error(&f.payload)),
                    Some(k) => Err(Error::Protocol(format!(
                        "expected a CONTROL ack, got {k:?}"
                    ))),
                    None => Err(CodecError::UnknownKind(f.kind).into()),
                }
            })
            .map_err(|e| name_action(e, &payload))?;
        parse_ack(&ack, &action_of(&payload))
    }

    /// Waits until the agent answers `probe`, retrying failed connections and answers, and
    /// gives up after `timeout` whatever the guest does (accepting and then staying silent
    /// included). An agent's refusal ends the wait at once.
    pub fn wait_ready(&self, timeout: Duration) -> Result<ProbeInfo> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.control_within(&Control::Probe, self.control_timeout.min(left)) {
                Ok(p) => return Ok(p),
                Err(e @ Error::Agent { .. }) => return Err(e),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(
                    Duration::from_millis(20).min(timeout.saturating_sub(start.elapsed())),
                ),
            }
        }
    }

    /// Protocol version, kernel, uptime, CPUs, memory and the agent's own resource use.
    pub fn probe(&self) -> Result<ProbeInfo> {
        self.control(&Control::Probe)
    }

    /// Sets the guest wall clock (`sync_time`).
    pub fn sync_time(&self, t: SystemTime) -> Result<()> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.control::<Empty>(&Control::SyncTime {
            host_unix_ns: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        })
        .map(drop)
    }

    /// Parks every online CPU but the primary (aarch64 guests with smpark.ko), for a
    /// multi-vCPU snapshot; returns once all are parked. A no-op on one CPU.
    pub fn park(&self) -> Result<ParkStatus> {
        self.control(&Control::SmparkPark)
    }

    /// Releases the parked CPUs; returns once they all run again.
    pub fn unpark(&self) -> Result<ParkStatus> {
        self.control(&Control::SmparkUnpark)
    }

    /// Which CPUs are online and parked.
    pub fn park_status(&self) -> Result<ParkStatus> {
        self.control(&Control::SmparkStatus)
    }

    /// `sync(2)` in the guest.
    pub fn sync(&self) -> Result<()> {
        self.control::<Empty>(&Control::Sync).map(drop)
    }

    /// Drops the guest's page, dentry and inode caches.
    pub fn drop_caches(&self) -> Result<()> {
        self.control::<Empty>(&Control::DropVfsCaches).map(drop)
    }

    /// Powers off or reboots the guest. Returns once the agent has acknowledged.
    pub fn power(&self, what: PowerAction) -> Result<()> {
        self.control::<Empty>(&Control::Power { what }).map(drop)
    }

    /// The workload's pid, whether it runs and, once reaped, its exit code.
    pub fn workload_status(&self) -> Result<WorkloadState> {
        self.control(&Control::WorkloadStatus)
    }

    /// Waits until the workload ends, at most `timeout` (then [`Error::TimedOut`]).
    pub fn workload_wait(&self, timeout: Duration) -> Result<WorkloadState> {
        self.control_within(&Control::WorkloadWait, timeout)
    }

    /// Sends `signum` to the workload (`signal`); returns the pid signalled.
    pub fn workload_signal(&self, signum: i32) -> Result<i32> {
        self.control::<Signalled>(&Control::Signal { signum })
            .map(|s| s.pid)
    }
}

/// Names the CONTROL action in a timeout or close, from its payload (error path only).
fn name_action(e: Error, payload: &[u8]) -> Error {
    let action = || action_of(payload);
    match e {
        Error::TimedOut {
            waiting_for,
            after,
            idle,
        } => Error::TimedOut {
            waiting_for: format!("{waiting_for} ({})", action()),
            after,
            idle,
        },
        Error::Closed { waiting_for } => Error::Closed {
            waiting_for: format!("{waiting_for} ({})", action()),
        },
        e => e,
    }
}
