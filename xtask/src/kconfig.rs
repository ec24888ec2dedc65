//! Kconfig `.config` text: what a fragment asks for, what survived `olddefconfig`, and a
//! fragment laid over a base (shared by the kernel, busybox and hardening builds).

/// Symbols the fragment sets, as (`CONFIG_X`, value) with `n` for "is not set".
pub fn requested(fragment: &str) -> Vec<(String, String)> {
    fragment
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("# ") {
                let sym = rest.strip_suffix(" is not set")?;
                return Some((sym.to_string(), "n".to_string()));
            }
            let (k, v) = l.split_once('=')?;
            k.starts_with("CONFIG_")
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Requested symbols whose final value differs: `(symbol, wanted, got)`.
pub fn missing(fragment: &str, final_config: &str) -> Vec<(String, String, String)> {
    let finals = requested(final_config);
    requested(fragment)
        .into_iter()
        .filter_map(|(sym, want)| {
            let got = finals
                .iter()
                .find(|(s, _)| *s == sym)
                .map_or("n".to_string(), |(_, v)| v.clone());
            (got != want).then_some((sym, want, got))
        })
        .collect()
}

/// `fragment` laid over `base` (a `.config`): every symbol the fragment sets loses its line
/// in `base`, and the fragment's lines follow.
pub fn merge(base: &str, fragment: &str) -> String {
    let wanted = requested(fragment);
    let mut out: String = base
        .lines()
        .filter(|l| {
            let sym = l
                .strip_prefix("# ")
                .and_then(|r| r.strip_suffix(" is not set"))
                .or_else(|| l.split_once('=').map(|(k, _)| k));
            !sym.is_some_and(|s| wanted.iter().any(|(w, _)| w == s))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for (k, v) in wanted {
        if v == "n" {
            out.push_str(&format!("# {k} is not set\n"));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dropped_symbols() {
        let frag = "# why\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n";
        let fin = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=\"x\"\n";
        let m = missing(frag, fin);
        assert_eq!(
            m,
            [
                ("CONFIG_B".into(), "y".into(), "n".into()),
                ("CONFIG_C".into(), "n".into(), "y".into())
            ]
        );
        assert!(missing("CONFIG_E=y\n", "").len() == 1);
    }

    #[test]
    fn merge_replaces_every_symbol_the_fragment_sets() {
        let base = "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=5\n";
        let frag = "# why\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=7\n";
        assert_eq!(
            merge(base, frag),
            "# c\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=7\n"
        );
    }
}
