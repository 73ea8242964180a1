//! Global locks: a fixed table of lock words in the lock table area.
//!
//! # Layout
//!
//! The lock table area is an array of 64-byte slots (one cache line each, so
//! that two locks never share a line). Slot 0 holds the cluster barrier (see
//! [`barrier`](crate::barrier)); slot `i` for `i >= 1` is lock id `i`, so
//! the table holds `len / 64 - 1` locks (1023 with the default 64 KiB) and
//! id 0 is never a lock.
//!
//! | offset | size | field       | value                                                        |
//! |-------:|-----:|-------------|--------------------------------------------------------------|
//! |      0 |    8 | word        | 0 free, else the holder's tag (below), bit 0 = contended     |
//! |      8 |    8 | waiters     | bit `n`: node `n` may have a process sleeping on this lock   |
//! |     16 |    8 | reservation | 0 free, else `generation << 32 \| node << 8 \| 1`            |
//! |     24 |   40 | reserved    | 0                                                            |
//!
//! A holder's tag (see [`Caller::tag`]) is `generation << 32 | process << 16
//! | node << 8`: the node incarnation and a process number the kernel
//! chooses (0 for the kernel itself). Generations are never 0, so a tag is
//! never 0; tag values with generation 0 are internal (maintenance holds).
//!
//! # Protocol (futex-style)
//!
//! - Acquire: one compare-and-swap of the word from 0 to the caller's tag.
//!   No system call: user space maps the lock table and runs
//!   [`LockTable::try_acquire_fast`] itself.
//! - Contended: the waiter sets its node's bit in `waiters`, then sets the
//!   contended bit in the word it observed ([`LockTable::prepare_wait`]);
//!   if the word changed meanwhile it retries instead of sleeping. The
//!   kernel then blocks the process until a `LOCK` doorbell or its timer.
//! - Release: one compare-and-swap of the word from the caller's tag to 0
//!   ([`LockTable::release_fast`]). If the contended bit was set the
//!   releaser asks the kernel to wake: it takes `waiters` and rings vector
//!   [`LOCK`](crate::platform::vector::LOCK) on exactly those nodes.
//!
//! The kernel must register a sleeping process as a local lock waiter
//! *before* calling `prepare_wait`, and wake all local lock waiters on every
//! `LOCK` doorbell: then a ring that consumed the node's waiter bit always
//! comes after the registration, and no wake-up is lost.
//!
//! # Reservations
//!
//! `lock_reserve` hands out ids with a free reservation word; the id then
//! belongs to the reserving node incarnation until it unreserves it or dies.
//! Any node (any process) that knows a reserved id may acquire it, as with
//! the seed's global ids that applications exchange; acquiring an id that
//! nobody reserved is `NotReserved`. Only the reserving node may unreserve,
//! and only while the lock is free.
//!
//! # Node death
//!
//! [`Shm::recover_ipc`](crate::Shm::recover_ipc) (run by a survivor once the
//! node is no longer live at that generation) frees every lock whose tag
//! names the dead incarnation, wakes their waiters, and clears its
//! reservations (ids it reserved go back to the pool, even if a live node
//! holds the lock at that moment: that holder still releases normally).
//!
//! The lock table is untrusted input like the rest of the region: a process
//! that maps it can corrupt it (as with futexes in shared memory), and
//! nothing read from it can make this crate panic.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::ShmError;
use crate::format::{Area, Generation, MAX_NODES, NodeState, split_status};
use crate::platform::{Doorbell, vector};
use crate::region::Region;
use crate::shm::{NodeSet, Shm};

/// Bytes per lock slot (one cache line).
pub const LOCK_SLOT_LEN: usize = 64;
/// Most lock ids one multi-lock call takes.
pub const MAX_LOCKS_PER_CALL: usize = 16;
/// Contended bit of a lock word: some waiter may sleep; the releaser wakes.
pub const CONTENDED: u64 = 1;

/// Byte offsets of the fields of a lock slot.
pub mod slot {
    /// Lock word: holder tag | flags (atomic u64).
    pub const WORD: usize = 0;
    /// Waiting nodes, one bit each (atomic u64).
    pub const WAITERS: usize = 8;
    /// Reservation: reserving incarnation's tag | 1, or 0 (atomic u64).
    pub const RESERVATION: usize = 16;
}

