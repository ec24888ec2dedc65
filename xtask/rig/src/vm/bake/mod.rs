//! supermachine's aarch64 (HVF) boot layout, written by our own code so that `cargo xtask
//! run --arch aarch64` and the end-to-end suite boot what supermachine 0.7.108 boots, plus
//! the host side it expects: the env service on vsock port 1026 and the console handshakes.
//!
//! # Layout (supermachine's `build_initramfs` and `materialize_delta_cache`, `src/bake/mod.rs`)
//! - **initramfs**: a gzip newc cpio of `init` (init-oci, 0755), the directories `proc`,
//!   `sys`, `dev` and `newroot`, and `supermachine-smpark.ko` (0644). No `/dev/console`: the
//!   kernel's built-in initramfs has it.
//! - **disks**: the image's squashfs as `/dev/vda`; the **delta layer** as `/dev/vdb`, a zstd
//!   squashfs of `init` (init-oci again: phase 2 runs it from the overlay),
//!   `supermachine-agent`, the `.supermachine-*` files of the [`Workload`] and the
//!   directories `proc sys dev dev/shm tmp run`; then ext4 volumes, read-write.
//! - **command line**: supermachine's bake words (`earlycon=pl011,mmio32,0x09000000
//!   console=ttyAMA0 quiet loglevel=4` from [`super::hvf::cmdline`], then `tsi_hijack
//!   supermachine.host_time=S`) and its worker's `supermachine.host_ipv6=`, with the rig's own
//!   words between the two parts ([`super::cmdline_words`]); no `panic=`, as supermachine
//!   passes none (the kernel's `PANIC_TIMEOUT=-1` ends the VM).
//! - **host**: [`EnvService`] serves `{"env":{…},"secrets":{…}}` to the guest's connection to
//!   host port 1026 (vhost-device-vsock hands a guest connection to host port P to the Unix
//!   socket `<uds-path>_P`); [`Responder`] answers `[SUPERMACHINE-KCACHE] ready` with `R\n`
//!   and `[SUPERMACHINE-PRE-EXEC] ready` with `P\n` on the serial console, as supermachine's
//!   host pushes them (a byte per write, and again until it reads `resumed`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

mod host;

pub use host::{EnvService, HostSide, Responder};

use init_oci::{cmdline, contract, files};

use super::cpio::Archive;
use super::rootfs::{self, ImageConfig};
use crate::util;

/// A guest path of init-oci's contract as a path inside the layer or archive that holds it
/// (`/.supermachine-cmd` → `.supermachine-cmd`).
pub fn layer_path(guest: &str) -> String {
    guest.trim_start_matches('/').to_string()
}
/// `PATH` of the environment served when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The uncompressed newc archive of the initramfs.
pub fn initramfs_cpio(init: &[u8], smpark: Option<&[u8]>) -> Vec<u8> {
    let mut a = Archive::new();
    a.file("init", 0o755, init);
    for d in ["proc", "sys", "dev", "newroot"] {
        a.dir(d, 0o755);
    }
    if let Some(ko) = smpark {
        a.file(&layer_path(contract::SMPARK_KO), 0o644, ko);
    }
    a.finish()
}

/// Compresses `data` with `gzip -n` (no name, no time stamp: the same bytes every time).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start gzip")?;
    let mut stdin = child.stdin.take().context("gzip has no stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("wait for gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the gzip writer thread panicked"))?
        .context("feed gzip")?;
    anyhow::ensure!(out.status.success(), "gzip failed: {}", out.status);
    Ok(out.stdout)
}

/// The initramfs supermachine's bake writes: [`initramfs_cpio`], gzip-compressed.
pub fn initramfs(init: &[u8], smpark: Option<&[u8]>) -> Result<Vec<u8>> {
    gzip(&initramfs_cpio(init, smpark))
}

/// What the delta layer tells init-oci about the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `/.supermachine-cmd`: argv, one token per line (always written, maybe empty).
    pub cmd: Vec<String>,
    /// `/.supermachine-workdir` (left out when empty or `/`, as the bake does).
    pub workdir: Option<String>,
    /// `/.supermachine-user`.
    pub user: Option<String>,
    /// `/.supermachine-hostname`.
    pub hostname: Option<String>,
    /// `/.supermachine-volumes`: one guest path per attached volume.
    pub volumes: Vec<String>,
    /// `/.supermachine-virtiofs-binds`: (tag, guest path).
    pub virtiofs_binds: Vec<(String, String)>,
    /// After the above: replaces (`Some`) or removes (`None`) a delta file, by its path in the
    /// layer (`.supermachine-cmd`, …), to feed init-oci bad input.
    pub edits: Vec<(String, Option<Vec<u8>>)>,
}

