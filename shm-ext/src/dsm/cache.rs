//! The local RAM cache: this node's copies of global pages, with their
//! attributes (version tag, dirty bit, volatile bit, rights, ownership).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;

use super::addr::{GlobalAddr, PAGE_BYTES};

/// One page of bytes, page-aligned so a kernel can map the frame itself.
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct PageBuf(pub [u8; PAGE_BYTES]);

impl PageBuf {
    /// A page of zeros (on the heap: 4 KiB is too much for small stacks).
    pub fn zeroed() -> Box<Self> {
        Box::new(Self([0; PAGE_BYTES]))
    }
}

impl core::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // 4 KiB of bytes helps nobody in a log: show a digest.
        let sum = self.0.iter().fold(0u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        write!(f, "PageBuf({sum:#018x})")
    }
}

/// What this node may do with its copy of a page.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum Rights {
    /// No access: not cached, or invalidated.
    None,
    /// Read-only copy (shared with other readers).
    Read,
    /// Read-write: the single writer, and the owner.
    Write,
}

/// A cached page and its attributes.
#[derive(Debug)]
pub struct CacheEntry {
    /// The page bytes.
    pub data: Box<PageBuf>,
    /// Version tag: the number of ownership transfers for writing the
    /// page has seen (the responsible node counts them).
    pub version: u64,
    /// Access rights this node holds.
    pub rights: Rights,
    /// True if this node is the page's owner (it serves copies).
    pub owner: bool,
    /// True once the page may have been written here since it arrived.
    pub dirty: bool,
    /// True while the disks may not hold this content (set on a write,
    /// cleared when a write-back of it is acknowledged).
    pub volatile: bool,
    /// Write-backs of this version so far (the `seq` of its stamps).
    pub seq: u64,
    /// When it entered the cache (engine counter), for choosing victims.
    pub age: u64,
}

/// The cache, indexed by page global address.
#[derive(Debug, Default)]
pub struct PageCache {
    entries: BTreeMap<GlobalAddr, CacheEntry>,
}

impl PageCache {
    /// The entry for `page`, if cached.
    pub fn get(&self, page: GlobalAddr) -> Option<&CacheEntry> {
        self.entries.get(&page)
    }

    /// The entry for `page`, mutable.
    pub fn get_mut(&mut self, page: GlobalAddr) -> Option<&mut CacheEntry> {
        self.entries.get_mut(&page)
    }

    /// Stores `entry` for `page`, replacing any old one.
    pub fn insert(&mut self, page: GlobalAddr, entry: CacheEntry) {
        self.entries.insert(page, entry);
    }

    /// Removes and returns the entry for `page`.
    pub fn remove(&mut self, page: GlobalAddr) -> Option<CacheEntry> {
        self.entries.remove(&page)
    }

    /// The rights held on `page` (`None` if not cached).
    pub fn rights(&self, page: GlobalAddr) -> Rights {
        self.entries.get(&page).map_or(Rights::None, |e| e.rights)
    }

    /// Cached pages in address order.
    pub fn iter(&self) -> impl Iterator<Item = (&GlobalAddr, &CacheEntry)> {
        self.entries.iter()
    }

    /// Number of cached pages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
