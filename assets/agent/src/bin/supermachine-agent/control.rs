//! CONTROL: parse the action, run its handler, answer one ack frame.
//!
//! Handlers return `Result<T, Fault>`; this is where a fault becomes `{"ok":false,"error",
//! "code"}` and a value becomes `{"ok":true, …}`.

use serde::Serialize;
use supermachine_agent::codec;
use supermachine_agent::protocol::*;

use crate::server::{Fault, Next, Writer};
use crate::{files, park, system, workload, Config};

fn ack<T: Serialize>(r: Result<T, Fault>) -> serde_json::Result<Vec<u8>> {
    match r {
        Ok(body) => serde_json::to_vec(&Ack { ok: true, body }),
        Err(f) => serde_json::to_vec(&AckError {
            ok: false,
            error: f.message,
            code: Some(f.code),
        }),
    }
}

/// Runs the action in `payload` and sends its ack.
pub fn answer(payload: &[u8], out: &Writer, config: &Config) -> Next {
    let mut then = None;
    let reply = match Control::parse(payload) {
        Ok(Control::Power { what }) => {
            let allowed = system::refuse_on_host(config, "power");
            then = allowed.is_ok().then_some(what);
            ack(allowed.map(|()| Empty {}))
        }
        Ok(action) => dispatch(action, config),
        Err(e) => {
            let code = match e {
                ControlParseError::UnknownAction(_) => ErrorCode::UnknownAction,
                ControlParseError::Json(_) => ErrorCode::BadFrame,
            };
            ack::<Empty>(Err(Fault::new(code, e.to_string())))
        }
    };
    let Ok(bytes) = reply else {
        return Next::Close;
    };
    let sent = {
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        codec::write_frame(&mut *w, FrameKind::Control, &bytes)
    };
    if let Some(what) = then {
        // Only after the ack is out: the connection dies with the machine.
        return system::power(what);
    }
    match sent {
        Ok(()) => Next::Read,
        Err(_) => Next::Close,
    }
}

fn dispatch(action: Control, config: &Config) -> serde_json::Result<Vec<u8>> {
    match action {
        Control::Probe => ack(Ok(system::probe())),
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
            system::sync();
            ack(Ok(Empty {}))
        }
        Control::SyncTime { host_unix_ns } => ack(system::sync_time(config, host_unix_ns)),
        Control::DropVfsCaches => ack(system::drop_caches()),
        Control::SmparkPark => ack(park::park(config)),
        Control::SmparkUnpark => ack(park::unpark(config)),
        Control::SmparkStatus => ack(park::status()),
        // `answer` handles power itself: it must act after the ack is sent.
        Control::Power { .. } => ack::<Empty>(Err(Fault::new(
            ErrorCode::InvalidArgument,
            "power: not dispatched here",
        ))),
        Control::WorkloadStatus => ack(workload::status()),
        Control::WorkloadWait => ack(workload::wait()),
    }
}
