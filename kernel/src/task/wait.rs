//! Blocking and waking: event sets, `wait_event`, `notify`.
//!
//! A task waits for a set of [`Events`] and, optionally, a deadline; it is
//! woken when any event in the set is notified, or the deadline passes, and
//! then re-checks its condition (`check`). Every event has a sequence
//! counter that [`notify`] bumps before it wakes anyone: a waiter reads the
//! counters before its check and blocks only if they did not move, so a
//! wake-up between the check and the block is never lost (on any CPU).
//!
//! Event sources: doorbell interrupts (the ivshmem handler notifies
//! `Events::doorbell(vector)`), the timer tick (`Events::TICK`, for polling
//! ivshmem-plain and deadlines), task exits (`Events::TASK_EXIT`), and up to
//! 32 kernel-defined `Events::custom(n)` (message queues, locks, signals).

use super::{SCHED, State, Wait};
use crate::arch::cpu;
use core::ops::BitOr;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::interrupts;

/// Events numbered 0..64 are doorbell vectors.
const DOORBELL_SLOTS: u32 = 64;
const TICK_SLOT: u32 = 64;
const TASK_EXIT_SLOT: u32 = 65;
const CUSTOM_BASE: u32 = 96;
/// How many custom events there are.
pub const CUSTOM_EVENTS: u8 = 32;

static SEQUENCE: [AtomicU64; 128] = [const { AtomicU64::new(0) }; 128];

/// A set of events (a bit each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events(u128);

impl Events {
    /// No event: a wait that only a deadline ends.
    pub const NONE: Events = Events(0);
    /// Every timer tick (100 Hz): for polling what raises no interrupt.
    pub const TICK: Events = Events(1 << TICK_SLOT);
    /// Some task exited.
    pub const TASK_EXIT: Events = Events(1 << TASK_EXIT_SLOT);
    /// Any doorbell vector.
    pub const ALL_DOORBELLS: Events = Events((1 << DOORBELL_SLOTS) - 1);

    /// A doorbell interrupt on ivshmem vector `vector` (none past 63).
    pub const fn doorbell(vector: u16) -> Events {
        if (vector as u32) < DOORBELL_SLOTS {
            Events(1 << vector)
        } else {
            Events::NONE
        }
    }

    /// Doorbell `vector` if the device raises interrupts, else every tick
    /// (ivshmem-plain: the waiter polls the shared memory).
    pub fn doorbell_or_tick(vector: u16) -> Events {
        match crate::drivers::ivshmem::device() {
            Some(d) if d.has_doorbells() => Events::doorbell(vector),
            _ => Events::TICK,
        }
    }

    /// Kernel-defined event `n` (0..32), e.g. "a message arrived on a port".
    pub const fn custom(n: u8) -> Events {
        if n < CUSTOM_EVENTS {
            Events(1 << (CUSTOM_BASE + n as u32))
        } else {
            Events::NONE
        }
    }

    /// Both sets.
    pub const fn union(self, other: Events) -> Events {
        Events(self.0 | other.0)
    }

    /// Whether the sets share an event.
    pub const fn intersects(self, other: Events) -> bool {
        self.0 & other.0 != 0
    }

    fn slots(self) -> impl Iterator<Item = usize> {
        let bits = self.0;
        (0..128).filter(move |i| bits & (1 << i) != 0)
    }

    /// Sum of the events' sequence counters: changes whenever one is notified.
    pub(super) fn sequence(self) -> u64 {
        self.slots().fold(0u64, |sum, i| {
            sum.wrapping_add(SEQUENCE[i].load(Ordering::Acquire))
        })
    }

