//! The words the rig adds to the guest's command line, where QEMU's machine differs from
//! supermachine's in a way the guest would otherwise see.

use super::qemu::{Config, VsockDevice};

/// The entries per virtqueue that supermachine's virtio-mmio transport offers (QueueNumMax,
/// `src/devices/virtio/mod.rs:64-66`, `mmio.rs:326`); QEMU's offers 1024.
pub const QUEUE_SIZE: u32 = 256;

/// The kernel command-line word that gives the guest supermachine's queue sizes on QEMU. The
/// guest's vsock driver posts one 4 KiB receive buffer per entry: at QEMU's 1024 that is
/// 3 MiB more guest memory, enough to move the smallest RAM that boots. Our kernel's
/// `virtio_mmio.queue_num_max` (`assets/kernel/patches/0003-virtio-mmio-queue-num-max.patch`)
/// caps the size the driver sets up; a kernel without it (upstream's) ignores the word and
/// keeps QEMU's 1024.
pub fn queue_num_max() -> String {
    format!("virtio_mmio.queue_num_max={QUEUE_SIZE}")
}

/// The words the rig puts on every guest's command line, right after the machine's own
/// (supermachine's words, then these, then the caller's). They take [`queue_num_max`]'s
/// characters of x86_64's 2047.
pub fn rig_words() -> Vec<String> {
    vec![queue_num_max()]
}

/// The kernel command-line word that turns the guest's datagrams (type-3 vsock packets) on
/// without negotiation: supermachine's device handles them and offers the feature, but
/// QEMU's `vhost-user-vsock-device` masks the bit before the guest sees it.
pub const FORCE_DGRAM: &str = "vmw_vsock_virtio_transport.force_dgram=1";

impl Config {
    /// The words the rig appends to the machine's command line: [`rig_words`], the
    /// caller's, the datagram switch where supermachine's device serves vsock, and the TSI
    /// token last.
    pub fn extra_words(&self) -> Vec<String> {
        let mut words = rig_words();
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
            [queue_num_max().as_str(), "quiet"],
            "vhost-device-vsock: no datagrams"
        );
        cfg.vsock_device = VsockDevice::Supermachine;
        cfg.tsi.token = Some("ab".repeat(32));
        let words = cfg.extra_words();
        assert_eq!(words[..3], [queue_num_max().as_str(), "quiet", FORCE_DGRAM]);
        assert_eq!(
            words[3],
            format!("supermachine.tsi_token={}", "ab".repeat(32))
        );
        cfg.vsock = false;
        assert_eq!(
            cfg.extra_words(),
            [queue_num_max().as_str(), "quiet"],
            "no vsock device, no switch"
        );
    }
}
