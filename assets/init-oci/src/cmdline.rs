//! The `supermachine.*` words of the kernel command line that init-oci reads.
//!
//! A pure function over `/proc/cmdline`'s text, so it is unit-tested here and fuzzed by
//! `fuzz/fuzz_targets/init_cmdline.rs`, which includes this file.
//!
//! | word | meaning |
//! |---|---|
//! | `supermachine.host_time=S` | the host's wall clock, seconds since the epoch: set when the guest clock reads before 2001 |
//! | `supermachine.host_ipv6=0` | the host has no IPv6 route: `/etc/gai.conf` makes getaddrinfo prefer IPv4 |
//! | `supermachine.kcache=1` | pause before the root pivot for the host's kernel-boot-cache snapshot |
//! | `supermachine.pre_exec_sync=1` | pause before the workload's fork until the host writes a byte |
//!
//! As in supermachine's own init, the first occurrence of a word counts. `host_time` takes
//! the leading decimal digits of its value (what `strtoll` reads) and is ignored when it is
//! not after [`MIN_HOST_TIME`].

/// Host times at or before this (2001-09-09) are not believed: the value is garbage or the
/// host's own clock is unset.
pub const MIN_HOST_TIME: i64 = 1_000_000_000;

/// `supermachine.host_time=` (then seconds since the epoch).
pub const HOST_TIME: &str = "supermachine.host_time=";
/// `supermachine.host_ipv6=` (then `0` or `1`).
pub const HOST_IPV6: &str = "supermachine.host_ipv6=";
/// The word that asks for the kernel-cache pause.
pub const KCACHE: &str = "supermachine.kcache=1";
/// The word that asks for the pre-exec pause.
pub const PRE_EXEC_SYNC: &str = "supermachine.pre_exec_sync=1";

/// The settings of the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `supermachine.host_time=`: seconds since the epoch, when believable.
    pub host_time: Option<i64>,
    /// `supermachine.host_ipv6=`: `Some(false)` when its value starts with `0`.
    pub host_ipv6: Option<bool>,
    /// `supermachine.kcache=1`.
    pub kcache: bool,
    /// `supermachine.pre_exec_sync=1`.
    pub pre_exec_sync: bool,
}

/// The leading decimal digits of `s` as a number, if there are any and they fit.
fn leading_number(s: &str) -> Option<i64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// Parses `/proc/cmdline`; words init-oci does not know are the kernel's business.
pub fn parse(cmdline: &str) -> Cmdline {
    let mut c = Cmdline::default();
    let (mut time_seen, mut ipv6_seen) = (false, false);
    for word in cmdline.split_ascii_whitespace() {
        if let Some(v) = word.strip_prefix(HOST_TIME) {
            if !time_seen {
                time_seen = true;
                c.host_time = leading_number(v).filter(|&t| t > MIN_HOST_TIME);
            }
        } else if let Some(v) = word.strip_prefix(HOST_IPV6) {
            if !ipv6_seen {
                ipv6_seen = true;
                c.host_ipv6 = v.chars().next().map(|f| f != '0');
            }
        } else if word == KCACHE {
            c.kcache = true;
        } else if word == PRE_EXEC_SYNC {
            c.pre_exec_sync = true;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supermachines_bake_command_line() {
        let c = parse(
            "earlycon=pl011,mmio32,0x09000000 console=ttyAMA0 quiet loglevel=4 tsi_hijack \
             supermachine.host_time=1767225600 supermachine.host_ipv6=0 ipv6.disable=1",
        );
        assert_eq!(
            c,
            Cmdline {
                host_time: Some(1_767_225_600),
                host_ipv6: Some(false),
                kcache: false,
                pre_exec_sync: false
            }
        );
    }

    #[test]
    fn flags_and_first_occurrence() {
        let c = parse(
            "supermachine.kcache=1 supermachine.pre_exec_sync=1 supermachine.host_ipv6=1 \
             supermachine.host_ipv6=0 supermachine.host_time=12 supermachine.host_time=1767225600",
        );
        assert!(c.kcache && c.pre_exec_sync);
        assert_eq!(c.host_ipv6, Some(true));
        assert_eq!(
            c.host_time, None,
            "the first host_time (12) is not believable"
        );
        assert_eq!(parse("").host_time, None);
    }

    #[test]
    fn host_time_reads_leading_digits() {
        assert_eq!(
            parse("supermachine.host_time=1767225600abc").host_time,
            Some(1_767_225_600)
        );
        assert_eq!(parse("supermachine.host_time=-5").host_time, None);
        assert_eq!(
            parse("supermachine.host_time=99999999999999999999999").host_time,
            None
        );
        assert_eq!(parse("supermachine.host_ipv6=").host_ipv6, None);
        assert!(!parse("supermachine.kcache=10").kcache);
    }
}
