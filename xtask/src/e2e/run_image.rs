//! `cargo xtask run --rootfs LAYOUT` with no command, booted: the image's own command runs
//! once through the agent, with its environment, directory and user.

use anyhow::{ensure, Result};

use crate::run::Plan;
use crate::vm::{self, rootfs};

/// The end-to-end check of `cargo xtask run --rootfs LAYOUT` with no command (part of the
/// e2e suite): the image's `Entrypoint ++ Cmd` runs once, through the agent, with its `Env`,
/// `WorkingDir` and `User`.
pub fn check() -> Result<()> {
    super::check(
        "run with no command: the image's Entrypoint + Cmd, Env, WorkingDir, User, once",
        || {
            let dir = crate::util::build_dir().join(format!("run-image-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            // One layer: the default rootfs (busybox, its links, the `app` user) and the
            // image's working directory, writable by `app`.
            let tree = dir.join("tree");
            rootfs::populate_default(&tree, &vm::extract_assets(crate::spec::Arch::X86_64)?)?;
            std::fs::create_dir_all(tree.join("srv/app"))?;
            crate::util::run(
                std::process::Command::new("chown")
                    .arg("1000:1000")
                    .arg(tree.join("srv/app")),
            )?;
            rootfs::tar_dir(&tree, &dir.join("layer.tar"))?;
            let config = serde_json::json!({"config": {
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo ran >> runs; echo \"$GREETING|$(pwd)|$(id -un):$(id -u)\"; exit 3"],
                "Env": ["PATH=/bin:/usr/bin", "GREETING=hello from the image"],
                "WorkingDir": "/srv/app",
                "User": "app",
            }});
            let layout = dir.join("layout");
            rootfs::write_oci_layout(&layout, &[std::fs::read(dir.join("layer.tar"))?], &config)?;
            let opts = vm::Options {
                rootfs: rootfs::Source::Oci(layout),
                ..vm::Options::default()
            };
            let plan = Plan::new(opts, Vec::new())?;
            let g = vm::boot(&plan.opts)?;
            let result = (|| {
                let o = super::out(&g, &plan.request(g.image.as_ref()))?;
                let text = String::from_utf8_lossy(&o.stdout);
                ensure!(
                    text == "hello from the image|/srv/app|app:1000\n" && o.status.code == 3,
                    "{o:?}"
                );
                // No boot-time run-workload started it a second time.
                ensure!(super::stdout(&g, "cat /srv/app/runs")? == "ran\n");
                Ok(())
            })();
            let result = result.map_err(|e| g.vm.failure(e));
            g.shutdown()?;
            drop(plan);
            std::fs::remove_dir_all(&dir)?;
            result
        },
    )
}
