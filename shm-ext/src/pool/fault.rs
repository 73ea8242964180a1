//! Crash injection for tests (`std` builds; a no-op otherwise).
//!
//! Every step of a pool operation that changes shared memory is followed by a
//! crash point. A thread arms a countdown; when it runs out, the operation
//! stops right there by unwinding with [`SimulatedCrash`] (without the panic
//! hook, so tests stay quiet). Nothing in the pool code unlocks or cleans up
//! on unwind, so shared memory is left exactly as a node that died at that
//! point would leave it.

#[cfg(feature = "std")]
mod imp {
    use std::cell::Cell;

    std::thread_local! {
        static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
        static PASSED: Cell<u64> = const { Cell::new(0) };
    }

    /// The unwind payload of a simulated crash.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SimulatedCrash;

    /// Crashes this thread at its `n`-th crash point from now (1-based); 0 disarms.
    pub fn arm(n: u64) {
        COUNTDOWN.set(n);
        PASSED.set(0);
    }

    /// Disarms; returns how many crash points this thread passed since `arm`.
    pub fn disarm() -> u64 {
        COUNTDOWN.set(0);
        PASSED.get()
    }

    /// True if an unwind payload is a simulated crash.
    pub fn is_crash(payload: &(dyn std::any::Any + Send)) -> bool {
        payload.is::<SimulatedCrash>()
    }

    #[inline]
    pub(crate) fn point() {
        let left = COUNTDOWN.get();
        if left == 0 {
            return;
        }
        PASSED.set(PASSED.get() + 1);
        if left == 1 {
            COUNTDOWN.set(0);
            std::panic::resume_unwind(Box::new(SimulatedCrash));
        }
        COUNTDOWN.set(left - 1);
    }
}

#[cfg(feature = "std")]
pub use imp::{SimulatedCrash, arm, disarm, is_crash};

#[cfg(feature = "std")]
pub(crate) use imp::point;

/// Crash point: nothing without `std`.
#[cfg(not(feature = "std"))]
#[inline(always)]
pub(crate) fn point() {}
