//! Every command's flags, parsed into one typed value per command (rust-analyzer's xtask
//! `flags.rs`, written out by hand so that xtask needs no parser dependency).
//!
//! `main` only dispatches on [`Xtask`]; each command's module takes its struct. Every command
//! refuses an unknown flag or a stray argument with its usage line, so that a typo such as
//! `codegen --chek` fails instead of doing something else (rewriting the files it meant to
//! check).

use anyhow::{bail, Context, Result};

mod bench_part;
use crate::spec::{Arch, Asset};
pub use bench_part::BenchPart;

/// `cargo xtask --help`. The README's command list is this text (checked by the tidy test).
pub const USAGE: &str = "usage: cargo xtask <build-assets|codegen|setup|run|test|conformance|snapshot-cycles|bench|fuzz> [options]
  build-assets [--arch x86_64|aarch64|all] [--only NAME] [--force]
  codegen [--check]
  setup
  run [--arch x86_64|aarch64] [--rootfs DIR|TAR|OCI-LAYOUT] [--mem MiB] [--cpus N] [--tty] [--sm-vsock] [-- CMD ARGS...]
  test [--e2e-only [--arch x86_64|aarch64|all]]
  conformance [--assets ours|upstream|both|ours-own-init]   supermachine 0.7.108's own client
  snapshot-cycles [N] [--no-park]   aarch64, 4 vCPUs: N save/restore cycles (default 100)
  bench [--arch x86_64|aarch64|all] [--only boot|ready|exec|tsi|memory|host]... [--candidate-kernel PATH] [--quick] [--update-readme]
  fuzz [--target NAME]... [--seconds N]   cargo-fuzz targets, N seconds each (default 60)";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Xtask {
    /// `build-assets`.
    BuildAssets(BuildAssets),
    /// `codegen`.
    Codegen(Codegen),
    /// `setup`.
    Setup,
    /// `run`.
    Run(Run),
    /// `test`.
    Test(Test),
    /// `conformance`.
    Conformance(Conformance),
    /// `snapshot-cycles`.
    SnapshotCycles(SnapshotCycles),
    /// `bench`.
    Bench(Bench),
    /// `fuzz`.
    Fuzz(Fuzz),
    /// `help`, `-h`, `--help`, or `-h`/`--help` after any command: print [`USAGE`].
    Help,
}

/// `cargo xtask build-assets`.
#[derive(Debug, PartialEq, Eq)]
pub struct BuildAssets {
    /// Arches to build (`--arch`, default all).
    pub arches: Vec<Arch>,
    /// Only this asset (`--only NAME`).
    pub only: Option<Asset>,
    /// Rebuild even when inputs are unchanged (`--force`).
    pub force: bool,
}

/// `cargo xtask codegen`.
#[derive(Debug, PartialEq, Eq)]
pub struct Codegen {
    /// Fail when a generated file differs instead of rewriting it (`--check`).
    pub check: bool,
}

/// `cargo xtask run`.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    /// Guest arch (`--arch`, one of them; default x86_64).
    pub arch: Option<Arch>,
    /// `--rootfs DIR|TAR|OCI-LAYOUT`, classified by `run` (it looks at the file system).
    pub rootfs: Option<String>,
    /// Guest RAM in MiB (`--mem`, 16..=65536).
    pub mem_mib: Option<u32>,
    /// vCPUs (`--cpus`, 1..=64).
    pub cpus: Option<u32>,
    /// Give the command a terminal (`--tty`).
    pub tty: bool,
    /// Serve vsock with supermachine's own device (`--sm-vsock`) instead of vhost-device-vsock.
    pub sm_vsock: bool,
    /// The command and its arguments, everything after `--`; empty: the image's own.
    pub argv: Vec<String>,
}

/// `cargo xtask test`.
#[derive(Debug, PartialEq, Eq)]
pub struct Test {
    /// Only the VM end-to-end suite (`--e2e-only`).
    pub e2e_only: bool,
    /// Its guest arches (`--arch`, only with `--e2e-only`; default all).
    pub arches: Vec<Arch>,
}

