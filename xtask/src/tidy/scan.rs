//! The tidy checks' view of a source: its comments and literals blanked, its test code
//! marked, without a parser dependency.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::util;

/// A Rust source file, with its comments and literals blanked and its test code marked.
pub struct Source {
    /// Path relative to the repository root, with `/`.
    pub rel: String,
    /// The file's lines as written.
    pub raw: Vec<String>,
    /// The same lines with comments and the insides of string and char literals blanked.
    pub code: Vec<String>,
    /// Lines inside a `#[cfg(test)]` or `#[test]` item.
    pub test: Vec<bool>,
}

impl Source {
    fn read(root: &Path, path: &Path) -> Source {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/");
        let raw: Vec<String> = text.lines().map(String::from).collect();
        let code: Vec<String> = blank(&text).lines().map(String::from).collect();
        let test = test_lines(&code);
        Source {
            rel,
            raw,
            code,
            test,
        }
    }
}

/// `text` with comments and the contents of string and char literals replaced by spaces (line
/// breaks kept), so braces and words inside them do not count.
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let keep = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |j: usize| c.get(j).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                keep(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    keep(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && (!at(i.wrapping_sub(1)).is_alphanumeric() || at(i.wrapping_sub(1)) == 'b')
        {
            // A raw string: r"…" or r#"…"#, ended by a quote and as many hashes.
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            if at(j) != '"' {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            out.extend(&c[i..=j]);
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    out.extend(&c[i..=i + hashes]);
                    i += hashes + 1;
                    break;
                }
                keep(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    keep(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    keep(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' && (at(i + 2) == '\'' || at(i + 1) == '\\') {
            // A char literal ('x' or '\n', '\'', '\u{..}'); a lifetime has no closing quote.
            let mut j = i + 1;
            if at(j) == '\\' {
                j += 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
            } else {
                j += 1;
            }
            out.push('\'');
            for _ in i + 1..j {
                out.push(' ');
            }
            out.push('\'');
            i = j + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Whether an attribute line makes the next item test-only.
fn is_test_attr(code: &str) -> bool {
    let t = code.trim();
    t == "#[test]"
        || (t.starts_with("#[cfg(")
            && t.split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|w| w == "test")
            && !t.contains("not(test"))
}

/// Marks the lines of every `#[cfg(test)]`/`#[test]` item, attributes included.
fn test_lines(code: &[String]) -> Vec<bool> {
    let mut test = vec![false; code.len()];
    let mut i = 0;
    while i < code.len() {
        if !is_test_attr(&code[i]) {
            i += 1;
            continue;
        }
        let start = i;
        // Past the other attributes to the item, then to its end: the `;` of `mod x;`, or the
        // line where its braces close.
        let mut depth = 0i32;
        let mut opened = false;
        let mut j = i + 1;
        while j < code.len() && code[j].trim_start().starts_with("#[") {
            j += 1;
        }
        while j < code.len() {
            for ch in code[j].chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && code[j].trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        for t in &mut test[start..=j.min(code.len() - 1)] {
            *t = true;
        }
        i = j + 1;
    }
    test
}

/// Every Rust file of the repository, build outputs left out.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()));
        for e in entries {
            let p = e.expect("directory entry").path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if p.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    dirs.push(p);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn sources() -> Vec<Source> {
    let root = util::root();
    rust_files(&root)
        .iter()
        .map(|p| Source::read(&root, p))
        .collect()
}

/// The files of `#[cfg(test)] mod x;` declarations (`#[path]` honoured): test code whole.
pub fn test_module_files(sources: &[Source]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in sources {
        let dir = Path::new(&s.rel).parent().unwrap_or(Path::new(""));
        let stem = Path::new(&s.rel).file_stem().unwrap_or_default();
        // Children of `foo.rs` live in `foo/`; of `main.rs`, `lib.rs` and `mod.rs`, beside it.
        let child_dir = if ["main", "lib", "mod"].iter().any(|n| stem == *n) {
            dir.to_path_buf()
        } else {
            dir.join(stem)
        };
        for (i, line) in s.code.iter().enumerate() {
            let t = line.trim();
            let Some(name) = t
                .strip_prefix("mod ")
                .or_else(|| t.strip_prefix("pub mod "))
                .and_then(|r| r.strip_suffix(';'))
            else {
                continue;
            };
            if !s.test[i] {
                continue;
            }
            let path_attr = (0..i)
                .rev()
                .take_while(|&k| s.raw[k].trim_start().starts_with("#["))
                .find_map(|k| {
                    let r = s.raw[k].trim();
                    r.strip_prefix("#[path = \"")
                        .and_then(|p| p.strip_suffix("\"]"))
                        .map(|p| dir.join(p))
                });
            for p in path_attr.map_or_else(
                || {
                    vec![
                        child_dir.join(format!("{name}.rs")),
                        child_dir.join(name).join("mod.rs"),
                    ]
                },
                |p| vec![p],
            ) {
                out.insert(p.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

/// Whether the whole file is test code: integration tests, benches, fuzz targets, the
/// conformance suite's own tests and `#[cfg(test)]` module files.
pub fn is_test_file(rel: &str, test_modules: &BTreeSet<String>) -> bool {
    rel.split('/')
        .any(|c| c == "tests" || c == "benches" || c == "fuzz")
        || test_modules.contains(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_sees_code_only() {
        let src = "let a = \"{ .unwrap() }\"; // x.unwrap()\nlet b = r#\"}\"#; let c = '{';\n\
                   fn f<'a>(x: &'a str) {}\n#[cfg(test)]\nmod tests {\n    fn g() { x.unwrap(); }\n}\nfn h() {}\n";
        let code: Vec<String> = blank(src).lines().map(String::from).collect();
        assert!(!code[0].contains("unwrap") && !code[0].contains('{'));
        assert!(!code[1].contains('{') && !code[1].contains('}'));
        assert!(code[2].contains("'a"));
        let test = test_lines(&code);
        assert_eq!(test, [false, false, false, true, true, true, true, false]);
    }
}
