//! Pools, allocation, release, ownership and ownership transfer (claims 7-16),
//! on the device's heap area.
//!
//! # Layout of the heap area
//!
//! All integers little-endian u64 words (atomic), offsets in bytes.
//!
//! | where (from the heap start)   | length                    | contents                                   |
//! |-------------------------------|---------------------------|--------------------------------------------|
//! | 0                             | 4 KiB                     | heap header: magic `SHMPOOL1` (0), init word (8), directory lock (16) |
//! | 4 KiB                         | 64 x 128 B = 8 KiB        | pool directory, one entry per pool         |
//! | 12 KiB                        | the rest                  | pool extents, page-aligned, first fit      |
//!
//! Directory entry (128 B): state word (0: `generation << 32 | state`, state
//! 0 empty, 1 creating, 2 ready, 3 destroying), pool lock (8), extent offset
//! (16, from the device start) and length (24), pool size (32), slot count
//! (40), next region generation (48, carried over when the entry is reused),
//! name (64, 32 bytes UTF-8 zero-padded).
//!
//! Pool extent: header page, slot table (`slots x 64 B`, rounded up to a
//! page), data area (the pool size, rounded up to a page). Slots get one per
//! KiB of data, at least 64. Header: tag (0: `index << 32 | generation`),
//! journal word (8), high-water mark (16), unused-slot stack (24), free bytes
//! (32), regions (40), blocks (48), next generation (56), free-list bitmap
//! (64), 64 free-list heads (128..640), journal of up to 64 (offset, value)
//! pairs (1024..2048). Slot (64 B): state word (0: `generation << 32 |
//! state`, state 0 unused, 1 free block, 2 allocating, 3 allocated), start
//! (8, device offset), size (16), requested length (24), owner set (32),
//! address-order links (40), free-list links (48), allocating node (56:
//! `generation << 32 | node`).
//!
//! # Handles and ids
//!
//! A [`PoolId`] is the directory index and the entry's generation; a
//! [`RegionHandle`] is `generation << 32 | pool index << 26 | slot`. Region
//! generations come from a counter per directory entry that survives the
//! pool's destruction, so a stale handle (freed region, reused slot,
//! recreated pool) gives `NoSuchRegion` until that counter wraps (2^32
//! allocations in one directory entry).
//!
//! # Allocation
//!
//! Any length > 0, any power-of-two alignment up to 2 MiB (of the device
//! offset; the BAR is aligned to its size, so this is the physical alignment
//! too). Regions start on 64-byte boundaries and reserve their length
//! rounded up to 64 bytes; free blocks coalesce with both neighbours on
//! release, so free + reserved bytes always equal the pool size. Search:
//! 64 segregated free lists by size class; the first block that fits in the
//! lowest list that can hold the request. A pool whose slot table is full
//! gives `OutOfMemory` too. Kernels that map regions with page protection
//! should ask for page alignment and page-multiple lengths.
//!
//! Pool extents: first fit over the gaps between existing extents (the
//! directory is the only record, so there is no separate free list to
//! damage). A full directory gives `OutOfMemory`.
//!
//! # Concurrency and node death
//!
//! Each pool has a lock word in its directory entry (never in memory a pool
//! could reuse); the directory has one more for create and destroy. A lock
//! word holds its holder's stamp `(node + 1) << 32 | generation`. Waiting is
//! a bounded spin; past the budget a call gives `Busy`.
//!
//! Every change to allocator metadata is a redo-journalled transaction (see
//! `tx`): planned, journalled, marked committed by one store, applied,
//! cleared. Create writes the entry as "creating" first and "ready" last;
//! destroy goes "destroying" then "empty". Ownership changes are one store
//! or compare-and-swap under the pool lock. So a node that dies anywhere
//! leaves: its lock stamps in place, and at most one half-done operation,
//! whose state says how to finish it.
//!
//! [`Pools::recover_node`], run by any survivor once liveness declared the
//! node dead, guarantees afterwards:
//! - no lock is held by the dead incarnation, and a heap initialisation it
//!   began is undone (the next attach redoes it; `attach` also takes over
//!   by itself an initialisation whose node the node table shows gone);
//! - each of its half-done operations is rolled back (create; alloc or free
//!   whose journal was not committed) or completed (destroy; committed
//!   journal), so every pool's accounting is exact;
//! - regions it was still allocating (the call had not returned) are freed;
//! - regions whose owner set is exactly the dead node are freed, if the node
//!   has not come back since (or it is the caller recovering its own previous
//!   incarnation): nobody else could write or free them. Regions that are
//!   shared (owner set 0) or owned by other nodes too stay: other nodes may
//!   be using them and may free them.
//!
//! Recovery is idempotent and may itself die and be re-run (a recoverer that
//! dies is recovered like any node; then re-run the recovery it was doing).
//! It relies on the dead node having really stopped: one that was only slow
//! and resumes would write over others' changes (liveness timeouts must
//! exceed any pause).
//!
//! Cost: an `shm_alloc` + `shm_free` pair is about 40 journalled word
//! writes under the pool lock (roughly 0.6 us on a host, uncontended).
//!
//! The heap area is not zeroed by `Shm::attach`: a blank (all-zero) device
//! gets its heap initialised by the first `Pools::attach`; a device reused
//! without zeroing keeps its old pools, and [`Pools::format`] resets them.

mod allocator;
pub mod fault;
pub mod layout;
mod report;
mod tx;

