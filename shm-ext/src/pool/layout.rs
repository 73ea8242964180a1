//! Byte layout of the pool heap (see the table in [`crate::pool`]) and the
//! validated geometry of one pool.
//!
//! Offsets in `heap` are from the start of the heap area, in `dir` from the
//! start of a directory entry, in `hdr` from the start of a pool's extent
//! (its header), in `slot` from the start of a region slot.

use crate::error::ShmError;
use crate::format::Area;

/// Magic at the start of an initialised pool heap.
pub const HEAP_MAGIC: [u8; 8] = *b"SHMPOOL1";
/// Page size: pool extents, slot tables and data areas are page-aligned.
pub const PAGE: u64 = 4096;
/// Allocation granule: region starts and reserved lengths are multiples of it
/// (one cache line, so regions of different nodes never share a line).
pub const GRANULE: u64 = 64;
/// Largest alignment `shm_alloc` accepts (a 2 MiB huge page).
pub const MAX_ALIGN: u64 = 2 << 20;
/// Entries in the pool directory.
pub const MAX_POOLS: usize = 64;
/// Longest pool name in bytes.
pub const POOL_NAME_MAX: usize = 32;
/// Offset of the pool directory in the heap area.
pub const DIR_OFFSET: u64 = PAGE;
/// Size of one directory entry.
pub const DIR_ENTRY_LEN: u64 = 128;
/// Offset in the heap area where pool extents start (after the directory).
pub const POOLS_OFFSET: u64 = DIR_OFFSET + MAX_POOLS as u64 * DIR_ENTRY_LEN;
/// Size of a pool header (first page of its extent).
pub const POOL_HEADER_LEN: u64 = PAGE;
/// Size of one region slot.
pub const SLOT_LEN: u64 = 64;
/// Most word writes one allocator transaction may journal.
pub const JOURNAL_CAP: usize = 64;
/// Fewest region slots a pool gets.
pub const MIN_SLOTS: u64 = 64;
/// One region slot per this many data bytes (beyond `MIN_SLOTS`).
pub const BYTES_PER_SLOT: u64 = 1024;
/// Most region slots a pool can have (the handle has 26 bits for the index).
pub const MAX_SLOTS: u64 = 1 << 26;
/// "No slot" in links and list heads.
pub const NIL: u32 = u32::MAX;
/// High half of a committed journal word (`"JRNL"`).
pub const JOURNAL_MAGIC: u64 = 0x4A52_4E4C;

/// Heap header fields (first page of the heap area).
pub mod heap {
    /// Magic, 8 bytes.
    pub const MAGIC: usize = 0;
    /// Init word (atomic u64): 0 blank, 1 ready, else the initialiser's lock stamp.
    pub const INIT: usize = 8;
    /// Directory lock (atomic u64): 0 free, else the holder's lock stamp.
    pub const DIR_LOCK: usize = 16;
}

/// Init word: the heap has not been initialised.
pub const HEAP_BLANK: u64 = 0;
/// Init word: the heap header and directory are valid.
pub const HEAP_READY: u64 = 1;

/// Directory entry fields.
pub mod dir {
    /// State word (atomic u64): `pool generation << 32 | state`.
    pub const STATE: usize = 0;
    /// Pool lock (atomic u64): 0 free, else the holder's lock stamp.
    pub const LOCK: usize = 8;
    /// Device offset of the pool's extent.
    pub const EXTENT_OFF: usize = 16;
    /// Length of the pool's extent.
    pub const EXTENT_LEN: usize = 24;
    /// Bytes of the pool's data area (the pool size).
    pub const SIZE: usize = 32;
    /// Number of region slots.
    pub const SLOTS: usize = 40;
    /// Next region generation, carried from one incarnation of the entry to the next.
    pub const NEXT_GEN: usize = 48;
    /// Name: 32 bytes, UTF-8, zero-padded.
    pub const NAME: usize = 64;
}

/// Directory entry state: free.
pub const ENTRY_EMPTY: u32 = 0;
/// Directory entry state: a pool is being created (invisible).
pub const ENTRY_CREATING: u32 = 1;
/// Directory entry state: the pool is usable.
pub const ENTRY_READY: u32 = 2;
/// Directory entry state: the pool is being destroyed (invisible).
pub const ENTRY_DESTROYING: u32 = 3;

/// Pool header fields; all but `TAG` and `JOURNAL*` change only through the journal.
pub mod hdr {
    /// `directory index << 32 | pool generation`, to cross-check the entry.
    pub const TAG: u64 = 0;
    /// Journal word (atomic u64): 0 empty, else `JOURNAL_MAGIC << 32 | count`.
    pub const JOURNAL: u64 = 8;
    /// Slots `0..hwm` have been used; the rest were never touched.
    pub const HWM: u64 = 16;
    /// Head of the stack of unused slots below `hwm`.
    pub const UNUSED: u64 = 24;
    /// Free bytes in the data area.
    pub const FREE_BYTES: u64 = 32;
    /// Regions allocated (or being allocated).
    pub const REGIONS: u64 = 40;
    /// Slots holding a block (free block or region).
    pub const BLOCKS: u64 = 48;
    /// Generation the next region gets (never 0).
    pub const NEXT_GEN: u64 = 56;
    /// Bit `b` set when free list `b` is non-empty.
    pub const BINMAP: u64 = 64;
    /// 64 free-list heads (u64 each; slot index or `NIL`), list `b` holding
    /// free blocks of `2^b..2^(b+1)` granules.
    pub const BINS: u64 = 128;
    /// End of the journalled header words.
    pub const WORDS_END: u64 = BINS + 64 * 8;
    /// Journal entries: `JOURNAL_CAP` x (offset in the extent u64, value u64).
    pub const JOURNAL_ENTRIES: u64 = 1024;
}

