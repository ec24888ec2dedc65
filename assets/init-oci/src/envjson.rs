//! The environment the host serves on vsock port 1026: `{"env":{…},"secrets":{…}}`.
//!
//! Both objects map names to string values and both become environment variables of PID 1
//! (and so of the agent and the workload), `secrets` after `env`, so a secret wins over an
//! `env` entry of the same name, as in supermachine's init. Other top-level members are
//! ignored. Entries the environment cannot hold (a non-string value, an empty name, a name
//! with `=`, a NUL anywhere) are left out and reported.
//!
//! A small strict JSON reader (RFC 8259, escapes and surrogate pairs included), written
//! here so that PID 1 carries no JSON library; it is a pure function over the text, fuzzed by
//! `fuzz/fuzz_targets/init_files.rs`.

use crate::error::{Error, Result};

/// Nesting deeper than this is refused (it would only be an attack on the stack).
const MAX_DEPTH: usize = 32;

/// What the env JSON gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `(name, value)` to set, in order (`env` first, then `secrets`).
    pub vars: Vec<(String, String)>,
    /// Names (or `object.name`) of the entries left out, with why.
    pub skipped: Vec<String>,
}

/// A parsed JSON value, as far as init-oci cares.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    String(String),
    Object(Vec<(String, Value)>),
    Other,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn fail(&self, reason: &str) -> Error {
        Error::Format {
            what: "env JSON",
            reason: format!("{reason} at byte {}", self.at),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.ws();
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.fail(&format!("expected `{}`", c as char)))
        }
    }

    fn literal(&mut self, word: &str) -> Result<()> {
        if self.b[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(())
        } else {
            Err(self.fail("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        self.ws();
        match self.b.get(self.at) {
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'{') => self.object(depth),
            Some(b'[') => {
                self.at += 1;
                self.ws();
                if self.b.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Value::Other);
                }
                loop {
                    self.value(depth + 1)?;
                    self.ws();
                    match self.b.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::Other);
                        }
                        _ => return Err(self.fail("expected `,` or `]`")),
                    }
                }
            }
            Some(b't') => self.literal("true").map(|()| Value::Other),
            Some(b'f') => self.literal("false").map(|()| Value::Other),
            Some(b'n') => self.literal("null").map(|()| Value::Other),
            Some(b'-' | b'0'..=b'9') => self.number().map(|()| Value::Other),
            Some(_) => Err(self.fail("unexpected character")),
            None => Err(self.fail("unexpected end")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<()> {
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.b.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail("bad number")),
        }
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.fail("bad number"));
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.b.get(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("bad number"));
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .b
            .get(self.at..self.at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.fail("bad \\u escape"))?;
        self.at += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.at) else {
                return Err(self.fail("unterminated string"));
            };
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.b.get(self.at) else {
                        return Err(self.fail("unterminated escape"));
                    };
                    self.at += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if !self.b[self.at..].starts_with(b"\\u") {
                                    return Err(self.fail("lone surrogate"));
                                }
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(self.fail("lone surrogate"));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| self.fail("lone surrogate"))?
                        }
                        _ => return Err(self.fail("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1f => return Err(self.fail("control character in a string")),
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.fail("string is not UTF-8"))
    }

    fn object(&mut self, depth: usize) -> Result<Value> {
        self.eat(b'{')?;
        let mut members = Vec::new();
        self.ws();
        if self.b.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            let v = self.value(depth + 1)?;
            members.push((key, v));
            self.ws();
            match self.b.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.fail("expected `,` or `}`")),
            }
        }
    }
}

/// Whether `(name, value)` can be an environment variable.
fn settable(name: &str, value: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0')
}

/// Parses the env JSON. A document that is not a JSON object is an error; entries that
/// cannot be environment variables are [`Env::skipped`].
pub fn parse(text: &[u8]) -> Result<Env> {
    let mut r = Reader { b: text, at: 0 };
    let top = r.value(0)?;
    r.ws();
    if r.at != text.len() {
        return Err(r.fail("trailing data"));
    }
    let Value::Object(members) = top else {
        return Err(Error::Format {
            what: "env JSON",
            reason: "not a JSON object".into(),
        });
    };
    let mut env = Env::default();
    for section in ["env", "secrets"] {
        for (key, v) in &members {
            if key != section {
                continue;
            }
            match v {
                Value::Object(entries) => {
                    for (name, value) in entries {
                        match value {
                            Value::String(s) if settable(name, s) => {
                                env.vars.push((name.clone(), s.clone()))
                            }
                            _ => env.skipped.push(format!("{section}.{name}")),
                        }
                    }
                }
                _ => env.skipped.push(format!("{section} (not an object)")),
            }
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(text.as_bytes()).unwrap().vars
    }

    #[test]
    fn supermachines_shape() {
        assert_eq!(
            vars(r#"{"env":{"A":"1","PATH":"/bin"},"secrets":{"A":"s"}}"#),
            [("A", "1"), ("PATH", "/bin"), ("A", "s")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert!(vars(r#"{"env":{},"secrets":{}}"#).is_empty());
        assert!(vars(" { } ").is_empty());
    }

    #[test]
    fn escapes_and_unicode() {
        assert_eq!(
            vars(r#"{"secrets":{"K":"a\"b\\c\n\u00e9\ud83d\ude00/"},"env":{"X":"y"}}"#),
            vec![
                ("X".to_string(), "y".to_string()),
                ("K".to_string(), "a\"b\\c\né😀/".to_string())
            ]
        );
    }

    #[test]
    fn unsettable_entries_are_skipped() {
        let e = parse(
            br#"{"env":{"":"x","A=B":"x","N":1,"Z":"a\u0000b","O":{"x":[1,2,{}]},"OK":"v"},"secrets":[],"other":[true,false,null,-1.5e3]}"#,
        )
        .unwrap();
        assert_eq!(e.vars, vec![("OK".to_string(), "v".to_string())]);
        assert_eq!(
            e.skipped,
            [
                "env.",
                "env.A=B",
                "env.N",
                "env.Z",
                "env.O",
                "secrets (not an object)"
            ]
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "",
            "[]",
            "\"env\"",
            "{",
            r#"{"env":{"A":"1"}"#,
            r#"{"env":{"A":"1"}} x"#,
            r#"{"env":{"A":"\q"}}"#,
            r#"{"env":{"A":"\ud800"}}"#,
            r#"{"env":{"A":01}}"#,
            "{\"env\":{\"A\":\"\n\"}}",
            &"[".repeat(100),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
    }
}
