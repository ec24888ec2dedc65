//! Source pins: the `key = value` files `assets/*/SOURCE`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

/// A parsed pin file.
#[derive(Debug)]
pub struct Pins {
    file: String,
    values: BTreeMap<String, String>,
}

impl Pins {
    /// Reads `assets/<rel>`.
    pub fn load(rel: &str) -> Result<Pins> {
        let path = crate::util::root().join("assets").join(rel);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(Pins::parse(&text, &path))
    }

    fn parse(text: &str, path: &Path) -> Pins {
        let values = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Pins {
            file: path.display().to_string(),
            values,
        }
    }

    /// The value of `key`, or an error naming the file.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}: no `{key} = …` line", self.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_missing_keys() {
        let p = Pins::parse("# c\npackage = x\n a.b = 1 = 2\n", Path::new("F"));
        assert_eq!(p.get("package").unwrap(), "x");
        assert_eq!(p.get("a.b").unwrap(), "1 = 2");
        assert!(p
            .get("nope")
            .unwrap_err()
            .to_string()
            .contains("F: no `nope"));
    }

    #[test]
    fn checked_in_pins_are_complete() {
        let k = Pins::load("kernel/SOURCE").unwrap();
        for key in [
            "package",
            "version",
            "tarball",
            "tarball_sha256",
            "kernel_release",
        ] {
            k.get(key).unwrap();
        }
        let b = Pins::load("busybox/SOURCE").unwrap();
        for key in [
            "source.version",
            "source.url",
            "source.dsc_sha256",
            "source.orig_sha256",
            "source.debian_sha256",
            "package",
            "version",
            "deb_sha256.arm64",
        ] {
            b.get(key).unwrap();
        }
    }
}
