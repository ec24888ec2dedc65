//! Root filesystem images: a squashfs made from a directory, a tarball, an OCI image layout,
//! or the project's own tiny busybox rootfs (the default, so `run` works offline).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use supermachine_guest::user::table;

use crate::util;

/// The part of an OCI image config (its `config` object) a workload needs. Field names are
/// the OCI ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`, `KEY=VALUE` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User` (supermachine's x86 bake ignores it; so does the run-workload script).
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// `s` as one single-quoted shell word (`'` becomes `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Is `k` a name `export` accepts (`[A-Za-z_][A-Za-z0-9_]*`)?
fn is_shell_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

impl ImageConfig {
    /// `Env` as `(key, value)` pairs; entries without `=` are skipped.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .flatten()
            .filter_map(|kv| kv.split_once('='))
    }

    /// `Entrypoint ++ Cmd`.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.clone().unwrap_or_default());
        argv
    }

    /// The `/.supermachine/run-workload` a supermachine bake writes for this config: one
    /// `export K='v'` line per `Env` entry (split at the first `=`; entries whose key is not
    /// a shell name are left out, since they would break the script and the launch script's
    /// `eval` of its export lines), a best-effort `cd` to `WorkingDir`, and `exec` of
    /// `Entrypoint ++ Cmd`, every word single-quoted. `None` when there is no command.
    pub fn run_workload_script(&self) -> Option<String> {
        let argv = self.argv();
        if argv.is_empty() {
            return None;
        }
        let mut s = String::from("#!/.supermachine/busybox sh\n");
        for (k, v) in self.env_pairs().filter(|(k, _)| is_shell_name(k)) {
            s.push_str(&format!("export {k}={}\n", sh_quote(v)));
        }
        if let Some(dir) = self.working_dir.as_deref().filter(|d| !d.is_empty()) {
            s.push_str(&format!("cd {} 2>/dev/null || true\n", sh_quote(dir)));
        }
        s.push_str("exec");
        for a in &argv {
            s.push(' ');
            s.push_str(&sh_quote(a));
        }
        s.push('\n');
        Some(s)
    }
}

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
    // arm64 one, Debian's full busybox-static, has every applet of that reduced build.
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
    // The users of the guest contract's user table (root, an unprivileged `app` (1000) in
    // `wheel`, nobody, and lines to skip), so both PID 1s are checked against it.
    std::fs::write(dir.join("etc/passwd"), table::PASSWD)?;
    std::fs::write(dir.join("etc/group"), table::GROUP)?;
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

/// Where supermachine's `/.supermachine/launch` looks for the image's workload: a
/// `#!/.supermachine/busybox sh` script of `export` lines, a `cd` and an `exec`, which the
/// launch script starts in the background (its pid in `/run/supermachine-workload.pid`) before
/// it execs the agent. It also evaluates the `export` lines into the agent's environment.
pub const RUN_WORKLOAD: &str = ".supermachine/run-workload";

