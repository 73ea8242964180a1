//! The allocator inside one pool: planning `alloc` and `free` into a `Tx`.
//!
//! Every block of the data area (free block or region) has a slot; slots are
//! linked in address order (for O(1) coalescing) and free blocks also into
//! one of 64 size-class lists (`bin_of`), found through a bitmap. `alloc`
//! takes the first block that fits in the lowest list that can hold the
//! request, splitting off a free head (alignment padding) and tail; `free`
//! merges the region with free neighbours. Everything read from shared memory
//! is validated first; damage aborts the plan with `Corrupt` before a single
//! word is written.

use super::layout::{
    GRANULE, Geometry, NIL, SLOT_ALLOCATED, SLOT_ALLOCATING, SLOT_FREE, SLOT_UNUSED, bin_of, hdr,
    slot,
};
use core::sync::atomic::Ordering;

use super::tx::Tx;
use crate::error::ShmError;
use crate::region::Region;

fn corrupt(what: &'static str) -> ShmError {
    ShmError::Corrupt { what }
}

fn lo(w: u64) -> u32 {
    w as u32
}

fn hi(w: u64) -> u32 {
    (w >> 32) as u32
}

fn pack(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

/// One slot as read (through the transaction).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub idx: u32,
    pub state: u32,
    pub start: u64,
    pub size: u64,
    pub len: u64,
    pub owners: u64,
    pub prev_addr: u32,
    pub next_addr: u32,
    pub alloc: u64,
}

impl Block {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A pool's allocator state, reached through one transaction.
pub(crate) struct Alloc<'t, 'a> {
    pub geo: Geometry,
    tx: &'t mut Tx<'a>,
    /// The high-water mark, read once (validated) and kept up to date.
    hwm: u64,
}

impl<'t, 'a> Alloc<'t, 'a> {
    /// Allocator state of the pool at `geo`, read through `tx`.
    pub fn new(geo: Geometry, tx: &'t mut Tx<'a>) -> Result<Self, ShmError> {
        let hwm = tx.get(geo.hdr(hdr::HWM)?)?;
        if hwm > geo.slots {
            return Err(corrupt("pool slot high-water mark"));
        }
        Ok(Self { geo, tx, hwm })
    }

    fn h(&self, field: u64) -> Result<u64, ShmError> {
        self.tx.get(self.geo.hdr(field)?)
    }

    fn set_h(&mut self, field: u64, v: u64) -> Result<(), ShmError> {
        let off = self.geo.hdr(field)?;
        self.tx.set(off, v)
    }

    fn s(&self, idx: u32, field: u64) -> Result<u64, ShmError> {
        self.tx.get(self.geo.slot(idx, field)?)
    }

    fn set_s(&mut self, idx: u32, field: u64, v: u64) -> Result<(), ShmError> {
        let off = self.geo.slot(idx, field)?;
        self.tx.set(off, v)
    }

    /// Slots used so far (validated against the table size).
    pub fn hwm(&self) -> Result<u64, ShmError> {
        Ok(self.hwm)
    }

    /// Validates a slot index read from shared memory (`NIL` allowed if `nil_ok`).
    fn check_idx(&self, idx: u32, nil_ok: bool) -> Result<(), ShmError> {
        if idx == NIL && nil_ok {
            return Ok(());
        }
        if u64::from(idx) >= self.hwm()? {
            return Err(corrupt("region slot link"));
        }
        Ok(())
    }

