//! Root filesystem images: a squashfs made from a directory, a tarball, an OCI image layout,
//! or the project's own tiny busybox rootfs (the default, so `run` works offline).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use supermachine_agent::protocol::ImageConfig;

use crate::util;

/// Where the root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in busybox rootfs.
    Default,
    /// A directory tree.
    Dir(PathBuf),
    /// A tarball (any compression GNU tar detects).
    Tar(PathBuf),
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    Oci(PathBuf),
}

impl Source {
    /// Classifies a `--rootfs` argument.
    pub fn parse(arg: &str) -> Result<Source> {
        let p = PathBuf::from(arg);
        if p.join("oci-layout").is_file() {
            Ok(Source::Oci(p))
        } else if p.is_dir() {
            Ok(Source::Dir(p))
        } else if p.is_file() {
            Ok(Source::Tar(p))
        } else {
            bail!("--rootfs {arg}: no such directory, tarball or OCI image layout")
        }
    }
}

/// Users of the default rootfs: root, an unprivileged `app` (1000) in `wheel`, and nobody.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n";

/// Lays out the default rootfs in `dir`: the guest arch's busybox with all its applet links,
/// /etc, /tmp, homes.
pub fn populate_default(dir: &Path, assets: &super::Assets) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home/app", "tmp", "dev", "proc",
        "sys", "run",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(&assets.busybox, dir.join("bin/busybox"))
        .context("copy busybox into the rootfs")?;
    // The applet list comes from the shipped x86_64 busybox, which runs on this host; the
    // arm64 one is the same Debian package and config, so it has the same applets.
    let list = util::output(Command::new(&assets.busybox_host).arg("--list-full"))?;
    for applet in list
        .lines()
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
    {
        let link = dir.join(applet);
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        if !link.exists() {
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("symlink {}", link.display()))?;
        }
    }
    std::fs::write(dir.join("etc/passwd"), PASSWD)?;
    std::fs::write(dir.join("etc/group"), GROUP)?;
    std::fs::write(dir.join("etc/hostname"), "supermachine\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    util::run(
        Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(dir.join("home/app")),
    )?;
    Ok(())
}

/// Unpacks a tarball into `into`, keeping permissions and numeric owners.
pub fn extract_tar(tar: &Path, into: &Path) -> Result<()> {
    util::run(
        Command::new("tar")
            .args(["-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(into)
            .arg("--numeric-owner"),
    )
    .with_context(|| format!("unpack {}", tar.display()))
}

fn blob(layout: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest.split_once(':').context("digest without algorithm")?;
    let p = layout.join("blobs").join(alg).join(hex);
    if !p.is_file() {
        bail!("OCI layout {}: blob {digest} is missing", layout.display());
    }
    Ok(p)
}

fn read_json(p: &Path) -> Result<Value> {
    let t = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("parse {}", p.display()))
}

/// Applies the layers of the first image in an OCI layout to `into`, honouring whiteouts.
/// Returns the image config.
pub fn unpack_oci(layout: &Path, into: &Path) -> Result<ImageConfig> {
    let index = read_json(&layout.join("index.json"))?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .with_context(|| format!("{}/index.json lists no manifest", layout.display()))?;
    let manifest = read_json(&blob(layout, digest)?)?;
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"]
            .as_str()
            .context("manifest has no config")?,
    )?)?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest has no layers")?;
    for layer in layers {
        let path = blob(
            layout,
            layer["digest"].as_str().context("layer without digest")?,
        )?;
        // Whiteouts first: they delete what lower layers put there.
        let names = util::output(Command::new("tar").arg("-tf").arg(&path))?;
        for name in names.lines() {
            let n = Path::new(name.trim_start_matches("./"));
            let (Some(parent), Some(file)) = (n.parent(), n.file_name().and_then(|f| f.to_str()))
            else {
                continue;
            };
            if file == ".wh..wh..opq" {
                if let Ok(rd) = std::fs::read_dir(into.join(parent)) {
                    for e in rd.flatten() {
                        let _ = remove_any(&e.path());
                    }
                }
            } else if let Some(hidden) = file.strip_prefix(".wh.") {
                let _ = remove_any(&into.join(parent).join(hidden));
            }
        }
        extract_tar(&path, into)?;
        for name in names.lines() {
            let n = Path::new(name.trim_start_matches("./"));
            if n.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(".wh."))
            {
                let _ = remove_any(&into.join(n));
            }
        }
    }
    Ok(serde_json::from_value(config["config"].clone()).unwrap_or_default())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    if p.is_dir() && !p.is_symlink() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Makes the squashfs image `out` from `source`. `stage` is an empty scratch directory.
