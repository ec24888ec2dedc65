//! supermachine's TSI host side as the rigs set it up: what `sm-vsock` is told (token, egress
//! policy, IPv6 route) and the listeners it reports. The guest's datagram switch is one of
//! the rig's command-line words ([`super::cmdline_words`]).

use std::path::{Path, PathBuf};

/// supermachine's TSI host side, as `sm-vsock` sets it up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TsiHost {
    /// The token (64 hex digits) the muxer requires and the guest's command line carries
    /// (`supermachine.tsi_token=`, last, as supermachine writes it), or none.
    pub token: Option<String>,
    /// A token the muxer requires instead of the guest's (a mismatch), if any.
    pub host_token: Option<String>,
    /// supermachine's egress policy (`allow_all` when none).
    pub egress_policy: Option<String>,
    /// Whether the host has an IPv6 route (`SUPERMACHINE_HOST_IPV6`); none: supermachine
    /// probes.
    pub host_ipv6: Option<bool>,
    /// The guest inet ports whose host ports `sm-vsock` reports in [`tsi_status`].
    pub report_inet_ports: Vec<u16>,
}

/// The file where `sm-vsock` reports its muxer's TSI listeners, in the VM's directory `dir`
/// (`listeners N`, then `inet PORT host HOST_PORT` lines).
pub fn tsi_status(dir: &Path) -> PathBuf {
    dir.join("tsi-status")
}

/// The muxer's TSI view of the VM in `dir`, as `sm-vsock` reports it in [`tsi_status`]: the
/// listener count and the host port of each reported guest inet port (none yet: 0, empty).
pub fn read_status(dir: &Path) -> (usize, Vec<(u16, u16)>) {
    let text = std::fs::read_to_string(tsi_status(dir)).unwrap_or_default();
    let mut count = 0;
    let mut ports = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["listeners", n] => count = n.parse().unwrap_or(0),
            ["inet", p, "host", h] => {
                if let (Ok(p), Ok(h)) = (p.parse(), h.parse()) {
                    ports.push((p, h));
                }
            }
            _ => {}
        }
    }
    (count, ports)
}
