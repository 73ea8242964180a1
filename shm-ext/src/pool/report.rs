//! Pools and regions as plain values for the inspector (`Snapshot`).
//!
//! Read without taking any lock (the inspector must never wedge the
//! cluster, nor be wedged by it), so a pool changing during the read may show
//! a transient error; a pool whose lock is held then reports `Busy`.

use core::fmt;
use core::sync::atomic::Ordering;

use super::allocator::Alloc;
use super::layout::{
    ENTRY_CREATING, ENTRY_DESTROYING, ENTRY_EMPTY, ENTRY_READY, HEAP_BLANK, HEAP_MAGIC, HEAP_READY,
    MAX_POOLS, POOLS_OFFSET, SLOT_ALLOCATED, SLOT_ALLOCATING, dir, heap, slot, to_usize,
};
use super::tx::Tx;
use super::{PoolId, PoolStat, RegionHandle, RegionState, read_entry, stat_of};
use crate::error::ShmError;
use crate::shm::{NodeSet, Shm};

/// Most regions a report lists (the total is counted regardless).
pub const MAX_REPORTED_REGIONS: usize = 256;

/// One directory entry in use: its stat, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct PoolReport {
    /// Directory index and generation.
    pub id: PoolId,
    /// The stat, when the pool validated.
    pub stat: Option<PoolStat>,
    /// Why it did not (`Busy` while being created, destroyed or changed).
    pub error: Option<ShmError>,
}

/// One allocated region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct RegionReport {
    /// Its handle.
    pub handle: RegionHandle,
    /// Directory index of its pool.
    pub pool: u8,
    /// Device offset.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
    /// Bytes reserved (the length rounded up to 64).
    pub reserved: u64,
    /// Owner set (empty = shared).
    pub owners: NodeSet,
    /// Settled, or inside `shm_alloc`.
    pub state: RegionState,
    /// Allocating node.
    pub allocated_by: u16,
}

/// The pool directory and the regions in it (fixed capacity, no allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolsReport {
    /// Whether the heap has been initialised for pools.
    pub initialised: bool,
    /// Why the heap could not be read, if it could not.
    pub error: Option<ShmError>,
    pools: [PoolReport; MAX_POOLS],
    pools_len: usize,
    regions: [RegionReport; MAX_REPORTED_REGIONS],
    regions_len: usize,
    /// Regions found in all pools (may exceed the listed ones).
    pub regions_total: u64,
}

const NO_POOL: PoolReport = PoolReport {
    id: PoolId {
        index: 0,
        generation: 0,
    },
    stat: None,
    error: None,
};

const NO_REGION: RegionReport = RegionReport {
    handle: RegionHandle(0),
    pool: 0,
    offset: 0,
    len: 0,
    reserved: 0,
    owners: NodeSet(0),
    state: RegionState::Allocated,
    allocated_by: 0,
};

impl PoolsReport {
    fn empty() -> Self {
        Self {
            initialised: false,
            error: None,
            pools: [NO_POOL; MAX_POOLS],
            pools_len: 0,
            regions: [NO_REGION; MAX_REPORTED_REGIONS],
            regions_len: 0,
            regions_total: 0,
        }
    }

    /// The directory entries in use, in index order.
    pub fn pools(&self) -> &[PoolReport] {
        self.pools.get(..self.pools_len).unwrap_or(&[])
    }

    /// The listed regions, in pool then slot order.
    pub fn regions(&self) -> &[RegionReport] {
        self.regions.get(..self.regions_len).unwrap_or(&[])
    }

    fn push_pool(&mut self, p: PoolReport) {
        if let Some(slot) = self.pools.get_mut(self.pools_len) {
            *slot = p;
            self.pools_len += 1;
        }
    }

