//! Global addresses: 128-bit, in 4 KiB pages, unrelated to any node's
//! physical or virtual addresses; and the generator that hands out ranges.
//!
//! The space is split in two:
//!
//! | addresses                         | holds                                                  |
//! |-----------------------------------|--------------------------------------------------------|
//! | `0 .. 2^64`                       | directory pages; the root at 0; node `n` makes its directory pages in `n * 2^57 ..` |
//! | `2^64 .. 2^128`                   | data ranges; node `n` hands out from `2^64 + n * 2^121 ..` |
//!
//! Each node generates from its own slice, so creating a range needs no
//! coordination before the directory insert.

use core::fmt;

use super::error::DsmError;

/// Bytes in a DSM page.
pub const PAGE_SIZE: u128 = 4096;
/// Bytes in a DSM page, as a `usize` for buffers.
pub const PAGE_BYTES: usize = 4096;
/// First address of the data space; directory pages live below it.
pub const DATA_SPACE_START: u128 = 1 << 64;
/// Size of each node's slice of the data space.
pub const DATA_SLICE: u128 = 1 << 121;
/// Size of each node's slice of the directory space.
pub const DIRECTORY_SLICE: u128 = 1 << 57;
/// The well-known address of the root directory page.
pub const ROOT_DIRECTORY: GlobalAddr = GlobalAddr(0);
/// Most nodes a cluster has (node sets are 64-bit masks).
pub const MAX_NODES: u16 = 64;
/// "No node": a directory entry whose range has no responsible node.
pub const NO_NODE: u16 = u16::MAX;

/// A byte address in the 128-bit global space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct GlobalAddr(pub u128);

impl GlobalAddr {
    /// True if the address is the first byte of a page.
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }

    /// The page holding this address.
    pub const fn page(self) -> GlobalAddr {
        GlobalAddr(self.0 - self.0 % PAGE_SIZE)
    }

    /// The byte offset of this address in its page.
    pub const fn offset_in_page(self) -> usize {
        (self.0 % PAGE_SIZE) as usize
    }

    /// `self + n`, or `None` past the end of the space.
    pub const fn checked_add(self, n: u128) -> Option<GlobalAddr> {
        match self.0.checked_add(n) {
            Some(v) => Some(GlobalAddr(v)),
            None => None,
        }
    }

    /// True for addresses of directory pages (below the data space).
    pub const fn in_directory_space(self) -> bool {
        self.0 < DATA_SPACE_START
    }

    /// The node whose slice of the directory space holds this directory
    /// page, and which is therefore its responsible node; the root's is 0.
    pub const fn directory_slice_node(self) -> Option<u16> {
        if !self.in_directory_space() {
            return None;
        }
        Some((self.0 / DIRECTORY_SLICE) as u16)
    }

    /// The node whose slice of the data space holds this address (whose
    /// generator hands it out).
    pub const fn data_slice_node(self) -> Option<u16> {
        if self.in_directory_space() {
            return None;
        }
        Some(((self.0 - DATA_SPACE_START) / DATA_SLICE) as u16)
    }
}

impl fmt::Display for GlobalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{:#x}", self.0)
    }
}

/// A non-empty run of whole pages: `start ..= last`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct GlobalRange {
    start: GlobalAddr,
    last: GlobalAddr,
}

impl GlobalRange {
    /// The range of `len` bytes at `start`; both whole pages, `len > 0`,
    /// not past the end of the space.
    pub fn new(start: GlobalAddr, len: u128) -> Result<Self, DsmError> {
        if !start.is_page_aligned() || len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(DsmError::Unaligned);
        }
        let last = start.0.checked_add(len - 1).ok_or(DsmError::OutOfRange)?;
        Ok(Self {
            start,
            last: GlobalAddr(last),
        })
    }

    /// The range `first ..= last` (inclusive, as directory entries store it).
    pub fn from_bounds(first: GlobalAddr, last: GlobalAddr) -> Result<Self, DsmError> {
        if !first.is_page_aligned() || last.0 % PAGE_SIZE != PAGE_SIZE - 1 || last < first {
            return Err(DsmError::Unaligned);
        }
        Ok(Self { start: first, last })
    }

    /// First byte.
    pub const fn start(&self) -> GlobalAddr {
        self.start
    }

    /// Last byte (inclusive; the range may end at the top of the space).
    pub const fn last(&self) -> GlobalAddr {
        self.last
    }

    /// Number of pages.
    pub const fn pages(&self) -> u128 {
        (self.last.0 - self.start.0) / PAGE_SIZE + 1
    }

    /// True if `addr` lies in the range.
    pub const fn contains(&self, addr: GlobalAddr) -> bool {
        self.start.0 <= addr.0 && addr.0 <= self.last.0
    }

    /// The address of page `i` of the range, if it has one.
    pub fn page(&self, i: u128) -> Option<GlobalAddr> {
        let a = self.start.0.checked_add(i.checked_mul(PAGE_SIZE)?)?;
        (a <= self.last.0).then_some(GlobalAddr(a))
    }
}

/// Which part of the space a generator hands out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Space {
    /// Data ranges (`dsm_alloc`).
    Data,
    /// Directory pages (the linker's page generator).
    Directory,
}

/// Hands out page-aligned ranges from one node's slice, by bumping.
///
/// Policy: addresses are never reused. A freed range's addresses stay dead
/// for the life of the slice (2^121 bytes per node for data), so a late
/// message or a stale copy naming a freed page can never be taken for a
/// page of a newer range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AddressGenerator {
    next: u128,
    last: u128,
}

impl AddressGenerator {
    /// The generator for node `node`'s slice of `space`, from its start.
    pub fn new(node: u16, space: Space) -> Result<Self, DsmError> {
        if node >= MAX_NODES {
            return Err(DsmError::NoSuchNode);
        }
        let n = u128::from(node);
        let (start, size) = match space {
            Space::Data => (DATA_SPACE_START + n * DATA_SLICE, DATA_SLICE),
            Space::Directory => (n * DIRECTORY_SLICE, DIRECTORY_SLICE),
        };
        // The root directory page sits at 0, in node 0's directory slice.
        let next = if start == ROOT_DIRECTORY.0 {
            PAGE_SIZE
        } else {
            start
        };
        Ok(Self {
            next,
            last: start + (size - 1),
        })
    }

    /// A generator that resumes at `next` (a value from [`Self::next`]
    /// saved earlier), so a restarted node does not hand out used addresses.
    pub fn resume(node: u16, space: Space, next: GlobalAddr) -> Result<Self, DsmError> {
        let mut g = Self::new(node, space)?;
        if !next.is_page_aligned() {
            return Err(DsmError::Unaligned);
        }
        if next.0 < g.next || next.0 > g.last.saturating_add(1) {
            return Err(DsmError::OutOfRange);
        }
        g.next = next.0;
        Ok(g)
    }

    /// The next address this generator would hand out.
    pub const fn next(&self) -> GlobalAddr {
        GlobalAddr(self.next)
    }

    /// A fresh range of `len` bytes (a whole number of pages, > 0).
    pub fn allocate(&mut self, len: u128) -> Result<GlobalRange, DsmError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(DsmError::Unaligned);
        }
        let last = self.next.checked_add(len - 1).ok_or(DsmError::Exhausted)?;
        if last > self.last {
            return Err(DsmError::Exhausted);
        }
        let r = GlobalRange::new(GlobalAddr(self.next), len)?;
        // Every slice ends below 2^128, so this cannot overflow.
        self.next = last + 1;
        Ok(r)
    }
}
