//! supermachine's TSI host side as the rigs set it up: what `sm-vsock` is told (token, egress
//! policy, IPv6 route, the listeners to report) and the one command-line word the guest needs
//! on QEMU that supermachine's own machine does not.

use std::path::{Path, PathBuf};

use super::qemu::{Config, VsockDevice};

/// The kernel command-line word that turns the guest's datagrams (type-3 vsock packets) on
/// without negotiation: supermachine's device handles them and offers the feature, but
/// QEMU's `vhost-user-vsock-device` masks the bit before the guest sees it.
pub const FORCE_DGRAM: &str = "vmw_vsock_virtio_transport.force_dgram=1";

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

impl Config {
    /// The words the rig appends to the machine's command line: the caller's, the
    /// datagram switch where supermachine's device serves vsock, and the TSI token last.
    pub fn extra_words(&self) -> Vec<String> {
        let mut words = self.cmdline.clone();
        if self.vsock && self.vsock_device == VsockDevice::Supermachine {
            words.push(FORCE_DGRAM.into());
            if let Some(t) = &self.tsi.token {
                words.push(format!("supermachine.tsi_token={t}"));
            }
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Arch;

    #[test]
    fn supermachines_device_gets_the_datagram_switch_and_the_token_last() {
        let mut cfg = Config::new(Arch::X86_64, "k".into(), "i".into(), 64, 1);
        cfg.cmdline = vec!["quiet".into()];
        assert_eq!(
            cfg.extra_words(),
            ["quiet"],
            "vhost-device-vsock: no datagrams"
        );
        cfg.vsock_device = VsockDevice::Supermachine;
        cfg.tsi.token = Some("ab".repeat(32));
        let words = cfg.extra_words();
        assert_eq!(words[..2], ["quiet", FORCE_DGRAM]);
        assert_eq!(
            words[2],
            format!("supermachine.tsi_token={}", "ab".repeat(32))
        );
        cfg.vsock = false;
        assert_eq!(cfg.extra_words(), ["quiet"], "no vsock device, no switch");
    }
}
