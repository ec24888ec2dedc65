//! init-oci under bad input: a missing or garbage command file, an unknown user, a missing
//! workdir, no env service, a corrupt smpark.ko, a missing virtio-fs tag, a bad hostname, one
//! CPU, and no disk at all. Each time PID 1 says why on the console, parks instead of exiting
//! (which would panic the kernel), and the agent still answers.

use std::time::Duration;

use anyhow::{ensure, Result};
use init_oci::contract::{
    parking_line, AGENT, ENV_PORT, EXIT_BAD_USER, EXIT_NOT_RUN, HEARTBEAT, HOST_CID,
};
use init_oci::files;
use supermachine_agent::protocol::{ExecRequest, PROTOCOL_VERSION};
use supermachine_guest::user;

use super::{in_order, no_command, wait_console};
use crate::e2e::{check, out};
use crate::progress;
use crate::spec::Arch;
use crate::vm::bake::{self, BakeOptions, Workload};
use crate::vm::qemu::VsockDevice;
use crate::vm::{self, Options};

/// Boots `opts` and checks its console for `lines` (each a substring of one line) once the
/// agent answers and the parking line is there, then that PID 1 survives.
fn bad_boot(name: &str, opts: &Options, lines: &[String], exit: i32) -> Result<()> {
    check(name, || {
        let g = vm::boot(opts)?;
        let result = (|| -> Result<()> {
            let console = wait_console(&g, &parking_line(exit), Duration::from_secs(30))?;
            for l in lines {
                ensure!(console.contains(l), "no `{l}` on the console:\n{console}");
            }
            // PID 1 survived everything: the agent answers, a workload-less guest runs execs.
            std::thread::sleep(Duration::from_millis(500));
            let p = g.client.probe()?;
            ensure!(p.protocol == PROTOCOL_VERSION, "{p:?}");
            ensure!(out(&g, &ExecRequest::new(["true"]))?.status.code == 0);
            let console = g.vm.console_text();
            ensure!(
                !console.contains("Kernel panic") && !console.contains("init-oci: internal error"),
                "{console}"
            );
            Ok(())
        })();
        if let Err(e) = result {
            return Err(g.vm.failure(e));
        }
        g.shutdown()
    })
}

/// Bad input from the host, two boots: each problem gets its console line, and PID 1 lives.
pub fn bad_input_checks() -> Result<()> {
    let corrupt_ko = b"\x7fELF this is not a kernel module".repeat(64);
    let first = Options {
        arch: Arch::Aarch64,
        cpus: 2,
        bake: BakeOptions {
            workload: Some(Workload {
                user: Some("nosuchuser".into()),
                workdir: Some("/nonexistent".into()),
                virtiofs_binds: vec![("nosuchtag".into(), "/mnt/share".into())],
                edits: vec![(bake::layer_path(files::CMD), None)],
                ..Workload::default()
            }),
            env_service: false,
            smpark_ko: Some(corrupt_ko),
            ..BakeOptions::default()
        },
        // vhost-device-vsock: supermachine's muxer always answers port 1026, so only another
        // VMM can leave init-oci without an env service.
        vsock_device: VsockDevice::VhostDeviceVsock,
        ..Options::default()
    };
    bad_boot(
        "init-oci bad input: no command file, unknown user, missing workdir, no env service, corrupt smpark.ko, missing virtio-fs tag",
        &first,
        &[
            "init-oci: load smpark.ko: finit_module: ".into(),
            "init-oci: mount virtiofs nosuchtag on /mnt/share: ".into(),
            format!("init-oci: env: connect to vsock {HOST_CID}:{ENV_PORT}: "),
            "going on without the host's environment".into(),
            no_command(),
            "init-oci: chdir(/nonexistent): No such file or directory".into(),
            format!("init-oci: {}", user::Error::UnknownUser("nosuchuser".into())),
        ],
        EXIT_BAD_USER,
    )?;
    let second = Options {
        arch: Arch::Aarch64,
        cpus: 1,
        bake: BakeOptions {
            workload: Some(Workload {
                hostname: Some("two words".into()),
                edits: vec![(
                    bake::layer_path(files::CMD),
                    Some(b"\xff\xfe\x01garbage\n--\x80\n".to_vec()),
                )],
                ..Workload::default()
            }),
            ..BakeOptions::default()
        },
        vsock_device: VsockDevice::Supermachine,
        ..Options::default()
    };
    bad_boot(
        "init-oci bad input: a garbage command file (not UTF-8, control bytes), a bad hostname, 1 CPU",
        &second,
        &[
            "init-oci: 1 CPU online: smpark.ko not loaded".into(),
            format!("init-oci: {}: \"two words\" is not a hostname", files::HOSTNAME),
            "init-oci: child execvp(".into(),
            "garbage): No such file or directory".into(),
        ],
        EXIT_NOT_RUN,
    )
}

/// init-oci with no disk: it stays in the initramfs, says why, finds no agent and no
/// command, and parks instead of exiting (which would panic the kernel).
pub fn no_disk_check() -> Result<()> {
    check(
        "init-oci with no disk: stays in the initramfs, one line per missing piece, PID 1 parks",
        || {
            let assets = vm::extract_assets(Arch::Aarch64)?;
            let dir = vm::scratch_dir();
            std::fs::create_dir_all(&dir)?;
            let initrd = dir.join("initrd.cpio.gz");
            std::fs::write(&initrd, vm::initramfs(&assets, None)?)?;
            let cfg = vm::qemu::Config::new(Arch::Aarch64, assets.kernel.clone(), initrd, 256, 1);
            let mut vm = vm::qemu::Vm::start(&cfg, dir)?;
            let parked = parking_line(EXIT_NOT_RUN);
            let seen = vm.wait_console(Duration::from_secs(60), |c| c.contains(&parked))?;
            ensure!(
                matches!(seen, vm::qemu::ConsoleWait::Found(_)),
                "no `{parked}` within 60 s:\n{}",
                vm.logs()
            );
            std::thread::sleep(Duration::from_secs(2));
            let console = vm.console_text();
            ensure!(
                vm.try_wait()?.is_none(),
                "QEMU exited after the parking line:\n{console}"
            );
            in_order(
                &console,
                &[
                    "init-oci: hello from pid 1 (initramfs)".into(),
                    "init-oci: 1 CPU online: smpark.ko not loaded".into(),
                    "init-oci: no /dev/vda: no image layers; staying in the initramfs".into(),
                    format!("exec-agent: {AGENT} missing — exec disabled"),
                    "exec-agent: ready file absent after 1000 ms; proceeding".into(),
                    HEARTBEAT.into(),
                    no_command(),
                    "init-oci: child execvp(/bin/sh): No such file or directory".into(),
                    parked.clone(),
                ],
            )?;
            ensure!(!console.contains("Kernel panic"), "{console}");
            progress!("e2e:   init-oci parked with QEMU still running 2 s later");
            Ok(())
        },
    )
}