pub use crate::spec::Which;

/// `cargo xtask conformance`.
#[derive(Debug, PartialEq, Eq)]
pub struct Conformance {
    /// The asset sets, run in this order (`--assets`, default both: ours then upstream).
    pub assets: Vec<Which>,
}

/// `cargo xtask snapshot-cycles`.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotCycles {
    /// Cycles to run (positional `N`, default 100).
    pub n: u32,
    /// Park the secondary vCPUs before each save (off with `--no-park`).
    pub park: bool,
}

/// `cargo xtask bench`.
#[derive(Debug, PartialEq, Eq)]
pub struct Bench {
    /// Guest arches to measure (`--arch`, default all).
    pub arches: Vec<Arch>,
    /// One sample per figure (`--quick`).
    pub quick: bool,
    /// Rewrite the README's bench section (`--update-readme`).
    pub update_readme: bool,
    /// Only these parts (`--only PART`, repeatable; none: every part).
    pub only: Vec<BenchPart>,
    /// A kernel to weigh against the shipped one in the boot part (`--candidate-kernel
    /// PATH`; one arch): its boot cost to PID 1 under icount, next to ours.
    pub candidate_kernel: Option<std::path::PathBuf>,
}

impl Bench {
    /// Whether `part` is measured in this run.
    pub fn measures(&self, part: BenchPart) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// `cargo xtask fuzz`.
#[derive(Debug, PartialEq, Eq)]
pub struct Fuzz {
    /// Targets to run (`--target NAME`, repeatable; none: every target).
    pub targets: Vec<String>,
    /// Seconds per target (`--seconds`, default 60).
    pub seconds: u64,
}

/// The usage line of `cmd`, for its errors.
fn usage_of(cmd: &str) -> String {
    USAGE
        .lines()
        .skip(1)
        .map(str::trim_start)
        .find(|l| l.split_whitespace().next() == Some(cmd))
        .map_or_else(|| USAGE.to_string(), |l| format!("usage: cargo xtask {l}"))
}

/// The arguments after one command's name.
struct Args {
    cmd: &'static str,
    it: std::vec::IntoIter<String>,
}

impl Args {
    /// The value of `--flag VALUE`.
    fn value(&mut self, flag: &str) -> Result<String> {
        let cmd = self.cmd;
        self.it
            .next()
            .with_context(|| format!("{cmd}: {flag} needs a value\n{}", usage_of(cmd)))
    }

    /// The value of `--flag N`, as a number.
    fn number<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T> {
        let v = self.value(flag)?;
        v.parse()
            .ok()
            .with_context(|| format!("{}: {flag} {v}: not a number", self.cmd))
    }

    /// `--arch`'s value: x86_64, aarch64 or all.
    fn arches(&mut self) -> Result<Vec<Arch>> {
        let v = self.value("--arch")?;
        Arch::parse(&v).with_context(|| format!("{}: {}", self.cmd, usage_of(self.cmd)))
    }

    /// The error for an argument the command does not take.
    fn reject(&self, arg: &str) -> anyhow::Error {
        let what = if arg.starts_with('-') {
            "unknown option"
        } else {
            "unexpected argument"
        };
        anyhow::anyhow!("{}: {what} {arg}\n{}", self.cmd, usage_of(self.cmd))
    }
}

/// Whether an argument asks for help.
fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help")
}

impl Xtask {
    /// Parses the process's arguments.
    pub fn from_env() -> Result<Xtask> {
        Xtask::parse(std::env::args().skip(1).collect())
    }