impl Workload {
    /// The workload of an image config: `Entrypoint ++ Cmd`, `WorkingDir`, `User`.
    pub fn from_image(c: &ImageConfig) -> Workload {
        Workload {
            cmd: c.argv(),
            workdir: c.working_dir.clone(),
            user: c.user.clone(),
            ..Workload::default()
        }
    }

    /// The default rootfs, a busybox image: its command is `sh`, as Docker's busybox image's.
    pub fn busybox() -> Workload {
        Workload {
            cmd: vec!["sh".into()],
            ..Workload::default()
        }
    }

    /// The delta layer's contract files, (path in the layer, contents).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let line = |s: &str| format!("{s}\n").into_bytes();
        let mut f: Vec<(String, Vec<u8>)> = vec![(
            layer_path(files::CMD),
            self.cmd.iter().flat_map(|t| line(t)).collect(),
        )];
        if let Some(w) = self
            .workdir
            .as_deref()
            .filter(|w| !w.is_empty() && *w != "/")
        {
            f.push((layer_path(files::WORKDIR), line(w)));
        }
        if let Some(u) = self.user.as_deref().filter(|u| !u.is_empty()) {
            f.push((layer_path(files::USER), line(u)));
        }
        if let Some(h) = &self.hostname {
            f.push((layer_path(files::HOSTNAME), line(h)));
        }
        if !self.volumes.is_empty() {
            f.push((
                layer_path(files::VOLUMES),
                self.volumes.iter().flat_map(|v| line(v)).collect(),
            ));
        }
        if !self.virtiofs_binds.is_empty() {
            f.push((
                layer_path(files::VIRTIOFS_BINDS),
                self.virtiofs_binds
                    .iter()
                    .flat_map(|(t, p)| line(&format!("{t}\t{p}")))
                    .collect(),
            ));
        }
        for (path, edit) in &self.edits {
            f.retain(|(p, _)| p != path);
            if let Some(bytes) = edit {
                f.push((path.clone(), bytes.clone()));
            }
        }
        f
    }
}

/// Writes the delta layer `out` (a zstd squashfs) from a scratch directory `stage`.
pub fn build_delta(
    init: &[u8],
    agent: &[u8],
    workload: &Workload,
    stage: &Path,
    out: &Path,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(stage);
    for d in ["proc", "sys", "dev/shm", "tmp", "run"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    for (name, bytes) in [
        ("init".to_string(), init),
        (layer_path(contract::AGENT), agent),
    ] {
        let p = stage.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    for (name, bytes) in workload.files() {
        let p = stage.join(&name);
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
    }
    // supermachine writes its layers at zstd level 3, owned by root.
    rootfs::mksquashfs(stage, out, &["-Xcompression-level", "3", "-all-root"])
        .with_context(|| format!("the delta layer {}", out.display()))?;
    let _ = std::fs::remove_dir_all(stage);
    Ok(())
}

/// An empty ext4 volume of `mib` MiB at `out`.
pub fn ext4_volume(out: &Path, mib: u64) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    f.set_len(mib << 20)?;
    util::output(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(out))
        .with_context(|| format!("mkfs.ext4 {}", out.display()))?;
    Ok(())
}

/// The environment the host serves on port 1026.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostEnv {
    /// `env`.
    pub env: BTreeMap<String, String>,
    /// `secrets` (set in the guest after `env`).
    pub secrets: BTreeMap<String, String>,
}