/// Low byte of a tag: flags, never part of the identity.
const FLAGS: u64 = 0xff;
/// Bit 0 of a reservation word (keeps it non-zero on its own).
const RESERVED_MARK: u64 = 1;
/// The bits of a tag naming the node incarnation (generation and node).
const INCARNATION: u64 = 0xffff_ffff_0000_ff00;
/// Holder tag of internal maintenance holds (unreserve): generation 0, which
/// no real caller has, so it can never be mistaken for one.
const MAINTENANCE: u64 = 0x0000_0000_ffff_ff00;

/// Who acts: a node incarnation and a process on it (0 = the kernel).
///
/// Its tag is what lock words, reservations and message records store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Caller {
    node: u16,
    generation: Generation,
    process: u16,
}

impl Caller {
    /// A caller on `node` (< 64) at `generation` (not 0), process `process`.
    pub fn new(node: u16, generation: Generation, process: u16) -> Result<Self, ShmError> {
        if usize::from(node) >= MAX_NODES {
            return Err(ShmError::NoSuchNode);
        }
        if generation.0 == 0 {
            return Err(ShmError::InvalidArgument {
                what: "generation 0 never joined",
            });
        }
        Ok(Self {
            node,
            generation,
            process,
        })
    }

    /// The node id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// The node's incarnation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The process number on the node.
    pub fn process(&self) -> u16 {
        self.process
    }

    /// The 64-bit tag: `generation << 32 | process << 16 | node << 8`.
    pub fn tag(&self) -> u64 {
        (u64::from(self.generation.0) << 32)
            | (u64::from(self.process) << 16)
            | (u64::from(self.node) << 8)
    }

    /// The caller a tag names, if it names a real one (flags ignored).
    pub fn from_tag(tag: u64) -> Option<Self> {
        let node = ((tag >> 8) & 0xff) as u16;
        let process = ((tag >> 16) & 0xffff) as u16;
        Self::new(node, Generation((tag >> 32) as u32), process).ok()
    }

    /// The tag without the process: names the node incarnation.
    pub(crate) fn incarnation_tag(&self) -> u64 {
        self.tag() & INCARNATION
    }

    /// The reservation word this caller's node writes.
    fn reservation(&self) -> u64 {
        self.incarnation_tag() | RESERVED_MARK
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}/{}", self.node, self.generation, self.process)
    }
}

/// The tag naming incarnation (`node`, `generation`), process bits clear.
pub(crate) fn incarnation_of(node: u16, generation: Generation) -> u64 {
    ((u64::from(generation.0) << 32) | (u64::from(node) << 8)) & INCARNATION
}

/// Result of a non-blocking acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryLock {
    /// The caller holds the lock(s) now.
    Acquired,
    /// Lock `id` is held by someone else; its word read `observed`. Sleep
    /// with `prepare_wait(id, observed)` (the kernel's `lock_wait`) and retry.
    WouldBlock {
        /// The lock that was busy.
        id: u32,
        /// Its word as seen.
        observed: u64,
    },
}

/// What `prepare_wait` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// The word still holds what the caller observed, marked contended: sleep
    /// until a `LOCK` doorbell (or the timer), then retry.
    Sleep,
    /// The word changed: retry the acquire at once.
    Retry,
}

/// A short list of lock ids (at most [`MAX_LOCKS_PER_CALL`]; no allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockIds {
    ids: [u32; MAX_LOCKS_PER_CALL],
    len: usize,
}

impl LockIds {
    /// The ids.
    pub fn as_slice(&self) -> &[u32] {
        self.ids.get(..self.len).unwrap_or(&[])
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, id: u32) {
        // Callers push at most one id per input id, and inputs are bounded.
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }
}

/// One lock as read, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct LockInfo {
    /// Lock id.
    pub id: u32,
    /// The node incarnation that reserved it (process 0), if reserved.
    pub reserved_by: Option<Caller>,
    /// Raw reservation word (non-zero but unreadable means corrupt).
    pub reservation: u64,
    /// The holder, if the word names a real caller.
    pub holder: Option<Caller>,
    /// Raw lock word.
    pub word: u64,
    /// Nodes that registered as waiting.
    pub waiters: NodeSet,
}