    /// Reads and validates slot `idx` as a block of the data area.
    pub fn block(&self, idx: u32) -> Result<Block, ShmError> {
        self.check_idx(idx, false)?;
        let st = self.s(idx, slot::STATE)?;
        let addr = self.s(idx, slot::ADDR)?;
        let b = Block {
            idx,
            state: lo(st),
            start: self.s(idx, slot::START)?,
            size: self.s(idx, slot::SIZE)?,
            len: self.s(idx, slot::LEN)?,
            owners: self.s(idx, slot::OWNERS)?,
            prev_addr: lo(addr),
            next_addr: hi(addr),
            alloc: self.s(idx, slot::ALLOC)?,
        };
        let g = &self.geo;
        let inside = b.start >= g.data_off
            && b.size > 0
            && b.size.is_multiple_of(GRANULE)
            && b.start.is_multiple_of(GRANULE)
            && b.start
                .checked_add(b.size)
                .is_some_and(|e| e <= g.data_end());
        if !inside {
            return Err(corrupt("region slot extent"));
        }
        match b.state {
            SLOT_FREE => {}
            SLOT_ALLOCATING | SLOT_ALLOCATED => {
                if b.len == 0 || b.len > b.size {
                    return Err(corrupt("region length"));
                }
            }
            _ => return Err(corrupt("region slot state")),
        }
        self.check_idx(b.prev_addr, true)?;
        self.check_idx(b.next_addr, true)?;
        Ok(b)
    }

    fn bin_head(&self, bin: u32) -> Result<u32, ShmError> {
        let v = self.h(hdr::BINS + 8 * u64::from(bin))?;
        let idx = u32::try_from(v).map_err(|_| corrupt("free list head"))?;
        self.check_idx(idx, true)?;
        Ok(idx)
    }

    fn set_bin_head(&mut self, bin: u32, idx: u32) -> Result<(), ShmError> {
        self.set_h(hdr::BINS + 8 * u64::from(bin), u64::from(idx))?;
        let map = self.h(hdr::BINMAP)?;
        let new = if idx == NIL {
            map & !(1 << bin)
        } else {
            map | (1 << bin)
        };
        if new == map {
            return Ok(());
        }
        self.set_h(hdr::BINMAP, new)
    }

    /// Free-list links of slot `idx`: (prev, next).
    fn free_links(&self, idx: u32) -> Result<(u32, u32), ShmError> {
        let w = self.s(idx, slot::FREE)?;
        self.check_idx(lo(w), true)?;
        self.check_idx(hi(w), true)?;
        Ok((lo(w), hi(w)))
    }

    fn set_free_prev(&mut self, idx: u32, prev: u32) -> Result<(), ShmError> {
        let w = self.s(idx, slot::FREE)?;
        self.set_s(idx, slot::FREE, pack(hi(w), prev))
    }

    fn set_free_next(&mut self, idx: u32, next: u32) -> Result<(), ShmError> {
        let w = self.s(idx, slot::FREE)?;
        self.set_s(idx, slot::FREE, pack(next, lo(w)))
    }

    fn set_addr_prev(&mut self, idx: u32, prev: u32) -> Result<(), ShmError> {
        let w = self.s(idx, slot::ADDR)?;
        self.set_s(idx, slot::ADDR, pack(hi(w), prev))
    }

    fn set_addr_next(&mut self, idx: u32, next: u32) -> Result<(), ShmError> {
        let w = self.s(idx, slot::ADDR)?;
        self.set_s(idx, slot::ADDR, pack(next, lo(w)))
    }

    /// Takes free block `b` off its free list.
    fn unlink(&mut self, b: &Block) -> Result<(), ShmError> {
        let bin = bin_of(b.size);
        let (prev, next) = self.free_links(b.idx)?;
        if prev == NIL {
            if self.bin_head(bin)? != b.idx {
                return Err(corrupt("free list head"));
            }
            self.set_bin_head(bin, next)?;
        } else {
            self.set_free_next(prev, next)?;
        }
        if next != NIL {
            self.set_free_prev(next, prev)?;
        }
        Ok(())
    }

    /// Puts slot `idx` (a free block of `size` bytes) at the head of its list.
    fn push_free(&mut self, idx: u32, size: u64) -> Result<(), ShmError> {
        let bin = bin_of(size);
        let head = self.bin_head(bin)?;
        self.set_s(idx, slot::FREE, pack(head, NIL))?;
        if head != NIL {
            self.set_free_prev(head, idx)?;
        }
        self.set_bin_head(bin, idx)
    }