use core::fmt;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use crate::error::ShmError;
use crate::format::{Area, Generation, NodeState};
use crate::region::Region;
use crate::shm::{NodeSet, Shm};
use allocator::{Alloc, format_pool};
use layout::{
    DIR_ENTRY_LEN, DIR_OFFSET, ENTRY_CREATING, ENTRY_DESTROYING, ENTRY_EMPTY, ENTRY_READY, GRANULE,
    Geometry, HEAP_BLANK, HEAP_MAGIC, HEAP_READY, MAX_ALIGN, MAX_POOLS, PAGE, POOL_NAME_MAX,
    POOLS_OFFSET, SLOT_ALLOCATED, SLOT_ALLOCATING, dir, hdr, heap, round_up, slot, to_usize,
};
pub use report::{
    MAX_REPORTED_REGIONS, PoolReport, PoolsReport, RegionReport, pool_regions, report,
};
use tx::{Healed, Tx};

/// How often a lock-free read retries an entry that changes under it before `Busy`.
const READ_RETRIES: usize = 64;
/// Default spin budget for a lock before `Busy`.
pub const DEFAULT_SPIN_LIMIT: u32 = 1 << 20;

/// A pool: directory index and the incarnation of that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct PoolId {
    /// Index in the pool directory.
    pub index: u8,
    /// Generation of the directory entry when the pool was created.
    pub generation: u32,
}

impl PoolId {
    /// The id as one word (`generation << 32 | index`), e.g. for a syscall.
    pub fn to_raw(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The id from a word made by `to_raw`, if its index is in range.
    pub fn from_raw(raw: u64) -> Option<Self> {
        let index = (raw & 0xffff_ffff) as usize;
        (index < MAX_POOLS).then_some(Self {
            index: index as u8,
            generation: (raw >> 32) as u32,
        })
    }
}

/// An allocated region: `generation << 32 | pool index << 26 | slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct RegionHandle(pub u64);

impl RegionHandle {
    fn new(pool: u8, slot: u32, generation: u32) -> Self {
        Self(
            (u64::from(generation) << 32)
                | (u64::from(pool) << 26)
                | u64::from(slot & (layout::MAX_SLOTS as u32 - 1)),
        )
    }

    /// Directory index of the region's pool.
    pub fn pool_index(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// Slot of the region in its pool.
    pub fn slot(self) -> u32 {
        (self.0 & (layout::MAX_SLOTS - 1)) as u32
    }

    /// Generation of the region.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl fmt::Display for RegionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// A pool name: 1 to 32 bytes of UTF-8 without NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolName {
    len: u8,
    bytes: [u8; POOL_NAME_MAX],
}

impl PoolName {
    /// Validates a name given by a caller.
    pub fn new(s: &str) -> Result<Self, ShmError> {
        let src = s.as_bytes();
        if src.is_empty() || src.len() > POOL_NAME_MAX || src.contains(&0) {
            return Err(ShmError::InvalidArgument {
                what: "pool name must be 1..=32 bytes without NUL",
            });
        }
        let mut bytes = [0u8; POOL_NAME_MAX];
        bytes[..src.len()].copy_from_slice(src);
        Ok(Self {
            len: src.len() as u8,
            bytes,
        })
    }

