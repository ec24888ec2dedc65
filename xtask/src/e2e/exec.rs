//! The suite both arches share on one booted guest: execs (argv, env, stdin, signals, tty,
//! the documented kernel features), the root filesystem, control requests and sysctls; and
//! a boot with a root image that is not squashfs.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use supermachine_agent::client::Event;
use supermachine_agent::codec;
use supermachine_agent::protocol::*;

use super::{check, connect, out, sh, stdout};
use crate::spec::Arch;
use crate::util;
use crate::vm::{self, Guest};

/// The documented list of kernel features a guest must have (checked by the probe program).
pub const FEATURES: &[&str] = &[
    "inotify",
    "epoll",
    "eventfd",
    "timerfd",
    "signalfd",
    "memfd",
    "io_uring",
    "seccomp",
    "unshare-mount-ns",
    "unshare-pid-ns",
    "unshare-user-ns",
    "unshare-net-ns",
    "cgroup2",
    "dev-shm-tmpfs",
    "devpts",
    "getrandom-nonblocking",
    "socket-ipv4",
    "socket-ipv6",
    "socket-unix",
    "dev-fuse",
    RNG_FEATURE,
];

/// The probe's name for a virtio-rng behind `/dev/hwrng`.
const RNG_FEATURE: &str = "virtio-rng-hwrng";

/// The workload, as supermachine's bake writes `/.supermachine/run-workload` for an image
/// config (x86_64; the launch script runs it and records its pid).
pub fn workload_script() -> Result<String> {
    let config = vm::rootfs::ImageConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![
            "echo \"$WL_GREETING $(pwd) $(id -u)\" > /tmp/workload.out; exit 7".into(),
        ]),
        env: Some(vec!["WL_GREETING=hello".into()]),
        working_dir: Some("/home/app".into()),
        user: None,
    };
    config
        .run_workload_script()
        .context("the e2e workload config has a command")
}

pub fn exec_checks(g: &Guest) -> Result<()> {
    check("exit codes 0/1/127 and missing binary", || {
        ensure!(out(g, &ExecRequest::new(["true"]))?.status.code == 0);
        ensure!(out(g, &ExecRequest::new(["false"]))?.status.code == 1);
        ensure!(out(g, &sh("exit 126"))?.status.code == 126);
        let o = out(g, &ExecRequest::new(["no-such-binary"]))?;
        ensure!(o.status.code == 127, "missing binary gave {o:?}");
        Ok(())
    })?;
    check("stdout and stderr are separate", || {
        let o = out(g, &sh("echo out; echo err >&2"))?;
        ensure!(o.stdout == b"out\n" && o.stderr == b"err\n", "{o:?}");
        Ok(())
    })?;
    check("stdin is streamed", || {
        let req = ExecRequest::new(["cat"]);
        let input: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let o = g.client.exec_with_input(&req, &input)?;
        ensure!(
            o.stdout == input,
            "cat returned {} of {} bytes",
            o.stdout.len(),
            input.len()
        );
        Ok(())
    })?;
    check("tty and resize", || {
        let mut req = sh("tty; stty size; read x; stty size");
        req.tty = true;
        req.cols = Some(111);
        req.rows = Some(33);
        let mut exec = g.client.exec(&req)?;
        let mut input = exec.input()?;
        let mut seen = Vec::new();
        let mut resized = false;
        loop {
            match exec.next_event()? {
                Event::Stdout(b) => seen.extend(b),
                Event::Stderr(_) => bail!("tty exec produced separate stderr"),
                Event::Exit(s) => {
                    ensure!(s.code == 0, "{s:?}");
                    break;
                }
            }
            if !resized && String::from_utf8_lossy(&seen).contains("33 111") {
                input.resize(120, 40)?;
                input.write(b"\n")?;
                resized = true;
            }
        }
        let text = String::from_utf8_lossy(&seen);
        ensure!(
            text.contains("/dev/pts/") && text.contains("40 120"),
            "{text}"
        );
        Ok(())
    })?;
    check("env, cwd and user from the image's /etc/passwd", || {
        let mut req = sh("echo \"$(id -u):$(id -g):$(id -G):$HOME:$FOO:$(pwd)\"");
        req.user = Some("app".into());
        req.env.insert("FOO".into(), "bar".into());
        req.cwd = Some("/tmp".into());
        let o = out(g, &req)?;
        let text = String::from_utf8_lossy(&o.stdout);
        ensure!(
            text.trim() == "1000:1000:1000 10:/home/app:bar:/tmp",
            "{text}"
        );
        let mut req = sh("id -u");
        req.user = Some("65534:65534".into());
        ensure!(out(g, &req)?.stdout == b"65534\n");
        Ok(())
    })?;
    super::users::checks(g)?;
    check("16 MiB of output intact", || {
        let sum = stdout(
            g,
            "head -c 16777216 /dev/urandom > /tmp/big && sha256sum /tmp/big",
        )?;
        let o = out(g, &ExecRequest::new(["cat", "/tmp/big"]))?;
        ensure!(o.stdout.len() == 16 << 20, "got {} bytes", o.stdout.len());
        let host = util::sha256(&o.stdout);
        ensure!(sum.starts_with(&host), "guest {sum} vs host {host}");
        stdout(g, "rm /tmp/big").map(drop)
    })?;
    check("signal and timeout", || {
        let mut exec = g.client.exec(&sh("echo up; exec sleep 60"))?;
        ensure!(exec.next_event()? == Event::Stdout(b"up\n".to_vec()));
        exec.signal(15)?;
        match exec.next_event()? {
            Event::Exit(s) if s.code == 143 => {}
            e => bail!("after SIGTERM: {e:?}"),
        }
        let mut req = ExecRequest::new(["sleep", "60"]);
        req.timeout_ms = Some(500);
        let s = out(g, &req)?.status;
        ensure!(s.code == 137, "{s:?}");
        Ok(())
    })?;
    check(
        "a killed exec ends although a root process left its cgroup holding stdout",
        || {
            // Issue 22: cgroup.kill cannot reach a process that moved itself to the root
            // cgroup (and left the session); the agent closes the pipes after a short grace
            // and sends EXIT 137.
            let program = crate::vm::guest_program(g.arch, "abuse")?;
            g.client.write_file("/tmp/abuse-leave", 0o755, &program)?;
            let mut req = sh("/tmp/abuse-leave leave /tmp/escaped.pid && sleep 60");
            req.timeout_ms = Some(1000);
            let t = std::time::Instant::now();
            let s = out(g, &req)?.status;
            ensure!(s.code == 137, "{s:?}");
            ensure!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
            // The daemon really escaped (else this checks nothing): alive after the kill.
            let pid = stdout(g, "cat /tmp/escaped.pid")?;
            ensure!(
                pid.trim() != "failed",
                "the daemon could not leave its cgroup"
            );
            let cleanup = format!(
                "kill -9 {p} && rm /tmp/escaped.pid /tmp/abuse-leave",
                p = pid.trim()
            );
            stdout(g, &cleanup).map(drop)
        },
    )?;
    Ok(())
}

