//! `cargo xtask`: the project's tooling (matklad's xtask convention).
//!
//! `main` only dispatches: [`flags`] parses the command line (its `USAGE` lists every
//! command), and each command is a module.

#[cfg(test)]
mod asset_tests;
#[cfg(feature = "vm")]
mod bench;
mod build_assets;
mod codegen;
#[cfg(feature = "vm")]
mod e2e;
mod flags;
mod fuzz;
mod kconfig;
mod manifest;
#[cfg(feature = "vm")]
mod run;
mod setup;
#[cfg(feature = "vm")]
mod snapshot_cycles;
#[cfg(feature = "vm")]
mod test;
#[cfg(test)]
mod tidy;

// The rig's modules under the names the build tool and the suites have always used.
use vm_rig::{cargo, debian, pins, progress, spec, toolchain, util};
#[cfg(feature = "vm")]
use vm_rig::{upstream, vm};

use anyhow::Result;

use flags::Xtask;

fn main() {
    if let Err(e) = dispatch() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> Result<()> {
    match Xtask::from_env()? {
        Xtask::Help => {
            println!("{}", flags::USAGE);
            Ok(())
        }
        Xtask::BuildAssets(f) => build_assets::run(f),
        Xtask::Codegen(f) => codegen::run(f.check),
        Xtask::Setup => setup::run(),
        Xtask::Fuzz(f) => fuzz::run(&f.targets, f.seconds).map(drop),
        #[cfg(feature = "vm")]
        Xtask::Run(f) => {
            let code = run::run(f)?;
            std::process::exit(code);
        }
        #[cfg(feature = "vm")]
        Xtask::Test(f) if f.e2e_only => {
            vm::install_signal_cleanup();
            e2e::run(&f.arches)
        }
        #[cfg(feature = "vm")]
        Xtask::Test(_) => test::run(),
        #[cfg(feature = "vm")]
        Xtask::Conformance(f) => {
            setup::run()?;
            vm::install_signal_cleanup();
            e2e::conformance::run(&f.assets)
        }
        #[cfg(feature = "vm")]
        Xtask::SnapshotCycles(f) => snapshot_cycles::run(f),
        #[cfg(feature = "vm")]
        Xtask::Bench(f) => bench::run(f),
        #[cfg(not(feature = "vm"))]
        Xtask::Run(_)
        | Xtask::Test(_)
        | Xtask::Conformance(_)
        | Xtask::SnapshotCycles(_)
        | Xtask::Bench(_) => {
            anyhow::bail!("this command needs the `vm` feature (the default); this xtask was built without it")
        }
    }
}
