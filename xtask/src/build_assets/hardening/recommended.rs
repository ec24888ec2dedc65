//! The recommended-settings audit: every line of `assets/kernel/recommended.config` (KSPP's
//! recommended settings as kernel-hardening-checker lists them) is met by the final
//! `.config` or by the sysctls the arch's PID 1 writes at boot, or carries a reasoned
//! exception. The file's header gives the line format.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use supermachine_guest::sysctl;

use crate::kconfig::requested;
use crate::spec::Arch;
use crate::util;

/// Shortest accepted exception reason, in bytes: a reason, not a placeholder.
const MIN_REASON: usize = 20;

/// One thing a line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `CONFIG_X=value` in the final `.config` (`n`: not set).
    Config { sym: String, value: String },
    /// `sysctl:name=value` written at boot by the arch's PID 1.
    Sysctl { name: String, value: String },
}

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// 1-based line number, for messages.
    pub line: usize,
    /// `all`, `x86_64` or `aarch64`.
    pub arches: String,
    /// Alternatives: the line is met when any holds.
    pub items: Vec<Item>,
    /// Why the guest departs from the recommendation, if it does.
    pub exception: Option<String>,
}

/// The list's path.
pub fn list_path() -> PathBuf {
    util::root().join("assets/kernel/recommended.config")
}

/// The sysctls `arch`'s PID 1 writes at boot, from the guest contract: the agent (x86_64) and
/// init-oci (aarch64) both write [`sysctl::HARDENING`], and init-oci then closes module loading.
pub fn boot_sysctls(arch: Arch) -> Vec<(&'static str, &'static str)> {
    let mut v = sysctl::HARDENING.to_vec();
    if arch == Arch::Aarch64 {
        v.push(sysctl::CLOSE_MODULES);
    }
    v
}

fn parse_item(s: &str) -> Option<Item> {
    let (k, v) = s.trim().split_once('=')?;
    let value = v.trim().to_string();
    if let Some(name) = k.strip_prefix("sysctl:") {
        return Some(Item::Sysctl {
            name: name.to_string(),
            value,
        });
    }
    k.starts_with("CONFIG_").then(|| Item::Config {
        sym: k.to_string(),
        value,
    })
}

/// Parses the list; a malformed line is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || format!("recommended.config line {}: malformed `{l}`", i + 1);
        let (body, exception) = match l.split_once('!') {
            Some((b, r)) => (b, Some(r.trim().to_string())),
            None => (l, None),
        };
        let (arches, rest) = body
            .trim()
            .split_once(char::is_whitespace)
            .with_context(bad)?;
        if !["all", "x86_64", "aarch64"].contains(&arches) {
            bail!("{}: unknown arch {arches}", bad());
        }
        let items = rest
            .split('|')
            .map(parse_item)
            .collect::<Option<Vec<_>>>()
            .with_context(bad)?;
        out.push(Setting {
            line: i + 1,
            arches: arches.to_string(),
            items,
            exception,
        });
    }
    Ok(out)
}

/// What an audit of one arch found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Lines that apply to the arch.
    pub checked: usize,
    /// Of those, lines met.
    pub met: usize,
    /// Of those, lines excepted.
    pub excepted: usize,
    /// Lines neither met nor (validly) excepted, and stale exceptions.
    pub problems: Vec<String>,
}

/// Audits `list` for `arch` against its final `.config`, the fragments' own exceptions
/// (`# exception CONFIG_X: ...`) and the sysctls its PID 1 writes.
pub fn audit(
    list: &[Setting],
    arch: Arch,
    final_config: &str,
    fragment_exceptions: &[(String, String)],
    sysctls: &[(&str, &str)],
) -> Report {
    let finals = requested(final_config);
    let holds = |item: &Item| match item {
        Item::Config { sym, value } => {
            let got = finals
                .iter()
                .find(|(s, _)| s == sym)
                .map_or("n", |(_, v)| v.as_str());
            got == value
        }
        Item::Sysctl { name, value } => sysctls.contains(&(name.as_str(), value.as_str())),
    };
    let mut r = Report::default();
    for s in list
        .iter()
        .filter(|s| s.arches == "all" || s.arches == arch.name())
    {
        r.checked += 1;
        let what = format!("recommended.config line {} ({:?})", s.line, s.items[0]);
        let met = s.items.iter().any(holds);
        let fragment_excepted = match &s.items[0] {
            Item::Config { sym, .. } => fragment_exceptions.iter().any(|(x, _)| x == sym),
            Item::Sysctl { .. } => false,
        };
        match (&s.exception, met) {
            (Some(_), true) => r.problems.push(format!(
                "{what}: met by {}, but still carries an exception; drop it",
                arch.name()
            )),
            (Some(why), false) if why.len() < MIN_REASON => {
                r.problems.push(format!("{what}: the exception needs a reason"));
            }
            (Some(_), false) => r.excepted += 1,
            (None, true) => r.met += 1,
            (None, false) if fragment_excepted => r.excepted += 1,
            (None, false) => r.problems.push(format!(
                "{what}: not met by {} and no exception (`! why` on the line, or `# exception` in a fragment)",
                arch.name()
            )),
        }
    }
    r
}

