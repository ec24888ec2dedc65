//! The parts of `cargo xtask bench`, for its `--only` flag.

/// A part of the bench, for `--only`: what one group of figures measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPart {
    /// Guest uptime at `Run /init` under icount.
    Boot,
    /// QEMU start to the agent's first answer, and reset to it listening under icount.
    Ready,
    /// Exec round trips, their floors and stdout streaming.
    Exec,
    /// Guest networking (TSI) next to raw vsock on supermachine's muxer.
    Tsi,
    /// The smallest guest RAM that boots and execs.
    Memory,
    /// Host-side figures: sizes, build cost, extraction.
    Host,
}

impl BenchPart {
    /// Every part, in the bench's order, with its `--only` name.
    pub const ALL: [(BenchPart, &'static str); 6] = [
        (BenchPart::Boot, "boot"),
        (BenchPart::Ready, "ready"),
        (BenchPart::Exec, "exec"),
        (BenchPart::Tsi, "tsi"),
        (BenchPart::Memory, "memory"),
        (BenchPart::Host, "host"),
    ];
}
