//! `cargo xtask setup`: installs what building, booting and testing need. Idempotent and
//! cheap when everything is there, so `run` and `test` call it first. `run` asks only for
//! what booting a guest of its arch needs ([`for_run`]): on a fresh machine the first `cargo
//! xtask run` then skips the other arch's QEMU, the cross compilers, kernel source, nightly
//! toolchain and cargo-fuzz. No recommended packages are installed.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::pins::Pins;
use crate::spec::Arch;
use crate::{debian, progress, toolchain, util};

const BACKPORTS: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const BACKPORTS_TEXT: &str = "Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// QEMU from bookworm-backports (QEMU 10; bookworm's 7.2 conflicts with the machine's
/// preinstalled qemu-utils 10): the package and the binary of each guest arch.
const QEMU: [(Arch, &str, &str); 2] = [
    (Arch::X86_64, "qemu-system-x86", "qemu-system-x86_64"),
    (Arch::Aarch64, "qemu-system-arm", "qemu-system-aarch64"),
];

/// Debian packages from bookworm that booting a guest needs (root images are squashfs).
const RUN_PACKAGES: &[&str] = &["squashfs-tools"];

/// Debian packages from bookworm that building the assets and the test suites need.
const BUILD_PACKAGES: &[&str] = &[
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "gcc-aarch64-linux-gnu",
    // Its glibc headers and static libraries (the guest test programs are static C): only a
    // Recommends of the compiler, and apt installs no recommended packages here.
    "libc6-dev-arm64-cross",
    "musl-tools",
    "musl-dev:arm64",
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "libstd-rust-web-dev:arm64",
    "xz-utils",
    // The busybox source package: downloaded with curl, unpacked with dpkg-source.
    "curl",
    "dpkg-dev",
    // The Debian root image of the guest-networking checks (real curl and bash in the guest).
    "debootstrap",
];

/// What a command needs installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Booting a guest of one arch (`cargo xtask run`): its QEMU, mksquashfs,
    /// vhost-device-vsock.
    Run(Arch),
    /// Everything: also building the assets, the test guests' programs and fuzzing.
    All,
}

impl Need {
    /// The QEMU packages and binaries it needs.
    fn qemu(self) -> impl Iterator<Item = (&'static str, &'static str)> {
        QEMU.into_iter()
            .filter(move |(arch, _, _)| match self {
                Need::Run(a) => a == *arch,
                Need::All => true,
            })
            .map(|(_, package, binary)| (package, binary))
    }
}

/// cargo-fuzz from crates.io, run with the nightly toolchain by `cargo xtask fuzz`.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz_ok() -> bool {
    Command::new(util::cargo_home().join("bin").join("cargo-fuzz"))
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
}

fn nightly_ok() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn vhost_ok() -> bool {
    Command::new(toolchain::vhost_device_vsock())
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(toolchain::VHOST_VSOCK_VERSION))
}

fn kernel_source_ok() -> Result<bool> {
    let pins = Pins::load("kernel/SOURCE")?;
    Ok(std::path::Path::new(pins.get("tarball")?).exists()
        && debian::dpkg_version(pins.get("package")?).as_deref() == Some(pins.get("version")?))
}

/// What `need` finds missing, as lines a person can act on.
fn missing(need: Need) -> Result<Vec<String>> {
    let mut m = missing_packages(need)?;
    m.extend(missing_cargo_tools(need));
    Ok(m)
}

/// Missing Debian packages (apt, as root).
fn missing_packages(need: Need) -> Result<Vec<String>> {
    let mut m = Vec::new();
    let mut tools: Vec<&str> = need.qemu().map(|(_, binary)| binary).collect();
    tools.push("mksquashfs");
    if need == Need::All {
        tools.extend(["musl-gcc", "aarch64-linux-gnu-gcc", "curl", "dpkg-source"]);
    }
    for tool in tools {
        if !util::have(tool) {
            m.push(format!("{tool} (not on PATH)"));
        }
    }
    if let Need::Run(_) = need {
        return Ok(m);
    }
    for (path, package) in [
        (
            "/usr/lib/aarch64-linux-musl/musl-gcc.specs",
            "musl-dev:arm64",
        ),
        (
            "/usr/lib/rustlib/aarch64-unknown-linux-gnu",
            "libstd-rust-web-dev:arm64",
        ),
        ("/usr/lib/rustlib/src/rust/library", "rust-web-src"),
        (
            "/usr/aarch64-linux-gnu/include/bits/wordsize.h",
            "libc6-dev-arm64-cross",
        ),
    ] {
        if !std::path::Path::new(path).exists() {
            m.push(format!("{package} ({path})"));
        }
    }
    if !std::path::Path::new(crate::toolchain::CARGO).exists() {
        m.push(format!(
            "{} (Debian rustc-web/cargo-web)",
            crate::toolchain::CARGO
        ));
    }
    if !kernel_source_ok()? {
        let pins = Pins::load("kernel/SOURCE")?;
        m.push(format!("{}={}", pins.get("package")?, pins.get("version")?));
    }
    Ok(m)
}