impl LockInfo {
    /// True if the slot is entirely free (not reserved, held or waited for).
    pub fn is_free(&self) -> bool {
        self.reservation == 0 && self.word == 0 && self.waiters.is_empty()
    }
}

/// A view of the lock table: the area inside a whole region (kernel), or a
/// region that *is* the table (a process that mapped only the lock table).
#[derive(Debug, Clone, Copy)]
pub struct LockTable<'a> {
    region: Region<'a>,
    base: usize,
    slots: u32,
}

fn to_usize(v: u64) -> Result<usize, ShmError> {
    usize::try_from(v).map_err(|_| ShmError::OutOfBounds)
}

impl<'a> LockTable<'a> {
    /// The table in `area` of `region` (the superblock's `lock_table`).
    pub fn new(region: Region<'a>, area: Area) -> Result<Self, ShmError> {
        let base = to_usize(area.offset)?;
        let len = to_usize(area.len)?;
        if base.checked_add(len).is_none_or(|end| end > region.len()) {
            return Err(ShmError::OutOfBounds);
        }
        let slots = u32::try_from(len / LOCK_SLOT_LEN).unwrap_or(u32::MAX);
        if slots < 2 {
            return Err(ShmError::TooSmall);
        }
        Ok(Self {
            region,
            base,
            slots,
        })
    }

    /// A region that is exactly the mapped lock table (user space).
    pub fn mapped(region: Region<'a>) -> Result<Self, ShmError> {
        Self::new(
            region,
            Area {
                offset: 0,
                len: region.len() as u64,
            },
        )
    }

    /// Number of locks; valid ids are `1..=count()`.
    pub fn count(&self) -> u32 {
        self.slots - 1
    }

    fn slot(&self, id: u32) -> Result<usize, ShmError> {
        if id == 0 || id >= self.slots {
            return Err(ShmError::NoSuchLock);
        }
        // id < slots <= len / 64, so this stays inside the area.
        Ok(self.base + id as usize * LOCK_SLOT_LEN)
    }