/// Region slot fields.
pub mod slot {
    /// State word: `generation << 32 | state`.
    pub const STATE: u64 = 0;
    /// Device offset of the block.
    pub const START: u64 = 8;
    /// Bytes of the block (a multiple of the granule).
    pub const SIZE: u64 = 16;
    /// Bytes the allocator asked for (regions only).
    pub const LEN: u64 = 24;
    /// Owner set (u64 node bitmap, 0 = shared by all).
    pub const OWNERS: u64 = 32;
    /// Address-order neighbours: `next << 32 | prev` (slot indices).
    pub const ADDR: u64 = 40;
    /// Free-list neighbours `next << 32 | prev` (free blocks); unused-stack next in the high half.
    pub const FREE: u64 = 48;
    /// Allocating node: `generation << 32 | node` (regions only).
    pub const ALLOC: u64 = 56;
}

/// Slot state: on the unused stack.
pub const SLOT_UNUSED: u32 = 0;
/// Slot state: a free block.
pub const SLOT_FREE: u32 = 1;
/// Slot state: a region inside a `shm_alloc` call that has not returned.
pub const SLOT_ALLOCATING: u32 = 2;
/// Slot state: an allocated region.
pub const SLOT_ALLOCATED: u32 = 3;

/// `u64 -> usize` for offsets (the region length bounds every real one).
pub(crate) fn to_usize(v: u64) -> Result<usize, ShmError> {
    usize::try_from(v).map_err(|_| ShmError::OutOfBounds)
}

/// Rounds `v` up to a multiple of `to` (a power of two); `None` on overflow.
pub(crate) fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x & !(to - 1))
}

/// Free-list index of a block of `size` bytes (`size >= GRANULE`).
pub(crate) fn bin_of(size: u64) -> u32 {
    (size / GRANULE).max(1).ilog2()
}

/// Where one pool lies; every field validated against the heap area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Directory index.
    pub index: u8,
    /// Pool generation (incarnation of the directory entry).
    pub generation: u32,
    /// Device offset of the extent (the pool header).
    pub ext_off: u64,
    /// Device offset of the slot table.
    pub slot_base: u64,
    /// Number of region slots.
    pub slots: u64,
    /// Device offset of the data area.
    pub data_off: u64,
    /// Bytes of the data area.
    pub data_len: u64,
}

/// Sizes of a new pool of `size` bytes: (data length, slots, extent length).
pub(crate) fn plan(size: u64) -> Option<(u64, u64, u64)> {
    let data_len = round_up(size, PAGE)?;
    let slots = (data_len / BYTES_PER_SLOT).clamp(MIN_SLOTS, MAX_SLOTS - 1);
    let ext_len = POOL_HEADER_LEN
        .checked_add(slot_table_len(slots)?)?
        .checked_add(data_len)?;
    Some((data_len, slots, ext_len))
}

fn slot_table_len(slots: u64) -> Option<u64> {
    round_up(slots.checked_mul(SLOT_LEN)?, PAGE)
}

impl Geometry {
    /// Validates a directory entry's extent fields against the heap area.
    pub fn validate(
        heap: Area,
        index: u8,
        generation: u32,
        ext_off: u64,
        ext_len: u64,
        data_len: u64,
        slots: u64,
    ) -> Result<Self, ShmError> {
        let bad = |what| Err(ShmError::Corrupt { what });
        if !(1..MAX_SLOTS).contains(&slots) {
            return bad("pool slot count");
        }
        if data_len == 0 || !data_len.is_multiple_of(PAGE) {
            return bad("pool size");
        }
        let table = slot_table_len(slots).ok_or(ShmError::Corrupt {
            what: "pool slot count",
        })?;
        let want = POOL_HEADER_LEN
            .checked_add(table)
            .and_then(|v| v.checked_add(data_len));
        if want != Some(ext_len) {
            return bad("pool extent length");
        }
        let lo = heap.offset.checked_add(POOLS_OFFSET);
        let end = ext_off.checked_add(ext_len);
        match (lo, end) {
            (Some(lo), Some(end))
                if ext_off >= lo && end <= heap.end() && ext_off.is_multiple_of(PAGE) => {}
            _ => return bad("pool extent outside the heap"),
        }
        let slot_base = ext_off + POOL_HEADER_LEN;
        Ok(Self {
            index,
            generation,
            ext_off,
            slot_base,
            slots,
            data_off: slot_base + table,
            data_len,
        })
    }

    /// One past the data area.
    pub fn data_end(&self) -> u64 {
        self.data_off + self.data_len
    }

    /// The tag the pool header carries.
    pub fn tag(&self) -> u64 {
        (u64::from(self.index) << 32) | u64::from(self.generation)
    }

    /// Device offset of header field `field`.
    pub fn hdr(&self, field: u64) -> Result<usize, ShmError> {
        to_usize(self.ext_off + field)
    }

    /// Device offset of field `field` of slot `idx` (checked against the table).
    pub fn slot(&self, idx: u32, field: u64) -> Result<usize, ShmError> {
        if u64::from(idx) >= self.slots {
            return Err(ShmError::Corrupt {
                what: "region slot index",
            });
        }
        to_usize(self.slot_base + u64::from(idx) * SLOT_LEN + field)
    }

    /// True if `rel` (offset in the extent) is a word the journal may write.
    pub fn journal_may_write(&self, rel: u64) -> bool {
        rel.is_multiple_of(8)
            && ((hdr::HWM..hdr::WORDS_END).contains(&rel)
                || (POOL_HEADER_LEN..POOL_HEADER_LEN + self.slots * SLOT_LEN).contains(&rel))
    }
}
