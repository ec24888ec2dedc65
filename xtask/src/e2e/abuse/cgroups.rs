//! Guest root against the agent's exec cgroups: the agent keeps empty ones in a pool, with
//! their `cgroup.procs` open, for the next execs. A workload that removes them (guest root may)
//! must cost no exec.

use std::time::Duration;

use anyhow::{ensure, Result};
use supermachine_agent::protocol::{ExecRequest, EXEC_CGROUP_PARENT, EXEC_CGROUP_POOL};

use super::super::{check, out, sh};
use crate::vm::Guest;

/// Removes every pooled exec cgroup behind the agent's back, then runs more execs than the pool
/// holds: each must run and exit 0.
pub fn pooled_cgroups_removed(g: &Guest) -> Result<()> {
    check(
        "guest root removing the agent's pooled exec cgroups costs no exec",
        || {
            // A job that leaves its exec's cgroup and says so, so that the exec (which waits
            // for that) leaves an empty cgroup to the pool; then, the exec over, it removes
            // every exec cgroup it can (the empty ones) and says how many it removed.
            let attack = format!(
                "sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs; touch /tmp/cgroup-left; \
                 sleep 0.5; n=0; for d in {EXEC_CGROUP_PARENT}/[0-9]*; do \
                 rmdir $d 2>/dev/null && n=$((n+1)); done; echo $n > /tmp/cgroups-removed' \
                 >/dev/null 2>&1 & while [ ! -e /tmp/cgroup-left ]; do sleep 0.05; done"
            );
            out(g, &sh(&attack))?;
            std::thread::sleep(Duration::from_secs(2));
            // Read by a host CONTROL, not an exec: the next exec is the victim.
            let removed = g.client.read_file("/tmp/cgroups-removed", 64)?;
            let removed = String::from_utf8_lossy(&removed);
            ensure!(
                removed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
                "the job removed no pooled cgroup: {removed:?}"
            );
            for i in 0..=EXEC_CGROUP_POOL {
                let o = out(g, &ExecRequest::new(["true"]))?;
                ensure!(
                    o.status.code == 0,
                    "exec {i} after the removal: {:?}, stderr {:?}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Ok(())
        },
    )
}