    fn field(&self, id: u32, field: usize) -> Result<&'a AtomicU64, ShmError> {
        self.region.atomic_u64(self.slot(id)? + field)
    }

    fn word(&self, id: u32) -> Result<&'a AtomicU64, ShmError> {
        self.field(id, slot::WORD)
    }

    /// The barrier's released-epoch word (slot 0).
    pub(crate) fn barrier_epoch(&self) -> Result<&'a AtomicU32, ShmError> {
        self.region.atomic_u32(self.base)
    }

    /// Takes lock `id` for `caller` if it is free: one compare-and-swap.
    ///
    /// No system call and no node-table access: user space runs this on its
    /// mapping of the lock table.
    pub fn try_acquire_fast(&self, id: u32, caller: Caller) -> Result<TryLock, ShmError> {
        let word = self.word(id)?;
        let reservation = self.field(id, slot::RESERVATION)?;
        let tag = caller.tag();
        match word.compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => {
                // Checked after taking it: an unreserve takes the lock first,
                // so either it saw us holding it (and refused) or we see its
                // cleared reservation here.
                if reservation.load(Ordering::Acquire) == 0 {
                    // Waiters of an unreserved id wake at their timer.
                    let _ = word.compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed);
                    let _ = word.compare_exchange(
                        tag | CONTENDED,
                        0,
                        Ordering::Release,
                        Ordering::Relaxed,
                    );
                    return Err(ShmError::NotReserved);
                }
                Ok(TryLock::Acquired)
            }
            Err(cur) => {
                if reservation.load(Ordering::Acquire) == 0 {
                    Err(ShmError::NotReserved)
                } else if cur & !FLAGS == tag {
                    Err(ShmError::InvalidArgument {
                        what: "lock already held by the caller",
                    })
                } else {
                    Ok(TryLock::WouldBlock { id, observed: cur })
                }
            }
        }
    }

    /// Releases lock `id` held by `caller`: one compare-and-swap. Returns
    /// true if waiters must be woken (the kernel's `lock_wake(id)`).
    pub fn release_fast(&self, id: u32, caller: Caller) -> Result<bool, ShmError> {
        let word = self.word(id)?;
        let tag = caller.tag();
        match word.compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => Ok(false),
            Err(cur) if cur == tag | CONTENDED => {
                // Only waiters add the flag and only the holder clears the
                // word, so this second CAS can only fail to recovery.
                // Acquire: reading a waiter's flag makes its waiter bit
                // visible to the `take_waiters` that follows.
                word.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .map(|_| true)
                    .map_err(|_| ShmError::NotHolder)
            }
            Err(_) => Err(ShmError::NotHolder),
        }
    }

    /// Checks and sorts a multi-lock id list (1..=16 distinct valid ids).
    fn sorted(&self, ids: &[u32]) -> Result<LockIds, ShmError> {
        if ids.is_empty() || ids.len() > MAX_LOCKS_PER_CALL {
            return Err(ShmError::InvalidArgument {
                what: "lock id count must be 1..=16",
            });
        }
        let mut out = LockIds::default();
        for &id in ids {
            self.slot(id)?;
            out.push(id);
        }
        let len = out.len;
        let s = out.ids.get_mut(..len).unwrap_or(&mut []);
        s.sort_unstable();
        if s.windows(2).any(|w| w[0] == w[1]) {
            return Err(ShmError::InvalidArgument {
                what: "duplicate lock id",
            });
        }
        Ok(out)
    }

    /// Takes all of `ids` or none, in ascending id order.
    ///
    /// On a busy lock it releases the ones it took and reports
    /// `WouldBlock` for the busy one; the returned list names released
    /// locks that had waiters (wake them, as after `release_fast`). Never
    /// holds some locks while waiting for others, so it cannot deadlock.
    pub fn try_acquire_many_fast(
        &self,
        ids: &[u32],
        caller: Caller,
    ) -> Result<(TryLock, LockIds), ShmError> {
        let sorted = self.sorted(ids)?;
        let mut wake = LockIds::default();
        for (i, &id) in sorted.as_slice().iter().enumerate() {
            let outcome = self.try_acquire_fast(id, caller);
            if matches!(outcome, Ok(TryLock::Acquired)) {
                continue;
            }
            for &taken in sorted.as_slice().get(..i).unwrap_or(&[]) {
                if self.release_fast(taken, caller) == Ok(true) {
                    wake.push(taken);
                }
            }
            return outcome.map(|o| (o, wake));
        }
        Ok((TryLock::Acquired, wake))
    }

    /// Releases all of `ids`, which `caller` must hold (else `NotHolder`
    /// and none is released); returns those whose waiters must be woken.
    pub fn release_many_fast(&self, ids: &[u32], caller: Caller) -> Result<LockIds, ShmError> {
        let sorted = self.sorted(ids)?;
        for &id in sorted.as_slice() {
            if self.word(id)?.load(Ordering::Relaxed) & !FLAGS != caller.tag() {
                return Err(ShmError::NotHolder);
            }
        }
        let mut wake = LockIds::default();
        for &id in sorted.as_slice() {
            if self.release_fast(id, caller)? {
                wake.push(id);
            }
        }
        Ok(wake)
    }

    /// The futex "wait" half: registers `node` as waiting on lock `id` and
    /// marks the word contended, unless it no longer holds the holder of
    /// `observed` (then `Retry`).
    pub fn prepare_wait(&self, node: u16, id: u32, observed: u64) -> Result<LockWait, ShmError> {
        if usize::from(node) >= MAX_NODES {
            return Err(ShmError::NoSuchNode);
        }
        let word = self.word(id)?;
        let holder = observed & !FLAGS;
        if holder == 0 {
            return Ok(LockWait::Retry);
        }
        // The bit first: a releaser that sees the contended flag below also
        // sees this bit (both are read-modify-writes, acquire-release).
        self.field(id, slot::WAITERS)?
            .fetch_or(1 << node, Ordering::AcqRel);
        let cur = word.load(Ordering::Acquire);
        if cur & !FLAGS != holder {
            return Ok(LockWait::Retry);
        }
        // Always a read-modify-write, even if the flag is set already: the
        // releaser's acquiring CAS then synchronises with this one and sees
        // the waiter bit set above.
        Ok(
            match word.compare_exchange(cur, cur | CONTENDED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => LockWait::Sleep,
                Err(_) => LockWait::Retry,
            },
        )
    }

    /// The futex "wake" half: takes the set of nodes waiting on lock `id`
    /// (the caller rings vector `LOCK` on each).
    pub fn take_waiters(&self, id: u32) -> Result<NodeSet, ShmError> {
        Ok(NodeSet(
            self.field(id, slot::WAITERS)?.swap(0, Ordering::AcqRel),
        ))
    }

    /// Lock `id` as read now.
    pub fn info(&self, id: u32) -> Result<LockInfo, ShmError> {
        let reservation = self.field(id, slot::RESERVATION)?.load(Ordering::Acquire);
        let word = self.word(id)?.load(Ordering::Acquire);
        let waiters = NodeSet(self.field(id, slot::WAITERS)?.load(Ordering::Acquire));
        let reserved_by = if reservation & FLAGS == RESERVED_MARK {
            Caller::from_tag(reservation)
        } else {
            None
        };
        Ok(LockInfo {
            id,
            reserved_by,
            reservation,
            holder: Caller::from_tag(word),
            word,
            waiters,
        })
    }

    /// Frees every lock whose word matches `value` under `mask` (flags
    /// ignored); returns how many, adding the ones that had waiters to `wake`.
    fn free_matching(
        &self,
        mask: u64,
        value: u64,
        mut wake: impl FnMut(u32),
    ) -> Result<u32, ShmError> {
        let mut freed = 0;
        for id in 1..self.slots {
            let word = self.word(id)?;
            let mut cur = word.load(Ordering::Acquire);
            // Bounded: only the contended flag can change under us, once.
            for _ in 0..4 {
                if cur == 0 || cur & mask & !FLAGS != value {
                    break;
                }
                match word.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        freed += 1;
                        if cur & CONTENDED != 0 {
                            wake(id);
                        }
                        break;
                    }
                    Err(v) => cur = v,
                }
            }
        }
        Ok(freed)
    }
}