    pub(super) fn bump(self) {
        for i in self.slots() {
            SEQUENCE[i].fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl BitOr for Events {
    type Output = Events;
    fn bitor(self, rhs: Events) -> Events {
        self.union(rhs)
    }
}

/// A wait ended by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Blocks the calling task until `check()` holds (`Ok`) or `deadline` (in
/// `time::now_ns()` nanoseconds) passes (`Err(TimedOut)`). `check` runs at
/// once and again after every wake-up by one of `events` or by the deadline;
/// it must not block. With `deadline` `None` the wait has no limit.
pub fn wait_event(
    events: Events,
    deadline: Option<u64>,
    mut check: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let mut spun = false;
    loop {
        let seen = events.sequence();
        if check() {
            return Ok(());
        }
        let now = crate::time::now_ns();
        if deadline.is_some_and(|d| now >= d) {
            return Err(TimedOut);
        }
        if !spun && events != Events::NONE {
            spun = true;
            if spin(
                now.saturating_add(SPIN_NS)
                    .min(deadline.unwrap_or(u64::MAX)),
                &mut check,
            ) {
                return Ok(());
            }
            continue;
        }
        if !halt_here(events, seen) {
            block(events, deadline, seen);
        }
    }
}

/// Halts the CPU in the waiting task itself until the next interrupt, when
/// no other task wants the CPU: the scheduler's way (block, switch to the
/// idle task, halt, wake, switch back) costs two context switches per
/// wait, which under this host's KVM made a doorbell round trip 1.25x the
/// bare loop's. Returns false, having done nothing, if another task is
/// ready or interrupts are off (then the caller blocks as usual).
fn halt_here(events: Events, seen: u64) -> bool {
    if !interrupts::are_enabled() {
        return false;
    }
    interrupts::disable();
    if !SCHED.lock().ready.is_empty() {
        interrupts::enable();
        return false;
    }
    if events.sequence() == seen {
        // `sti; hlt` as one: an interrupt that notifies between the check
        // above and the halt still ends it.
        interrupts::enable_and_hlt();
    } else {
        interrupts::enable();
    }
    true
}

/// How long a waiter polls its condition before it blocks, when no other
/// task wants the CPU: an answer from another node usually comes within a
/// round trip (~50 µs between two TCG VMs), and halting instead costs an
/// interrupt, a wake-up and two context switches on top of it (the doorbell
/// benchmark measured a halting wait at 1.7-3x a spinning one). Long
/// enough to cover a round trip with some host noise, short enough that an
/// idle node wastes little.
const SPIN_NS: u64 = 200_000;

/// Polls `check` until it holds (true) or `until` passes (false); gives up
/// at once if another task is ready to run.
fn spin(until: u64, check: &mut impl FnMut() -> bool) -> bool {
    if !SCHED.lock().ready.is_empty() {
        return false;
    }
    while crate::time::now_ns() < until {
        if check() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// The deadline for a system call's timeout: `NO_WAIT` (0) is now (the
/// condition is checked once), `FOREVER` is none, anything else is that
/// many nanoseconds from now.
pub fn deadline_after(timeout_ns: u64) -> Option<u64> {
    (timeout_ns != shmos_abi::FOREVER).then(|| crate::time::now_ns().saturating_add(timeout_ns))
}

/// Blocks the calling task for at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    let deadline = crate::time::now_ns().saturating_add(ns);
    let _ = wait_event(Events::NONE, Some(deadline), || false);
}

/// Parks the caller until one of `events` or `deadline`, unless one of the
/// events was notified since the caller read `seen`.
fn block(events: Events, deadline: Option<u64>, seen: u64) {
    let were_enabled = interrupts::are_enabled();
    interrupts::disable();
    let parked = {
        let mut s = SCHED.lock();
        let me = s.running[cpu::current().index];
        if events.sequence() != seen || s.idle.contains(&Some(me)) {
            false
        } else {
            let entry = s.tasks.get_mut(&me).expect("the running task is known");
            entry.state = State::Blocked;
            entry.wait = Wait { events, deadline };
            true
        }
    };
    if parked {
        super::schedule();
    }
    if were_enabled {
        interrupts::enable();
    }
}

/// Wakes every task waiting for one of `events`. Callable from anywhere,
/// interrupt handlers included (it only takes interrupt-safe locks).
pub fn notify(events: Events) {
    if events == Events::NONE {
        return;
    }
    events.bump();
    let mut s = SCHED.lock();
    if s.wake(|w| w.events.intersects(events)) {
        cpu::current().need_resched.store(true, Ordering::Relaxed);
    }
}

/// The timer tick: wakes tick waiters and expired deadlines, and ends the
/// running task's time slice if anyone else is ready.
pub(super) fn tick() {
    Events::TICK.bump();
    let now = crate::time::now_ns();
    let mut s = SCHED.lock();
    s.wake(|w| w.events.intersects(Events::TICK) || w.deadline.is_some_and(|d| d <= now));
    if !s.ready.is_empty() {
        cpu::current().need_resched.store(true, Ordering::Relaxed);
    }
}

crate::kernel_test!(
    fn task_events_sets_and_sequences() {
        let a = Events::doorbell(3) | Events::custom(5);
        assert!(a.intersects(Events::doorbell(3)));
        assert!(!a.intersects(Events::TICK | Events::doorbell(4)));
        assert_eq!(Events::doorbell(64), Events::NONE);
        assert_eq!(Events::custom(CUSTOM_EVENTS), Events::NONE);
        assert!(Events::ALL_DOORBELLS.intersects(Events::doorbell(63)));
        assert!(!Events::ALL_DOORBELLS.intersects(Events::TICK));
        // The test VM's ivshmem-plain raises no interrupts: waiters poll.
        assert_eq!(Events::doorbell_or_tick(1), Events::TICK);
        let before = a.sequence();
        notify(Events::custom(5));
        assert_ne!(a.sequence(), before, "a notify moves the sequence");
    }
);

crate::kernel_test!(
    fn task_wait_event_times_out_and_sees_conditions() {
        let start = crate::time::now_ns();
        let r = wait_event(Events::custom(7), deadline_after(20_000_000), || false);
        assert_eq!(r, Err(TimedOut));
        assert_eq!(deadline_after(shmos_abi::FOREVER), None);
        let no_wait = deadline_after(shmos_abi::NO_WAIT);
        assert_eq!(wait_event(Events::TICK, no_wait, || false), Err(TimedOut));
        assert!(crate::time::now_ns() - start >= 20_000_000);
        let mut calls = 0;
        let r = wait_event(Events::NONE, None, || {
            calls += 1;
            true
        });
        assert_eq!(
            (r, calls),
            (Ok(()), 1),
            "a condition that holds returns at once"
        );
        // A condition that turns true from the tick wakes the waiter.
        let target = crate::time::ticks() + 3;
        assert_eq!(
            wait_event(
                Events::TICK,
                Some(start + 2_000_000_000),
                || crate::time::ticks() >= target
            ),
            Ok(())
        );
    }
);
