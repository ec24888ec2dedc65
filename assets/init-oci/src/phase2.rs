//! Phase 2, in the overlay root: the runtime files, the IPv6 policy, virtio-fs shares, the
//! clock, the hostname, the host's environment, the agent, the heartbeat, volumes, and then
//! the workload under [`crate::supervise`]. Never returns.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use init_oci::contract::{AGENT, HEARTBEAT};
use supermachine_guest::user::{self, Ident};

use crate::cmdline::Cmdline;
use crate::console;
use crate::error::Error;
use crate::files::{self, Command};
use crate::supervise::{self, Workload};
use crate::{envsvc, mounts, say, sys};

/// The file the agent writes once it listens.
pub use supermachine_guest::paths::AGENT_READY;
/// How long to wait for [`AGENT_READY`] before going on without it.
pub const AGENT_WAIT: Duration = Duration::from_secs(1);
/// Wall clock used when the guest clock is unset and the host sent none (2025-01-01).
pub const FALLBACK_TIME: i64 = 1_735_689_600;

/// Runs phase 2 and then supervises the workload forever.
pub fn run(cmdline: &Cmdline) -> ! {
    sys::block_supervised_signals();
    mounts::pseudo_filesystems();
    runtime_files();
    ipv6_policy(cmdline);
    if let Some(text) = read_text(files::VIRTIOFS_BINDS) {
        let (binds, bad) = files::parse_binds(&text);
        for line in bad {
            say!(
                "{}: ignored line {line:?} (want TAG<TAB>/path)",
                files::VIRTIOFS_BINDS
            );
        }
        mounts::virtiofs_binds(&binds);
    }
    if Path::new("/run/rosetta/rosetta").exists() {
        say!("a Rosetta share is mounted, but this init-oci does not register it (amd64 binaries will not run)");
    }
    wall_clock(cmdline);
    hostname();
    environment();
    let agent = spawn_agent();
    wait_for_agent();
    console::stdout_line(HEARTBEAT);
    if let Some(text) = read_text(files::VOLUMES) {
        let (paths, ignored) = files::parse_volumes(&text);
        if ignored > 0 {
            say!(
                "{}: {ignored} volumes beyond {} ignored",
                files::VOLUMES,
                files::MAX_VOLUMES
            );
        }
        mounts::volumes(&paths);
    }
    let workload = Workload {
        command: command(),
        identity: identity(),
    };
    workdir();
    let shown: Vec<String> = workload
        .command
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    say!("exec {}", shown.join(" "));
    supervise::run(workload, cmdline.pre_exec_sync, agent)
}

/// A contract file's bytes; `None` when it is missing, a line when it cannot be read.
fn read_bytes(path: &str) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            say!("read {path}: {e}");
            None
        }
    }
}

fn read_text(path: &str) -> Option<String> {
    let b = read_bytes(path)?;
    match String::from_utf8(b) {
        Ok(t) => Some(t),
        Err(_) => {
            say!("{path}: not UTF-8; ignored");
            None
        }
    }
}

/// Writes `path` when it does not contain `marker` (or is missing).
fn write_unless_contains(path: &str, marker: &str, body: &str) {
    if fs::read_to_string(path).is_ok_and(|t| t.contains(marker)) {
        return;
    }
    if let Err(e) = fs::write(path, body) {
        say!("write {path}: {e}");
    }
}

