//! Guest time under TCG: the host's clock, or counted in guest instructions.

/// Guest time under TCG: the host's clock, or one nanosecond per guest instruction
/// (`-icount shift=0`), which counts what the guest does rather than what translating it costs
/// the emulator, and which host load moves only through the guest's idle waits (none with
/// [`Icount::Deterministic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icount {
    /// The host's clock.
    Off,
    /// Instructions, and idle time skipped to the next timer (`sleep=off`): identical run to
    /// run, for a guest that never waits on the host (the boot to PID 1).
    Deterministic,
    /// Instructions, and idle time at the host's pace (`sleep=on`), for a guest that waits on
    /// the host while it boots: skipping those waits would run the guest's clock ahead of the
    /// host's answers (aarch64's boot to the agent read 1.99 s instead of 0.07 s that way).
    IdleAtHostPace,
}

impl Icount {
    /// QEMU's `-icount` option for it, if any.
    pub fn option(self) -> Option<&'static str> {
        match self {
            Icount::Off => None,
            Icount::Deterministic => Some("shift=0,sleep=off"),
            Icount::IdleAtHostPace => Some("shift=0,sleep=on"),
        }
    }
}
