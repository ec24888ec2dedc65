//! init-oci's readers of what the host hands it: the env JSON of vsock port 1026, the
//! `/.supermachine-*` files of the delta layer, and the image's `/etc/passwd` and
//! `/etc/group`, over arbitrary bytes (the first byte picks the reader).
//!
//! Properties: none panics; the env JSON gives only variables the environment can hold,
//! and they survive being written back as JSON and read again; a parsed command has 1 to 63
//! non-empty tokens without line breaks, NULs or leading blanks; a resolved identity lists
//! its primary group first whenever it lists any; binds have absolute paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

use init_oci::{envjson, files};
use supermachine_guest::user;

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => {
            if let Ok(env) = envjson::parse(rest) {
                let mut doc = String::from("{\"env\":{");
                for (i, (k, v)) in env.vars.iter().enumerate() {
                    assert!(!k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'));
                    if i > 0 {
                        doc.push(',');
                    }
                    doc.push_str(&format!("{}:{}", json_string(k), json_string(v)));
                }
                doc.push_str("}}");
                let again = envjson::parse(doc.as_bytes()).expect("our own JSON parses");
                assert_eq!(again.vars, env.vars);
            }
        }
        1 => {
            if let Ok(c) = files::parse_cmd(rest) {
                assert!((1..=files::MAX_TOKENS).contains(&c.argv.len()));
                for a in &c.argv {
                    let b = a.as_encoded_bytes();
                    assert!(!b.is_empty() && !b.contains(&b'\n') && !b.contains(&b'\r'));
                    assert!(!b.contains(&0) && b[0] != b' ' && b[0] != b'\t');
                }
            }
            let _ = files::parse_user(rest);
            let _ = files::parse_workdir(rest);
            if let Ok(Some(h)) = files::parse_hostname(rest) {
                assert!(!h.is_empty() && h.len() <= 64);
            }
        }
        2 => {
            let text = String::from_utf8_lossy(rest);
            let mut parts = text.splitn(3, '\u{1}');
            let spec = parts.next().unwrap_or_default();
            let passwd = parts.next().unwrap_or_default();
            let group = parts.next().unwrap_or_default();
            if let Ok(id) = user::resolve(spec, passwd, group) {
                if let Some(&first) = id.groups.first() {
                    assert_eq!(first, id.gid);
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (binds, _) = files::parse_binds(&text);
            assert!(binds
                .iter()
                .all(|b| b.path.starts_with('/') && !b.tag.is_empty()));
            let (vols, _) = files::parse_volumes(&text);
            assert!(vols.len() <= files::MAX_VOLUMES);
        }
    }
});
