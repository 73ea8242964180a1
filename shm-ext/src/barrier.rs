//! The cluster barrier: every live node arrives, then all go on.
//!
//! One barrier for the whole cluster, used by all live nodes in turn.
//! State: a released-epoch word (u32, lock table slot 0, offset 0) and, per
//! node, the epoch it arrived at (node entry offset 104; zeroed at join).
//! Epochs count 1, 2, ... and skip 0 when they wrap, so 0 always means
//! "never arrived".
//!
//! - [`Shm::barrier_arrive`] publishes "arrived at epoch `released + 1`"
//!   and returns that epoch as the ticket.
//! - Whoever finds every live node arrived at the ticket's epoch (the last
//!   arriver, or any poller) bumps the released epoch with a
//!   compare-and-swap and, if it won, rings vector
//!   [`BARRIER`](crate::platform::vector::BARRIER) on every live node.
//! - [`Shm::barrier_poll`] is the non-blocking wait the kernel loops on
//!   (after each `BARRIER` doorbell or timer tick).
//!
//! The set of participants is the live set at release time: a node that
//! dies while the others wait stops counting once it is declared dead (the
//! next poll, or [`Shm::recover_ipc`], releases the barrier), and a node
//! that becomes live while a barrier is pending must arrive too (if it
//! became live after the check, it takes part in the next barrier). A live
//! node that never arrives holds everyone up: all live nodes must use the
//! barrier.

use core::sync::atomic::Ordering;

use crate::error::ShmError;
use crate::format::{Generation, entry};
use crate::lock::Caller;
use crate::platform::{Doorbell, vector};
use crate::shm::Shm;

/// The epoch an arrival waits for (returned by `barrier_arrive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct BarrierTicket(pub u32);

/// The epoch after `e`, skipping 0.
fn next(e: u32) -> u32 {
    match e.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// True if released epoch `released` is `target` or later (modulo wrap).
fn reached(released: u32, target: u32) -> bool {
    released.wrapping_sub(target) as i32 >= 0 && released != 0
}

impl Shm<'_> {
    /// The barrier's released epoch (0 before the first barrier).
    pub fn barrier_epoch(&self) -> Result<u32, ShmError> {
        Ok(self.lock_table()?.barrier_epoch()?.load(Ordering::Acquire))
    }

    /// Node `node` (incarnation `generation`) arrives at the pending
    /// barrier; returns the ticket to poll. Arriving again before the
    /// release is harmless (same ticket).
    pub fn barrier_arrive(
        &self,
        doorbell: &impl Doorbell,
        node: u16,
        generation: Generation,
    ) -> Result<BarrierTicket, ShmError> {
        self.check_caller(Caller::new(node, generation, 0)?)?;
        let released = self.barrier_epoch()?;
        let target = next(released);
        self.node_u32(node, entry::BARRIER)?
            .store(target, Ordering::Release);
        self.barrier_try_release(doorbell, target)?;
        Ok(BarrierTicket(target))
    }

    /// True once the barrier of `ticket` is released; otherwise checks
    /// whether it can be released now (a participant may have died).
    pub fn barrier_poll(
        &self,
        doorbell: &impl Doorbell,
        ticket: BarrierTicket,
    ) -> Result<bool, ShmError> {
        self.barrier_try_release(doorbell, ticket.0)
    }

    /// Releases barrier epoch `target` if every live node arrived at it;
    /// true if it is released (by this call or earlier).
    pub(crate) fn barrier_try_release(
        &self,
        doorbell: &impl Doorbell,
        target: u32,
    ) -> Result<bool, ShmError> {
        let epoch = self.lock_table()?.barrier_epoch()?;
        let released = epoch.load(Ordering::Acquire);
        if reached(released, target) {
            return Ok(true);
        }
        if next(released) != target {
            // A ticket from the future: only a corrupt epoch word does that.
            return Ok(false);
        }
        let live = self.live_nodes();
        if live.is_empty() {
            return Ok(false);
        }
        for n in live.iter() {
            if self.node_u32(n, entry::BARRIER)?.load(Ordering::Acquire) != target {
                return Ok(reached(epoch.load(Ordering::Acquire), target));
            }
        }
        match epoch.compare_exchange(released, target, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                for n in live.iter() {
                    // A node that died meanwhile needs no wake-up.
                    let _ = self.ring(doorbell, n, vector::BARRIER);
                }
                Ok(true)
            }
            Err(now) => Ok(reached(now, target)),
        }
    }

    /// Barrier half of `recover_ipc`: the dead node no longer counts, so a
    /// barrier the others all reached is released now.
    pub(crate) fn recover_barrier(&self, doorbell: &impl Doorbell) -> Result<bool, ShmError> {
        let released = self.barrier_epoch()?;
        self.barrier_try_release(doorbell, next(released))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_skip_zero_and_compare_across_the_wrap() {
        assert_eq!(next(0), 1);
        assert_eq!(next(u32::MAX), 1);
        assert!(reached(5, 5));
        assert!(reached(6, 5));
        assert!(!reached(4, 5));
        assert!(!reached(0, 1));
        assert!(reached(1, u32::MAX));
        assert!(!reached(u32::MAX, 1));
    }
}
