//! Per-thread spare buffers: a connection thread keeps the buffers of its last exec (output,
//! child stack) and of its last connection (the read buffer) for the next one, instead of
//! allocating (and faulting in, and unmapping) fresh ones each time.

use std::cell::Cell;
use std::thread::LocalKey;

/// One thread-local slot holding a spare buffer.
pub type Slot = LocalKey<Cell<Vec<u8>>>;

/// The buffer kept in `slot` if it has `len` bytes, else a new zeroed one of `len`.
pub fn take(slot: &'static Slot, len: usize) -> Vec<u8> {
    let buf = slot.take();
    if buf.len() == len {
        buf
    } else {
        vec![0; len]
    }
}

/// Keeps `buf` in `slot` for this thread's next [`take`], if it has the usual `len`: one
/// grown past it is let go.
pub fn keep(slot: &'static Slot, buf: Vec<u8>, len: usize) {
    if buf.len() == len {
        slot.set(buf);
    }
}
