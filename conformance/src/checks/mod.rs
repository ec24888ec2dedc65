//! The conformance checks: what supermachine 0.7.108's client expects of a guest, each driven
//! through its public API only. Groups: [`exec()`] (REQUEST sessions), [`control()`] (CONTROL
//! actions) and [`workload()`] (`/.supermachine/run-workload` and `signal`).
//!
//! Each group is a module of its own; the buffer helpers they share stay here.

mod control;
mod exec;
mod workload;

pub use control::control;
pub use exec::exec;
pub use workload::workload;

/// A deterministic pseudo-random buffer (xorshift), so a corrupted byte is visible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Where two buffers first differ, for failure details.
pub(super) fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "{} of {} bytes, first difference at {i}",
            got.len(),
            want.len()
        ),
        None => format!("{} of {} bytes", got.len(), want.len()),
    }
}

/// `seq 1 SEQ_8MIB` prints exactly 8 MiB (6 888 888 bytes for 1..=999 999, then 187 465
/// eight-byte lines): a large, checkable stdout from one process, with no pipe in between.
pub const SEQ_8MIB: u32 = 1_187_464;

/// What `seq 1 n` prints.
pub fn seq_output(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.extend_from_slice(i.to_string().as_bytes());
        v.push(b'\n');
    }
    v
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_exactly_8_mib() {
        assert_eq!(seq_output(SEQ_8MIB).len(), 8 << 20);
        assert_eq!(seq_output(3), b"1\n2\n3\n");
    }

    #[test]
    fn pattern_is_deterministic_and_not_flat() {
        assert_eq!(pattern(4096, 1), pattern(4096, 1));
        assert_ne!(pattern(4096, 1), pattern(4096, 2));
        let p = pattern(4096, 1);
        assert!(p.iter().any(|&b| b != p[0]));
    }
}