/// Returns the image config when the source is an OCI layout.
pub fn build(
    source: &Source,
    assets: &super::Assets,
    stage: &Path,
    out: &Path,
) -> Result<Option<ImageConfig>> {
    std::fs::create_dir_all(stage)?;
    let (tree, config, all_root) = match source {
        Source::Default => {
            populate_default(stage, assets)?;
            (stage.to_path_buf(), None, false)
        }
        Source::Dir(d) => (d.clone(), None, false),
        Source::Tar(t) => {
            extract_tar(t, stage)?;
            (stage.to_path_buf(), None, false)
        }
        Source::Oci(l) => {
            let c = unpack_oci(l, stage)?;
            (stage.to_path_buf(), Some(c), false)
        }
    };
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(&tree).arg(out).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-comp",
        "zstd",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]);
    if all_root {
        cmd.arg("-all-root");
    }
    util::output(&mut cmd).with_context(|| format!("mksquashfs {}", tree.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_blob(layout: &Path, bytes: &[u8]) -> String {
        let hex = util::sha256(bytes);
        std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    fn layer(dir: &Path, files: &[&str]) -> Vec<u8> {
        let _ = std::fs::remove_dir_all(dir);
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        let out = dir.with_extension("tar");
        util::run(
            Command::new("tar")
                .arg("-cf")
                .arg(&out)
                .arg("-C")
                .arg(dir)
                .arg("."),
        )
        .unwrap();
        std::fs::read(out).unwrap()
    }

    #[test]
    fn oci_layers_apply_in_order_with_whiteouts() {
        let root = util::build_dir().join(format!("oci-test-{}", std::process::id()));
        let layout = root.join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let l1 = put_blob(
            &layout,
            &layer(&root.join("l1"), &["a/keep", "a/gone", "c/old"]),
        );
        let l2 = put_blob(
            &layout,
            &layer(
                &root.join("l2"),
                &["a/.wh.gone", "b/new", "c/.wh..wh..opq", "c/fresh"],
            ),
        );
        let config = put_blob(
            &layout,
            br#"{"config":{"Cmd":["sh"],"Env":["X=1"],"WorkingDir":"/b"}}"#,
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}"}},"layers":[{{"digest":"{l1}"}},{{"digest":"{l2}"}}]}}"#
        );
        let m = put_blob(&layout, manifest.as_bytes());
        std::fs::write(
            layout.join("index.json"),
            format!(r#"{{"manifests":[{{"digest":"{m}"}}]}}"#),
        )
        .unwrap();

        assert_eq!(
            Source::parse(layout.to_str().unwrap()).unwrap(),
            Source::Oci(layout.clone())
        );
        let out = root.join("rootfs");
        std::fs::create_dir_all(&out).unwrap();
        let cfg = unpack_oci(&layout, &out).unwrap();
        assert!(
            out.join("a/keep").is_file()
                && out.join("b/new").is_file()
                && out.join("c/fresh").is_file()
        );
        assert!(!out.join("a/gone").exists(), "whiteout ignored");
        assert!(!out.join("c/old").exists(), "opaque dir ignored");
        assert!(!out.join("a/.wh.gone").exists() && !out.join("c/.wh..wh..opq").exists());
        assert_eq!(cfg.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(cfg.working_dir.as_deref(), Some("/b"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn classifies_sources() {
        let dir = std::env::temp_dir().join(format!("smk-src-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("oci")).unwrap();
        std::fs::write(dir.join("oci/oci-layout"), "{}").unwrap();
        std::fs::write(dir.join("x.tar"), "").unwrap();
        assert_eq!(
            Source::parse(dir.to_str().unwrap()).unwrap(),
            Source::Dir(dir.clone())
        );
        assert_eq!(
            Source::parse(dir.join("oci").to_str().unwrap()).unwrap(),
            Source::Oci(dir.join("oci"))
        );
        assert_eq!(
            Source::parse(dir.join("x.tar").to_str().unwrap()).unwrap(),
            Source::Tar(dir.join("x.tar"))
        );
        assert!(Source::parse("/no/such")
            .unwrap_err()
            .to_string()
            .contains("/no/such"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
