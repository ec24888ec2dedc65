//! init-oci as supermachine 0.7.108 runs it, checked in aarch64 guests under TCG (the
//! contract is in `assets/init-oci/src/main.rs`, the layout in [`crate::vm::bake`]).
//!
//! - [`main_bake`] is the bake of the suite's main aarch64 guest (4 vCPUs): a workload that
//!   records what it sees and waits for a signal, as `app` in `/home/app`, a hostname, an
//!   environment and a secret from the env service, an ext4 volume, both console pauses, and
//!   `supermachine.host_ipv6=0`. [`checks`] runs first on it: every marker in order, the
//!   workload's environment, directory, user, hostname and signal mask, the agent as
//!   init-oci's child speaking protocol 5, the state page line, the disks' order, and
//!   `signal` through the pid file up to the parking line.
//! - [`bad_input_checks`]: two more boots with a missing and a garbage command file, an
//!   unknown user, a missing workdir, no env service, a corrupt smpark.ko and a virtio-fs
//!   share that does not exist: one console line each, and PID 1 survives (the agent answers).
//! - [`no_disk_check`]: init-oci with no disk at all stays in the initramfs, says why, and
//!   parks instead of dying.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use init_oci::contract::{parking_line, Pause, HEARTBEAT, PRE_EXEC, SMPARK_GPA, STATE_GPA};
use init_oci::{cmdline, files};
use supermachine_agent::protocol::{ExecRequest, PROTOCOL_VERSION};
use supermachine_guest::paths::WORKLOAD_PID;

mod bad_input;

pub use bad_input::{bad_input_checks, no_disk_check};

use super::{check, out, stdout, users};
use crate::vm::bake::{self, BakeOptions, HostEnv, Workload};
use crate::vm::{self, Guest};

/// Mount point of the main guest's volume.
pub const VOLUME: &str = "/data";
/// The main guest's hostname.
pub const HOSTNAME: &str = "sm-e2e";
/// Where the workload records what it sees: `GREETING|SECRET|pwd|uid:gid:groups|hostname|SigBlk`.
const RECORD: &str = "/tmp/workload.out";
/// Where its TERM trap writes.
const TRAPPED: &str = "/tmp/workload.sig";
/// The main workload's user, a case of the shared user table.
const WORKLOAD_USER: &str = "app";
/// The workload's exit code after SIGTERM.
const TRAP_EXIT: i32 = 3;

/// The workload script (one line: the command file has one token per line).
fn workload_script() -> String {
    format!(
        "echo \"$GREETING|$SECRET_TOKEN|$(pwd)|{ids}|$(hostname)|$(sed -n 's/^SigBlk:[[:space:]]*//p' /proc/self/status)\" > {RECORD}; \
         trap 'echo term > {TRAPPED}; exit {TRAP_EXIT}' TERM; while :; do sleep 1; done",
        ids = users::IDS_SH
    )
}

/// What port 1026 serves the main guest.
fn main_env() -> HostEnv {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), bake::DEFAULT_PATH.to_string());
    env.insert("GREETING".to_string(), "hello from port 1026".to_string());
    env.insert("QUOTED".to_string(), "a \"b\" \\ ü".to_string());
    let mut secrets = BTreeMap::new();
    secrets.insert("SECRET_TOKEN".to_string(), "s3cret".to_string());
    HostEnv { env, secrets }
}

/// The main aarch64 guest's bake, with `volume` (an ext4 image) as its one volume.
pub fn main_bake(volume: &Path) -> BakeOptions {
    BakeOptions {
        workload: Some(Workload {
            cmd: vec!["/bin/sh".into(), "-c".into(), workload_script()],
            workdir: Some("/home/app".into()),
            user: Some(WORKLOAD_USER.into()),
            hostname: Some(HOSTNAME.into()),
            volumes: vec![VOLUME.into()],
            ..Workload::default()
        }),
        host_env: Some(main_env()),
        volumes: vec![volume.to_path_buf()],
        host_ipv6: false,
        ..BakeOptions::default()
    }
}

/// The kernel command-line words of the main guest: both console pauses.
pub fn main_cmdline() -> Vec<String> {
    vec![cmdline::KCACHE.into(), cmdline::PRE_EXEC_SYNC.into()]
}

/// The token line the host pushes at `p`, without its line end.
fn token(p: Pause) -> String {
    String::from_utf8_lossy(p.token()).trim_end().to_string()
}

/// The line of a delta layer without a command file.
fn no_command() -> String {
    format!(
        "init-oci: {} missing: running {}",
        files::CMD,
        files::FALLBACK_SHELL
    )
}

