//! The `sm.*` kernel command-line parameters of init-oci (the table in `main.rs`).
//!
//! A pure function over `/proc/cmdline`'s text, so it is unit-tested here and fuzzed by
//! `fuzz/fuzz_targets/init_cmdline.rs`, which includes this file.

/// Settings from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `sm.root`: block device of the read-only root image.
    pub root: String,
    /// `sm.rootfstype`: its filesystem type.
    pub fstype: String,
    /// `sm.upper_size`: size of the overlay's tmpfs upper layer.
    pub upper_size: String,
    /// `sm.hostname`: the guest hostname.
    pub hostname: String,
}

/// Parses `/proc/cmdline`; unknown words are the kernel's business.
pub fn parse_cmdline(cmdline: &str) -> Config {
    let mut c = Config {
        root: "/dev/vda".into(),
        fstype: "squashfs".into(),
        upper_size: "50%".into(),
        hostname: "supermachine".into(),
    };
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        match key {
            "sm.root" => c.root = value.into(),
            "sm.rootfstype" => c.fstype = value.into(),
            "sm.upper_size" => c.upper_size = value.into(),
            "sm.hostname" => c.hostname = value.into(),
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults_and_overrides() {
        let c = parse_cmdline("console=ttyAMA0 panic=-1");
        assert_eq!(c.root, "/dev/vda");
        assert_eq!(c.fstype, "squashfs");
        let c = parse_cmdline(
            "sm.root=/dev/vdb sm.rootfstype=ext4 sm.upper_size=64m sm.hostname=box sm.root= junk",
        );
        assert_eq!(
            c,
            Config {
                root: "/dev/vdb".into(),
                fstype: "ext4".into(),
                upper_size: "64m".into(),
                hostname: "box".into()
            }
        );
    }
}
