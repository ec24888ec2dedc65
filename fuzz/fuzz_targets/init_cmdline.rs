//! init-oci's parser of the kernel command line (`sm.*` parameters), over arbitrary text.
//!
//! Properties: it never panics; every setting is non-empty and free of whitespace; each one is
//! the value of the last non-empty `sm.<key>=` word, or the documented default.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../assets/init-oci/src/cmdline.rs"]
#[allow(dead_code)]
mod cmdline;

fn last(text: &str, key: &str, default: &str) -> String {
    text.split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .last()
        .unwrap_or(default)
        .to_string()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = cmdline::parse_cmdline(text);
    for v in [&c.root, &c.fstype, &c.upper_size, &c.hostname] {
        assert!(!v.is_empty() && !v.contains(|ch: char| ch.is_ascii_whitespace()));
    }
    assert_eq!(c.root, last(text, "sm.root", "/dev/vda"));
    assert_eq!(c.fstype, last(text, "sm.rootfstype", "squashfs"));
    assert_eq!(c.upper_size, last(text, "sm.upper_size", "50%"));
    assert_eq!(c.hostname, last(text, "sm.hostname", "supermachine"));
});
