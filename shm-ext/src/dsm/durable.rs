//! What the DSM needs from a node's disk: a block device ([`BlockDevice`],
//! implemented by the kernel's virtio-blk driver and by host test doubles)
//! and a durable page store on top of it ([`Disk`], implemented by the
//! on-disk format in [`store`](super::store) and by [`MemDisk`] in tests).
//!
//! The engine calls a `Disk` synchronously while it handles an event: a
//! node's disk is local, and a write that returns is on the device.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;

use super::addr::GlobalAddr;
use super::cache::PageBuf;

/// Bytes of one block of a [`BlockDevice`] (one DSM page).
pub const BLOCK_BYTES: usize = 4096;

/// A failure of the disk underneath the DSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// The device reported an I/O error (or is gone).
    Io,
    /// A block number past the end of the device.
    OutOfRange,
    /// No free block is left for a new page.
    Full,
    /// A stored page failed its checksum: it is refused, not returned.
    BadPage,
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Io => "disk I/O error",
            Self::OutOfRange => "block past the end of the disk",
            Self::Full => "disk full",
            Self::BadPage => "stored page failed its checksum",
        })
    }
}

/// A device of 4 KiB blocks (virtio-blk in the kernel, a file or a `Vec`
/// on the host).
pub trait BlockDevice {
    /// Number of whole 4 KiB blocks.
    fn blocks(&self) -> u64;
    /// Reads block `n`.
    fn read_block(&mut self, n: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), DiskError>;
    /// Writes block `n` (in the device's cache until [`flush`](Self::flush)).
    fn write_block(&mut self, n: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), DiskError>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), DiskError>;
}

/// Orders the durable copies of one page: `version` is the page's version
/// tag (ownership transfers for writing), `seq` counts the owner's
/// write-backs within that version. The greater stamp is the newer copy.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Stamp {
    /// The page's version tag.
    pub version: u64,
    /// Write-backs within the version.
    pub seq: u64,
}

/// A node's durable page store, as the engine uses it.
pub trait Disk {
    /// The stored copy of `page` and its stamp; `Ok(None)` if none is
    /// stored. A copy that fails its checksum is `Err(BadPage)` and is
    /// forgotten.
    fn load(&mut self, page: GlobalAddr) -> Result<Option<(Stamp, Box<PageBuf>)>, DiskError>;
    /// The stamp of the stored copy of `page`, without reading it.
    fn stamp(&self, page: GlobalAddr) -> Option<Stamp>;
    /// Stores `data` as `page`'s copy with `stamp`, replacing an older
    /// one; a copy with an older stamp than the stored one is ignored.
    fn save(&mut self, page: GlobalAddr, stamp: Stamp, data: &PageBuf) -> Result<(), DiskError>;
    /// Forgets `page` (its range was freed).
    fn remove(&mut self, page: GlobalAddr) -> Result<(), DiskError>;
    /// Makes every save so far durable.
    fn sync(&mut self) -> Result<(), DiskError>;
    /// Pages that can still be saved.
    fn free_pages(&self) -> u64;
    /// Every stored page and its stamp, in address order.
    fn pages(&self) -> alloc::vec::Vec<(GlobalAddr, Stamp)>;
    /// How many pages are stored (without listing them).
    fn stored(&self) -> u64;
    /// Up to `max` stored pages after `after` (from the start if `None`),
    /// in address order.
    fn pages_after(&self, after: Option<GlobalAddr>, max: usize) -> alloc::vec::Vec<GlobalAddr> {
        self.pages()
            .into_iter()
            .map(|(a, _)| a)
            .filter(|&a| after.is_none_or(|b| a > b))
            .take(max)
            .collect()
    }
}

/// A [`Disk`] in RAM, for tests and simulations (a node that loses its
/// disk drops it).
#[derive(Debug, Default)]
pub struct MemDisk {
    pages: BTreeMap<GlobalAddr, (Stamp, Box<PageBuf>)>,
    /// Pages it may hold (`u64::MAX`: unbounded).
    pub capacity: u64,
    /// Saves so far.
    pub saves: u64,
}

impl MemDisk {
    /// A disk holding up to `capacity` pages.
    pub fn new(capacity: u64) -> Self {
        Self {
            pages: BTreeMap::new(),
            capacity,
            saves: 0,
        }
    }
}

impl Disk for MemDisk {
    fn load(&mut self, page: GlobalAddr) -> Result<Option<(Stamp, Box<PageBuf>)>, DiskError> {
        Ok(self.pages.get(&page).map(|(s, d)| (*s, d.clone())))
    }

    fn stamp(&self, page: GlobalAddr) -> Option<Stamp> {
        self.pages.get(&page).map(|(s, _)| *s)
    }

    fn save(&mut self, page: GlobalAddr, stamp: Stamp, data: &PageBuf) -> Result<(), DiskError> {
        let full = self.pages.len() as u64 >= self.capacity;
        match self.pages.get_mut(&page) {
            Some((s, _)) if *s > stamp => Ok(()),
            Some((s, d)) => {
                *s = stamp;
                d.0.copy_from_slice(&data.0);
                self.saves += 1;
                Ok(())
            }
            None if full => Err(DiskError::Full),
            None => {
                self.pages.insert(page, (stamp, Box::new(data.clone())));
                self.saves += 1;
                Ok(())
            }
        }
    }

    fn remove(&mut self, page: GlobalAddr) -> Result<(), DiskError> {
        self.pages.remove(&page);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        Ok(())
    }

    fn free_pages(&self) -> u64 {
        self.capacity.saturating_sub(self.pages.len() as u64)
    }

    fn stored(&self) -> u64 {
        self.pages.len() as u64
    }

    fn pages(&self) -> alloc::vec::Vec<(GlobalAddr, Stamp)> {
        self.pages.iter().map(|(a, (s, _))| (*a, *s)).collect()
    }

    fn pages_after(&self, after: Option<GlobalAddr>, max: usize) -> alloc::vec::Vec<GlobalAddr> {
        keys_after(&self.pages, after, max)
    }
}

/// Up to `max` keys of `index` after `after` (from the start if `None`), in
/// order: [`Disk::pages_after`] for stores that index their pages.
pub fn keys_after<V>(
    index: &BTreeMap<GlobalAddr, V>,
    after: Option<GlobalAddr>,
    max: usize,
) -> alloc::vec::Vec<GlobalAddr> {
    use core::ops::Bound;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    index
        .range((from, Bound::Unbounded))
        .map(|(a, _)| *a)
        .take(max)
        .collect()
}