/// Missing tools of the user's rustup and cargo (no root needed).
fn missing_cargo_tools(need: Need) -> Vec<String> {
    let mut m = Vec::new();
    if !vhost_ok() {
        m.push(format!(
            "vhost-device-vsock {} at {}",
            toolchain::VHOST_VSOCK_VERSION,
            toolchain::vhost_device_vsock().display()
        ));
    }
    if let Need::Run(_) = need {
        return m;
    }
    if !nightly_ok() {
        m.push("the rustup nightly toolchain (for cargo-fuzz)".into());
    }
    if !cargo_fuzz_ok() {
        m.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }
    m
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs whatever building, booting and testing need (`cargo xtask setup`). Needs root
/// for apt.
pub fn run() -> Result<()> {
    install(Need::All)
}

/// Installs only what booting an `arch` guest needs (`cargo xtask run`): that arch's QEMU,
/// squashfs-tools and vhost-device-vsock. Needs root for apt.
#[cfg(feature = "vm")]
pub fn for_run(arch: Arch) -> Result<()> {
    install(Need::Run(arch))
}

fn install(need: Need) -> Result<()> {
    let packages = missing_packages(need)?;
    let mut todo = packages.clone();
    todo.extend(missing_cargo_tools(need));
    if todo.is_empty() {
        if need == Need::All {
            guest_busybox()?;
        }
        progress!("setup: everything is installed");
        return Ok(());
    }
    progress!("setup: installing: {}", todo.join(", "));
    if !packages.is_empty() {
        install_packages(need, &todo)?;
    }
    if !vhost_ok() {
        cargo_install(
            "vhost-device-vsock",
            toolchain::VHOST_VSOCK_VERSION,
            "about a minute",
        )?;
    }
    if need == Need::All && !nightly_ok() {
        progress!("setup: rustup toolchain install nightly (minimal profile)");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if need == Need::All && !cargo_fuzz_ok() {
        cargo_install("cargo-fuzz", CARGO_FUZZ_VERSION, "about two minutes")?;
    }
    let left = missing(need)?;
    if !left.is_empty() {
        bail!(
            "setup finished but these are still missing: {}",
            left.join(", ")
        );
    }
    if need == Need::All {
        guest_busybox()?;
    }
    progress!("setup: done");
    Ok(())
}

/// apt-get installs the Debian packages `need` asks for; `todo` names what is missing.
/// Recommended packages are left out: QEMU's would bring GTK, GStreamer and Mesa, which a
/// headless guest never uses.
fn install_packages(need: Need, todo: &[String]) -> Result<()> {
    let qemu: Vec<&str> = need.qemu().map(|(package, _)| package).collect();
    let mut packages = RUN_PACKAGES.to_vec();
    let mut pinned = Vec::new();
    if need == Need::All {
        packages.extend(BUILD_PACKAGES);
        let pins = Pins::load("kernel/SOURCE")?;
        pinned.push(format!("{}={}", pins.get("package")?, pins.get("version")?));
    }
    if !is_root() {
        bail!(
            "setup needs root for apt-get; missing: {}\n\
             run `sudo cargo xtask setup`, or install by hand:\n  \
             add bookworm-backports ({BACKPORTS}){}, then\n  \
             apt-get install --no-install-recommends -t bookworm-backports {}\n  \
             apt-get install --no-install-recommends {} {}",
            todo.join(", "),
            if need == Need::All {
                ", `dpkg --add-architecture arm64`"
            } else {
                ""
            },
            qemu.join(" "),
            packages.join(" "),
            pinned.join(" ")
        );
    }
    if std::fs::read_to_string(BACKPORTS).ok().as_deref() != Some(BACKPORTS_TEXT) {
        std::fs::write(BACKPORTS, BACKPORTS_TEXT).with_context(|| format!("write {BACKPORTS}"))?;
    }
    if need == Need::All {
        // arm64 packages: the cross toolchain's libraries, and the aarch64 guests' busybox .deb.
        util::run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    util::run(Command::new("apt-get").arg("update").arg("-q"))?;
    let apt = |args: &[&str], packages: &[&str]| {
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(args)
                .args(packages),
        )
    };
    apt(&["-t", "bookworm-backports"], &qemu)?;
    let rest: Vec<&str> = packages
        .iter()
        .copied()
        .chain(pinned.iter().map(String::as_str))
        .collect();
    apt(&[], &rest)
}

/// `cargo install --locked` of a pinned tool from crates.io.
fn cargo_install(name: &str, version: &str, takes: &str) -> Result<()> {
    progress!("setup: cargo install {name} {version} ({takes})");
    util::run(Command::new("cargo").args(["install", "--locked", "--version", version, name]))
}

/// The aarch64 test guests' root image needs the pinned busybox package's arm64 build
/// (not shipped); it is downloaded once into `target/xtask/busybox-aarch64`.
fn guest_busybox() -> Result<()> {
    crate::debian::busybox(crate::spec::Arch::Aarch64).map(drop)
}
