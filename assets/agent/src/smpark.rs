//! The user ABI of smpark.ko, the aarch64 module that parks secondary vCPUs for snapshots.
//!
//! Mirrors `assets/smpark/smpark.h`, the single source of truth; `cargo xtask test`
//! compiles that header and checks these numbers and this layout against it. The agent
//! drives the module for the `park`, `unpark` and `park_status` CONTROL actions.

/// The module's misc device.
pub const DEVICE: &str = "/dev/smpark";

/// `_IO('M', 1)`: park every online CPU but the primary (supermachine 0.7.108's number;
/// the argument is ignored, supermachine's agent passes 1).
pub const SMPARK_PARK: u32 = 0x4D01;
/// `_IO('M', 2)`: release the parked CPUs (supermachine 0.7.108's number).
pub const SMPARK_UNPARK: u32 = 0x4D02;
/// `_IOR('M', 3, struct smpark_status)`: read [`Status`] (an extension of this module).
pub const SMPARK_STATUS: u32 = 0x8020_4D03;

/// `struct smpark_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Bitmap of online CPUs (bit N = CPU N).
    pub online: u64,
    /// Bitmap of CPUs in the parked loop now.
    pub parked: u64,
    /// The CPU that is never parked.
    pub primary: u32,
    /// How long a park waits for every CPU, in milliseconds.
    pub timeout_ms: u32,
    /// Successful parks since the module was loaded.
    pub parks: u64,
}

/// The CPU numbers whose bits are set in `mask`.
pub fn cpus(mask: u64) -> Vec<u32> {
    (0..64).filter(|b| mask & (1 << b) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_ioctl_size_field() {
        assert_eq!(
            std::mem::size_of::<Status>() as u32,
            (SMPARK_STATUS >> 16) & 0x3fff
        );
        assert_eq!(cpus(0b1110), [1, 2, 3]);
        assert_eq!(cpus(1 << 63), [63]);
    }
}