    fn push_region(&mut self, r: RegionReport) {
        self.regions_total += 1;
        if let Some(slot) = self.regions.get_mut(self.regions_len) {
            *slot = r;
            self.regions_len += 1;
        }
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for PoolsReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct View<'r> {
            initialised: bool,
            error: Option<ShmError>,
            pools: &'r [PoolReport],
            regions: &'r [RegionReport],
            regions_total: u64,
        }
        View {
            initialised: self.initialised,
            error: self.error,
            pools: self.pools(),
            regions: self.regions(),
            regions_total: self.regions_total,
        }
        .serialize(s)
    }
}

/// Reads the pool directory and every pool's regions, without locking.
pub fn report(shm: &Shm<'_>) -> PoolsReport {
    let mut r = PoolsReport::empty();
    if let Err(e) = fill(shm, &mut r) {
        r.error = Some(e);
    }
    r
}

/// Checks the heap is initialised for pools: `false` for a blank heap.
fn heap_ready(shm: &Shm<'_>) -> Result<bool, ShmError> {
    let region = shm.region();
    let heap_area = shm.superblock().layout.heap;
    if heap_area.len <= POOLS_OFFSET {
        return Err(ShmError::TooSmall);
    }
    let base = to_usize(heap_area.offset)?;
    match region
        .atomic_u64(base + heap::INIT)?
        .load(Ordering::Acquire)
    {
        HEAP_BLANK => return Ok(false),
        HEAP_READY => {}
        v if super::is_stamp(v) => return Err(ShmError::NotInitialized),
        _ => {
            return Err(ShmError::Corrupt {
                what: "pool heap init word",
            });
        }
    }
    let mut magic = [0u8; 8];
    region.read_bytes(base + heap::MAGIC, &mut magic)?;
    if magic != HEAP_MAGIC {
        return Err(ShmError::Corrupt {
            what: "pool heap magic",
        });
    }
    Ok(true)
}

/// Visits every region of the ready pool called `name`, read without
/// locking as [`report`] reads them (no limit on their number); returns
/// the pool's stat. `NoSuchPool` if no ready pool has that name.
pub fn pool_regions(
    shm: &Shm<'_>,
    name: &str,
    visit: &mut dyn FnMut(RegionReport),
) -> Result<PoolStat, ShmError> {
    let want = super::PoolName::new(name)?;
    if !heap_ready(shm)? {
        return Err(ShmError::NoSuchPool);
    }
    let heap_area = shm.superblock().layout.heap;
    for i in 0..MAX_POOLS as u8 {
        let Ok(e) = read_entry(shm.region(), heap_area, i, true) else {
            continue;
        };
        if e.state != ENTRY_READY || super::PoolName::from_raw(&e.name) != Ok(want) {
            continue;
        }
        return read_pool(shm, &e, visit);
    }
    Err(ShmError::NoSuchPool)
}

fn fill(shm: &Shm<'_>, r: &mut PoolsReport) -> Result<(), ShmError> {
    let region = shm.region();
    let heap_area = shm.superblock().layout.heap;
    if !heap_ready(shm)? {
        return Ok(());
    }
    let base = to_usize(heap_area.offset)?;
    r.initialised = true;
    for i in 0..MAX_POOLS as u8 {
        let e = match read_entry(region, heap_area, i, false) {
            Ok(e) => e,
            Err(error) => {
                r.push_pool(PoolReport {
                    id: PoolId {
                        index: i,
                        generation: 0,
                    },
                    stat: None,
                    error: Some(error),
                });
                continue;
            }
        };
        let id = PoolId {
            index: i,
            generation: e.generation,
        };
        let result = match e.state {
            ENTRY_EMPTY => continue,
            ENTRY_READY => read_pool(shm, &e, &mut |region| r.push_region(region)),
            ENTRY_CREATING | ENTRY_DESTROYING => Err(ShmError::Busy),
            _ => Err(ShmError::Corrupt {
                what: "pool entry state",
            }),
        };
        let locked = region
            .atomic_u64(
                base + to_usize(super::DIR_OFFSET + u64::from(i) * super::DIR_ENTRY_LEN)?
                    + dir::LOCK,
            )
            .is_ok_and(|w| w.load(Ordering::Acquire) != 0);
        let (stat, error) = match result {
            Ok(s) => (Some(s), None),
            // Metadata read mid-change looks damaged: say busy instead.
            Err(ShmError::Corrupt { .. }) if locked => (None, Some(ShmError::Busy)),
            Err(e) => (None, Some(e)),
        };
        r.push_pool(PoolReport { id, stat, error });
    }
    Ok(())
}

