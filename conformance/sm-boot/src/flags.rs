//! `--flag value` parsing for the tools: numbers in decimal or `0x` hex, `A:B` pairs, and
//! errors that name the flag and the value.

/// A decimal or `0x`-prefixed hexadecimal number.
pub fn number(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s:?} is not a number: {e}"))
}

/// `A:B`, two numbers, for `flag`.
pub fn pair(flag: &str, s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{flag} {s:?}: want A:B"))?;
    Ok((number(a)?, number(b)?))
}

/// Walks `--flag value` arguments: `switch` is asked first whether a flag stands alone;
/// every other flag takes the next argument, and `value` stores it.
pub fn walk(
    it: impl Iterator<Item = String>,
    usage: &str,
    mut switch: impl FnMut(&str) -> bool,
    mut value: impl FnMut(&str, String) -> Result<(), String>,
) -> Result<(), String> {
    let mut it = it;
    while let Some(flag) = it.next() {
        if switch(&flag) {
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
        value(&flag, v).map_err(|e| {
            if e.starts_with("unknown flag") {
                format!("{e}\n{usage}")
            } else {
                e
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_pairs_parse_and_bad_ones_are_named() {
        assert_eq!(number("0x10"), Ok(16));
        assert_eq!(number("10"), Ok(10));
        assert!(number("x").unwrap_err().contains("\"x\" is not a number"));
        assert_eq!(pair("--p", "1:0x2"), Ok((1, 2)));
        assert!(pair("--p", "5")
            .unwrap_err()
            .contains("--p \"5\": want A:B"));
    }

    #[test]
    fn a_flag_without_its_value_is_named() {
        let args = ["--a".to_string()];
        let e = walk(args.into_iter(), "usage", |_| false, |_, _| Ok(())).unwrap_err();
        assert!(e.starts_with("--a needs a value"), "{e}");
    }
}
