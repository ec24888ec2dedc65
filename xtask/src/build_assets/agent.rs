//! `supermachine-agent`, statically linked.
//!
//! Both arches: musl through `-Zbuild-std` with Debian's `rustc-web` (rustup cannot add
//! targets here), linked by GCC with Debian's musl specs (`musl-gcc` natively; the same specs
//! with `aarch64-linux-gnu-gcc` for arm64). musl needs an unwinder: GCC's `libgcc_eh.a`
//! serves, given the `_dl_find_object` shim in `assets/agent/musl/`. (glibc `+crt-static`
//! came to 1.19 MB on aarch64, over the 1 MiB budget; musl gives about 0.6 MB.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::Built;
use crate::cargo::package_version;
use crate::spec::Arch;
use crate::toolchain::{rust_target, CARGO, RUSTC};
use crate::{progress, util};

fn hash_tree(dir: &Path, into: &mut Vec<u8>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            hash_tree(&p, into)?;
        } else {
            into.extend(
                p.strip_prefix(util::root())
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .bytes(),
            );
            into.extend(std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// The guest contract crate both static binaries link ([`inputs`] hashes it with each).
const GUEST_CRATE: &str = "assets/guest";

/// How std is rebuilt for musl, hashed into [`inputs`] so that a change rebuilds the binaries.
/// `panic_unwind` stays: a panicking connection handler must drop only its connection
/// (`catch_unwind`), never PID 1. Std's default `backtrace` feature is left out: its
/// symbolizer (gimli, addr2line, miniz_oxide) was 191 KB of the x86_64 agent's 696 KB (94 KB
/// of the `.crate`) and prints nothing in a stripped binary anyway.
const BUILD_STD: [&str; 2] = [
    "-Zbuild-std=std,panic_unwind",
    "-Zbuild-std-features=panic-unwind",
];

/// Hash of the crate's sources, the guest contract crate's, the lock file and the toolchain.
pub fn inputs(arch: Arch, crate_dir: &str) -> Result<String> {
    let mut buf = format!(
        "rust-static-v1 {} {}",
        arch.name(),
        util::tool_version(RUSTC)
    )
    .into_bytes();
    buf.extend(BUILD_STD.join(" ").bytes());
    hash_tree(&util::root().join(crate_dir), &mut buf)?;
    hash_tree(&util::root().join(GUEST_CRATE), &mut buf)?;
    buf.extend(std::fs::read(util::root().join("Cargo.lock"))?);
    Ok(util::sha256(&buf))
}

/// The C compiler that links against musl for `arch`: Debian's `musl-gcc` on x86_64, and a
/// generated wrapper applying Debian's arm64 musl specs to the cross GCC on aarch64.
fn musl_cc(arch: Arch) -> Result<PathBuf> {
    match arch {
        Arch::X86_64 => Ok(PathBuf::from("musl-gcc")),
        Arch::Aarch64 => {
            let specs = "/usr/lib/aarch64-linux-musl/musl-gcc.specs";
            if !Path::new(specs).exists() {
                anyhow::bail!(
                    "{specs} is missing: install musl-dev:arm64 (`cargo xtask setup` does)"
                );
            }
            let wrapper = util::build_dir().join("aarch64-linux-musl-gcc");
            let script = format!("#!/bin/sh\nexec {} \"$@\" -specs {specs}\n", arch.gcc());
            util::write_atomic(&wrapper, script.as_bytes())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
            Ok(wrapper)
        }
    }
}

/// Builds `libunwind.a` for musl: GCC's `libgcc_eh.a` plus the `_dl_find_object` shim.
fn musl_unwind(arch: Arch, cc: &Path) -> Result<PathBuf> {
    let dir = util::build_dir().join(format!("musl-unwind-{}", arch.name()));
    std::fs::create_dir_all(&dir)?;
    let libgcc_eh = util::output(Command::new(arch.gcc()).arg("-print-file-name=libgcc_eh.a"))?;
    let shim = util::root().join("assets/agent/musl/dl_find_object.c");
    let obj = dir.join("dl_find_object.o");
    util::run(
        Command::new(cc)
            .args(["-O2", "-c"])
            .arg(&shim)
            .arg("-o")
            .arg(&obj),
    )?;
    let lib = dir.join("libunwind.a");
    std::fs::copy(libgcc_eh.trim(), &lib).with_context(|| format!("copy {}", libgcc_eh.trim()))?;
    util::run(Command::new("ar").arg("rsD").arg(&lib).arg(&obj))?;
    Ok(dir)
}

/// Builds binary `bin` of package `package` (in `crate_dir`) statically for `arch`.
pub fn build_static(
    arch: Arch,
    package: &str,
    bin: &str,
    crate_dir: &str,
) -> Result<(Vec<u8>, String)> {
    let root = util::root();
    let target = rust_target(arch);
    let target_dir = util::build_dir().join(format!("rust-{}", arch.name()));
    let cargo_home = util::cargo_home();
    // Paths must not leak into the binary, or another checkout would build other bytes.
    let mut flags = vec![
        format!("--remap-path-prefix={}=/build", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        "-C".into(),
        "target-feature=+crt-static".into(),
    ];
    let mut cmd = Command::new(CARGO);
    cmd.current_dir(&root)
        .env("RUSTC", RUSTC)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env("SOURCE_DATE_EPOCH", "1767225600")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            package,
            "--bin",
            bin,
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let cc = musl_cc(arch)?;
    let unwind = musl_unwind(arch, &cc)?;
    flags.extend([
        "-C".into(),
        "link-self-contained=no".into(),
        "-C".into(),
        "relocation-model=static".into(),
        "-C".into(),
        "link-arg=-static".into(),
        "-L".into(),
        unwind.display().to_string(),
    ]);
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env(linker_var, &cc)
        .args(BUILD_STD);
    let toolchain = format!(
        "{} (Debian rustc-web), -Zbuild-std for {target}, {} with Debian musl {} specs, unwinder: libgcc_eh from {} + assets/agent/musl/dl_find_object.c",
        util::tool_version(RUSTC),
        cc.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        musl_version(),
        util::tool_version(&arch.gcc())
    );
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    progress!(
        "{bin} {}: cargo build --release --target {target} ({crate_dir})",
        arch.name()
    );
    util::run(&mut cmd)?;
    let path = target_dir.join(target).join("release").join(bin);
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    Ok((bytes, toolchain))
}

fn musl_version() -> String {
    // musl-gcc's libc.so prints its version banner on stderr when run.
    Command::new("/usr/lib/musl/lib/libc.so")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("Version ").map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The agent for `arch`.
pub fn build(arch: Arch) -> Result<Built> {
    let (bytes, toolchain) = build_static(
        arch,
        "supermachine-agent",
        "supermachine-agent",
        "assets/agent",
    )?;
    Ok(Built {
        bytes,
        version: package_version("assets/agent")?,
        source: "assets/agent (package supermachine-agent) at this commit, Cargo.lock".into(),
        toolchain,
        inputs: inputs(arch, "assets/agent")?,
    })
}

/// `init-oci`, the aarch64 PID-1 shim.
pub fn build_init_oci(arch: Arch) -> Result<Built> {
    let (bytes, toolchain) = build_static(arch, "init-oci", "init-oci", "assets/init-oci")?;
    Ok(Built {
        bytes,
        version: package_version("assets/init-oci")?,
        source: "assets/init-oci (package init-oci) at this commit, Cargo.lock".into(),
        toolchain,
        inputs: inputs(arch, "assets/init-oci")?,
    })
}
