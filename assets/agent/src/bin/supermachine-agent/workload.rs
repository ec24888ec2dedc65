//! The workload: the image's main process, started from an OCI image config at boot.
//!
//! Its stdout/stderr are the agent's (the console). The host asks for its status, waits for it
//! and signals it; SIGTERM sent to the agent is forwarded to it.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use supermachine_agent::protocol::*;

use crate::server::Fault;
use crate::{exec, log, reaper, spawn};

#[derive(Default)]
struct Slot {
    state: WorkloadState,
}

struct Workload {
    slot: Mutex<Slot>,
    exited: Condvar,
}

fn workload() -> &'static Workload {
    static W: OnceLock<Workload> = OnceLock::new();
    W.get_or_init(|| Workload {
        slot: Mutex::new(Slot::default()),
        exited: Condvar::new(),
    })
}

fn lock() -> MutexGuard<'static, Slot> {
    workload().slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the image config at `path`, if present, and starts the workload.
pub fn start(path: &str) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return log!("workload: read {path}: {e}"),
    };
    let config: ImageConfig = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => return log!("workload: {path}: bad image config: {e}"),
    };
    let Some(req) = config.to_exec() else {
        return log!("workload: {path}: neither Entrypoint nor Cmd is set");
    };
    let spec = match exec::prepare(&req, false) {
        Ok(s) => s,
        Err(f) => return log!("workload: {}", f.message),
    };
    let (pid, _stdio, exited) = match reaper::spawn_registered(|| spawn::spawn(&spec)) {
        Ok(r) => r,
        Err(e) => return log!("workload: start {:?}: {e}", req.argv),
    };
    log!("workload started: pid {pid}: {:?}", req.argv);
    lock().state.pid = Some(pid);
    let waiter = std::thread::Builder::new()
        .name("workload".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let status = exited.recv().unwrap_or_default();
            log!("workload pid {pid} exited: {status:?}");
            lock().state.exit = Some(status);
            workload().exited.notify_all();
        });
    if let Err(e) = waiter {
        log!("workload: cannot start waiter thread: {e}");
    }
}

fn no_workload() -> Fault {
    Fault::new(
        ErrorCode::NoWorkload,
        "no workload was started (no image config)",
    )
}

/// Pid and exit status.
pub fn status() -> Result<WorkloadState, Fault> {
    let s = lock().state.clone();
    if s.pid.is_none() {
        return Err(no_workload());
    }
    Ok(s)
}

/// Blocks until the workload has exited.
pub fn wait() -> Result<WorkloadState, Fault> {
    let mut slot = lock();
    if slot.state.pid.is_none() {
        return Err(no_workload());
    }
    while slot.state.exit.is_none() {
        slot = workload()
            .exited
            .wait(slot)
            .unwrap_or_else(|e| e.into_inner());
    }
    Ok(slot.state.clone())
}

/// Signals the workload's process group while it runs.
pub fn signal(sig: i32) -> Result<Empty, Fault> {
    let slot = lock();
    match (slot.state.pid, slot.state.exit) {
        (Some(pid), None) => spawn::kill_group(pid, sig)
            .map(|()| Empty {})
            .map_err(Fault::from_io),
        (Some(_), Some(_)) => Err(Fault::new(
            ErrorCode::NoWorkload,
            "the workload has already exited",
        )),
        (None, _) => Err(no_workload()),
    }
}

/// Forwards a signal the agent received (SIGTERM at shutdown) to a running workload.
pub fn forward(sig: i32) {
    if let Err(e) = signal(sig) {
        log!("signal {sig} not forwarded: {}", e.message);
    }
}