/// Audits `arch` and fails with every problem; returns the report (counts) when clean.
pub fn check(arch: Arch, final_config: &str, fragments: &str) -> Result<Report> {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()));
    let list = parse(&read(list_path())?)?;
    let r = audit(
        &list,
        arch,
        final_config,
        &super::exceptions(fragments),
        &boot_sysctls(arch),
    );
    if !r.problems.is_empty() {
        bail!(
            "recommended-settings audit of {} failed:\n  {}",
            arch.name(),
            r.problems.join("\n  ")
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_assets::kernel::{final_config_path, fragments};

    const LIST: &str = "# head\n\
        all CONFIG_A=y\n\
        all CONFIG_B=n | CONFIG_C=y\n\
        x86_64 CONFIG_D=y ! no D in a guest without a D device\n\
        aarch64 CONFIG_E=y\n\
        all sysctl:fs.x=1\n\
        all CONFIG_F=y\n";

    #[test]
    fn parses_alternatives_exceptions_and_sysctls() {
        let l = parse(LIST).unwrap();
        assert_eq!(l.len(), 6);
        assert_eq!(l[1].items.len(), 2);
        assert_eq!(
            l[2].exception.as_deref(),
            Some("no D in a guest without a D device")
        );
        assert_eq!(
            l[4].items[0],
            Item::Sysctl {
                name: "fs.x".into(),
                value: "1".into()
            }
        );
        assert!(parse("sometimes CONFIG_A=y\n").is_err());
        assert!(parse("all A=y\n").is_err());
    }

    #[test]
    fn met_excepted_and_missing() {
        let l = parse(LIST).unwrap();
        let frag = vec![("CONFIG_F".to_string(), "a fragment's reason".to_string())];
        // A met, B/C met through C, D excepted, E not for x86_64, sysctl met, F fragment-excepted.
        let r = audit(
            &l,
            Arch::X86_64,
            "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n",
            &frag,
            &[("fs.x", "1")],
        );
        assert_eq!((r.checked, r.met, r.excepted), (5, 3, 2), "{r:?}");
        assert!(r.problems.is_empty(), "{r:?}");
        // A lost, sysctl not set, D met while excepted.
        let r = audit(&l, Arch::X86_64, "CONFIG_B=y\nCONFIG_D=y\n", &frag, &[]);
        assert_eq!(r.problems.len(), 4, "{r:?}");
        for want in ["CONFIG_A", "CONFIG_B", "CONFIG_D", "fs.x"] {
            assert!(r.problems.iter().any(|p| p.contains(want)), "{want}: {r:?}");
        }
        // E applies to aarch64 only, and is missing there.
        let r = audit(
            &l,
            Arch::Aarch64,
            "CONFIG_A=y\nCONFIG_C=y\n",
            &frag,
            &[("fs.x", "1")],
        );
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert!(r.problems[0].contains("CONFIG_E"));
    }

    #[test]
    fn short_exception_is_rejected() {
        let l = parse("all CONFIG_A=y ! because\n").unwrap();
        let r = audit(&l, Arch::X86_64, "", &[], &[]);
        assert_eq!(r.problems.len(), 1, "{r:?}");
    }

    #[test]
    fn checked_in_final_configs_meet_the_recommended_list() {
        for arch in Arch::ALL {
            let fin = std::fs::read_to_string(final_config_path(arch)).unwrap();
            let r = check(arch, &fin, &fragments(arch).unwrap()).unwrap();
            println!(
                "recommended settings, {}: {} checked, {} met, {} excepted",
                arch.name(),
                r.checked,
                r.met,
                r.excepted
            );
            assert!(
                r.checked > 100,
                "{}: only {} settings",
                arch.name(),
                r.checked
            );
        }
    }
}