/// What [`Shm::recover_ipc`] did for the locks of a dead incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct LockRecovery {
    /// Locks it held that were freed.
    pub locks_freed: u32,
    /// Ids it had reserved that went back to the pool.
    pub reservations_freed: u32,
}

impl<'a> Shm<'a> {
    /// The lock table of this region.
    pub fn lock_table(&self) -> Result<LockTable<'a>, ShmError> {
        LockTable::new(self.region(), self.superblock().layout.lock_table)
    }

    /// Fails unless `caller`'s node is live at `caller`'s generation.
    pub(crate) fn check_caller(&self, caller: Caller) -> Result<(), ShmError> {
        if caller.node() >= self.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        let (raw, g) = split_status(self.status(caller.node())?.load(Ordering::Acquire));
        if g != caller.generation() {
            return Err(ShmError::StaleGeneration);
        }
        match NodeState::from_raw(raw) {
            Some(NodeState::Live) => Ok(()),
            Some(NodeState::Dead) => Err(ShmError::NodeDead),
            Some(_) => Err(ShmError::NotLive),
            None => Err(ShmError::Corrupt { what: "node state" }),
        }
    }

    /// Rings vector `LOCK` on every node in `nodes` (dead ones are skipped).
    fn ring_lock_waiters(&self, doorbell: &impl Doorbell, nodes: NodeSet) {
        for n in nodes.iter() {
            // A waiter that died meanwhile needs no wake-up.
            let _ = self.ring(doorbell, n, vector::LOCK);
        }
    }

    /// Reserves `out.len()` free lock ids for `caller`'s node, writing them
    /// to `out` (ascending). All or none: `NoSuchLock` if too few are free.
    pub fn lock_reserve(&self, caller: Caller, out: &mut [u32]) -> Result<(), ShmError> {
        if out.is_empty() {
            return Err(ShmError::InvalidArgument {
                what: "reserve at least one lock id",
            });
        }
        self.check_caller(caller)?;
        let t = self.lock_table()?;
        let mine = caller.reservation();
        let mut got = 0;
        for id in 1..t.slots {
            if got == out.len() {
                break;
            }
            let r = t.field(id, slot::RESERVATION)?;
            if r.compare_exchange(0, mine, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                && let Some(slot) = out.get_mut(got)
            {
                *slot = id;
                got += 1;
            }
        }
        if got < out.len() {
            for &id in out.get(..got).unwrap_or(&[]) {
                let _ = t.field(id, slot::RESERVATION)?.compare_exchange(
                    mine,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            return Err(ShmError::NoSuchLock);
        }
        Ok(())
    }

    /// Gives back lock ids `caller`'s node reserved. All or none: an id not
    /// reserved by this incarnation is `NotReserved`, a held lock `Busy`.
    pub fn lock_unreserve(
        &self,
        doorbell: &impl Doorbell,
        caller: Caller,
        ids: &[u32],
    ) -> Result<(), ShmError> {
        self.check_caller(caller)?;
        let t = self.lock_table()?;
        let sorted = t.sorted(ids)?;
        let mine = caller.reservation();
        for &id in sorted.as_slice() {
            if t.field(id, slot::RESERVATION)?.load(Ordering::Acquire) != mine {
                return Err(ShmError::NotReserved);
            }
        }
        // Hold every lock (maintenance tag) while clearing its reservation,
        // so no acquirer ends up holding an unreserved id.
        for (i, &id) in sorted.as_slice().iter().enumerate() {
            if t.word(id)?
                .compare_exchange(0, MAINTENANCE, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                let mut wake = NodeSet::default();
                for &held in sorted.as_slice().get(..i).unwrap_or(&[]) {
                    if t.word(held)?.swap(0, Ordering::AcqRel) & CONTENDED != 0 {
                        wake.0 |= t.take_waiters(held)?.0;
                    }
                }
                self.ring_lock_waiters(doorbell, wake);
                return Err(ShmError::Busy);
            }
        }
        let mut wake = NodeSet::default();
        for &id in sorted.as_slice() {
            t.field(id, slot::RESERVATION)?.store(0, Ordering::Release);
            // Acquirers that slept on the maintenance hold retry and see
            // `NotReserved`.
            if t.word(id)?.swap(0, Ordering::AcqRel) & CONTENDED != 0 {
                wake.0 |= t.take_waiters(id)?.0;
            }
        }
        self.ring_lock_waiters(doorbell, wake);
        Ok(())
    }

    /// Kernel-side acquire of one or several locks, with a deadline.
    ///
    /// Non-blocking: `Acquired`, or `WouldBlock` after registering the
    /// caller's node as a waiter (the kernel sleeps until a `LOCK` doorbell
    /// or its timer, then calls again). Once `now_ns >= deadline_ns` a busy
    /// lock gives `TimedOut` (pass `u64::MAX` for no deadline).
    pub fn lock_try_acquire(
        &self,
        doorbell: &impl Doorbell,
        caller: Caller,
        ids: &[u32],
        now_ns: u64,
        deadline_ns: u64,
    ) -> Result<TryLock, ShmError> {
        self.check_caller(caller)?;
        let t = self.lock_table()?;
        // A changed word means another try; bounded, the kernel loops anyway.
        for _ in 0..8 {
            let (outcome, wake) = t.try_acquire_many_fast(ids, caller)?;
            self.wake_ids(doorbell, &t, wake.as_slice());
            let TryLock::WouldBlock { id, observed } = outcome else {
                return Ok(outcome);
            };
            if now_ns >= deadline_ns {
                return Err(ShmError::TimedOut);
            }
            if t.prepare_wait(caller.node(), id, observed)? == LockWait::Sleep {
                return Ok(outcome);
            }
        }
        Err(ShmError::Busy)
    }

    /// Kernel-side release of locks `caller` holds, waking their waiters.
    pub fn lock_release(
        &self,
        doorbell: &impl Doorbell,
        caller: Caller,
        ids: &[u32],
    ) -> Result<(), ShmError> {
        let t = self.lock_table()?;
        let wake = t.release_many_fast(ids, caller)?;
        self.wake_ids(doorbell, &t, wake.as_slice());
        Ok(())
    }

    /// The futex "wait" system call: see [`LockTable::prepare_wait`].
    pub fn lock_wait(&self, node: u16, id: u32, observed: u64) -> Result<LockWait, ShmError> {
        if node >= self.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        self.lock_table()?.prepare_wait(node, id, observed)
    }

    /// The futex "wake" system call after `release_fast` returned true:
    /// rings vector `LOCK` on the nodes waiting on `id`; returns them.
    pub fn lock_wake(&self, doorbell: &impl Doorbell, id: u32) -> Result<NodeSet, ShmError> {
        let nodes = self.lock_table()?.take_waiters(id)?;
        self.ring_lock_waiters(doorbell, nodes);
        Ok(nodes)
    }

    fn wake_ids(&self, doorbell: &impl Doorbell, t: &LockTable<'_>, ids: &[u32]) {
        for &id in ids {
            if let Ok(nodes) = t.take_waiters(id) {
                self.ring_lock_waiters(doorbell, nodes);
            }
        }
    }

    /// Frees every lock held by exactly `caller` (e.g. a process that
    /// exited), waking waiters; returns how many.
    pub fn lock_release_owner(
        &self,
        doorbell: &impl Doorbell,
        caller: Caller,
    ) -> Result<u32, ShmError> {
        let t = self.lock_table()?;
        let mut nodes = NodeSet::default();
        let freed = t.free_matching(!0, caller.tag(), |id| {
            if let Ok(n) = t.take_waiters(id) {
                nodes.0 |= n.0;
            }
        })?;
        self.ring_lock_waiters(doorbell, nodes);
        Ok(freed)
    }

    /// Lock `id` as read now.
    pub fn lock_info(&self, id: u32) -> Result<LockInfo, ShmError> {
        self.lock_table()?.info(id)
    }

    /// How many lock ids are not reserved.
    pub fn locks_free(&self) -> Result<u32, ShmError> {
        let t = self.lock_table()?;
        let mut free = 0;
        for id in 1..t.slots {
            if t.field(id, slot::RESERVATION)?.load(Ordering::Relaxed) == 0 {
                free += 1;
            }
        }
        Ok(free)
    }

    /// Lock half of `recover_ipc`: frees the locks and reservations of
    /// incarnation (`dead`, `generation`) and wakes waiters.
    pub(crate) fn recover_locks(
        &self,
        doorbell: &impl Doorbell,
        dead: u16,
        generation: Generation,
    ) -> Result<LockRecovery, ShmError> {
        let t = self.lock_table()?;
        let inc = incarnation_of(dead, generation);
        let mut nodes = NodeSet::default();
        let locks_freed = t.free_matching(INCARNATION, inc, |id| {
            if let Ok(n) = t.take_waiters(id) {
                nodes.0 |= n.0;
            }
        })?;
        let mut reservations_freed = 0;
        for id in 1..t.slots {
            let r = t.field(id, slot::RESERVATION)?;
            if r.compare_exchange(inc | RESERVED_MARK, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                reservations_freed += 1;
            }
            // Its waiter bits stay: the node id may already be live again
            // at a newer generation, waiting; a stale bit costs one ring.
        }
        self.ring_lock_waiters(doorbell, nodes);
        Ok(LockRecovery {
            locks_freed,
            reservations_freed,
        })
    }
}

/// What [`Shm::recover_ipc`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct IpcRecovery {
    /// Locks and reservations.
    pub locks: LockRecovery,
    /// Message queues.
    pub queues: crate::message::QueueRecovery,
    /// True if a barrier the survivors had all reached was released.
    pub barrier_released: bool,
}

impl Shm<'_> {
    /// Run by survivor `me` once incarnation (`dead`, `generation`) is no
    /// longer live (declared dead, left, or replaced by a newer generation):
    /// frees its locks (waking their waiters) and lock reservations, frees
    /// queue locks it held and abandons its uncommitted messages, and
    /// releases a barrier that waited only for it. Idempotent; several
    /// survivors may run it at once. Run it again if `queues.queues_busy`.
    pub fn recover_ipc(
        &self,
        doorbell: &impl Doorbell,
        me: Caller,
        dead: u16,
        generation: Generation,
    ) -> Result<IpcRecovery, ShmError> {
        self.check_caller(me)?;
        if dead >= self.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        let (raw, g) = split_status(self.status(dead)?.load(Ordering::Acquire));
        let alive = matches!(
            NodeState::from_raw(raw),
            Some(NodeState::Live | NodeState::Joining)
        );
        if g == generation && alive {
            return Err(ShmError::InvalidArgument {
                what: "that node incarnation is still live",
            });
        }
        let locks = self.recover_locks(doorbell, dead, generation)?;
        let queues = self.recover_queues(doorbell, me, dead, generation);
        let barrier_released = self.recover_barrier(doorbell).unwrap_or(false);
        Ok(IpcRecovery {
            locks,
            queues,
            barrier_released,
        })
    }
}