    /// Parses `args`, the command line without the program name.
    pub fn parse(args: Vec<String>) -> Result<Xtask> {
        let mut it = args.into_iter();
        let Some(cmd) = it.next() else {
            bail!("{USAGE}")
        };
        let cmd: &'static str = match cmd.as_str() {
            "-h" | "--help" | "help" => return Ok(Xtask::Help),
            "build-assets" => "build-assets",
            "codegen" => "codegen",
            "setup" => "setup",
            "run" => "run",
            "test" => "test",
            "conformance" => "conformance",
            "snapshot-cycles" => "snapshot-cycles",
            "bench" => "bench",
            "fuzz" => "fuzz",
            other => bail!("unknown command {other}\n{USAGE}"),
        };
        let mut a = Args { cmd, it };
        let parsed = match cmd {
            "build-assets" => parse_build_assets(&mut a).map(Xtask::BuildAssets),
            "codegen" => parse_codegen(&mut a).map(Xtask::Codegen),
            "setup" => match a.it.next() {
                None => Ok(Xtask::Setup),
                Some(h) if is_help(&h) => return Ok(Xtask::Help),
                Some(other) => Err(a.reject(&other)),
            },
            "run" => parse_run(&mut a).map(Xtask::Run),
            "test" => parse_test(&mut a).map(Xtask::Test),
            "conformance" => parse_conformance(&mut a).map(Xtask::Conformance),
            "snapshot-cycles" => parse_snapshot_cycles(&mut a).map(Xtask::SnapshotCycles),
            "bench" => parse_bench(&mut a).map(Xtask::Bench),
            _ => parse_fuzz(&mut a).map(Xtask::Fuzz),
        };
        // `-h`/`--help` anywhere among a command's flags asks for help, not a run.
        match parsed {
            Err(e) if e.downcast_ref::<HelpAsked>().is_some() => Ok(Xtask::Help),
            other => other,
        }
    }
}

/// `-h`/`--help` met among a command's flags: [`Xtask::parse`] answers [`Xtask::Help`].
#[derive(Debug)]
struct HelpAsked;

impl std::fmt::Display for HelpAsked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(USAGE)
    }
}

impl std::error::Error for HelpAsked {}

/// The next flag, or `None` at the end; `-h`/`--help` becomes [`HelpAsked`].
fn next_flag(a: &mut Args) -> Result<Option<String>> {
    match a.it.next() {
        Some(h) if is_help(&h) => Err(HelpAsked.into()),
        other => Ok(other),
    }
}

fn parse_build_assets(a: &mut Args) -> Result<BuildAssets> {
    let mut f = BuildAssets {
        arches: Arch::ALL.to_vec(),
        only: None,
        force: false,
    };
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--arch" => f.arches = a.arches()?,
            "--only" => {
                let v = a.value("--only")?;
                let names: Vec<&str> = Asset::ALL.iter().map(|a| a.name()).collect();
                f.only = Some(Asset::from_name(&v).with_context(|| {
                    format!(
                        "build-assets: --only {v}: no such asset (one of {})",
                        names.join(", ")
                    )
                })?);
            }
            "--force" => f.force = true,
            other => return Err(a.reject(other)),
        }
    }
    Ok(f)
}

fn parse_codegen(a: &mut Args) -> Result<Codegen> {
    let mut f = Codegen { check: false };
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--check" => f.check = true,
            other => return Err(a.reject(other)),
        }
    }
    Ok(f)
}

fn parse_run(a: &mut Args) -> Result<Run> {
    let mut f = Run {
        arch: None,
        rootfs: None,
        mem_mib: None,
        cpus: None,
        tty: false,
        sm_vsock: false,
        argv: Vec::new(),
    };
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--" => {
                f.argv = a.it.by_ref().collect();
                break;
            }
            "--arch" => {
                let v = a.value("--arch")?;
                match Arch::parse(&v)?[..] {
                    [arch] => f.arch = Some(arch),
                    _ => bail!("run: --arch {v}: name one arch, x86_64 or aarch64"),
                }
            }
            "--rootfs" => f.rootfs = Some(a.value("--rootfs")?),
            "--mem" => f.mem_mib = Some(a.number("--mem")?),
            "--cpus" => f.cpus = Some(a.number("--cpus")?),
            "--tty" => f.tty = true,
            "--sm-vsock" => f.sm_vsock = true,
            other if !other.starts_with('-') => {
                bail!(
                    "run: unexpected argument {other} (the command goes after `--`)\n{}",
                    usage_of("run")
                )
            }
            other => return Err(a.reject(other)),
        }
    }
    if f.mem_mib.is_some_and(|m| !(16..=65536).contains(&m))
        || f.cpus.is_some_and(|c| !(1..=64).contains(&c))
    {
        bail!("run: --mem must be 16..=65536 MiB and --cpus 1..=64");
    }
    Ok(f)
}

