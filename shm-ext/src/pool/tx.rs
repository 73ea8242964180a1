//! Redo-journalled transactions over a pool's metadata words.
//!
//! An operation plans all its word writes into a `Tx` (reads see the planned
//! values), then commits: the writes go to the pool's journal, one store of
//! the journal word marks them committed, then they are applied in planning
//! order and the journal word is cleared. The values are absolute, so
//! replaying a committed journal over a partly applied one is harmless: a node
//! that dies anywhere leaves either nothing applied (journal not committed:
//! discard) or a journal to replay (committed).

use core::sync::atomic::Ordering;

use super::fault;
use super::layout::{Geometry, JOURNAL_CAP, JOURNAL_MAGIC, hdr, to_usize};
use crate::error::ShmError;
use crate::region::Region;

/// Planned writes: device offset and value.
pub(crate) struct Tx<'a> {
    region: Region<'a>,
    writes: [(usize, u64); JOURNAL_CAP],
    len: usize,
    /// By hash of the offset: 1 + position of the last write with that hash,
    /// 0 for none. Lookups are O(1) unless two planned words share a hash.
    index: [u8; 256],
}

fn hash(off: usize) -> usize {
    ((off as u64 / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

impl<'a> Tx<'a> {
    /// An empty transaction.
    pub fn new(region: Region<'a>) -> Self {
        Self {
            region,
            writes: [(0, 0); JOURNAL_CAP],
            len: 0,
            index: [0; 256],
        }
    }

    /// The word at `off`, as it will be after the planned writes.
    pub fn get(&self, off: usize) -> Result<u64, ShmError> {
        if let Some(i) = self.find(off) {
            return Ok(self.writes[i].1);
        }
        Ok(self.region.atomic_u64(off)?.load(Ordering::Acquire))
    }

    /// Position of the planned write to `off`, if any.
    fn find(&self, off: usize) -> Option<usize> {
        match usize::from(self.index[hash(off)]) {
            0 => None,
            p if self.writes[p - 1].0 == off => Some(p - 1),
            // Another word with the same hash: search.
            _ => self.planned().iter().position(|w| w.0 == off),
        }
    }

    /// Plans writing `v` at `off`. A word written twice keeps its first
    /// place in the order (callers write state words first or last on purpose).
    pub fn set(&mut self, off: usize, v: u64) -> Result<(), ShmError> {
        let len = self.len;
        if let Some(i) = self.find(off) {
            self.writes[i].1 = v;
            return Ok(());
        }
        if len == JOURNAL_CAP {
            return Err(ShmError::Corrupt {
                what: "allocator journal overflow",
            });
        }
        // Check the word now, so applying can never fail half-way.
        self.region.atomic_u64(off)?;
        self.writes[len] = (off, v);
        self.len += 1;
        // JOURNAL_CAP <= 255, so the position fits.
        self.index[hash(off)] = self.len as u8;
        Ok(())
    }

    fn planned(&self) -> &[(usize, u64)] {
        &self.writes[..self.len]
    }

    /// Journals, marks committed, applies and clears (the caller holds the pool lock).
    pub fn commit(&self, geo: &Geometry) -> Result<(), ShmError> {
        if self.len == 0 {
            return Ok(());
        }
        let word = self.region.atomic_u64(geo.hdr(hdr::JOURNAL)?)?;
        let entries = geo.hdr(hdr::JOURNAL_ENTRIES)?;
        let base = to_usize(geo.ext_off)?;
        for (i, &(off, v)) in self.planned().iter().enumerate() {
            let e = entries + 16 * i;
            let rel = (off - base) as u64;
            self.region.atomic_u64(e)?.store(rel, Ordering::Relaxed);
            self.region.atomic_u64(e + 8)?.store(v, Ordering::Relaxed);
            fault::point();
        }
        // Release: the entries are visible to whoever sees the mark.
        word.store((JOURNAL_MAGIC << 32) | self.len as u64, Ordering::Release);
        fault::point();
        apply(self.region, self.planned())?;
        word.store(0, Ordering::Release);
        fault::point();
        Ok(())
    }
}

/// Stores the writes in order; each one is a release so lock-free readers that
/// see a later word also see the earlier ones (state words are ordered by
/// the planner).
fn apply(region: Region<'_>, writes: &[(usize, u64)]) -> Result<(), ShmError> {
    for &(off, v) in writes {
        region.atomic_u64(off)?.store(v, Ordering::Release);
        fault::point();
    }
    Ok(())
}

/// What `heal` found in a pool's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Healed {
    /// The journal was empty.
    Clean,
    /// A committed journal was replayed.
    Replayed,
}

/// Replays a committed journal left by a holder that died (the caller holds
/// the pool lock). A damaged journal is cleared and reported as `Corrupt`.
pub(crate) fn heal(region: Region<'_>, geo: &Geometry) -> Result<Healed, ShmError> {
    let word = region.atomic_u64(geo.hdr(hdr::JOURNAL)?)?;
    let w = word.load(Ordering::Acquire);
    if w == 0 {
        return Ok(Healed::Clean);
    }
    let result = replay(region, geo, w);
    // Cleared either way: a damaged journal cannot be replayed later either.
    word.store(0, Ordering::Release);
    fault::point();
    result.map(|()| Healed::Replayed)
}

fn replay(region: Region<'_>, geo: &Geometry, w: u64) -> Result<(), ShmError> {
    let corrupt = ShmError::Corrupt {
        what: "pool journal",
    };
    let count = (w & 0xffff_ffff) as usize;
    if w >> 32 != JOURNAL_MAGIC || count > JOURNAL_CAP {
        return Err(corrupt);
    }
    let entries = geo.hdr(hdr::JOURNAL_ENTRIES)?;
    let mut writes = [(0usize, 0u64); JOURNAL_CAP];
    // Validate every entry before applying any.
    for (i, w) in writes.iter_mut().enumerate().take(count) {
        let e = entries + 16 * i;
        let rel = region.atomic_u64(e)?.load(Ordering::Relaxed);
        let v = region.atomic_u64(e + 8)?.load(Ordering::Relaxed);
        if !geo.journal_may_write(rel) {
            return Err(corrupt);
        }
        *w = (geo.hdr(rel)?, v);
    }
    apply(region, &writes[..count])
}