impl HostEnv {
    /// An image's `Env` (entries without `=` are left out), with [`DEFAULT_PATH`] when it sets
    /// no `PATH`.
    pub fn from_image(c: Option<&ImageConfig>) -> HostEnv {
        let mut env: BTreeMap<String, String> = c
            .into_iter()
            .flat_map(ImageConfig::env_pairs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        HostEnv {
            env,
            secrets: BTreeMap::new(),
        }
    }

    /// The document: `{"env":{…},"secrets":{…}}`.
    pub fn json(&self) -> String {
        serde_json::json!({ "env": self.env, "secrets": self.secrets }).to_string()
    }
}

/// How the aarch64 guest is baked and served (fields of [`super::Options`]).
#[derive(Clone, Debug)]
pub struct BakeOptions {
    /// The delta layer's workload; `None`: the image config's, else [`Workload::busybox`].
    pub workload: Option<Workload>,
    /// What port 1026 serves; `None`: [`HostEnv::from_image`].
    pub host_env: Option<HostEnv>,
    /// Serve port 1026 at all.
    pub env_service: bool,
    /// Bytes to ship as `supermachine-smpark.ko` instead of the bundled module.
    pub smpark_ko: Option<Vec<u8>>,
    /// ext4 volumes attached after the layers (`Workload::volumes` names their mount points).
    pub volumes: Vec<PathBuf>,
    /// `supermachine.host_ipv6=` of the command line.
    pub host_ipv6: bool,
}

impl Default for BakeOptions {
    fn default() -> BakeOptions {
        BakeOptions {
            workload: None,
            host_env: None,
            env_service: true,
            smpark_ko: None,
            volumes: Vec::new(),
            host_ipv6: true,
        }
    }
}

/// The rest of supermachine's HVF bake command line (`src/bake/mod.rs`), after the machine's
/// console words ([`super::hvf::cmdline`]) and the rig's own ([`super::cmdline_words`]), with
/// the worker's IPv6 word (`src/bin/worker.rs`).
pub fn cmdline(host_ipv6: bool) -> Vec<String> {
    let now = crate::util::unix_now_secs();
    vec![
        "tsi_hijack".into(),
        format!("{}{now}", cmdline::HOST_TIME),
        format!("{}{}", cmdline::HOST_IPV6, u8::from(host_ipv6)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_is_supermachines_layout() {
        let cpio = initramfs_cpio(b"INIT", Some(b"KO"));
        let e = super::super::cpio::parse(&cpio).unwrap();
        let names: Vec<(&str, u32)> = e.iter().map(|e| (e.name.as_str(), e.mode)).collect();
        let ko = layer_path(contract::SMPARK_KO);
        assert_eq!(
            names,
            [
                ("init", 0o100755),
                ("proc", 0o040755),
                ("sys", 0o040755),
                ("dev", 0o040755),
                ("newroot", 0o040755),
                (ko.as_str(), 0o100644)
            ]
        );
        let gz = initramfs(b"INIT", None).unwrap();
        assert_eq!(&gz[..2], b"\x1f\x8b", "not gzip");
        assert_eq!(gz, initramfs(b"INIT", None).unwrap(), "not reproducible");
    }

    #[test]
    fn delta_files_and_edits() {
        let w = Workload {
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            workdir: Some("/".into()),
            user: Some("app".into()),
            hostname: Some("box".into()),
            volumes: vec!["/data".into()],
            virtiofs_binds: vec![("src".into(), "/work".into())],
            edits: vec![
                (layer_path(files::USER), Some(b"nobody\n".to_vec())),
                (layer_path(files::HOSTNAME), None),
            ],
        };
        let f: BTreeMap<String, Vec<u8>> = w.files().into_iter().collect();
        let file = |guest: &str| f.get(&layer_path(guest)).map(Vec::as_slice);
        // Each file reads back through init-oci's own parser.
        let cmd = files::parse_cmd(file(files::CMD).unwrap()).unwrap();
        assert_eq!(cmd.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(file(files::WORKDIR), None, "`/` is left out");
        assert_eq!(file(files::HOSTNAME), None);
        let user = files::parse_user(file(files::USER).unwrap()).unwrap();
        assert_eq!(user.as_deref(), Some("nobody"));
        let volumes = String::from_utf8(file(files::VOLUMES).unwrap().to_vec()).unwrap();
        assert_eq!(files::parse_volumes(&volumes).0, ["/data"]);
        let binds = String::from_utf8(file(files::VIRTIOFS_BINDS).unwrap().to_vec()).unwrap();
        let (binds, refused) = files::parse_binds(&binds);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(binds.len(), 1);
    }

    #[test]
    fn host_env_document() {
        let c = ImageConfig {
            env: Some(vec!["A=1".into(), "B=x=y".into(), "bad".into()]),
            ..ImageConfig::default()
        };
        let e = HostEnv::from_image(Some(&c));
        assert_eq!(
            e.json(),
            format!(r#"{{"env":{{"A":"1","B":"x=y","PATH":"{DEFAULT_PATH}"}},"secrets":{{}}}}"#)
        );
    }
}
