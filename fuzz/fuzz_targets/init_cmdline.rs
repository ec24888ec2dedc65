//! init-oci's parser of the kernel command line (`supermachine.*` words), over arbitrary text.
//!
//! Properties: it never panics; `kcache` and `pre_exec_sync` are set exactly when their
//! `=1` word is present; `host_time` and `host_ipv6` come from the first word of their key
//! only, `host_time` is the leading digits of its value and always after `MIN_HOST_TIME`.
#![no_main]

use libfuzzer_sys::fuzz_target;

use init_oci::cmdline;

fn first<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = cmdline::parse(text);
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    assert_eq!(c.kcache, words.contains(&"supermachine.kcache=1"));
    assert_eq!(
        c.pre_exec_sync,
        words.contains(&"supermachine.pre_exec_sync=1")
    );
    match (first(text, "supermachine.host_time"), c.host_time) {
        (None, t) => assert_eq!(t, None),
        (Some(v), Some(t)) => {
            assert!(t > cmdline::MIN_HOST_TIME);
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            assert_eq!(digits.trim_start_matches('0'), t.to_string());
        }
        (Some(_), None) => {}
    }
    match first(text, "supermachine.host_ipv6") {
        None => assert_eq!(c.host_ipv6, None),
        Some(v) => assert_eq!(c.host_ipv6, v.chars().next().map(|f| f != '0')),
    }
});
