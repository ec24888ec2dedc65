//! CONTROL: parse the action, run its handler, answer one ack frame.
//!
//! Handlers return their own typed errors; [`edge::ack`] turns a value into `{"ok":true, …}`
//! and an error into `{"ok":false,"error","code"}`.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use supermachine_agent::protocol::*;

use crate::edge::{self, ack, Fault, Next, Writer};
use crate::state::State;
use crate::{files, park, sys, system, workload, Config};

/// Runs the action in `payload` and sends its ack.
pub fn answer(payload: &[u8], out: &Writer, config: &Config, state: &State) -> Next {
    let mut then = None;
    let reply = match Control::parse(payload) {
        Ok(Control::Power { what }) => {
            let allowed = system::refuse_on_host(config, "power");
            then = allowed.is_ok().then_some(what);
            ack(allowed.map(|()| Empty {}))
        }
        Ok(action) => dispatch(action, config, state),
        Err(e) => ack::<Empty, _>(Err(e)),
    };
    let Ok(bytes) = reply else {
        return Next::Close;
    };
    let sent = edge::send_ack(out, &bytes);
    if let Some(what) = then {
        // Only once the host has the ack: the connection dies with the machine, and a reboot
        // right after the write can beat the queued ack out of the guest (seen under TCG: the
        // host got a closed connection instead). The host closes once it has read the ack;
        // wait for that, at most POWER_ACK_WAIT.
        if let Ok(f) = out.lock() {
            let deadline = Instant::now() + POWER_ACK_WAIT;
            sys::wait(
                f.as_raw_fd(),
                libc::POLLIN | libc::POLLRDHUP,
                Some(deadline),
            );
        }
        system::power(what);
        return Next::Close;
    }
    sent
}

/// How long a `power` ack may take to reach the host before the machine goes down anyway.
const POWER_ACK_WAIT: Duration = Duration::from_secs(1);

fn dispatch(action: Control, config: &Config, state: &State) -> serde_json::Result<Vec<u8>> {
    match action {
        Control::Probe => ack(Ok::<_, Fault>(system::probe())),
        Control::Signal { signum } => ack(workload::signal(signum)),
        Control::WriteFile {
            path,
            data_b64,
            mode,
        } => ack(files::write_whole(&path, &data_b64, mode)),
        Control::WriteFileChunk {
            path,
            offset,
            data_b64,
            last,
            token,
            mode,
        } => ack(files::write_chunk(
            &path, offset, &data_b64, last, &token, mode,
        )),
        Control::ReadFile { path, max_bytes } => ack(files::read_whole(&path, max_bytes)),
        Control::ReadFileChunk {
            path,
            offset,
            len,
            max_bytes,
        } => ack(files::read_chunk(&path, offset, len, max_bytes)),
        Control::Sync => {
            sys::sync();
            ack(Ok::<_, Fault>(Empty {}))
        }
        Control::SyncTime { host_unix_ns } => ack(system::sync_time(config, host_unix_ns)),
        Control::DropVfsCaches => ack(system::drop_caches()),
        Control::SmparkPark => ack(park::park(config, &state.parking)),
        Control::SmparkUnpark => ack(park::unpark(config, &state.parking)),
        Control::SmparkStatus => ack(park::status(&state.parking)),
        // `answer` handles power itself: it must act after the ack is sent.
        Control::Power { .. } => ack::<Empty, _>(Err(Fault::new(
            ErrorCode::InvalidArgument,
            "power: not dispatched here",
        ))),
        Control::WorkloadStatus => ack(workload::status(&state.reaper)),
        Control::WorkloadWait => ack(workload::wait(&state.reaper)),
    }
}
