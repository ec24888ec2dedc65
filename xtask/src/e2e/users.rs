//! The guest contract's user-resolution table ([`supermachine_guest::user::table`]) in a
//! booted guest: the default root image carries the table's `/etc/passwd` and `/etc/group`
//! ([`crate::vm::rootfs`]), and every case runs `id` through the agent's exec `user`. On
//! x86_64 the agent is PID 1; on aarch64 it is init-oci's child, and init-oci resolves
//! `/.supermachine-user` with the same function (its own checks in [`super::init_oci`] take
//! their expectations from the same table).

use anyhow::{bail, ensure, Result};
use supermachine_guest::user::table::{Case, Want, CASES};

use super::{check, out, sh};
use crate::vm::Guest;

/// Shell text that expands to `uid gid groups…` of the process that runs it, the
/// supplementary groups as the kernel holds them (`/proc/self/status`'s `Groups:`, sorted),
/// single-spaced.
pub const IDS_SH: &str = "$(echo $(id -u) $(id -g) $(sed -n 's/^Groups://p' /proc/self/status))";

/// What [`IDS_SH`] must expand to for `case`.
pub fn expected_ids(case: &Case) -> Option<String> {
    match case.want {
        Want::Ident { uid, gid, groups } => {
            let mut sorted = groups.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            let groups: Vec<String> = sorted.iter().map(u32::to_string).collect();
            Some(
                format!("{uid} {gid} {}", groups.join(" "))
                    .trim_end()
                    .to_string(),
            )
        }
        Want::Error(_) => None,
    }
}

/// The case for `spec`, which the table must have.
pub fn case(spec: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.spec == spec)
        .unwrap_or_else(|| panic!("the user table has no case {spec:?}"))
}

/// Every case of the table through the agent's exec `user`.
pub fn checks(g: &Guest) -> Result<()> {
    check(
        "the shared user table: each `user` string resolves in the guest as the table says",
        || {
            for case in CASES {
                let mut req = sh(&format!("echo {IDS_SH}"));
                req.user = Some(case.spec.to_string());
                let got = out(g, &req);
                match (expected_ids(case), case.want, got) {
                    (Some(want), _, Ok(o)) => {
                        let text = String::from_utf8_lossy(&o.stdout);
                        ensure!(
                            o.status.code == 0 && text.trim() == want,
                            "user {:?}: printed {text:?} {:?}, the table says {want:?}",
                            case.spec,
                            o.status
                        );
                    }
                    (None, Want::Error(part), Err(e)) => {
                        let e = format!("{e:#}");
                        ensure!(
                            e.contains(part),
                            "user {:?}: {e}; the table says {part:?}",
                            case.spec
                        );
                    }
                    (_, want, got) => {
                        bail!("user {:?}: got {got:?}, the table says {want:?}", case.spec)
                    }
                }
            }
            Ok(())
        },
    )
}