fn read_pool(
    shm: &Shm<'_>,
    e: &super::Entry,
    visit: &mut dyn FnMut(RegionReport),
) -> Result<PoolStat, ShmError> {
    let region = shm.region();
    let geo = e.geometry(shm.superblock().layout.heap)?;
    super::check_tag(region, &geo)?;
    let stat = stat_of(region, shm.superblock().layout.heap, e, &geo)?;
    let mut tx = Tx::new(region);
    let a = Alloc::new(geo, &mut tx)?;
    for idx in 0..a.hwm()? as u32 {
        let st = region
            .atomic_u64(geo.slot(idx, slot::STATE)?)?
            .load(Ordering::Acquire);
        let state = match st as u32 {
            SLOT_ALLOCATED => RegionState::Allocated,
            SLOT_ALLOCATING => RegionState::Allocating,
            _ => continue,
        };
        let b = a.block(idx)?;
        visit(RegionReport {
            handle: RegionHandle::new(e.index, idx, (st >> 32) as u32),
            pool: e.index,
            offset: b.start,
            len: b.len,
            reserved: b.size,
            owners: NodeSet(b.owners),
            state,
            allocated_by: b.alloc as u16,
        });
    }
    Ok(stat)
}

impl fmt::Display for PoolsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = self.error {
            return writeln!(f, "pools: unreadable: {e}");
        }
        if !self.initialised {
            return writeln!(f, "pools: none (heap not initialised)");
        }
        writeln!(f, "pools ({}):", self.pools().len())?;
        if !self.pools().is_empty() {
            writeln!(
                f,
                "  {:>3}  {:<32}  {:>10}  {:>10}  {:>10}  {:>7}",
                "idx", "name", "size KiB", "free KiB", "largest KiB", "regions"
            )?;
        }
        for p in self.pools() {
            match (p.stat, p.error) {
                (Some(s), _) => writeln!(
                    f,
                    "  {:>3}  {:<32}  {:>10}  {:>10}  {:>10}  {:>7}",
                    p.id.index,
                    s.name,
                    s.size / 1024,
                    s.free / 1024,
                    s.largest_free / 1024,
                    s.regions
                )?,
                (None, Some(e)) => writeln!(f, "  {:>3}  unreadable: {e}", p.id.index)?,
                (None, None) => {}
            }
        }
        if self.regions_total == 0 {
            return Ok(());
        }
        let listed = self.regions().len() as u64;
        if self.regions_total > listed {
            writeln!(
                f,
                "regions ({}, first {listed} listed):",
                self.regions_total
            )?;
        } else {
            writeln!(f, "regions ({}):", self.regions_total)?;
        }
        writeln!(
            f,
            "  {:<18}  {:>4}  {:>12}  {:>10}  {:<10}  {:>4}  owners",
            "handle", "pool", "offset", "len", "state", "by"
        )?;
        for r in self.regions() {
            let state = match r.state {
                RegionState::Allocated => "allocated",
                RegionState::Allocating => "allocating",
            };
            let owners = if r.owners.is_empty() { "shared" } else { "" };
            write!(
                f,
                "  {}  {:>4}  {:#12x}  {:>10}  {:<10}  {:>4}  {owners}",
                r.handle, r.pool, r.offset, r.len, state, r.allocated_by
            )?;
            if !r.owners.is_empty() {
                write!(f, "{}", r.owners)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
