//! The agent's process-wide state: one value, made in `main` before any thread and passed
//! beside [`Config`](crate::Config) to whatever needs it, instead of statics scattered over
//! the modules. It lives as long as the process (`main` leaks it, so threads may hold
//! `&'static State`).

use crate::exec::Cgroups;
use crate::park::Parking;
use crate::reaper::Reaper;
use crate::server::Connections;

/// Everything the agent keeps between requests.
#[derive(Debug)]
pub struct State {
    /// Children and their exits; its thread is the one `wait4` caller.
    pub reaper: Reaper,
    /// Exec cgroups between execs.
    pub cgroups: Cgroups,
    /// smpark: the device, the park/unpark lock, whether threads are pinned.
    pub parking: Parking,
    /// Idle connection threads and the refusal log's budget.
    pub connections: Connections,
}

impl State {
    /// The state of an agent that has served nothing yet, for the rest of the process.
    pub fn leak_new() -> &'static State {
        Box::leak(Box::new(State {
            reaper: Reaper::new(),
            cgroups: Cgroups::new(),
            parking: Parking::new(),
            connections: Connections::new(),
        }))
    }
}