/// `/etc/hosts` with `localhost`, one public resolver, the `/dev/fd` links, low ports and
/// ICMP sockets for everyone: what supermachine's init gives every image.
fn runtime_files() {
    let _ = fs::create_dir_all("/etc");
    write_unless_contains(
        "/etc/hosts",
        "localhost",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if let Err(e) = fs::write(
        "/etc/resolv.conf",
        "nameserver 1.1.1.1\noptions timeout:2 attempts:2 no-aaaa single-request\n",
    ) {
        say!("write /etc/resolv.conf: {e}");
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 4294967295\n"),
    ] {
        let _ = fs::write(path, value);
    }
}

/// The getaddrinfo preference of `/etc/gai.conf` when the host has no IPv6 route: IPv4
/// (v4-mapped) first. The IPv6 stack itself stays up.
pub const GAI_CONF: &str = "# supermachine: the host has no IPv6 route; prefer A over AAAA.\n\
precedence ::ffff:0:0/96  100\n\
precedence ::1/128         50\n\
precedence ::/0            40\n\
precedence 2002::/16       30\n\
precedence ::/96           20\n\
precedence fec0::/10       10\n\
precedence fc00::/7         3\n\
precedence 2001:0::/32      1\n";

fn ipv6_policy(cmdline: &Cmdline) {
    if cmdline.host_ipv6 != Some(false) {
        return;
    }
    match fs::write("/etc/gai.conf", GAI_CONF) {
        Ok(()) => say!("IPv6 stays up; /etc/gai.conf prefers IPv4 (the host has no IPv6 route)"),
        Err(e) => say!("IPv6 stays up; write /etc/gai.conf: {e}"),
    }
}

/// Sets the clock from `supermachine.host_time=` when it reads before 2001 (no RTC).
fn wall_clock(cmdline: &Cmdline) {
    if sys::wall_clock_secs() > crate::cmdline::MIN_HOST_TIME {
        return;
    }
    let secs = cmdline.host_time.unwrap_or(FALLBACK_TIME);
    if let Err(e) = sys::set_wall_clock(secs) {
        say!("clock_settime({secs}): {e}");
    }
}

fn hostname() {
    let Some(bytes) = read_bytes(files::HOSTNAME) else {
        return;
    };
    match files::parse_hostname(&bytes) {
        Ok(Some(name)) => {
            if let Err(e) = sys::sethostname(&name) {
                say!("sethostname({name}): {e}");
            }
        }
        Ok(None) => {}
        Err(e) => say!("{e}; the hostname stays the kernel's"),
    }
}

/// The host's env document into PID 1's environment (inherited by the agent and workload).
fn environment() {
    match envsvc::fetch() {
        Ok(env) => {
            for name in &env.skipped {
                say!("env: {name} left out (not a string, or not a valid variable)");
            }
            for (k, v) in &env.vars {
                std::env::set_var(k, v);
            }
            let n = env.vars.len();
            say!(
                "env: {n} variable{} from the host",
                if n == 1 { "" } else { "s" }
            );
        }
        Err(e) => say!("{e}; going on without the host's environment"),
    }
}

/// Starts the agent (no arguments, PID 1's environment and console); its pid, if it started.
fn spawn_agent() -> Option<i32> {
    if !Path::new(AGENT).exists() {
        console::line(&format!("exec-agent: {AGENT} missing — exec disabled"));
        return None;
    }
    let mut cmd = std::process::Command::new(AGENT);
    // SAFETY: runs in the forked child before exec; sigprocmask is async-signal-safe.
    unsafe {
        cmd.pre_exec(sys::unblock_all_signals);
    }
    match cmd.spawn() {
        Ok(child) => {
            let pid = child.id() as i32;
            console::line(&format!("exec-agent: spawned pid={pid}"));
            Some(pid)
        }
        Err(e) => {
            console::line(&format!("exec-agent: exec {AGENT}: {e}"));
            None
        }
    }
}

/// Waits up to [`AGENT_WAIT`] for [`AGENT_READY`].
fn wait_for_agent() {
    let start = Instant::now();
    while start.elapsed() < AGENT_WAIT {
        if Path::new(AGENT_READY).exists() {
            console::line(&format!(
                "exec-agent: ready after {} us probe",
                start.elapsed().as_micros()
            ));
            return;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    console::line(&format!(
        "exec-agent: ready file absent after {} ms; proceeding",
        AGENT_WAIT.as_millis()
    ));
}

/// The workload's argv, or `/bin/sh` with a line saying why.
fn command() -> Command {
    let Some(bytes) = read_bytes(files::CMD) else {
        say!("{} missing: running {}", files::CMD, files::FALLBACK_SHELL);
        return Command::fallback();
    };
    match files::parse_cmd(&bytes) {
        Ok(c) => {
            if c.dropped > 0 {
                say!(
                    "{}: {} tokens (or a tail past {} bytes) left out: at most {} tokens",
                    files::CMD,
                    c.dropped,
                    files::MAX_CMD_BYTES,
                    files::MAX_TOKENS
                );
            }
            c
        }
        Err(e) => {
            say!("{e}: running {}", files::FALLBACK_SHELL);
            Command::fallback()
        }
    }
}

/// The workload's identity from `/.supermachine-user` (root when there is none).
fn identity() -> Result<Option<Ident>, Error> {
    let Some(bytes) = read_bytes(files::USER) else {
        return Ok(None);
    };
    let Some(spec) = files::parse_user(&bytes)? else {
        return Ok(None);
    };
    user::resolve_in_root(&spec).map(Some).map_err(Error::User)
}

/// Changes PID 1's directory (the workload inherits it) to `/.supermachine-workdir`; on
/// failure stays in `/`.
fn workdir() {
    let Some(bytes) = read_bytes(files::WORKDIR) else {
        return;
    };
    let dir: OsString = match files::parse_workdir(&bytes) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            say!("{e}; the workload runs in /");
            return;
        }
    };
    if let Err(e) = std::env::set_current_dir(&dir) {
        say!(
            "chdir({}): {e}; the workload runs in /",
            dir.to_string_lossy()
        );
    }
}