/// Waits up to `timeout` for the console to contain `text`.
fn wait_console(g: &Guest, text: &str, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        let c = g.vm.console_text();
        if c.contains(text) {
            return Ok(c);
        }
        if start.elapsed() > timeout {
            bail!("no `{text}` on the console within {timeout:?}:\n{c}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `markers` occur in `console` in this order; names the first one out of place.
fn in_order(console: &str, markers: &[String]) -> Result<()> {
    let mut at = 0;
    for m in markers {
        match console[at..].find(m.as_str()) {
            Some(i) => at += i + m.len(),
            None => {
                bail!("`{m}` is missing or out of order (expected order: {markers:#?}):\n{console}")
            }
        }
    }
    Ok(())
}

/// The checks of the main guest; run first, while its workload still waits for a signal.
pub fn checks(g: &Guest) -> Result<()> {
    check(
        "init-oci: every marker, in order (both pauses answered by the host)",
        || {
            let console = wait_console(
                g,
                &format!("{} resumed", Pause::PreExec.tag()),
                Duration::from_secs(60),
            )?;
            let has_gpa =
                stdout(g, &format!("test -e {STATE_GPA} && echo yes || true"))?.trim() == "yes";
            let mut markers: Vec<String> = vec![
                "init-oci: hello from pid 1 (initramfs)".into(),
                "init-oci: smpark.ko loaded (4 CPUs online)".into(),
            ];
            if has_gpa {
                markers.push(format!("{SMPARK_GPA}0x"));
            }
            markers.extend([
                Pause::Kcache.ready_line(),
                Pause::Kcache.resumed_line(&token(Pause::Kcache)),
            ]);
            markers.extend(
                [
                    "init-oci: 2 squashfs layer(s) under a tmpfs overlay",
                    "init-oci: hello from pid 1 (overlay root)",
                    "init-oci: IPv6 stays up; /etc/gai.conf prefers IPv4",
                    "init-oci: env: 4 variables from the host",
                    "exec-agent: spawned pid=",
                    supermachine_agent::protocol::READY_LINE,
                    "exec-agent: ready after ",
                    HEARTBEAT,
                    "init-oci: mounted /dev/vdc -> /data (ext4, rw)",
                    "init-oci: exec /bin/sh -c echo",
                    PRE_EXEC,
                ]
                .map(String::from),
            );
            markers.extend([
                Pause::PreExec.ready_line(),
                Pause::PreExec.resumed_line(&token(Pause::PreExec)),
            ]);
            in_order(&console, &markers)?;
            ensure!(
                Pause::ALL
                    .iter()
                    .all(|p| !console.contains(&format!("{} timeout", p.tag()))),
                "{console}"
            );
            let answered = g.host.responder.as_ref().map_or(0, |r| r.answered());
            ensure!(
                answered == 2,
                "the host answered {answered} pauses, expected 2"
            );
            // Our own env service counts its answers; supermachine's muxer (the suite's
            // vsock device) answers inline, which the env checks below see in the workload.
            if let Some(env) = g.host.env.as_ref() {
                let served = env.served();
                ensure!(
                    served == 1,
                    "the env service answered {served} connections, expected 1"
                );
            }
            Ok(())
        },
    )?;
    check(
        "init-oci: the workload's env (port 1026, secret included), workdir, user, groups, hostname, empty signal mask",
        || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let record = loop {
                let o = out(g, &ExecRequest::new(["cat", RECORD]))?;
                if o.status.code == 0 && o.stdout.ends_with(b"\n") {
                    break String::from_utf8_lossy(&o.stdout).into_owned();
                }
                ensure!(Instant::now() < deadline, "no {RECORD} within 30 s");
                std::thread::sleep(Duration::from_millis(200));
            };
            ensure!(
                record.trim()
                    == format!(
                        "hello from port 1026|s3cret|/home/app|{}|{HOSTNAME}|0000000000000000",
                        users::expected_ids(users::case(WORKLOAD_USER)).unwrap_or_default()
                    ),
                "the workload saw {record:?}"
            );
            // The agent inherits the same environment, and so do its execs.
            let t = stdout(g, "printf '%s|%s' \"$GREETING\" \"$QUOTED\"")?;
            ensure!(t == "hello from port 1026|a \"b\" \\ ü", "an exec saw {t:?}");
            Ok(())
        },
    )?;
    check(
        "init-oci is PID 1, the agent its child answering protocol 5; disks vda image, vdb delta, vdc volume",
        || {
            let p = g.client.probe()?;
            ensure!(p.protocol == PROTOCOL_VERSION && PROTOCOL_VERSION == 5, "{p:?}");
            ensure!(p.pid == g.agent_pid && p.pid > 1, "agent pid {} (boot {})", p.pid, g.agent_pid);
            let t = stdout(
                g,
                &format!(
                    "cut -d' ' -f4 /proc/{0}/stat; cat /proc/1/comm; readlink /proc/1/exe; \
                     sed -n 's/^SigBlk:[[:space:]]*//p' /proc/{0}/status",
                    p.pid
                ),
            )?;
            ensure!(
                t == "1\ninit\n/init\n0000000000000000\n",
                "agent's parent, PID 1's name and exe, the agent's signal mask: {t:?}"
            );
            let t = stdout(
                g,
                "mkdir -p /mnt/a /mnt/b && mount -t squashfs -o ro /dev/vda /mnt/a && mount -t squashfs -o ro /dev/vdb /mnt/b && \
                 test -e /mnt/a/etc/passwd && test ! -e /mnt/a/.supermachine-cmd && \
                 test -x /mnt/b/supermachine-agent && test -x /mnt/b/init && test -e /mnt/b/.supermachine-cmd && \
                 echo layers-ok; umount /mnt/a /mnt/b; grep ' /data ' /proc/mounts | cut -d' ' -f1,3,4 | cut -d, -f1",
            )?;
            ensure!(t == "layers-ok\n/dev/vdc ext4 rw\n", "{t:?}");
            Ok(())
        },
    )?;
    check(
        "init-oci: runtime files, loopback, clock, and the state page line matches sysfs",
        || {
            let t = stdout(
                g,
                "grep -c '^precedence ::ffff:0:0/96  100' /etc/gai.conf; head -1 /etc/resolv.conf; \
                 grep -c '^127.0.0.1.localhost' /etc/hosts; ip -4 addr show lo | grep -o '198.18.0.1/30'; \
                 cat /proc/sys/net/ipv4/ip_unprivileged_port_start; readlink /dev/fd; date +%s",
            )?;
            let lines: Vec<&str> = t.lines().collect();
            ensure!(
                lines.len() == 7
                    && lines[..6]
                        == [
                            "1",
                            "nameserver 1.1.1.1",
                            "1",
                            "198.18.0.1/30",
                            "0",
                            "/proc/self/fd"
                        ],
                "{t:?}"
            );
            let guest: i64 = lines[6].parse()?;
            let host = crate::util::unix_now_secs() as i64;
            ensure!(
                (guest - host).abs() < 120,
                "guest clock {guest}, host {host}"
            );
            let gpa = stdout(g, &format!("cat {STATE_GPA} 2>/dev/null || true"))?;
            let console = g.vm.console_text();
            match gpa.trim() {
                "" => ensure!(!console.contains(SMPARK_GPA), "{console}"),
                gpa => ensure!(
                    console.contains(&format!("{SMPARK_GPA}{gpa}\n"))
                        || console.contains(&format!("{SMPARK_GPA}{gpa}\r\n")),
                    "sysfs says {gpa}; console:\n{console}"
                ),
            }
            Ok(())
        },
    )?;
    check(
        &format!("signal through {WORKLOAD_PID} reaches the workload; PID 1 reaps it and parks"),
        || {
            let st = g.client.workload_status()?;
            ensure!(st.running, "{st:?}");
            let pid_file = stdout(g, &format!("cat {WORKLOAD_PID}"))?;
            ensure!(
                pid_file == format!("{}\n", st.pid),
                "{pid_file:?} vs {st:?}"
            );
            let t = stdout(g, &format!("cut -d' ' -f4,5 /proc/{}/stat", st.pid))?;
            ensure!(
                t == format!("1 {}\n", st.pid),
                "workload ppid and pgid: {t:?}"
            );
            let signalled = g.client.workload_signal(libc::SIGTERM)?;
            ensure!(
                signalled == st.pid,
                "signalled {signalled}, recorded {}",
                st.pid
            );
            let console = wait_console(g, &parking_line(TRAP_EXIT), Duration::from_secs(20))?;
            ensure!(
                console.contains(&format!("init-oci: child exited {TRAP_EXIT}")),
                "{console}"
            );
            ensure!(stdout(g, &format!("cat {TRAPPED}"))? == "term\n");
            let st = g.client.workload_status()?;
            ensure!(!st.running, "{st:?}");
            // PID 1 parked: the agent still serves.
            ensure!(out(g, &ExecRequest::new(["true"]))?.status.code == 0);
            Ok(())
        },
    )
}

/// A fresh ext4 volume for the main guest, in its own scratch directory.
pub fn main_volume() -> Result<std::path::PathBuf> {
    let dir = vm::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let v = dir.join("volume.ext4");
    bake::ext4_volume(&v, 16).context("make the main guest's volume")?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_checked() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(in_order("a\nb\nc\n", &m(&["a", "c"])).is_ok());
        assert!(in_order("a\nb\nc\n", &m(&["c", "a"])).is_err());
        assert!(in_order("a\n", &m(&["a", "a"])).is_err());
    }

    #[test]
    fn workload_is_one_line_per_token() {
        assert!(!workload_script().contains('\n'));
    }
}
