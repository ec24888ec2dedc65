//! The agent's own resources as its probe reports them (descriptors, threads, zombies,
//! RSS), its baseline at rest, and the wait for them to return there after an abuse check.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use supermachine_agent::protocol::EXEC_CGROUP_POOL;

use crate::vm::Guest;

/// The agent's own resources, as its probe reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub fds: u32,
    pub threads: u32,
    pub zombies: u32,
    pub rss_kib: u64,
}

fn usage(g: &Guest) -> Result<Usage> {
    let p = g.client.probe()?;
    ensure!(
        p.pid == g.agent_pid,
        "the agent is not the one that booted any more (pid {}, was {})",
        p.pid,
        g.agent_pid
    );
    Ok(Usage {
        fds: p.open_fds,
        threads: p.threads,
        zombies: p.zombies,
        rss_kib: p.rss_kib,
    })
}

/// The agent at rest: the same fds and threads and no zombies over three probes 100 ms apart
/// (an exec's threads end a moment after its client has seen the exit).
pub fn baseline(g: &Guest) -> Result<Usage> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = usage(g)?;
    let mut same = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let u = usage(g)?;
        let steady = u.fds == last.fds && u.threads == last.threads && u.zombies == 0;
        same = if steady { same + 1 } else { 0 };
        last = u;
        if same == 2 || Instant::now() > deadline {
            return Ok(last);
        }
    }
}

/// Descriptors the agent keeps by design once execs have run concurrently: its pool of empty
/// exec cgroups, each with its `cgroup.procs` open. A leak grows with the execs (1000 here);
/// this bound does not.
const EXEC_CGROUP_POOL_FDS: u32 = EXEC_CGROUP_POOL as u32;

/// Waits up to 5 s for fds, threads and zombies to return to `base` (fds: plus the exec
/// cgroup pool's); returns the usage then.
pub fn settle(g: &Guest, base: Usage) -> Result<Usage> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let u = usage(g)?;
        let back =
            u.fds <= base.fds + EXEC_CGROUP_POOL_FDS && u.threads <= base.threads && u.zombies == 0;
        if back || Instant::now() > deadline {
            ensure!(
                back,
                "agent resources did not return to baseline: before {base:?}, after {u:?}"
            );
            return Ok(u);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