    /// A slot for a new block: from the unused stack, else past the high-water mark.
    fn take_slot(&mut self) -> Result<u32, ShmError> {
        let top = self.h(hdr::UNUSED)?;
        if top != u64::from(NIL) {
            let idx = u32::try_from(top).map_err(|_| corrupt("unused slot stack"))?;
            self.check_idx(idx, false)?;
            if lo(self.s(idx, slot::STATE)?) != SLOT_UNUSED {
                return Err(corrupt("unused slot stack"));
            }
            let next = hi(self.s(idx, slot::FREE)?);
            self.check_idx(next, true)?;
            self.set_h(hdr::UNUSED, u64::from(next))?;
            return Ok(idx);
        }
        let hwm = self.hwm()?;
        if hwm >= self.geo.slots {
            return Err(ShmError::OutOfMemory);
        }
        self.set_h(hdr::HWM, hwm + 1)?;
        self.hwm = hwm + 1;
        Ok(hwm as u32)
    }

    /// Returns slot `idx` to the unused stack.
    fn release_slot(&mut self, idx: u32) -> Result<(), ShmError> {
        let top = self.h(hdr::UNUSED)?;
        self.set_s(idx, slot::STATE, u64::from(SLOT_UNUSED))?;
        self.set_s(idx, slot::FREE, pack(top as u32, NIL))?;
        self.set_h(hdr::UNUSED, u64::from(idx))
    }

    /// Slots still available for new blocks.
    fn spare_slots(&self) -> Result<u64, ShmError> {
        let blocks = self.h(hdr::BLOCKS)?;
        self.geo
            .slots
            .checked_sub(blocks)
            .ok_or(corrupt("pool block count"))
    }

    fn add_h(&mut self, field: u64, delta: i64, what: &'static str) -> Result<(), ShmError> {
        let v = self.h(field)?;
        let n = v.checked_add_signed(delta).ok_or(corrupt(what))?;
        self.set_h(field, n)
    }

    /// Plans allocating `len` bytes aligned to `align` (both validated by the
    /// caller, `align` a power of two); returns the slot and generation of
    /// the new region, which is left in state "allocating".
    pub fn alloc(
        &mut self,
        len: u64,
        align: u64,
        owners: u64,
        alloc_word: u64,
    ) -> Result<(u32, u32), ShmError> {
        let size = len
            .checked_next_multiple_of(GRANULE)
            .ok_or(ShmError::TooLarge)?;
        if size > self.geo.data_len {
            return Err(ShmError::TooLarge);
        }
        let align = align.max(GRANULE);
        let spare = self.spare_slots()?;
        let hwm = self.hwm()?;
        let map = self.h(hdr::BINMAP)?;
        // Each free block sits in one list: the search visits at most `hwm`.
        let mut budget = hwm;
        let mut found = None;
        'search: for bin in bin_of(size)..64 {
            if map & (1 << bin) == 0 {
                continue;
            }
            let mut idx = self.bin_head(bin)?;
            if idx == NIL {
                return Err(corrupt("free list bitmap"));
            }
            while idx != NIL {
                budget = budget.checked_sub(1).ok_or(corrupt("free list cycle"))?;
                let b = self.block(idx)?;
                if b.state != SLOT_FREE || bin_of(b.size) != bin {
                    return Err(corrupt("free list entry"));
                }
                // Fits if the aligned start leaves room; needs a slot for
                // each of a head and a tail left over.
                if let Some(at) = b.start.checked_next_multiple_of(align)
                    && at.checked_add(size).is_some_and(|e| e <= b.end())
                {
                    let need = u64::from(at > b.start) + u64::from(at + size < b.end());
                    if need <= spare {
                        found = Some((b, at));
                        break 'search;
                    }
                }
                idx = self.free_links(idx)?.1;
            }
        }
        let (b, at) = found.ok_or(ShmError::OutOfMemory)?;
        self.unlink(&b)?;