/// Writes `script` as the root tree's `/.supermachine/run-workload` (mode 0755).
pub fn add_run_workload(tree: &Path, script: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = tree.join(RUN_WORKLOAD);
    let dir = p.parent().context("run-workload path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(&p, script).with_context(|| format!("write {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", p.display()))
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

/// Unpacks an OCI layout into `into` the way supermachine's bake stages it: the layers, then
/// the image's command as `/.supermachine/run-workload` (when it has one).
pub fn stage_oci(layout: &Path, into: &Path) -> Result<ImageConfig> {
    let c = unpack_oci(layout, into)?;
    if let Some(script) = c.run_workload_script() {
        add_run_workload(into, &script)?;
    }
    Ok(c)
}

/// Packs the tree `dir` into the tarball `out` (an image layer; owners and modes kept).
pub fn tar_dir(dir: &Path, out: &Path) -> Result<()> {
    util::run(
        Command::new("tar")
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(dir)
            .arg("."),
    )
    .with_context(|| format!("pack {} into {}", dir.display(), out.display()))
}

/// Writes an OCI image layout at `layout` holding one image: `layers` (tarballs, lowest
/// first) and `config`, the image config document (`{"config": {"Cmd": …}}`).
pub fn write_oci_layout(layout: &Path, layers: &[Vec<u8>], config: &Value) -> Result<()> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    let put = |bytes: &[u8]| -> Result<Value> {
        let hex = util::sha256(bytes);
        let p = blobs.join(&hex);
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
        Ok(serde_json::json!({ "digest": format!("sha256:{hex}"), "size": bytes.len() }))
    };
    let layers = layers
        .iter()
        .map(|l| put(l))
        .collect::<Result<Vec<Value>>>()?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": put(config.to_string().as_bytes())?,
        "layers": layers,
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [put(manifest.to_string().as_bytes())?],
    });
    for (name, text) in [
        (
            "oci-layout",
            r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
        ),
        ("index.json", index.to_string()),
    ] {
        let p = layout.join(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    if p.is_dir() && !p.is_symlink() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Packs `tree` into the zstd squashfs `out`, reproducibly (zero timestamps), with `extra`
/// mksquashfs options.
pub fn mksquashfs(tree: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    util::output(
        Command::new("mksquashfs")
            .arg(tree)
            .arg(out)
            .args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-comp",
                "zstd",
                "-mkfs-time",
                "0",
                "-all-time",
                "0",
            ])
            .args(extra),
    )
    .with_context(|| format!("mksquashfs {}", tree.display()))?;
    Ok(())
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
    let (tree, config) = match source {
        Source::Default => {
            populate_default(stage, assets)?;
            (stage.to_path_buf(), None)
        }
        Source::Dir(d) => (d.clone(), None),
        Source::Tar(t) => {
            extract_tar(t, stage)?;
            (stage.to_path_buf(), None)
        }
        Source::Oci(l) => {
            let c = stage_oci(l, stage)?;
            (stage.to_path_buf(), Some(c))
        }
    };
    mksquashfs(&tree, out, &[])?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, files: &[&str]) -> Vec<u8> {
        let _ = std::fs::remove_dir_all(dir);
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        let out = dir.with_extension("tar");
        tar_dir(dir, &out).unwrap();
        std::fs::read(out).unwrap()
    }

    #[test]
    fn oci_layers_apply_in_order_with_whiteouts() {
        let root = util::build_dir().join(format!("oci-test-{}", std::process::id()));
        let layout = root.join("layout");
        let l1 = layer(&root.join("l1"), &["a/keep", "a/gone", "c/old"]);
        let l2 = layer(
            &root.join("l2"),
            &["a/.wh.gone", "b/new", "c/.wh..wh..opq", "c/fresh"],
        );
        let config = serde_json::json!({"config":{"Cmd":["sh"],"Env":["X=1"],"WorkingDir":"/b"}});
        write_oci_layout(&layout, &[l1, l2], &config).unwrap();

        assert_eq!(
            Source::parse(layout.to_str().unwrap()).unwrap(),
            Source::Oci(layout.clone())
        );
        let out = root.join("rootfs");
        std::fs::create_dir_all(&out).unwrap();
        let cfg = stage_oci(&layout, &out).unwrap();
        let wl = std::fs::read_to_string(out.join(RUN_WORKLOAD)).unwrap();
        assert!(
            wl.ends_with("cd '/b' 2>/dev/null || true\nexec 'sh'\n"),
            "{wl}"
        );
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
    fn run_workload_script_is_supermachines_shape_and_runs() {
        let c = ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo \"$A|$B\"; pwd".into()]),
            env: Some(vec![
                "A=it's".into(),
                "B=x=y".into(),
                "bad-key=1".into(),
                "novalue".into(),
            ]),
            working_dir: Some("/tmp".into()),
            user: Some("app".into()),
        };
        let s = c.run_workload_script().unwrap();
        assert_eq!(
            s,
            "#!/.supermachine/busybox sh\n\
             export A='it'\\''s'\n\
             export B='x=y'\n\
             cd '/tmp' 2>/dev/null || true\n\
             exec '/bin/sh' '-c' 'echo \"$A|$B\"; pwd'\n"
        );
        // The launch script runs it with `sh`; so does this test, on the host.
        let out = Command::new("sh").arg("-c").arg(&s).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's|x=y\n/tmp\n");
        assert_eq!(ImageConfig::default().run_workload_script(), None);
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
