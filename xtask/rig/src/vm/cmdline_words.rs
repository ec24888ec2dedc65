//! The words the rig adds to the guest's command line, where QEMU's machine differs from
//! supermachine's in a way the guest would otherwise see.

use super::qemu::{Config, VsockDevice};

/// The kernel command-line word that gives the guest supermachine's queue sizes on QEMU.
/// supermachine's virtio-mmio transport offers every queue at 256 entries (QueueNumMax,
/// `src/devices/virtio/mod.rs:64-66`, `mmio.rs:326`), QEMU's at 1024, and the guest's vsock
/// driver posts one 4 KiB receive buffer per entry: 3 MiB more guest memory on QEMU, enough
/// to move the smallest RAM that boots. Our kernel's `virtio_mmio.queue_num_max`
/// (`assets/kernel/patches/0003-virtio-mmio-queue-num-max.patch`) caps the size the driver
/// sets up; a kernel without it (upstream's) ignores the word and keeps QEMU's 1024.
pub const QUEUE_NUM_MAX: &str = "virtio_mmio.queue_num_max=256";

/// The kernel command-line word that turns the guest's datagrams (type-3 vsock packets) on
/// without negotiation: supermachine's device handles them and offers the feature, but
/// QEMU's `vhost-user-vsock-device` masks the bit before the guest sees it.
pub const FORCE_DGRAM: &str = "vmw_vsock_virtio_transport.force_dgram=1";

impl Config {
    /// The words the rig appends to the machine's command line: supermachine's queue sizes
    /// ([`QUEUE_NUM_MAX`]), the caller's, the datagram switch where supermachine's device
    /// serves vsock, and the TSI token last.
    pub fn extra_words(&self) -> Vec<String> {
        let mut words = vec![QUEUE_NUM_MAX.to_string()];
        words.extend(self.cmdline.iter().cloned());
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
    fn every_guest_gets_the_queue_cap_and_supermachines_device_the_datagram_switch_and_token_last()
    {
        let mut cfg = Config::new(Arch::X86_64, "k".into(), "i".into(), 64, 1);
        cfg.cmdline = vec!["quiet".into()];
        assert_eq!(
            cfg.extra_words(),
            [QUEUE_NUM_MAX, "quiet"],
            "vhost-device-vsock: no datagrams"
        );
        cfg.vsock_device = VsockDevice::Supermachine;
        cfg.tsi.token = Some("ab".repeat(32));
        let words = cfg.extra_words();
        assert_eq!(words[..3], [QUEUE_NUM_MAX, "quiet", FORCE_DGRAM]);
        assert_eq!(
            words[3],
            format!("supermachine.tsi_token={}", "ab".repeat(32))
        );
        cfg.vsock = false;
        assert_eq!(
            cfg.extra_words(),
            [QUEUE_NUM_MAX, "quiet"],
            "no vsock device, no switch"
        );
    }
}