        let mut generation = lo(self.h(hdr::NEXT_GEN)?);
        if generation == 0 {
            generation = 1;
        }
        let next_gen = match generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        self.set_h(hdr::NEXT_GEN, u64::from(next_gen))?;

        let r = b.idx;
        let (mut prev, mut next) = (b.prev_addr, b.next_addr);
        let mut new_blocks = 0;
        if at > b.start {
            let p = self.take_slot()?;
            self.new_free_block(p, b.start, at - b.start, b.prev_addr, r)?;
            if b.prev_addr != NIL {
                self.set_addr_next(b.prev_addr, p)?;
            }
            prev = p;
            new_blocks += 1;
        }
        if at + size < b.end() {
            let t = self.take_slot()?;
            self.new_free_block(t, at + size, b.end() - (at + size), r, b.next_addr)?;
            if b.next_addr != NIL {
                self.set_addr_prev(b.next_addr, t)?;
            }
            next = t;
            new_blocks += 1;
        }
        // The region's fields before its state word: a lock-free reader that
        // sees the new generation sees them too.
        self.set_s(r, slot::START, at)?;
        self.set_s(r, slot::SIZE, size)?;
        self.set_s(r, slot::LEN, len)?;
        self.set_s(r, slot::OWNERS, owners)?;
        self.set_s(r, slot::ALLOC, alloc_word)?;
        self.set_s(r, slot::ADDR, pack(next, prev))?;
        self.set_s(r, slot::FREE, pack(NIL, NIL))?;
        self.set_s(r, slot::STATE, pack(generation, SLOT_ALLOCATING))?;
        self.add_h(hdr::FREE_BYTES, -(size as i64), "pool free bytes")?;
        self.add_h(hdr::REGIONS, 1, "pool region count")?;
        self.add_h(hdr::BLOCKS, new_blocks, "pool block count")?;
        Ok((r, generation))
    }

    fn new_free_block(
        &mut self,
        idx: u32,
        start: u64,
        size: u64,
        prev: u32,
        next: u32,
    ) -> Result<(), ShmError> {
        // Length, owners and allocator mean nothing in a free block (nothing
        // reads them unless the state says region): not written.
        self.set_s(idx, slot::START, start)?;
        self.set_s(idx, slot::SIZE, size)?;
        self.set_s(idx, slot::ADDR, pack(next, prev))?;
        self.set_s(idx, slot::STATE, u64::from(SLOT_FREE))?;
        self.push_free(idx, size)
    }

    /// Plans freeing region `r` (validated by the caller), merging it with
    /// free neighbours.
    pub fn free(&mut self, r: &Block) -> Result<(), ShmError> {
        // State first: lock-free readers stop accepting the handle before
        // any other field changes.
        self.set_s(r.idx, slot::STATE, u64::from(SLOT_FREE))?;
        let (mut start, mut size) = (r.start, r.size);
        let (mut prev, mut next) = (r.prev_addr, r.next_addr);
        let mut merged = 0i64;
        if r.prev_addr != NIL {
            let p = self.block(r.prev_addr)?;
            if p.next_addr != r.idx || p.end() != r.start {
                return Err(corrupt("address-order links"));
            }
            if p.state == SLOT_FREE {
                self.unlink(&p)?;
                start = p.start;
                size += p.size;
                prev = p.prev_addr;
                self.release_slot(p.idx)?;
                merged += 1;
            }
        }
        if r.next_addr != NIL {
            let n = self.block(r.next_addr)?;
            if n.prev_addr != r.idx || r.end() != n.start {
                return Err(corrupt("address-order links"));
            }
            if n.state == SLOT_FREE {
                self.unlink(&n)?;
                size += n.size;
                next = n.next_addr;
                self.release_slot(n.idx)?;
                merged += 1;
            }
        }
        self.set_s(r.idx, slot::START, start)?;
        self.set_s(r.idx, slot::SIZE, size)?;
        self.set_s(r.idx, slot::ADDR, pack(next, prev))?;
        if prev != NIL {
            self.set_addr_next(prev, r.idx)?;
        }
        if next != NIL {
            self.set_addr_prev(next, r.idx)?;
        }
        self.push_free(r.idx, size)?;
        let free = self.h(hdr::FREE_BYTES)?;
        match free.checked_add(r.size) {
            Some(f) if f <= self.geo.data_len => self.set_h(hdr::FREE_BYTES, f)?,
            _ => return Err(corrupt("pool free bytes")),
        }
        self.add_h(hdr::REGIONS, -1, "pool region count")?;
        self.add_h(hdr::BLOCKS, -merged, "pool block count")
    }

