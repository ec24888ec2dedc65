//! What each sub-crate ships: the one table that codegen, build-assets and the tests share.

use std::path::PathBuf;

/// A guest architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (KVM backend).
    X86_64,
    /// aarch64 (HVF backend on Apple Silicon).
    Aarch64,
}

impl Arch {
    /// Both, in a fixed order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// `x86_64` / `aarch64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Parses an `--arch` value.
    pub fn parse(s: &str) -> anyhow::Result<Vec<Arch>> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(vec![Arch::X86_64]),
            "aarch64" | "arm64" => Ok(vec![Arch::Aarch64]),
            "all" => Ok(Arch::ALL.to_vec()),
            _ => anyhow::bail!("--arch {s}: expected x86_64, aarch64 or all"),
        }
    }

    /// The sub-crate's package name.
    pub fn crate_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "supermachine-kernel-x86-64",
            Arch::Aarch64 => "supermachine-kernel-aarch64",
        }
    }

    /// The sub-crate's directory.
    pub fn crate_dir(self) -> PathBuf {
        crate::util::root().join(self.crate_name())
    }

    /// Debian's name for the arch.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The kernel's `ARCH=`.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
        }
    }

    /// `CROSS_COMPILE` prefix of the GNU toolchain that builds for this arch on an x86_64 host.
    pub fn cross_compile(self) -> &'static str {
        match self {
            Arch::X86_64 => "",
            Arch::Aarch64 => "aarch64-linux-gnu-",
        }
    }

    /// The GCC that targets this arch.
    pub fn gcc(self) -> String {
        format!("{}gcc", self.cross_compile())
    }

    /// ELF `e_machine`.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }
}

/// What a bundled file must look like (the build-time check of the sub-crate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// x86 bzImage.
    BzImage,
    /// arm64 raw Image.
    Arm64Image,
    /// Static ELF executable.
    StaticExec,
    /// ELF kernel module.
    Module,
}

/// What a bundled file is; each has one recipe in `build_assets`, matched exhaustively, so an
/// asset without a recipe does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    /// The guest kernel.
    Kernel,
    /// Static busybox (x86_64).
    Busybox,
    /// The in-guest agent.
    Agent,
    /// aarch64's PID 1.
    InitOci,
    /// aarch64's vCPU-parking module.
    Smpark,
}

impl Asset {
    /// Every asset.
    pub const ALL: [Asset; 5] = [
        Asset::Kernel,
        Asset::Busybox,
        Asset::Agent,
        Asset::InitOci,
        Asset::Smpark,
    ];

    /// Manifest and API name: `kernel`, `busybox`, `supermachine-agent`, `init-oci`,
    /// `smpark.ko`.
    pub fn name(self) -> &'static str {
        match self {
            Asset::Kernel => "kernel",
            Asset::Busybox => "busybox",
            Asset::Agent => "supermachine-agent",
            Asset::InitOci => "init-oci",
            Asset::Smpark => "smpark.ko",
        }
    }

    /// The asset called `name`, if any.
    pub fn from_name(name: &str) -> Option<Asset> {
        Asset::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// One bundled file.
#[derive(Clone, Copy, Debug)]
pub struct AssetSpec {
    /// Which asset.
    pub asset: Asset,
    /// Constant prefix: `KERNEL` gives `KERNEL_BYTES`.
    pub ident: &'static str,
    /// File name inside the sub-crate's `assets/` and in `extract_all_to`'s directory.
    pub file: &'static str,
    /// Extraction mode.
    pub mode: u32,
    /// Shape check.
    pub kind: Kind,
    /// One line for the docs.
    pub doc: &'static str,
}

impl AssetSpec {
    /// Manifest and API name ([`Asset::name`]).
    pub fn name(&self) -> &'static str {
        self.asset.name()
    }
}

const KERNEL_DOC_X86: &str = "The guest kernel: a bzImage (x86 boot protocol), `MODULES=n`.";
const KERNEL_DOC_ARM: &str = "The guest kernel: a raw arm64 `Image`, booted with a device tree.";
const AGENT_DOC: &str =
    "`supermachine-agent`, the static in-guest control agent that runs as PID 1.";

/// The assets of `arch`, in API order.
pub fn assets(arch: Arch) -> &'static [AssetSpec] {
    match arch {
        Arch::X86_64 => &[
            AssetSpec { asset: Asset::Kernel, ident: "KERNEL", file: "bzImage", mode: 0o644, kind: Kind::BzImage, doc: KERNEL_DOC_X86 },
            AssetSpec { asset: Asset::Busybox, ident: "BUSYBOX", file: "busybox", mode: 0o755, kind: Kind::StaticExec, doc: "A static busybox; the generated PID-1 init script runs on it." },
            AssetSpec { asset: Asset::Agent, ident: "SUPERMACHINE_AGENT", file: "supermachine-agent", mode: 0o755, kind: Kind::StaticExec, doc: AGENT_DOC },
        ],
        Arch::Aarch64 => &[
            AssetSpec { asset: Asset::Kernel, ident: "KERNEL", file: "Image", mode: 0o644, kind: Kind::Arm64Image, doc: KERNEL_DOC_ARM },
            AssetSpec { asset: Asset::InitOci, ident: "INIT_OCI", file: "init-oci", mode: 0o755, kind: Kind::StaticExec, doc: "`init-oci`, the static PID 1 of supermachine's aarch64 guests: overlay root, smpark.ko, host env, agent, workload." },
            AssetSpec { asset: Asset::Agent, ident: "SUPERMACHINE_AGENT", file: "supermachine-agent", mode: 0o755, kind: Kind::StaticExec, doc: AGENT_DOC },
            AssetSpec { asset: Asset::Smpark, ident: "SMPARK_KO", file: "smpark.ko", mode: 0o644, kind: Kind::Module, doc: "`smpark.ko`, the kernel module that parks secondary vCPUs for byte-identical snapshots." },
        ],
    }
}

/// Which assets a conformance run boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// This project's x86_64 assets (plus the stress group), in supermachine's initramfs.
    Ours,
    /// supermachine-kernel-x86-64 0.7.70 from crates.io, the control run.
    Upstream,
    /// Our assets in the initramfs that xtask itself generates (`vm::init`), the boot of
    /// `cargo xtask run` and the end-to-end suite: shows it is equivalent to supermachine's.
    OursOwnInit,
}

impl Which {
    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Which::Ours => "ours",
            Which::Upstream => "upstream",
            Which::OursOwnInit => "ours-own-init",
        }
    }
}