/// Most locks a snapshot lists; the rest are counted in `omitted`.
pub const MAX_LOCK_REPORTS: usize = 256;

/// The lock table's non-free locks, for the inspector (fixed capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockReports {
    entries: [Option<LockInfo>; MAX_LOCK_REPORTS],
    len: usize,
    /// Number of lock ids in the table.
    pub count: u32,
    /// Non-free locks beyond the listed ones.
    pub omitted: u32,
    /// Why the lock table could not be read, if it could not.
    pub error: Option<ShmError>,
}

impl LockReports {
    /// The listed locks, by id (only reserved, held or waited-for ones).
    pub fn iter(&self) -> impl Iterator<Item = &LockInfo> {
        self.entries.iter().take(self.len).flatten()
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for LockReports {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let locks: Vec<&LockInfo> = self.iter().collect();
        let mut st = s.serialize_struct("LockReports", 4)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("locks", &locks)?;
        st.serialize_field("omitted", &self.omitted)?;
        st.serialize_field("error", &self.error)?;
        st.end()
    }
}

/// A short formatted table cell on the stack (no allocator), so that
/// width specifiers can pad it.
struct Cell {
    bytes: [u8; 40],
    len: usize,
}

impl fmt::Write for Cell {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // ASCII only here; longer text is cut.
        for &b in s.as_bytes() {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl Cell {
    fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes.get(..self.len).unwrap_or(&[])).unwrap_or("?")
    }
}

fn cell(args: fmt::Arguments<'_>) -> Cell {
    let mut c = Cell {
        bytes: [0; 40],
        len: 0,
    };
    let _ = fmt::Write::write_fmt(&mut c, args);
    c
}

impl fmt::Display for LockReports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = self.error {
            return writeln!(f, "locks: unreadable: {e}");
        }
        let in_use = self.len as u64 + u64::from(self.omitted);
        writeln!(f, "locks ({} ids, {in_use} in use):", self.count)?;
        if in_use == 0 {
            return Ok(());
        }
        writeln!(
            f,
            "  {:>5}  {:<12}  {:<16}  waiters",
            "id", "reserved by", "holder"
        )?;
        for l in self.iter() {
            write!(f, "  {:>5}  ", l.id)?;
            match (l.reserved_by, l.reservation) {
                (Some(c), _) => write!(
                    f,
                    "{:<12}",
                    cell(format_args!("{}.{}", c.node(), c.generation())).as_str()
                )?,
                (None, 0) => write!(f, "{:<12}", "-")?,
                (None, raw) => write!(f, "{:<12}", cell(format_args!("?{raw:#x}")).as_str())?,
            }
            let contended = if l.word & CONTENDED != 0 { "+" } else { "" };
            match (l.holder, l.word) {
                (_, 0) => write!(f, "  {:<16}", "-")?,
                (Some(c), _) => {
                    write!(f, "  {:<16}", cell(format_args!("{c}{contended}")).as_str())?
                }
                (None, MAINTENANCE) | (None, 0x0000_0000_ffff_ff01) => {
                    write!(f, "  {:<16}", "(maintenance)")?
                }
                (None, raw) => write!(f, "  {:<16}", cell(format_args!("?{raw:#x}")).as_str())?,
            }
            writeln!(f, "  {}", l.waiters)?;
        }
        if self.omitted > 0 {
            writeln!(f, "  ... and {} more", self.omitted)?;
        }
        Ok(())
    }
}

impl Shm<'_> {
    /// The lock table's reserved, held or waited-for locks, for reports.
    pub fn lock_reports(&self) -> LockReports {
        let mut r = LockReports {
            entries: [None; MAX_LOCK_REPORTS],
            len: 0,
            count: 0,
            omitted: 0,
            error: None,
        };
        let t = match self.lock_table() {
            Ok(t) => t,
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        };
        r.count = t.count();
        for id in 1..t.slots {
            match t.info(id) {
                Ok(info) if info.is_free() => {}
                Ok(info) => match r.entries.get_mut(r.len) {
                    Some(slot) => {
                        *slot = Some(info);
                        r.len += 1;
                    }
                    None => r.omitted += 1,
                },
                Err(e) => {
                    r.error = Some(e);
                    break;
                }
            }
        }
        r
    }
}