    /// Validates a name read from the directory.
    fn from_raw(raw: &[u8; POOL_NAME_MAX]) -> Result<Self, ShmError> {
        let n = raw.iter().position(|&b| b == 0).unwrap_or(POOL_NAME_MAX);
        let text = raw.get(..n).and_then(|t| core::str::from_utf8(t).ok());
        match text {
            Some(t) if n > 0 && raw[n..].iter().all(|&b| b == 0) => Self::new(t),
            _ => Err(ShmError::Corrupt { what: "pool name" }),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Built only from validated UTF-8, so the fallback never shows.
        core::str::from_utf8(self.bytes.get(..usize::from(self.len)).unwrap_or(&[])).unwrap_or("")
    }
}

impl fmt::Debug for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for PoolName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What `pool_stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct PoolStat {
    /// The pool.
    pub id: PoolId,
    /// Its name.
    pub name: PoolName,
    /// Bytes of its data area.
    pub size: u64,
    /// Device offset of its data area.
    pub data_offset: u64,
    /// Free bytes.
    pub free: u64,
    /// Size of the largest free block.
    pub largest_free: u64,
    /// Regions allocated (including ones whose `shm_alloc` has not returned).
    pub regions: u64,
    /// Region slots in the pool.
    pub slots: u64,
    /// Slots holding a block (free block or region).
    pub slots_used: u64,
}

/// Whether a region is settled or inside the `shm_alloc` that creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum RegionState {
    /// `shm_alloc` has not returned it yet.
    Allocating,
    /// Allocated.
    Allocated,
}

/// Where a region lies and who may write it, validated against the heap area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct RegionInfo {
    /// The region.
    pub handle: RegionHandle,
    /// Its pool.
    pub pool: PoolId,
    /// Device offset of its first byte.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
    /// Bytes reserved (the length rounded up to 64).
    pub reserved: u64,
    /// Nodes that may write it; empty = every node.
    pub owners: NodeSet,
    /// Node that allocated it.
    pub allocated_by: u16,
    /// That node's generation when it allocated.
    pub allocator_generation: Generation,
}

/// What `recover_node` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct RecoveryReport {
    /// A heap initialisation by the dead node was undone.
    pub heap_init_reset: bool,
    /// The directory lock was taken back from the dead node.
    pub directory_lock_broken: bool,
    /// Pool creations rolled back.
    pub creates_rolled_back: u32,
    /// Pool destructions completed.
    pub destroys_completed: u32,
    /// Pool locks taken back.
    pub pool_locks_broken: u32,
    /// Committed journals replayed.
    pub journals_replayed: u32,
    /// Regions freed (mid-allocation, or owned by the dead node alone).
    pub regions_freed: u32,
    /// Bytes those regions reserved.
    pub bytes_freed: u64,
    /// Whether regions owned by the dead node alone were considered.
    pub exclusive_reclaimed: bool,
    /// The first error met (recovery goes on with the other pools).
    pub first_error: Option<ShmError>,
}

impl RecoveryReport {
    fn note(&mut self, r: Result<(), ShmError>) {
        if let Err(e) = r {
            self.first_error.get_or_insert(e);
        }
    }
}

/// A lock stamp: `(node + 1) << 32 | generation`.
fn stamp(node: u16, generation: Generation) -> u64 {
    ((u64::from(node) + 1) << 32) | u64::from(generation.0)
}

/// Pause between attempts at a lock; on the host, let the holder run.
fn relax(i: u32) {
    spin_loop();
    #[cfg(feature = "std")]
    if i % 64 == 63 {
        std::thread::yield_now();
    }
    #[cfg(not(feature = "std"))]
    let _ = i;
}

/// Checks a node set names only nodes of the table.
fn check_set(set: u64, max_nodes: u16, what: &'static str) -> Result<(), ShmError> {
    if max_nodes < 64 && set >> max_nodes != 0 {
        return Err(ShmError::InvalidArgument { what });
    }
    Ok(())
}

/// A copy of one directory entry, read consistently.
#[derive(Debug, Clone, Copy)]
struct Entry {
    index: u8,
    state: u32,
    generation: u32,
    ext_off: u64,
    ext_len: u64,
    size: u64,
    slots: u64,
    next_gen: u64,
    name: [u8; POOL_NAME_MAX],
}

impl Entry {
    fn geometry(&self, heap: Area) -> Result<Geometry, ShmError> {
        Geometry::validate(
            heap,
            self.index,
            self.generation,
            self.ext_off,
            self.ext_len,
            self.size,
            self.slots,
        )
    }

    fn state_word(&self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.state)
    }
}

/// This node's access to the pools of an attached shared memory.
#[derive(Debug, Clone, Copy)]
pub struct Pools<'a> {
    shm: Shm<'a>,
    region: Region<'a>,
    heap: Area,
    node: u16,
    generation: Generation,
    spin_limit: u32,
}

impl<'a> Pools<'a> {
    /// Access for node `node` at `generation`; initialises a blank heap.
    pub fn attach(shm: &Shm<'a>, node: u16, generation: Generation) -> Result<Self, ShmError> {
        if node >= shm.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        if generation.0 == 0 {
            return Err(ShmError::InvalidArgument {
                what: "generation 0 never joined",
            });
        }
        let heap = shm.superblock().layout.heap;
        if heap.len <= POOLS_OFFSET {
            return Err(ShmError::TooSmall);
        }
        let pools = Self {
            shm: *shm,
            region: shm.region(),
            heap,
            node,
            generation,
            spin_limit: DEFAULT_SPIN_LIMIT,
        };
        pools.init_heap()?;
        Ok(pools)
    }

    /// The same access with another lock spin budget (attempts before `Busy`).
    pub fn with_spin_limit(self, spin_limit: u32) -> Self {
        Self {
            spin_limit: spin_limit.max(1),
            ..self
        }
    }

    /// Resets the heap header and directory unconditionally: every pool is
    /// forgotten. Only for a device no node is using (host reset, tests).
    pub fn format(shm: &Shm<'_>) -> Result<(), ShmError> {
        let heap = shm.superblock().layout.heap;
        if heap.len <= POOLS_OFFSET {
            return Err(ShmError::TooSmall);
        }
        let region = shm.region();
        let base = to_usize(heap.offset)?;
        region
            .atomic_u64(base + heap::INIT)?
            .store(HEAP_BLANK, Ordering::Release);
        write_blank_heap(region, heap)?;
        region
            .atomic_u64(base + heap::INIT)?
            .store(HEAP_READY, Ordering::Release);
        Ok(())
    }

    /// This node's id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// This node's generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    fn me(&self) -> u64 {
        stamp(self.node, self.generation)
    }

    fn heap_word(&self, field: usize) -> Result<&'a AtomicU64, ShmError> {
        self.region.atomic_u64(to_usize(self.heap.offset)? + field)
    }

    fn init_heap(&self) -> Result<(), ShmError> {
        let init = self.heap_word(heap::INIT)?;
        for i in 0..self.spin_limit {
            match init.load(Ordering::Acquire) {
                HEAP_READY => {
                    let mut magic = [0u8; 8];
                    self.region
                        .read_bytes(to_usize(self.heap.offset)? + heap::MAGIC, &mut magic)?;
                    if magic != HEAP_MAGIC {
                        return Err(ShmError::Corrupt {
                            what: "pool heap magic",
                        });
                    }
                    return Ok(());
                }
                // Blank, or begun by an incarnation that is gone: take it.
                v if v == HEAP_BLANK || (is_stamp(v) && !self.stamp_alive(v)) => {
                    if init
                        .compare_exchange(v, self.me(), Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        fault::point();
                        write_blank_heap(self.region, self.heap)?;
                        fault::point();
                        init.store(HEAP_READY, Ordering::Release);
                        return Ok(());
                    }
                }
                v if is_stamp(v) => relax(i),
                _ => {
                    return Err(ShmError::Corrupt {
                        what: "pool heap init word",
                    });
                }
            }
        }
        Err(ShmError::NotInitialized)
    }

    /// True while the incarnation behind a lock stamp is live or joining.
    fn stamp_alive(&self, v: u64) -> bool {
        let node = ((v >> 32) - 1) as u16;
        match self.shm.node(node) {
            Ok(info) => {
                info.generation.0 == v as u32
                    && matches!(info.state, NodeState::Live | NodeState::Joining)
            }
            Err(ShmError::NoSuchNode) => false,
            // Unreadable entry: keep waiting rather than guess.
            Err(_) => true,
        }
    }

    fn entry_base(&self, index: u8) -> Result<usize, ShmError> {
        if usize::from(index) >= MAX_POOLS {
            return Err(ShmError::NoSuchPool);
        }
        to_usize(self.heap.offset + DIR_OFFSET + u64::from(index) * DIR_ENTRY_LEN)
    }

    fn entry_word(&self, index: u8, field: usize) -> Result<&'a AtomicU64, ShmError> {
        self.region.atomic_u64(self.entry_base(index)? + field)
    }

    /// A consistent copy of directory entry `index` (seqlock on its state word).
    fn read_entry(&self, index: u8) -> Result<Entry, ShmError> {
        read_entry(self.region, self.heap, index, false)
    }

    /// `read_entry`, name included.
    fn read_entry_named(&self, index: u8) -> Result<Entry, ShmError> {
        read_entry(self.region, self.heap, index, true)
    }

    /// Spins for `word` (0 -> our stamp) within the budget.
    fn acquire(&self, word: &AtomicU64) -> Result<(), ShmError> {
        let me = self.me();
        for i in 0..self.spin_limit {
            if word
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                fault::point();
                return Ok(());
            }
            relax(i);
        }
        Err(ShmError::Busy)
    }

    /// Releases `word` if we still hold it (recovery may have taken it back).
    fn release(&self, word: &AtomicU64) {
        let _ = word.compare_exchange(self.me(), 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Runs `f` on pool `index` under its lock, after checking the entry is
    /// ready (at `generation`, if given) and healing a journal left behind.
    /// `missing` is the error for a pool that is not there.
    fn locked<T>(
        &self,
        index: u8,
        generation: Option<u32>,
        missing: ShmError,
        f: impl FnOnce(&Entry, &Geometry) -> Result<T, ShmError>,
    ) -> Result<T, ShmError> {
        if usize::from(index) >= MAX_POOLS {
            return Err(missing);
        }
        let e = self.read_entry(index)?;
        if e.state != ENTRY_READY || generation.is_some_and(|g| g != e.generation) {
            return Err(missing);
        }
        let geo = e.geometry(self.heap)?;
        let lock = self.entry_word(index, dir::LOCK)?;
        self.acquire(lock)?;
        let result = (|| {
            // Ready entries only change under this lock: re-check once held.
            if self.entry_word(index, dir::STATE)?.load(Ordering::Acquire) != e.state_word() {
                return Err(missing);
            }
            check_tag(self.region, &geo)?;
            tx::heal(self.region, &geo)?;
            f(&e, &geo)
        })();
        fault::point();
        self.release(lock);
        result
    }

    /// Creates pool `name` with `size` data bytes (rounded up to 4 KiB).
    ///
    /// Creators of the same name are serialised by the directory lock: one
    /// wins, the others get `PoolExists` (then `pool_open` it).
    pub fn pool_create(&self, name: &str, size: u64) -> Result<PoolId, ShmError> {
        let name = PoolName::new(name)?;
        if size == 0 {
            return Err(ShmError::InvalidArgument {
                what: "pool size must be > 0",
            });
        }
        let area_lo = self.heap.offset + POOLS_OFFSET;
        let area_hi = self.heap.end();
        let (data_len, slots, ext_len) = layout::plan(size).ok_or(ShmError::TooLarge)?;
        if ext_len > area_hi - area_lo {
            return Err(ShmError::TooLarge);
        }
        let dir_lock = self.heap_word(heap::DIR_LOCK)?;
        self.acquire(dir_lock)?;
        let result = (|| {
            let mut free_entry = None;
            let mut used = [(0u64, 0u64); MAX_POOLS];
            let mut n = 0;
            for i in 0..MAX_POOLS as u8 {
                let e = self.read_entry_named(i)?;
                if e.state == ENTRY_EMPTY {
                    free_entry.get_or_insert(e);
                    continue;
                }
                if e.name == name.bytes {
                    // A creating or destroying entry here was left by a
                    // dead node: recovery will settle it.
                    return Err(if e.state == ENTRY_READY {
                        ShmError::PoolExists
                    } else {
                        ShmError::Busy
                    });
                }
                // Whatever it says, an entry in use keeps its extent (clamped
                // to the pool area) out of reach.
                let lo = e.ext_off.max(area_lo);
                let hi = e.ext_off.saturating_add(e.ext_len).min(area_hi);
                if lo < hi {
                    used[n] = (lo, hi);
                    n += 1;
                }
            }
            let e = free_entry.ok_or(ShmError::OutOfMemory)?;
            let ext_off = first_fit(&mut used[..n], area_lo, area_hi, ext_len)
                .ok_or(ShmError::OutOfMemory)?;
            let generation = Generation(e.generation).next().0;
            let geo = Geometry::validate(
                self.heap, e.index, generation, ext_off, ext_len, data_len, slots,
            )?;
            let state = self.entry_word(e.index, dir::STATE)?;
            state.store(
                (u64::from(generation) << 32) | u64::from(ENTRY_CREATING),
                Ordering::Release,
            );
            fault::point();
            for (field, v) in [
                (dir::LOCK, 0),
                (dir::EXTENT_OFF, ext_off),
                (dir::EXTENT_LEN, ext_len),
                (dir::SIZE, data_len),
                (dir::SLOTS, slots),
            ] {
                self.entry_word(e.index, field)?.store(v, Ordering::Relaxed);
            }
            self.region
                .write_bytes(self.entry_base(e.index)? + dir::NAME, &name.bytes)?;
            fault::point();
            format_pool(self.region, &geo, e.next_gen as u32)?;
            fault::point();
            // Release: the fields and the pool header are visible to anyone
            // who sees "ready".
            state.store(
                (u64::from(generation) << 32) | u64::from(ENTRY_READY),
                Ordering::Release,
            );
            fault::point();
            Ok(PoolId {
                index: e.index,
                generation,
            })
        })();
        self.release(dir_lock);
        result
    }

    /// Finds pool `name` (lock-free).
    pub fn pool_open(&self, name: &str) -> Result<PoolId, ShmError> {
        let name = PoolName::new(name)?;
        for i in 0..MAX_POOLS as u8 {
            if let Ok(e) = self.read_entry_named(i)
                && e.state == ENTRY_READY
                && e.name == name.bytes
            {
                return Ok(PoolId {
                    index: i,
                    generation: e.generation,
                });
            }
        }
        Err(ShmError::NoSuchPool)
    }

    /// Destroys an empty pool; `Busy` while it has regions (free them first).
    pub fn pool_destroy(&self, pool: PoolId) -> Result<(), ShmError> {
        let dir_lock = self.heap_word(heap::DIR_LOCK)?;
        self.acquire(dir_lock)?;
        let result = self.locked(
            pool.index,
            Some(pool.generation),
            ShmError::NoSuchPool,
            |e, geo| {
                let mut tx = Tx::new(self.region);
                let a = Alloc::new(*geo, &mut tx)?;
                let (_, regions, _) = a.counters()?;
                if regions != 0 {
                    return Err(ShmError::Busy);
                }
                let next_gen = self
                    .region
                    .atomic_u64(geo.hdr(hdr::NEXT_GEN)?)?
                    .load(Ordering::Acquire);
                let state = self.entry_word(e.index, dir::STATE)?;
                let g = u64::from(e.generation) << 32;
                state.store(g | u64::from(ENTRY_DESTROYING), Ordering::Release);
                fault::point();
                self.entry_word(e.index, dir::NEXT_GEN)?
                    .store(next_gen, Ordering::Relaxed);
                fault::point();
                state.store(g | u64::from(ENTRY_EMPTY), Ordering::Release);
                fault::point();
                Ok(())
            },
        );
        self.release(dir_lock);
        result
    }

    /// Size, free bytes, largest free block and regions of a pool.
    pub fn pool_stat(&self, pool: PoolId) -> Result<PoolStat, ShmError> {
        self.locked(
            pool.index,
            Some(pool.generation),
            ShmError::NoSuchPool,
            |e, geo| stat_of(self.region, self.heap, e, geo),
        )
    }

    /// Allocates a region of `len` bytes aligned to `align`, shared by all nodes.
    pub fn shm_alloc(&self, pool: PoolId, len: u64, align: u64) -> Result<RegionHandle, ShmError> {
        self.shm_alloc_owned(pool, len, align, 0)
    }

    /// Allocates a region owned by `owners` from the start (0 = shared), so
    /// that no moment exists where it is shared.
    pub fn shm_alloc_owned(
        &self,
        pool: PoolId,
        len: u64,
        align: u64,
        owners: u64,
    ) -> Result<RegionHandle, ShmError> {
        if len == 0 {
            return Err(ShmError::InvalidArgument {
                what: "region length must be > 0",
            });
        }
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(ShmError::InvalidArgument {
                what: "alignment must be a power of two up to 2 MiB",
            });
        }
        check_set(
            owners,
            self.shm.max_nodes(),
            "owner set names a node beyond the table",
        )?;
        let alloc_word = (u64::from(self.generation.0) << 32) | u64::from(self.node);
        self.locked(
            pool.index,
            Some(pool.generation),
            ShmError::NoSuchPool,
            |e, geo| {
                let mut tx = Tx::new(self.region);
                let (idx, generation) =
                    Alloc::new(*geo, &mut tx)?.alloc(len, align, owners, alloc_word)?;
                tx.commit(geo)?;
                // The call is about to return the handle: from here on the region
                // is the caller's, not a half-done allocation.
                self.region.atomic_u64(geo.slot(idx, slot::STATE)?)?.store(
                    (u64::from(generation) << 32) | u64::from(SLOT_ALLOCATED),
                    Ordering::Release,
                );
                fault::point();
                Ok(RegionHandle::new(e.index, idx, generation))
            },
        )
    }

    /// Validates `handle` under the pool lock; returns the region's block.
    fn locked_block(
        &self,
        a: &Alloc<'_, '_>,
        handle: RegionHandle,
    ) -> Result<allocator::Block, ShmError> {
        let idx = handle.slot();
        if u64::from(idx) >= a.hwm()? {
            return Err(ShmError::NoSuchRegion);
        }
        let st = self
            .region
            .atomic_u64(a.geo.slot(idx, slot::STATE)?)?
            .load(Ordering::Acquire);
        if st != (u64::from(handle.generation()) << 32) | u64::from(SLOT_ALLOCATED) {
            return Err(ShmError::NoSuchRegion);
        }
        a.block(idx)
    }

    /// Releases a region; the caller's node must be allowed to write it.
    pub fn shm_free(&self, handle: RegionHandle) -> Result<(), ShmError> {
        self.locked(
            handle.pool_index(),
            None,
            ShmError::NoSuchRegion,
            |_, geo| {
                let mut tx = Tx::new(self.region);
                let mut a = Alloc::new(*geo, &mut tx)?;
                let b = self.locked_block(&a, handle)?;
                if b.owners != 0 && !NodeSet(b.owners).contains(self.node) {
                    return Err(ShmError::NotOwner);
                }
                a.free(&b)?;
                tx.commit(geo)
            },
        )
    }

    /// Where a region lies and who owns it (lock-free, validated).
    pub fn region_info(&self, handle: RegionHandle) -> Result<RegionInfo, ShmError> {
        region_info(self.region, self.heap, handle)
    }

    /// May `node` map the region (writable or not)? Reading is open to
    /// every node; writing to the owners, or to all if it has none.
    pub fn may_map(&self, handle: RegionHandle, node: u16, writable: bool) -> Result<(), ShmError> {
        if node >= self.shm.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        let info = self.region_info(handle)?;
        if !writable || info.owners.is_empty() || info.owners.contains(node) {
            Ok(())
        } else {
            Err(ShmError::NotOwner)
        }
    }

    /// Makes the region exclusive to `nodes` (0 = shared again); the caller
    /// must currently be allowed to write it.
    pub fn shm_own(
        &self,
        handle: RegionHandle,
        caller_node: u16,
        nodes: u64,
    ) -> Result<(), ShmError> {
        if caller_node >= self.shm.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        check_set(
            nodes,
            self.shm.max_nodes(),
            "owner set names a node beyond the table",
        )?;
        self.locked(
            handle.pool_index(),
            None,
            ShmError::NoSuchRegion,
            |_, geo| {
                let mut tx = Tx::new(self.region);
                let a = Alloc::new(*geo, &mut tx)?;
                let b = self.locked_block(&a, handle)?;
                if b.owners != 0 && !NodeSet(b.owners).contains(caller_node) {
                    return Err(ShmError::NotOwner);
                }
                self.region
                    .atomic_u64(geo.slot(b.idx, slot::OWNERS)?)?
                    .store(nodes, Ordering::Release);
                fault::point();
                Ok(())
            },
        )
    }

    /// Moves ownership from exactly `from` (which must contain the caller) to
    /// `to`, in one compare-and-swap; `NotOwner` if the owners are not `from`.
    pub fn shm_transfer(
        &self,
        handle: RegionHandle,
        caller_node: u16,
        from: u64,
        to: u64,
    ) -> Result<(), ShmError> {
        if caller_node >= self.shm.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        let max = self.shm.max_nodes();
        check_set(from, max, "source set names a node beyond the table")?;
        check_set(to, max, "target set names a node beyond the table")?;
        if !NodeSet(from).contains(caller_node) {
            return Err(ShmError::NotOwner);
        }
        self.locked(
            handle.pool_index(),
            None,
            ShmError::NoSuchRegion,
            |_, geo| {
                let mut tx = Tx::new(self.region);
                let a = Alloc::new(*geo, &mut tx)?;
                let b = self.locked_block(&a, handle)?;
                self.region
                    .atomic_u64(geo.slot(b.idx, slot::OWNERS)?)?
                    .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                    .map_err(|_| ShmError::NotOwner)?;
                fault::point();
                Ok(())
            },
        )
    }

    /// Recovers what node `dead` at `dead_generation` left behind (see the
    /// module docs for the guarantees). Refused while that incarnation is
    /// still live or joining in the node table.
    ///
    /// A pool whose lock another dead node still holds is skipped with
    /// `Busy` in `first_error`: recover that node too, then run this again.
    pub fn recover_node(
        &self,
        dead: u16,
        dead_generation: Generation,
    ) -> Result<RecoveryReport, ShmError> {
        if dead >= self.shm.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        if dead_generation.0 == 0 || (dead == self.node && dead_generation == self.generation) {
            return Err(ShmError::InvalidArgument {
                what: "recover_node needs another, joined incarnation",
            });
        }
        let info = self.shm.node(dead)?;
        let same = info.generation == dead_generation;
        if same && matches!(info.state, NodeState::Live | NodeState::Joining) {
            return Err(ShmError::InvalidArgument {
                what: "recover_node: that incarnation is not dead",
            });
        }
        let mut report = RecoveryReport {
            // A newer incarnation may own regions alone already: only the
            // node itself knows it has not allocated yet.
            exclusive_reclaimed: same || dead == self.node,
            ..RecoveryReport::default()
        };
        let them = stamp(dead, dead_generation);
        let me = self.me();

        let init = self.heap_word(heap::INIT)?;
        if init
            .compare_exchange(them, HEAP_BLANK, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            report.heap_init_reset = true;
            return Ok(report);
        }

        let dir_lock = self.heap_word(heap::DIR_LOCK)?;
        if dir_lock
            .compare_exchange(them, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            fault::point();
            report.directory_lock_broken = true;
            let r = self.settle_directory(&mut report);
            report.note(r);
            self.release(dir_lock);
        }

        for i in 0..MAX_POOLS as u8 {
            let r = self.break_pool_lock(i, them, &mut report);
            report.note(r);
        }

        let owner_alone = if report.exclusive_reclaimed && dead < 64 {
            1u64 << dead
        } else {
            0
        };
        let alloc_word = (u64::from(dead_generation.0) << 32) | u64::from(dead);
        for i in 0..MAX_POOLS as u8 {
            let r = self.reclaim(i, alloc_word, owner_alone, &mut report);
            report.note(r);
        }
        Ok(report)
    }

    /// Under the directory lock: rolls back creations, completes destructions.
    fn settle_directory(&self, report: &mut RecoveryReport) -> Result<(), ShmError> {
        for i in 0..MAX_POOLS as u8 {
            let e = self.read_entry(i)?;
            let g = u64::from(e.generation) << 32;
            match e.state {
                ENTRY_CREATING => report.creates_rolled_back += 1,
                ENTRY_DESTROYING => {
                    // Carry the generation counter over, if the pool is readable.
                    if let Ok(geo) = e.geometry(self.heap)
                        && let Ok(next) = self
                            .region
                            .atomic_u64(geo.hdr(hdr::NEXT_GEN)?)
                            .map(|w| w.load(Ordering::Acquire))
                    {
                        self.entry_word(i, dir::NEXT_GEN)?
                            .store(next, Ordering::Relaxed);
                    }
                    report.destroys_completed += 1;
                }
                _ => continue,
            }
            self.entry_word(i, dir::LOCK)?.store(0, Ordering::Relaxed);
            self.entry_word(i, dir::STATE)?
                .store(g | u64::from(ENTRY_EMPTY), Ordering::Release);
            fault::point();
        }
        Ok(())
    }

    /// Takes pool `index`'s lock back from `them`, finishing their journal.
    fn break_pool_lock(
        &self,
        index: u8,
        them: u64,
        report: &mut RecoveryReport,
    ) -> Result<(), ShmError> {
        let lock = self.entry_word(index, dir::LOCK)?;
        if lock
            .compare_exchange(them, self.me(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(());
        }
        fault::point();
        report.pool_locks_broken += 1;
        let result = (|| {
            let e = self.read_entry(index)?;
            if e.state != ENTRY_READY {
                return Ok(());
            }
            let geo = e.geometry(self.heap)?;
            if tx::heal(self.region, &geo)? == Healed::Replayed {
                report.journals_replayed += 1;
            }
            Ok(())
        })();
        self.release(lock);
        result
    }

    /// Frees, in pool `index`, regions `alloc_word` was still allocating and
    /// regions owned by `owner_alone` only (if not 0).
    fn reclaim(
        &self,
        index: u8,
        alloc_word: u64,
        owner_alone: u64,
        report: &mut RecoveryReport,
    ) -> Result<(), ShmError> {
        match self.read_entry(index) {
            Ok(e) if e.state == ENTRY_READY => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e),
        }
        let r = self.locked(index, None, ShmError::NoSuchPool, |_, geo| {
            let hwm = Alloc::new(*geo, &mut Tx::new(self.region))?.hwm()?;
            for idx in 0..hwm as u32 {
                let st = self
                    .region
                    .atomic_u64(geo.slot(idx, slot::STATE)?)?
                    .load(Ordering::Acquire);
                let (state, alloc, owners) = (
                    st as u32,
                    self.region
                        .atomic_u64(geo.slot(idx, slot::ALLOC)?)?
                        .load(Ordering::Acquire),
                    self.region
                        .atomic_u64(geo.slot(idx, slot::OWNERS)?)?
                        .load(Ordering::Acquire),
                );
                let doomed = (state == SLOT_ALLOCATING && alloc == alloc_word)
                    || (state == SLOT_ALLOCATED && owner_alone != 0 && owners == owner_alone);
                if !doomed {
                    continue;
                }
                let mut tx = Tx::new(self.region);
                let mut a = Alloc::new(*geo, &mut tx)?;
                let b = a.block(idx)?;
                a.free(&b)?;
                tx.commit(geo)?;
                report.regions_freed += 1;
                report.bytes_freed += b.size;
            }
            Ok(())
        });
        // A pool destroyed meanwhile has nothing left to reclaim.
        match r {
            Err(ShmError::NoSuchPool) => Ok(()),
            r => r,
        }
    }
}

/// Checks the pool header names the directory entry it was created for.
fn check_tag(region: Region<'_>, geo: &Geometry) -> Result<(), ShmError> {
    if region
        .atomic_u64(geo.hdr(hdr::TAG)?)?
        .load(Ordering::Acquire)
        != geo.tag()
    {
        return Err(ShmError::Corrupt {
            what: "pool header tag",
        });
    }
    Ok(())
}

/// True if `v` looks like a lock stamp (node 0..64, generation != 0).
fn is_stamp(v: u64) -> bool {
    (1..=64).contains(&(v >> 32)) && v as u32 != 0
}

/// Zeroes the directory and lock and writes the magic (the caller owns the init word).
fn write_blank_heap(region: Region<'_>, heap: Area) -> Result<(), ShmError> {
    const ZERO: [u8; 512] = [0; 512];
    let base = to_usize(heap.offset)?;
    let dir_len = to_usize(POOLS_OFFSET - DIR_OFFSET)?;
    let dir_base = base + to_usize(DIR_OFFSET)?;
    let mut off = 0;
    while off < dir_len {
        let n = (dir_len - off).min(ZERO.len());
        region.write_bytes(dir_base + off, &ZERO[..n])?;
        off += n;
    }
    region
        .atomic_u64(base + heap::DIR_LOCK)?
        .store(0, Ordering::Relaxed);
    region.write_bytes(base + heap::MAGIC, &HEAP_MAGIC)?;
    Ok(())
}

/// First page-aligned gap of `len` bytes in `lo..hi` between the `used` extents.
fn first_fit(used: &mut [(u64, u64)], lo: u64, hi: u64, len: u64) -> Option<u64> {
    used.sort_unstable();
    let mut cursor = lo;
    for &(s, e) in used.iter() {
        if s >= cursor && s - cursor >= len {
            return Some(cursor);
        }
        cursor = cursor.max(round_up(e, PAGE)?);
    }
    (hi.checked_sub(cursor)? >= len).then_some(cursor)
}

/// A consistent copy of directory entry `index` (seqlock on its state word);
/// the name is left zero unless `with_name`.
fn read_entry(
    region: Region<'_>,
    heap: Area,
    index: u8,
    with_name: bool,
) -> Result<Entry, ShmError> {
    if usize::from(index) >= MAX_POOLS {
        return Err(ShmError::NoSuchPool);
    }
    let base = to_usize(heap.offset + DIR_OFFSET + u64::from(index) * DIR_ENTRY_LEN)?;
    let word = |field: usize| region.atomic_u64(base + field);
    let state = word(dir::STATE)?;
    for _ in 0..READ_RETRIES {
        let s1 = state.load(Ordering::Acquire);
        let mut name = [0u8; POOL_NAME_MAX];
        if with_name {
            region.read_bytes(base + dir::NAME, &mut name)?;
        }
        let e = Entry {
            index,
            state: s1 as u32,
            generation: (s1 >> 32) as u32,
            ext_off: word(dir::EXTENT_OFF)?.load(Ordering::Relaxed),
            ext_len: word(dir::EXTENT_LEN)?.load(Ordering::Relaxed),
            size: word(dir::SIZE)?.load(Ordering::Relaxed),
            slots: word(dir::SLOTS)?.load(Ordering::Relaxed),
            next_gen: word(dir::NEXT_GEN)?.load(Ordering::Relaxed),
            name,
        };
        // Seqlock reader: the copy above happens before the re-check.
        fence(Ordering::Acquire);
        if state.load(Ordering::Relaxed) == s1 {
            return Ok(e);
        }
        spin_loop();
    }
    Err(ShmError::Busy)
}

/// The stat of a pool whose lock is held (or, for reports, not).
fn stat_of(
    region: Region<'_>,
    heap: Area,
    e: &Entry,
    geo: &Geometry,
) -> Result<PoolStat, ShmError> {
    // Names are written only while an entry is "creating": stable while ready.
    let mut name = [0u8; POOL_NAME_MAX];
    let base = to_usize(heap.offset + DIR_OFFSET + u64::from(e.index) * DIR_ENTRY_LEN)?;
    region.read_bytes(base + dir::NAME, &mut name)?;
    let mut tx = Tx::new(region);
    let a = Alloc::new(*geo, &mut tx)?;
    let (free, regions, blocks) = a.counters()?;
    Ok(PoolStat {
        id: PoolId {
            index: e.index,
            generation: e.generation,
        },
        name: PoolName::from_raw(&name)?,
        size: geo.data_len,
        data_offset: geo.data_off,
        free,
        largest_free: a.largest_free()?,
        regions,
        slots: geo.slots,
        slots_used: blocks,
    })
}

/// Lock-free, validated read of a region's descriptor.
fn region_info(
    region: Region<'_>,
    heap: Area,
    handle: RegionHandle,
) -> Result<RegionInfo, ShmError> {
    let (index, idx, generation) = (handle.pool_index(), handle.slot(), handle.generation());
    for _ in 0..READ_RETRIES {
        let e = read_entry(region, heap, index, false)?;
        if e.state != ENTRY_READY {
            return Err(ShmError::NoSuchRegion);
        }
        let geo = e.geometry(heap)?;
        let hwm = region
            .atomic_u64(geo.hdr(hdr::HWM)?)?
            .load(Ordering::Acquire)
            .min(geo.slots);
        // Slots past the high-water mark hold whatever was there before.
        if u64::from(idx) >= hwm {
            return Err(ShmError::NoSuchRegion);
        }
        let w =
            |field| -> Result<&AtomicU64, ShmError> { region.atomic_u64(geo.slot(idx, field)?) };
        let state = w(slot::STATE)?;
        let s1 = state.load(Ordering::Acquire);
        if s1 != (u64::from(generation) << 32) | u64::from(SLOT_ALLOCATED) {
            return Err(ShmError::NoSuchRegion);
        }
        let start = w(slot::START)?.load(Ordering::Relaxed);
        let size = w(slot::SIZE)?.load(Ordering::Relaxed);
        let len = w(slot::LEN)?.load(Ordering::Relaxed);
        let owners = w(slot::OWNERS)?.load(Ordering::Relaxed);
        let alloc = w(slot::ALLOC)?.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let dir_state = region.atomic_u64(
            to_usize(heap.offset + DIR_OFFSET + u64::from(index) * DIR_ENTRY_LEN)? + dir::STATE,
        )?;
        if state.load(Ordering::Relaxed) != s1
            || dir_state.load(Ordering::Relaxed) != e.state_word()
        {
            spin_loop();
            continue;
        }
        let ok = start >= geo.data_off
            && start.is_multiple_of(GRANULE)
            && size.is_multiple_of(GRANULE)
            && len > 0
            && len <= size
            && start
                .checked_add(size)
                .is_some_and(|end| end <= geo.data_end());
        if !ok {
            return Err(ShmError::Corrupt {
                what: "region slot extent",
            });
        }
        return Ok(RegionInfo {
            handle,
            pool: PoolId {
                index,
                generation: e.generation,
            },
            offset: start,
            len,
            reserved: size,
            owners: NodeSet(owners),
            allocated_by: alloc as u16,
            allocator_generation: Generation((alloc >> 32) as u32),
        });
    }
    Err(ShmError::Busy)
}
