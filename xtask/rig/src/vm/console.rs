//! A VM driven over its serial console, without vsock: QEMU cannot migrate a VM with
//! `vhost-user-vsock`, so the smpark module checks and the snapshot cycles boot an aarch64
//! guest whose PID 1 is `xtask/guest-probe/park-console.c`, one command line in and one
//! answer line out (migratable: the PL011 is part of the snapshot).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::cpio;
use super::qemu::{Config, Vm};
use crate::spec::Arch;
use crate::util;

/// vCPUs of the multi-CPU aarch64 checks.
pub const CPUS: u32 = 4;

pub fn guest_program(name: &str) -> Result<Vec<u8>> {
    super::guest_program(Arch::Aarch64, name)
}

/// Starts an aarch64 VM on the shipped Image with `files` as its initramfs.
pub fn start_vm(
    assets: &super::Assets,
    files: &[(&str, Vec<u8>)],
    cpus: u32,
    vsock: bool,
) -> Result<(Vm, Config)> {
    start_vm_configured(assets, files, cpus, |cfg| cfg.vsock = vsock)
}

/// Writes the initramfs of `files`, lets `configure` adjust the QEMU config, and boots.
pub fn start_vm_configured(
    assets: &super::Assets,
    files: &[(&str, Vec<u8>)],
    cpus: u32,
    configure: impl FnOnce(&mut Config),
) -> Result<(Vm, Config)> {
    let dir = super::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, cpio::initramfs(files))?;
    let mut cfg = Config::new(Arch::Aarch64, assets.kernel.clone(), initrd, 256, cpus);
    configure(&mut cfg);
    Ok((Vm::start(&cfg, dir)?, cfg))
}

/// The serial console of a park-console guest: one command line in, one answer line out.
#[derive(Debug)]
pub struct Console {
    stream: UnixStream,
    buf: Vec<u8>,
    log: String,
}

const ANSWER: &str = "park-console: ";

impl Console {
    pub fn connect(vm: &Vm) -> Result<Console> {
        let stream = UnixStream::connect(&vm.serial)
            .with_context(|| format!("connect to the serial console {}", vm.serial.display()))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Console {
            stream,
            buf: Vec::new(),
            log: String::new(),
        })
    }

    /// The next answer line, skipping kernel messages.
    pub fn answer(&mut self, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line).trim().to_string();
                self.log.push_str(&line);
                self.log.push('\n');
                if let Some(a) = line.strip_prefix(ANSWER) {
                    return Ok(a.to_string());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "no answer on the serial console within {timeout:?}; it showed:\n{}",
                    self.log
                );
            }
            if !util::read_more(&mut self.stream, &mut self.buf)? {
                bail!("the serial console closed; it showed:\n{}", self.log);
            }
        }
    }

    /// Sends a command and returns its answer, which must start with `expect`.
    pub fn command(&mut self, cmd: &str, expect: &str) -> Result<String> {
        self.stream.write_all(format!("{cmd}\n").as_bytes())?;
        let a = self.answer(Duration::from_secs(60))?;
        ensure!(
            a.starts_with(expect),
            "`{cmd}` answered `{a}`, expected `{expect}…`"
        );
        Ok(a)
    }
}

/// The initramfs of a park-console guest: its PID 1 and the shipped smpark.ko.
pub fn console_files(assets: &super::Assets) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let ko = assets
        .smpark
        .as_ref()
        .context("the aarch64 crate has no smpark.ko")?;
    Ok(vec![
        ("init", guest_program("park-console")?),
        ("smpark.ko", std::fs::read(ko)?),
    ])
}

/// Like [`start_vm`] (no vsock), with QEMU's gdbstub open on [`Vm::gdb`] so the host can
/// write guest-physical memory the way a VMM does.
pub fn start_vm_with_gdb(
    assets: &super::Assets,
    files: &[(&str, Vec<u8>)],
    cpus: u32,
) -> Result<(Vm, Config)> {
    start_vm_configured(assets, files, cpus, |cfg| {
        cfg.vsock = false;
        cfg.gdb = true;
    })
}

/// Saves `vm` into `file` and restores it in a new QEMU started from `cfg`.
pub fn restore_in_new_qemu(vm: &Vm, cfg: &Config, file: &Path) -> Result<Vm> {
    vm.monitor()?.save(file)?;
    let mut restored_cfg = cfg.clone();
    restored_cfg.incoming = true;
    let restored = Vm::start(&restored_cfg, super::scratch_dir())?;
    restored.monitor()?.restore(file)?;
    Ok(restored)
}
