//! Signals: 64 signal numbers per node, raised by any node, taken by the
//! node itself.
//!
//! Each node entry carries a signal word (entry offset 96, see
//! [`format`](crate::format)): raising signal `s` on node `n` is an atomic
//! OR of bit `s` into `n`'s word, then a ring of vector
//! [`SIGNAL`](crate::platform::vector::SIGNAL) on `n`. The receiver takes
//! the whole word with one swap; the kernel builds `signal_wait` on top
//! (block until a `SIGNAL` doorbell, then take). Signals do not count: a
//! signal raised twice before it is taken is taken once. The word is zeroed
//! when a node joins, so a restarted node does not see its previous
//! incarnation's signals (one raised while the target restarts may be lost
//! with the old incarnation).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::ShmError;
use crate::format::{MAX_NODES, NODE_ENTRY_LEN, NodeState, entry};
use crate::platform::{Doorbell, vector};
use crate::shm::{NodeSet, Shm};

/// Number of signal numbers per node (0..64).
pub const SIGNALS: u8 = 64;

impl<'a> Shm<'a> {
    /// Offset of `field` in `node`'s entry.
    fn node_field(&self, node: u16, field: usize) -> Result<usize, ShmError> {
        if node >= self.max_nodes() || usize::from(node) >= MAX_NODES {
            return Err(ShmError::NoSuchNode);
        }
        let off = self
            .superblock()
            .layout
            .node_table
            .offset
            .checked_add(u64::from(node) * NODE_ENTRY_LEN as u64 + field as u64)
            .ok_or(ShmError::OutOfBounds)?;
        usize::try_from(off).map_err(|_| ShmError::OutOfBounds)
    }

    /// A 64-bit atomic field of `node`'s entry.
    pub(crate) fn node_u64(&self, node: u16, field: usize) -> Result<&'a AtomicU64, ShmError> {
        self.region().atomic_u64(self.node_field(node, field)?)
    }

    /// A 32-bit atomic field of `node`'s entry.
    pub(crate) fn node_u32(&self, node: u16, field: usize) -> Result<&'a AtomicU32, ShmError> {
        self.region().atomic_u32(self.node_field(node, field)?)
    }

    /// True if `node`'s entry is live (any generation).
    pub(crate) fn is_live(&self, node: u16) -> bool {
        self.status(node).is_ok_and(|s| {
            let (raw, g) = crate::format::split_status(s.load(Ordering::Acquire));
            raw == NodeState::Live as u32 && g.0 != 0
        })
    }

    /// Raises signal `sig` (0..64) on live node `node` and rings its
    /// `SIGNAL` doorbell.
    pub fn signal(&self, doorbell: &impl Doorbell, node: u16, sig: u8) -> Result<(), ShmError> {
        if sig >= SIGNALS {
            return Err(ShmError::InvalidArgument {
                what: "signal number must be below 64",
            });
        }
        let word = self.node_u64(node, entry::SIGNALS)?;
        if !self.is_live(node) {
            return Err(ShmError::NotLive);
        }
        word.fetch_or(1 << sig, Ordering::AcqRel);
        // The word is the record; a ring that fails because the node died
        // just now loses nothing the node could still have taken.
        match self.ring(doorbell, node, vector::SIGNAL) {
            Ok(()) | Err(ShmError::NotLive) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Raises `sig` on every live node in `nodes`; returns those raised.
    pub fn signal_set(
        &self,
        doorbell: &impl Doorbell,
        nodes: NodeSet,
        sig: u8,
    ) -> Result<NodeSet, ShmError> {
        if sig >= SIGNALS {
            return Err(ShmError::InvalidArgument {
                what: "signal number must be below 64",
            });
        }
        let mut raised = NodeSet::default();
        for n in nodes.iter() {
            // Nodes that are not live (or not in the table) are skipped.
            if self.signal(doorbell, n, sig).is_ok() {
                raised.insert(n);
            }
        }
        Ok(raised)
    }

    /// Raises `sig` on every live node, the caller's own included; returns
    /// the nodes raised.
    pub fn signal_all(&self, doorbell: &impl Doorbell, sig: u8) -> Result<NodeSet, ShmError> {
        self.signal_set(doorbell, self.live_nodes(), sig)
    }

    /// Takes the signals raised on `node` (bit `s` = signal `s`), clearing them.
    pub fn take_signals(&self, node: u16) -> Result<u64, ShmError> {
        Ok(self
            .node_u64(node, entry::SIGNALS)?
            .swap(0, Ordering::AcqRel))
    }

    /// The signals pending on `node`, without taking them.
    pub fn pending_signals(&self, node: u16) -> Result<u64, ShmError> {
        Ok(self.node_u64(node, entry::SIGNALS)?.load(Ordering::Acquire))
    }
}
