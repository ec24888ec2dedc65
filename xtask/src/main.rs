//! `cargo xtask`: the project's tooling (matklad's xtask convention).
//!
//! ```text
//! cargo xtask build-assets [--arch x86_64|aarch64|all] [--only NAME] [--force]
//! cargo xtask codegen [--check]
//! cargo xtask setup
//! cargo xtask run [--arch x86_64|aarch64] [--rootfs DIR|TAR|OCI] [--mem MiB] [--cpus N] [--tty] [-- CMD ARGS…]
//! cargo xtask test [--e2e-only [--arch x86_64|aarch64|all]]
//! cargo xtask conformance [--assets ours|upstream|both|ours-own-init]
//! cargo xtask snapshot-cycles [N] [--no-park]
//! cargo xtask bench [--arch x86_64|aarch64|all] [--quick] [--update-readme]
//! cargo xtask fuzz [--target NAME]... [--seconds N]
//! ```
//!
//! `main` only dispatches; each command is a module.

#[cfg(test)]
mod asset_tests;
#[cfg(feature = "vm")]
mod bench;
mod build_assets;
mod codegen;
#[cfg(all(test, feature = "vm"))]
mod extraction_tests;
mod fuzz;
mod manifest;
mod pins;
#[cfg(feature = "vm")]
mod run;
mod setup;
mod spec;
#[cfg(feature = "vm")]
mod test;
mod util;
#[cfg(feature = "vm")]
mod vm;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <build-assets|codegen|setup|run|test|conformance|snapshot-cycles|bench|fuzz> [options]
  build-assets [--arch x86_64|aarch64|all] [--only NAME] [--force]
  codegen [--check]
  setup
  run [--arch x86_64|aarch64] [--rootfs DIR|TAR|OCI-LAYOUT] [--mem MiB] [--cpus N] [--tty] [-- CMD ARGS...]
  test [--e2e-only [--arch x86_64|aarch64|all]]
  conformance [--assets ours|upstream|both|ours-own-init]   supermachine 0.7.108's own client
  snapshot-cycles [N] [--no-park]   aarch64, 4 vCPUs: N save/restore cycles (default 100)
  bench [--arch x86_64|aarch64|all] [--quick] [--update-readme]
  fuzz [--target NAME]... [--seconds N]   cargo-fuzz targets, N seconds each (default 60)";

/// Pops the value of a `--flag VALUE` pair.
fn value(args: &mut std::vec::IntoIter<String>, flag: &str) -> Result<String> {
    args.next()
        .with_context(|| format!("{flag} needs a value\n{USAGE}"))
}

fn main() {
    if let Err(e) = dispatch() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> Result<()> {
    let mut args = std::env::args().skip(1).collect::<Vec<_>>().into_iter();
    let Some(cmd) = args.next() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "build-assets" => {
            let mut a = build_assets::Args {
                arches: spec::Arch::ALL.to_vec(),
                only: None,
                force: false,
            };
            while let Some(flag) = args.next() {
                match flag.as_str() {
                    "--arch" => a.arches = spec::Arch::parse(&value(&mut args, "--arch")?)?,
                    "--only" => a.only = Some(value(&mut args, "--only")?),
                    "--force" => a.force = true,
                    other => bail!("build-assets: unknown option {other}\n{USAGE}"),
                }
            }
            build_assets::run(a)
        }
        "codegen" => codegen::run(args.next().as_deref() == Some("--check")),
        "setup" => setup::run(),
        "fuzz" => {
            let (mut targets, mut seconds) = (Vec::new(), 60);
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--target" => targets.push(value(&mut args, "--target")?),
                    "--seconds" => {
                        let v = value(&mut args, "--seconds")?;
                        seconds = v
                            .parse()
                            .with_context(|| format!("fuzz: --seconds {v}: not a number"))?;
                    }
                    other => bail!("fuzz: unknown option {other}\n{USAGE}"),
                }
            }
            fuzz::run(&targets, seconds).map(drop)
        }
        #[cfg(feature = "vm")]
        "run" => {
            let code = run::run(args.collect())?;
            std::process::exit(code);
        }
        #[cfg(feature = "vm")]
        "test" => match args.next().as_deref() {
            None => test::run(),
            Some("--e2e-only") => {
                let arches = match args.next().as_deref() {
                    None => spec::Arch::ALL.to_vec(),
                    Some("--arch") => spec::Arch::parse(&value(&mut args, "--arch")?)?,
                    Some(other) => bail!("test --e2e-only: unknown option {other}\n{USAGE}"),
                };
                vm::install_signal_cleanup();
                vm::e2e::run(&arches)
            }
            Some(other) => bail!("test: unknown option {other} (only --e2e-only)"),
        },
        #[cfg(feature = "vm")]
        "conformance" => {
            let which = match args.next().as_deref() {
                None => vm::conformance::Which::parse("both")?,
                Some("--assets") => vm::conformance::Which::parse(&value(&mut args, "--assets")?)?,
                Some(other) => bail!("conformance: unknown option {other}\n{USAGE}"),
            };
            setup::run()?;
            vm::install_signal_cleanup();
            vm::conformance::run(&which)
        }
        #[cfg(feature = "vm")]
        "snapshot-cycles" => {
            let mut n = 100;
            let mut park = true;
            for a in args {
                match a.as_str() {
                    "--no-park" => park = false,
                    v => {
                        n = v.parse().with_context(|| {
                            format!("snapshot-cycles: {v}: expected a count or --no-park")
                        })?
                    }
                }
            }
            vm::install_signal_cleanup();
            let start = std::time::Instant::now();
            let r = vm::aarch64::snapshot_cycles(n, park)?;
            println!(
                "snapshot cycles ({}): {}/{} succeeded in {:.0?}{}",
                if park {
                    "with smpark"
                } else {
                    "without parking"
                },
                r.ok,
                n,
                start.elapsed(),
                r.failure
                    .map(|f| format!("; first failure: {f}"))
                    .unwrap_or_default()
            );
            if r.ok != n {
                std::process::exit(1);
            }
            Ok(())
        }
        #[cfg(feature = "vm")]
        "bench" => {
            let mut a = bench::Args {
                arches: spec::Arch::ALL.to_vec(),
                quick: false,
                update_readme: false,
            };
            while let Some(flag) = args.next() {
                match flag.as_str() {
                    "--arch" => a.arches = spec::Arch::parse(&value(&mut args, "--arch")?)?,
                    "--quick" => a.quick = true,
                    "--update-readme" => a.update_readme = true,
                    other => bail!("bench: unknown option {other}\n{USAGE}"),
                }
            }
            bench::run(a)
        }
        #[cfg(not(feature = "vm"))]
        "run" | "test" | "conformance" | "snapshot-cycles" | "bench" => {
            bail!("{cmd} needs the `vm` feature (the default); this xtask was built without it")
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}