fn parse_test(a: &mut Args) -> Result<Test> {
    let (mut e2e_only, mut arches) = (false, None);
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--e2e-only" => e2e_only = true,
            "--arch" => arches = Some(a.arches()?),
            other => return Err(a.reject(other)),
        }
    }
    if arches.is_some() && !e2e_only {
        bail!("test: --arch needs --e2e-only\n{}", usage_of("test"));
    }
    Ok(Test {
        e2e_only,
        arches: arches.unwrap_or_else(|| Arch::ALL.to_vec()),
    })
}

fn parse_conformance(a: &mut Args) -> Result<Conformance> {
    let mut f = Conformance {
        assets: vec![Which::Ours, Which::Upstream],
    };
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--assets" => {
                f.assets = match a.value("--assets")?.as_str() {
                    "ours" => vec![Which::Ours],
                    "upstream" => vec![Which::Upstream],
                    "both" => vec![Which::Ours, Which::Upstream],
                    "ours-own-init" => vec![Which::OursOwnInit],
                    other => bail!(
                    "conformance: --assets {other}: expected ours, upstream, both or ours-own-init"
                ),
                }
            }
            other => return Err(a.reject(other)),
        }
    }
    Ok(f)
}

fn parse_snapshot_cycles(a: &mut Args) -> Result<SnapshotCycles> {
    let (mut n, mut park) = (None, true);
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--no-park" => park = false,
            v if n.is_none() && !v.starts_with('-') => {
                n = Some(v.parse().with_context(|| {
                    format!(
                        "snapshot-cycles: {v}: expected a count or --no-park\n{}",
                        usage_of("snapshot-cycles")
                    )
                })?)
            }
            other => return Err(a.reject(other)),
        }
    }
    Ok(SnapshotCycles {
        n: n.unwrap_or(100),
        park,
    })
}

fn parse_bench(a: &mut Args) -> Result<Bench> {
    let mut f = Bench {
        arches: Arch::ALL.to_vec(),
        quick: false,
        update_readme: false,
        only: Vec::new(),
        candidate_kernel: None,
    };
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--arch" => f.arches = a.arches()?,
            "--quick" => f.quick = true,
            "--update-readme" => f.update_readme = true,
            "--only" => {
                let v = a.value("--only")?;
                let part = BenchPart::ALL
                    .iter()
                    .find(|(_, name)| *name == v)
                    .map(|(p, _)| *p)
                    .with_context(|| {
                        format!("bench: --only {v}: no such part\n{}", usage_of("bench"))
                    })?;
                f.only.push(part);
            }
            "--candidate-kernel" => {
                f.candidate_kernel = Some(a.value("--candidate-kernel")?.into())
            }
            other => return Err(a.reject(other)),
        }
    }
    if f.candidate_kernel.is_some() && f.arches.len() != 1 {
        bail!(
            "bench: --candidate-kernel needs one --arch (the kernel's)\n{}",
            usage_of("bench")
        );
    }
    // The README's table is the whole bench; a partial run would drop rows from it.
    if f.update_readme && !f.only.is_empty() {
        bail!(
            "bench: --update-readme needs every part; drop --only\n{}",
            usage_of("bench")
        );
    }
    Ok(f)
}

fn parse_fuzz(a: &mut Args) -> Result<Fuzz> {
    let mut f = Fuzz {
        targets: Vec::new(),
        seconds: 60,
    };
    while let Some(flag) = next_flag(a)? {
        match flag.as_str() {
            "--target" => f.targets.push(a.value("--target")?),
            "--seconds" => f.seconds = a.number("--seconds")?,
            other => return Err(a.reject(other)),
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests;