pub fn rootfs_checks(g: &Guest) -> Result<()> {
    check("overlay writable, squashfs lower read-only", || {
        let t = stdout(
            g,
            "echo new > /etc/added && cat /etc/added && grep -q ' / overlay ' /proc/mounts && echo overlay-root",
        )?;
        ensure!(t == "new\noverlay-root\n", "{t}");
        // Mount the root image a second time: the file written above is not in it, and it
        // refuses writes.
        let t = stdout(
            g,
            "mkdir -p /mnt/lower && mount -t squashfs -o ro /dev/vda /mnt/lower && \
             test ! -e /mnt/lower/etc/added && test -e /mnt/lower/etc/passwd && \
             (touch /mnt/lower/x 2>/dev/null && echo writable || echo read-only); umount /mnt/lower",
        )?;
        ensure!(t == "read-only\n", "{t}");
        Ok(())
    })?;
    if g.arch == Arch::X86_64 {
        check(
            "run-workload started by the launch script, its exit reported",
            || {
                let st = g.client.workload_wait(Duration::from_secs(60))?;
                ensure!(st.exit_code == Some(7), "{st:?}");
                let t = stdout(g, "cat /tmp/workload.out")?;
                ensure!(t == "hello /home/app 0\n", "{t}");
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// The boot-time sysctls (assets/kernel/recommended.config): set by the agent as PID 1 on
/// x86_64 and by init-oci on aarch64, which also closes module loading after smpark.ko.
pub fn sysctl_checks(g: &Guest) -> Result<()> {
    check(
        "boot-time sysctls: protected_*, kptr_restrict, io_uring",
        || {
            let t = stdout(
                g,
                "cd /proc/sys && cat fs/protected_symlinks fs/protected_hardlinks \
             fs/protected_fifos fs/protected_regular kernel/kptr_restrict kernel/io_uring_disabled",
            )?;
            ensure!(t == "1\n1\n1\n1\n2\n1\n", "{t:?}");
            Ok(())
        },
    )?;
    if g.arch == Arch::Aarch64 {
        check("module loading closed after smpark.ko", || {
            let t = stdout(g, "cat /proc/sys/kernel/modules_disabled")?;
            ensure!(t == "1\n", "{t:?}");
            Ok(())
        })?;
    }
    Ok(())
}

pub fn control_checks(g: &Guest) -> Result<()> {
    check("file write/read round trip", || {
        let data: Vec<u8> = (0..1_500_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        g.client.write_file("/tmp/blob.bin", 0o600, &data)?;
        ensure!(
            g.client.read_file("/tmp/blob.bin", 2 << 20)? == data,
            "read back differs"
        );
        ensure!(stdout(g, "stat -c %a /tmp/blob.bin")? == "600\n");
        Ok(())
    })?;
    check("sync-time sets the guest clock", || {
        let target = UNIX_EPOCH + Duration::from_secs(1_893_456_000); // 2030-01-01
        g.client.sync_time(target)?;
        let secs: i64 = stdout(g, "date +%s")?.trim().parse()?;
        ensure!(
            (secs - 1_893_456_000).abs() < 30,
            "guest clock reads {secs}"
        );
        g.client.sync_time(SystemTime::now())?;
        Ok(())
    })?;
    check("bad frames from the host leave the agent serving", || {
        let error_text = |bytes: &[u8]| -> Result<String> {
            let mut s = connect(g)?;
            s.write_all(bytes)?;
            let f = codec::read_frame(&mut s)?.context("no answer to a bad frame")?;
            ensure!(f.kind == FrameKind::Error, "{f:?}");
            Ok(String::from_utf8_lossy(&f.payload).into_owned())
        };
        let t = error_text(&[0xff, 0xff, 0xff, 0xff, 0xff])?;
        ensure!(t == "frame len 4294967295 > MAX_FRAME_LEN 16777216", "{t}");
        let t = error_text(&codec::encode(FrameKind::Request, b"\xff\xfe not json"))?;
        ensure!(t.starts_with("REQUEST JSON parse:"), "{t}");
        let p = g.client.probe()?;
        ensure!(p.pid == g.agent_pid, "the agent's pid changed: {p:?}");
        ensure!(
            (p.pid == 1) == (g.arch == Arch::X86_64),
            "the agent is PID 1 on x86_64 only (init-oci is on aarch64): pid {}",
            p.pid
        );
        Ok(())
    })?;
    check("kernel feature probe", || {
        let probe = vm::guest_program(g.arch, "probe")?;
        g.client.write_file("/tmp/probe", 0o755, &probe)?;
        let o = out(g, &ExecRequest::new(["/tmp/probe"]))?;
        let text = String::from_utf8_lossy(&o.stdout);
        let has = |f: &str| text.lines().any(|l| l == format!("ok {f}"));
        // supermachine's KVM machine has no virtio-rng (its HVF machine has one), so on x86_64
        // the probe must find none, and that is its only failure.
        let rng_device = g.arch == Arch::Aarch64;
        let missing: Vec<&&str> = FEATURES
            .iter()
            .filter(|f| (rng_device || **f != RNG_FEATURE) && !has(f))
            .collect();
        ensure!(missing.is_empty(), "missing features {missing:?}:\n{text}");
        ensure!(
            has(RNG_FEATURE) == rng_device && o.status.code == u32::from(!rng_device),
            "virtio-rng where the machine has none, or the reverse ({:?}):\n{text}",
            o.status
        );
        Ok(())
    })?;
    Ok(())
}

pub fn boot_failure_check() -> Result<()> {
    check(
        "a root image that is not squashfs: one clear console line, as supermachine's init",
        || {
            let dir = util::build_dir().join(format!("bad-rootfs-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            // Give the VM a root image that is not a squashfs at all.
            let bad = dir.join("zeros.img");
            std::fs::write(&bad, vec![0u8; 1 << 20])?;
            let assets = vm::extract_assets(Arch::X86_64)?;
            let initrd = dir.join("initrd.cpio");
            std::fs::write(&initrd, vm::initramfs(&assets, None)?)?;
            let mut cfg = vm::qemu::Config::new(Arch::X86_64, assets.kernel, initrd, 128, 1);
            cfg.rootfs = Some(bad);
            let mut vm = vm::qemu::Vm::start(&cfg, dir.join("vm"))?;
            let seen = vm.wait_console(Duration::from_secs(60), |c| {
                c.contains(vm::init::NO_ROOTFS_LINE)
            })?;
            let seen = match seen {
                vm::qemu::ConsoleWait::Found(_) => Ok(()),
                vm::qemu::ConsoleWait::Exited(_, c) | vm::qemu::ConsoleWait::TimedOut(c) => Err(c),
            };
            drop(vm);
            std::fs::remove_dir_all(&dir)?;
            if let Err(console) = seen {
                bail!(
                    "no `{}` line within 60 s:\n{console}",
                    vm::init::NO_ROOTFS_LINE
                );
            }
            Ok(())
        },
    )
}
