//! Whole-guest operations: probe, clock, sync, caches and power.
//!
//! Failures are an [`Error`]; [`Refused`] is the one every machine-wide action (here, in
//! [`park`](crate::park) and for power) gives in host test mode.

use std::fmt;
use std::fs;
use std::io;

use supermachine_agent::protocol::*;

use crate::{sys, Config};

/// A machine-wide action refused because the agent is not serving a guest.
#[derive(Debug)]
pub struct Refused {
    /// The action, e.g. `sync_time`.
    pub op: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: refused: the agent is not serving a guest (host test mode), it would act on the host",
            self.op
        )
    }
}

impl std::error::Error for Refused {}

/// A failed whole-guest operation.
#[derive(Debug)]
pub enum Error {
    /// Host test mode: the action would act on the host.
    Refused(Refused),
    /// `clock_settime` failed.
    SetClock(io::Error),
    /// Writing `/proc/sys/vm/drop_caches` failed.
    DropCaches(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => r.fmt(f),
            Error::SetClock(e) => write!(f, "sync_time: clock_settime: {e}"),
            Error::DropCaches(e) => {
                write!(f, "drop_vfs_caches: write /proc/sys/vm/drop_caches: {e}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Refused(r) => Some(r),
            Error::SetClock(e) | Error::DropCaches(e) => Some(e),
        }
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        Error::Refused(r)
    }
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn status_field(status: &str, key: &str) -> u64 {
    meminfo_kib(status, key)
}

/// The state letter and parent pid from a `/proc/PID/stat` text ("pid (comm) S ppid ..."):
/// comm may hold spaces and parentheses, so the fields start after the last ')'.
pub fn stat_state_ppid(stat: &str) -> Option<(&str, &str)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    Some((f.next()?, f.next()?))
}

/// Children of this process in state Z (exited, not yet reaped).
fn zombies() -> u32 {
    let me = std::process::id().to_string();
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat_state_ppid(stat) == Some(("Z", me.as_str())))
        .count() as u32
}

/// Online CPU numbers, from `/sys/devices/system/cpu/online` ("0-3,5"); `[0]` if unreadable.
pub fn online_cpu_list() -> Vec<u32> {
    let text = fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let cpus = parse_cpu_list(text.trim());
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

fn parse_cpu_list(s: &str) -> Vec<u32> {
    s.split(',')
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
            None => r.parse().ok().map(|n| n..=n),
        })
        .flatten()
        .collect()
}

/// Gathers [`ProbeInfo`]. Every field degrades to 0/empty rather than failing.
pub fn probe() -> ProbeInfo {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uptime_ms = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64);
    ProbeInfo {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        protocol: PROTOCOL_VERSION,
        kernel_release: sys::kernel_release(),
        uptime_ms,
        cpus_online: sys::online_cpus(),
        mem_total_kib: meminfo_kib(&meminfo, "MemTotal"),
        mem_available_kib: meminfo_kib(&meminfo, "MemAvailable"),
        pid: std::process::id() as i32,
        open_fds: fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u32),
        threads: status_field(&status, "Threads") as u32,
        zombies: zombies(),
        rss_kib: status_field(&status, "VmRSS"),
        unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    }
}

/// Operations that would act on the whole machine are for a guest only: with `--listen
/// unix:` (host test mode) or `--exec-stdio` outside a VM they would act on the host.
pub fn refuse_on_host(config: &Config, op: &'static str) -> Result<(), Refused> {
    if config.guest {
        Ok(())
    } else {
        Err(Refused { op })
    }
}

/// `sync_time`: sets CLOCK_REALTIME to the host's clock.
pub fn sync_time(config: &Config, host_unix_ns: u64) -> Result<Empty, Error> {
    refuse_on_host(config, "sync_time")?;
    sys::set_realtime(host_unix_ns).map_err(Error::SetClock)?;
    Ok(Empty {})
}

/// Syncs, then frees page cache, dentries and inodes.
pub fn drop_caches() -> Result<Empty, Error> {
    sys::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(Error::DropCaches)?;
    Ok(Empty {})
}

/// Syncs and powers off or reboots. Returns only if the kernel refused (logged).
pub fn power(action: PowerAction) {
    sys::sync();
    let cmd = match action {
        PowerAction::Poweroff => libc::RB_POWER_OFF,
        PowerAction::Reboot => libc::RB_AUTOBOOT,
    };
    let refused = sys::reboot(cmd);
    crate::log!("reboot({action:?}) failed: {refused}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let m = "MemTotal:        2028008 kB\nMemFree:  1 kB\nMemAvailable:    1800000 kB\n";
        assert_eq!(meminfo_kib(m, "MemTotal"), 2028008);
        assert_eq!(meminfo_kib(m, "MemAvailable"), 1800000);
        assert_eq!(meminfo_kib(m, "Nope"), 0);
    }

    #[test]
    fn stat_fields_after_the_last_paren() {
        assert_eq!(stat_state_ppid("7 (a) b) Z 1 1"), Some(("Z", "1")));
        assert_eq!(stat_state_ppid("7 (sh) S"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5"), [0, 1, 2, 3, 5]);
        assert_eq!(parse_cpu_list("0"), [0]);
        assert!(parse_cpu_list("").is_empty());
    }
}
