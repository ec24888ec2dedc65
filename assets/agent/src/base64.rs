//! Standard base64 (RFC 4648 alphabet, `=` padding), the encoding of file contents in CONTROL
//! and REQUEST JSON. Decoding is strict: a length that is not a multiple of 4, a byte outside
//! the alphabet, misplaced padding or non-zero bits after the last byte is an error naming
//! the cause.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes `data`.
pub fn encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
    // Every byte pushed is ASCII from ALPHABET or '='.
    String::from_utf8(out).unwrap_or_default()
}

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes `text`; the error says what is wrong and where.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let s = text.as_bytes();
    if s.len() % 4 != 0 {
        return Err(format!("length {} is not a multiple of 4", s.len()));
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (q, chunk) in s.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return Err(format!("misplaced padding at offset {}", q * 4 + 4 - pad));
        }
        let mut n = 0u32;
        for (i, &c) in chunk[..4 - pad].iter().enumerate() {
            let v = value(c)
                .ok_or_else(|| format!("invalid byte 0x{c:02x} at offset {}", q * 4 + i))?;
            n |= v << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        // Canonical only: the bits after the last whole byte must be zero, so one text means
        // one byte string.
        if bytes[4 - pad..].iter().any(|&b| b != 0) {
            return Err(format!(
                "non-zero padding bits at offset {}",
                q * 4 + 3 - pad
            ));
        }
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
    }

    #[test]
    fn bad_input_names_the_cause() {
        assert_eq!(decode("ab").unwrap_err(), "length 2 is not a multiple of 4");
        assert!(decode("ab!d").unwrap_err().contains("0x21 at offset 2"));
        assert!(decode("a===").unwrap_err().contains("padding"));
        assert!(decode("Zg==Zm9v").unwrap_err().contains("padding"));
        // Found by the `requests` fuzz target: "Y5=" carries bits past the last byte.
        assert!(decode("WWY5").is_ok());
        assert!(decode("WY5=")
            .unwrap_err()
            .contains("non-zero padding bits"));
        assert!(decode("Zh==")
            .unwrap_err()
            .contains("non-zero padding bits"));
    }
}
