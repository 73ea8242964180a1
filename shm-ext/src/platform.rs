//! What the kernel (or the host) provides to this crate besides the region.
//!
//! Time is not a trait: functions that need it take `now_ns: u64` (or a
//! `FnMut() -> u64` when they wait) from the caller's own monotonic clock.
//! Clocks of different nodes are never compared with each other.

/// Rings other nodes' doorbells (ivshmem-doorbell's Doorbell register).
pub trait Doorbell {
    /// Rings interrupt `vector` on the node whose ivshmem peer id is `peer`.
    fn ring(&self, peer: u16, vector: u16);

    /// This node's own ivshmem peer id (IVPosition), if the device has doorbells.
    fn local_peer(&self) -> Option<u16>;
}

/// Doorbell vectors of the extension layer and the DSM (ivshmem `vectors=5`
/// has 0..5).
///
/// A ring also sets the vector's bit in the target's node entry, so nodes
/// without interrupts find it by polling `Shm::take_pending`.
pub mod vector {
    /// A message arrived in the node's queue, or space freed in a queue the
    /// node found full.
    pub const MESSAGE: u16 = 0;
    /// A signal was raised on the node.
    pub const SIGNAL: u16 = 1;
    /// A lock the node waits on was released.
    pub const LOCK: u16 = 2;
    /// The cluster barrier was released.
    pub const BARRIER: u16 = 3;
    /// A kernel's DSM sent the node a message (rung besides [`MESSAGE`], so
    /// that the task serving DSM requests wakes for those and not for
    /// every app message).
    pub const DSM: u16 = 4;
}

/// A doorbell that rings nothing: for `ivshmem-plain`, where nodes poll.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDoorbell;

impl Doorbell for NoDoorbell {
    fn ring(&self, _peer: u16, _vector: u16) {}

    fn local_peer(&self) -> Option<u16> {
        None
    }
}