    /// Size of the largest free block (walks the highest non-empty list).
    pub fn largest_free(&self) -> Result<u64, ShmError> {
        let map = self.h(hdr::BINMAP)?;
        if map == 0 {
            return Ok(0);
        }
        let bin = 63 - map.leading_zeros();
        let mut idx = self.bin_head(bin)?;
        let mut budget = self.hwm()?;
        let mut best = 0;
        while idx != NIL {
            budget = budget.checked_sub(1).ok_or(corrupt("free list cycle"))?;
            let b = self.block(idx)?;
            if b.state != SLOT_FREE {
                return Err(corrupt("free list entry"));
            }
            best = best.max(b.size);
            idx = self.free_links(idx)?.1;
        }
        Ok(best)
    }

    /// The header counters: (free bytes, regions, blocks), range-checked.
    pub fn counters(&self) -> Result<(u64, u64, u64), ShmError> {
        let free = self.h(hdr::FREE_BYTES)?;
        let regions = self.h(hdr::REGIONS)?;
        let blocks = self.h(hdr::BLOCKS)?;
        if free > self.geo.data_len || blocks > self.hwm()? || regions > blocks {
            return Err(corrupt("pool counters"));
        }
        Ok((free, regions, blocks))
    }
}

/// Writes the header words and slot 0 of a fresh pool: one free block.
///
/// Direct stores, no journal: the directory entry still says "creating", so
/// nobody looks at the pool, and a creator that dies is rolled back whole.
pub(crate) fn format_pool(
    region: Region<'_>,
    geo: &Geometry,
    next_gen: u32,
) -> Result<(), ShmError> {
    let store = |off: usize, v: u64| -> Result<(), ShmError> {
        region.atomic_u64(off)?.store(v, Ordering::Relaxed);
        Ok(())
    };
    let bin = bin_of(geo.data_len);
    for b in 0..64u32 {
        let head = if b == bin { 0 } else { u64::from(NIL) };
        store(geo.hdr(hdr::BINS + 8 * u64::from(b))?, head)?;
    }
    for (field, v) in [
        (hdr::JOURNAL, 0),
        (hdr::HWM, 1),
        (hdr::UNUSED, u64::from(NIL)),
        (hdr::FREE_BYTES, geo.data_len),
        (hdr::REGIONS, 0),
        (hdr::BLOCKS, 1),
        (hdr::NEXT_GEN, u64::from(next_gen.max(1))),
        (hdr::BINMAP, 1 << bin),
        (hdr::TAG, geo.tag()),
    ] {
        store(geo.hdr(field)?, v)?;
    }
    for (field, v) in [
        (slot::START, geo.data_off),
        (slot::SIZE, geo.data_len),
        (slot::LEN, 0),
        (slot::OWNERS, 0),
        (slot::ALLOC, 0),
        (slot::ADDR, pack(NIL, NIL)),
        (slot::FREE, pack(NIL, NIL)),
        (slot::STATE, u64::from(SLOT_FREE)),
    ] {
        store(geo.slot(0, field)?, v)?;
    }
    Ok(())
}
