//! DSM reports: what one node's DSM holds (the ranges it is responsible
//! for, the owner and copyset of their touched pages, the directory pages
//! it has copies of), encoded so that its kernel can publish it on the
//! shared memory device and the host (`shmos inspect`) can read it there.
//!
//! The engine's state lives in the nodes' RAM, out of the host's sight;
//! each kernel publishes a [`NodeReport`] into a region of its own in the
//! well-known pool [`REPORT_POOL`] (one region of [`REGION_BYTES`] per
//! node, owned by that node alone, so a dead node's report goes with the
//! recovery of its regions). [`NodeReport::gather`] builds a report from an
//! [`Engine`]; [`write_region`] and [`read_region`] move it in and out of a
//! region; [`NodeReport::decode`] is the trust boundary: a report is
//! checked field by field, and a damaged one is a named
//! [`ShmError::Corrupt`], never a panic.
//!
//! # The region (little-endian)
//!
//! | offset | size | field    | value                                                      |
//! |-------:|-----:|----------|------------------------------------------------------------|
//! |      0 |    8 | sequence lock | odd while the node rewrites the report, even when it is whole |
//! |      8 |    8 | reserved | 0                                                          |
//! |     16 | up to 65,520 | report | as below                                      |
//!
//! # The report
//!
//! | offset | size | field              | value                                                  |
//! |-------:|-----:|--------------------|--------------------------------------------------------|
//! |      0 |    8 | magic              | `b"SHMDSMR1"`                                          |
//! |      8 |    4 | version            | 1                                                      |
//! |     12 |    4 | length             | bytes of the whole report, header included (<= 65,520) |
//! |     16 |    2 | node               | the publishing node (< 64)                             |
//! |     18 |    2 | reserved           | 0                                                      |
//! |     20 |    4 | generation         | the node's incarnation (> 0)                           |
//! |     24 |    8 | sequence           | reports this incarnation published before this one     |
//! |     32 |    8 | time               | the node's clock when it gathered the report, ns since boot |
//! |     40 |    4 | cached pages       | pages in the node's cache                              |
//! |     44 |    4 | owned pages        | of those, pages the node owns (<= cached)              |
//! |     48 |    4 | dirty pages        | of those, pages written since they arrived (<= cached) |
//! |     52 |    4 | ranges             | ranges listed                                          |
//! |     56 |    4 | ranges omitted     | ranges the node is responsible for that did not fit    |
//! |     60 |    4 | directory pages    | directory page copies listed                           |
//! |     64 |    4 | directory omitted  | copies that did not fit                                |
//! |     68 |    4 | pages              | page records listed                                    |
//! |     72 |    4 | pages omitted      | page records that did not fit                          |
//! |     76 |   44 | reserved           | 0                                                      |
//! |    120 |    8 | checksum           | FNV-1a 64 of the `length` bytes, this field read as 0  |
//! |    128 |      | ranges             | 32 bytes each: first, last (u128 each, inclusive); data space, whole pages, sorted, disjoint |
//! |        |      | directory copies   | 64-byte header and 64 bytes per entry, as below; sorted by address |
//! |        |      | page records       | 40 bytes each, as below; sorted by address             |
//!
//! The sections follow each other without gaps and end exactly at
//! `length`. Ranges are those the node is responsible for; page records
//! are its records as responsible node (ranges' pages, and the directory
//! pages of its directory slice) of every page touched so far. When the
//! report would not fit in its region, what does not fit is counted as
//! omitted (ranges first, then directory copies, then pages get the room).
//!
//! Directory copy header (64 bytes), then `entry count` entries:
//!
//! | offset | size | field       | value                                                     |
//! |-------:|-----:|-------------|-----------------------------------------------------------|
//! |      0 |   16 | address     | the directory page's global address (directory space)     |
//! |     16 |   16 | span first  | as in the page                                            |
//! |     32 |   16 | span last   | as in the page                                            |
//! |     48 |    8 | version     | the copy's version tag (ownership transfers for writing)  |
//! |     56 |    2 | level       | as in the page                                            |
//! |     58 |    2 | entry count | 0..=62                                                    |
//! |     60 |    1 | rights      | 1 read-only copy, 2 read-write (the single writer)        |
//! |     61 |    1 | flags       | bit 0: the node owns the page; bit 1: dirty               |
//! |     62 |    2 | reserved    | 0                                                         |
//!
//! Directory entry (64 bytes): range first (16), range last (16), child
//! page (16), responsible node (2), reserved (6, 0), replicas (8, a node
//! bit set), with the meaning and the checks of a directory page's
//! entries: a copy is rebuilt into a directory page and validated by
//! [`DirectoryPage::decode`].
//!
//! Page record (40 bytes):
//!
//! | offset | size | field     | value                                                   |
//! |-------:|-----:|-----------|---------------------------------------------------------|
//! |      0 |   16 | page      | global address (page-aligned)                           |
//! |     16 |    2 | owner     | 0..64, or `0xffff`: nobody touched it yet               |
//! |     18 |    2 | flags     | bit 0: a transaction runs or requests wait              |
//! |     20 |    4 | reserved  | 0                                                       |
//! |     24 |    8 | copyset   | nodes holding read copies besides the owner (bit N = node N) |
//! |     32 |    8 | version   | version tag                                             |
//!
//! # Writing and reading a region
//!
//! The node rewrites its region in place under the sequence lock: it makes
//! the word odd, writes the report, and makes it even again. A reader
//! reads the word, the report, and the word again, and takes the report
//! only if the word was even and unchanged ([`read_region`] says `Busy`
//! otherwise: read again). The checksum catches what the word cannot (a
//! writer that died half-way and left a torn report behind an even word is
//! not possible, but a damaged device is).

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use super::addr::{GlobalAddr, GlobalRange, MAX_NODES, NO_NODE, ROOT_DIRECTORY};
use super::cache::{PageBuf, Rights};
use super::directory::{DIRECTORY_ENTRIES, DirEntry, DirectoryPage};
use super::protocol::Engine;
use crate::error::ShmError;
use crate::pool::{Pools, RegionInfo, RegionReport, pool_regions};
use crate::region::Region;
use crate::shm::{NodeSet, Shm};

/// The name of the pool that holds the nodes' report regions.
pub const REPORT_POOL: &str = "dsm-report";
/// Bytes of each node's report region.
pub const REGION_BYTES: u64 = 64 * 1024;
/// Regions the report pool has room for (the first node to publish
/// creates it; a node that finds it full publishes nothing).
pub const POOL_REGIONS: u64 = 8;
/// Bytes before the report in a region (the sequence lock, reserved).
pub const REGION_HEADER_LEN: usize = 16;
/// The longest report a region holds.
pub const MAX_REPORT_LEN: usize = REGION_BYTES as usize - REGION_HEADER_LEN;

/// Magic at offset 0 of every report.
pub const REPORT_MAGIC: [u8; 8] = *b"SHMDSMR1";
/// Report format version.
pub const REPORT_VERSION: u32 = 1;
/// Bytes of the report header.
pub const HEADER_LEN: usize = 128;
/// Bytes of one range.
pub const RANGE_LEN: usize = 32;
/// Bytes of a directory copy's header.
pub const DIRECTORY_HEADER_LEN: usize = 64;
/// Bytes of one directory entry in a report.
pub const DIRECTORY_ENTRY_LEN: usize = 64;
/// Bytes of one page record.
pub const PAGE_RECORD_LEN: usize = 40;

/// Byte offsets of the header fields.
pub mod field {
    /// Magic, 8 bytes.
    pub const MAGIC: usize = 0;
    /// Version, u32.
    pub const VERSION: usize = 8;
    /// Length of the whole report, u32.
    pub const LENGTH: usize = 12;
    /// Node, u16.
    pub const NODE: usize = 16;
    /// Reserved, u16.
    pub const RESERVED_1: usize = 18;
    /// Generation, u32.
    pub const GENERATION: usize = 20;
    /// Sequence number, u64.
    pub const SEQUENCE: usize = 24;
    /// Gathering time, u64 ns.
    pub const TIME: usize = 32;
    /// Cached pages, u32.
    pub const CACHED: usize = 40;
    /// Owned pages, u32.
    pub const OWNED: usize = 44;
    /// Dirty pages, u32.
    pub const DIRTY: usize = 48;
    /// Ranges listed, u32.
    pub const RANGES: usize = 52;
    /// Ranges omitted, u32.
    pub const RANGES_OMITTED: usize = 56;
    /// Directory copies listed, u32.
    pub const DIRECTORY: usize = 60;
    /// Directory copies omitted, u32.
    pub const DIRECTORY_OMITTED: usize = 64;
    /// Page records listed, u32.
    pub const PAGES: usize = 68;
    /// Page records omitted, u32.
    pub const PAGES_OMITTED: usize = 72;
    /// Start of the reserved bytes (zero).
    pub const RESERVED_2: usize = 76;
    /// Checksum, u64.
    pub const CHECKSUM: usize = 120;
}

/// Directory copy flag: the node owns the page.
pub const DIRECTORY_FLAG_OWNER: u8 = 1;
/// Directory copy flag: the copy is dirty.
pub const DIRECTORY_FLAG_DIRTY: u8 = 2;
/// Page record flag: a transaction runs or requests wait.
pub const PAGE_FLAG_BUSY: u16 = 1;

/// The responsible node's record of one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageRecord {
    /// The page.
    pub page: GlobalAddr,
    /// Its owner, or `None` while nobody touched it.
    pub owner: Option<u16>,
    /// Nodes holding read copies besides the owner.
    pub copyset: NodeSet,
    /// Version tag: ownership transfers for writing so far.
    pub version: u64,
    /// True while a transaction runs or requests wait.
    pub busy: bool,
}

/// A node's copy of one directory page, decoded.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirectoryCopy {
    /// The copy's version tag.
    pub version: u64,
    /// `Read` for a read-only copy, `Write` for the single writer's.
    pub rights: Rights,
    /// True if the node owns the page.
    pub owner: bool,
    /// True if the node wrote it since it arrived.
    pub dirty: bool,
    /// The page (its address, level, span and entries).
    pub page: DirectoryPage,
}

/// What one node's DSM holds, as published (see the module docs).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeReport {
    /// The publishing node.
    pub node: u16,
    /// Its incarnation.
    pub generation: u32,
    /// Reports this incarnation published before this one.
    pub sequence: u64,
    /// The node's clock when it gathered the report (ns since its boot).
    pub time_ns: u64,
    /// Pages in the node's cache.
    pub cached_pages: u32,
    /// Cached pages the node owns.
    pub owned_pages: u32,
    /// Cached pages written since they arrived.
    pub dirty_pages: u32,
    /// Ranges the node is responsible for, in address order.
    pub ranges: Vec<GlobalRange>,
    /// Ranges that did not fit.
    pub ranges_omitted: u32,
    /// The directory pages the node has copies of, in address order.
    pub directory: Vec<DirectoryCopy>,
    /// Directory copies that did not fit.
    pub directory_omitted: u32,
    /// The node's records as responsible node, in address order.
    pub pages: Vec<PageRecord>,
    /// Page records that did not fit.
    pub pages_omitted: u32,
}

fn corrupt(what: &'static str) -> ShmError {
    ShmError::Corrupt { what }
}

/// FNV-1a 64 over a report, its checksum field read as zero.
pub fn report_checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (field::CHECKSUM..field::CHECKSUM + 8).contains(&i) {
            0
        } else {
            b
        };
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn directory_copy_len(page: &DirectoryPage) -> usize {
    DIRECTORY_HEADER_LEN + page.entries.len() * DIRECTORY_ENTRY_LEN
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl NodeReport {
    /// An empty report of `node` at `generation`.
    pub fn new(node: u16, generation: u32) -> Self {
        Self {
            node,
            generation,
            sequence: 0,
            time_ns: 0,
            cached_pages: 0,
            owned_pages: 0,
            dirty_pages: 0,
            ranges: Vec::new(),
            ranges_omitted: 0,
            directory: Vec::new(),
            directory_omitted: 0,
            pages: Vec::new(),
            pages_omitted: 0,
        }
    }

    /// The report of `engine`'s node at `generation`, at most `capacity`
    /// bytes long once encoded (capped at [`MAX_REPORT_LEN`]): what does
    /// not fit is counted as omitted. Ranges get the room first, then the
    /// directory copies, then the page records. Directory-space pages that
    /// are no directory pages (a lock word, say) are left out; a root page
    /// nobody wrote yet (zeros) is the empty root, as the kernel reads it.
    ///
    /// Cost: one pass over the cache and over the page records, and one
    /// decode (a 4 KiB checksum) per cached directory page.
    pub fn gather(engine: &Engine, generation: u32, capacity: usize) -> Self {
        let mut r = Self::new(engine.node(), generation);
        let mut room = Room(capacity.min(MAX_REPORT_LEN).saturating_sub(HEADER_LEN));
        let cache = engine.cache();
        for (_, e) in cache.iter() {
            r.cached_pages = r.cached_pages.saturating_add(1);
            r.owned_pages = r.owned_pages.saturating_add(u32::from(e.owner));
            r.dirty_pages = r.dirty_pages.saturating_add(u32::from(e.dirty));
        }
        for range in engine.managed_ranges() {
            if room.take(RANGE_LEN) {
                r.ranges.push(range);
            } else {
                r.ranges_omitted = r.ranges_omitted.saturating_add(1);
            }
        }
        // The cache is in address order: directory pages come first.
        for (&addr, e) in cache.iter().take_while(|(a, _)| a.in_directory_space()) {
            if e.rights < Rights::Read {
                continue;
            }
            let Some(page) = directory_page(addr, &e.data) else {
                continue;
            };
            if room.take(directory_copy_len(&page)) {
                r.directory.push(DirectoryCopy {
                    version: e.version,
                    rights: e.rights,
                    owner: e.owner,
                    dirty: e.dirty,
                    page,
                });
            } else {
                r.directory_omitted = r.directory_omitted.saturating_add(1);
            }
        }
        for (page, s) in engine.page_states() {
            if room.take(PAGE_RECORD_LEN) {
                r.pages.push(PageRecord {
                    page,
                    owner: s.owner,
                    copyset: s.copyset,
                    version: s.version,
                    busy: s.busy,
                });
            } else {
                r.pages_omitted = r.pages_omitted.saturating_add(1);
            }
        }
        r
    }

    /// True if the report says nothing: no cached page, no range, no record.
    pub fn is_empty(&self) -> bool {
        self.cached_pages == 0
            && self.ranges.is_empty()
            && self.ranges_omitted == 0
            && self.pages.is_empty()
            && self.pages_omitted == 0
    }

    /// True if `other` reports the same DSM state (sequence and time aside).
    pub fn same_state(&self, other: &Self) -> bool {
        let mut a = other.clone();
        a.sequence = self.sequence;
        a.time_ns = self.time_ns;
        *self == a
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self.ranges.len() * RANGE_LEN
            + self
                .directory
                .iter()
                .map(|d| directory_copy_len(&d.page))
                .sum::<usize>()
            + self.pages.len() * PAGE_RECORD_LEN
    }

    /// The report's bytes, checksum included. `TooLarge` past
    /// [`MAX_REPORT_LEN`] or with more than 62 entries in a directory copy.
    /// Does not validate otherwise: tests use it to build bad reports with
    /// good checksums.
    pub fn encode(&self) -> Result<Vec<u8>, ShmError> {
        let len = self.encoded_len();
        if len > MAX_REPORT_LEN
            || self
                .directory
                .iter()
                .any(|d| d.page.entries.len() > DIRECTORY_ENTRIES)
        {
            return Err(ShmError::TooLarge);
        }
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&REPORT_MAGIC);
        b.extend_from_slice(&REPORT_VERSION.to_le_bytes());
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(&self.node.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.sequence.to_le_bytes());
        b.extend_from_slice(&self.time_ns.to_le_bytes());
        for v in [
            self.cached_pages,
            self.owned_pages,
            self.dirty_pages,
            count(self.ranges.len()),
            self.ranges_omitted,
            count(self.directory.len()),
            self.directory_omitted,
            count(self.pages.len()),
            self.pages_omitted,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(HEADER_LEN, 0);
        for r in &self.ranges {
            b.extend_from_slice(&r.start().0.to_le_bytes());
            b.extend_from_slice(&r.last().0.to_le_bytes());
        }
        for d in &self.directory {
            let p = &d.page;
            b.extend_from_slice(&p.addr.0.to_le_bytes());
            b.extend_from_slice(&p.first.0.to_le_bytes());
            b.extend_from_slice(&p.last.0.to_le_bytes());
            b.extend_from_slice(&d.version.to_le_bytes());
            b.extend_from_slice(&p.level.to_le_bytes());
            b.extend_from_slice(&(p.entries.len() as u16).to_le_bytes());
            b.push(match d.rights {
                Rights::None => 0,
                Rights::Read => 1,
                Rights::Write => 2,
            });
            let mut flags = 0;
            if d.owner {
                flags |= DIRECTORY_FLAG_OWNER;
            }
            if d.dirty {
                flags |= DIRECTORY_FLAG_DIRTY;
            }
            b.push(flags);
            b.extend_from_slice(&[0, 0]);
            for e in &p.entries {
                b.extend_from_slice(&e.first.0.to_le_bytes());
                b.extend_from_slice(&e.last.0.to_le_bytes());
                b.extend_from_slice(&e.child.0.to_le_bytes());
                b.extend_from_slice(&e.responsible.to_le_bytes());
                b.extend_from_slice(&[0; 6]);
                b.extend_from_slice(&e.replicas.0.to_le_bytes());
            }
        }
        for p in &self.pages {
            b.extend_from_slice(&p.page.0.to_le_bytes());
            b.extend_from_slice(&p.owner.unwrap_or(NO_NODE).to_le_bytes());
            b.extend_from_slice(&u16::from(p.busy).to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&p.copyset.0.to_le_bytes());
            b.extend_from_slice(&p.version.to_le_bytes());
        }
        let sum = report_checksum(&b);
        b[field::CHECKSUM..field::CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
        Ok(b)
    }

    /// Decodes and validates a report: `bytes` starts with one (and may go
    /// on past its length, as a region does). Checks the magic, version,
    /// length, checksum, node, generation, counts, reserved bytes, every
    /// range (whole pages of the data space, sorted, disjoint), every
    /// directory copy (as a directory page, see [`DirectoryPage::decode`];
    /// sorted by address) and every page record (aligned, known owner,
    /// sorted), and that the sections end exactly at the length.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShmError> {
        let h = bytes
            .get(..HEADER_LEN)
            .ok_or(corrupt("report shorter than its header"))?;
        if h[field::MAGIC..field::MAGIC + 8] != REPORT_MAGIC {
            return Err(corrupt("report magic"));
        }
        let mut c = Cursor { b: h, at: 8 };
        if c.u32()? != REPORT_VERSION {
            return Err(corrupt("report version"));
        }
        let len = c.u32()? as usize;
        if !(HEADER_LEN..=MAX_REPORT_LEN).contains(&len) {
            return Err(corrupt("report length"));
        }
        let bytes = bytes
            .get(..len)
            .ok_or(corrupt("report longer than its buffer"))?;
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&h[field::CHECKSUM..field::CHECKSUM + 8]);
        if u64::from_le_bytes(sum) != report_checksum(bytes) {
            return Err(corrupt("report checksum"));
        }
        let mut r = Self::new(c.u16()?, 0);
        if r.node >= MAX_NODES {
            return Err(corrupt("report node"));
        }
        if c.u16()? != 0
            || h[field::RESERVED_2..field::CHECKSUM]
                .iter()
                .any(|&b| b != 0)
        {
            return Err(corrupt("reserved report header bytes"));
        }
        r.generation = c.u32()?;
        if r.generation == 0 {
            return Err(corrupt("report generation"));
        }
        r.sequence = c.u64()?;
        r.time_ns = c.u64()?;
        r.cached_pages = c.u32()?;
        r.owned_pages = c.u32()?;
        r.dirty_pages = c.u32()?;
        if r.owned_pages > r.cached_pages || r.dirty_pages > r.cached_pages {
            return Err(corrupt("report page counts"));
        }
        let ranges = c.u32()? as usize;
        r.ranges_omitted = c.u32()?;
        let directory = c.u32()? as usize;
        r.directory_omitted = c.u32()?;
        let pages = c.u32()? as usize;
        r.pages_omitted = c.u32()?;
        // Every count is bounded by the length before anything is allocated.
        let body = len - HEADER_LEN;
        if ranges > body / RANGE_LEN
            || directory > body / DIRECTORY_HEADER_LEN
            || pages > body / PAGE_RECORD_LEN
        {
            return Err(corrupt("report section counts"));
        }
        let mut c = Cursor {
            b: bytes,
            at: HEADER_LEN,
        };
        r.ranges.reserve(ranges);
        for _ in 0..ranges {
            let (first, last) = (GlobalAddr(c.u128()?), GlobalAddr(c.u128()?));
            let range = GlobalRange::from_bounds(first, last)
                .map_err(|_| corrupt("report range not whole pages"))?;
            if first.in_directory_space() {
                return Err(corrupt("report range outside the data space"));
            }
            if r.ranges.last().is_some_and(|p| p.last() >= first) {
                return Err(corrupt("report ranges unsorted or overlapping"));
            }
            r.ranges.push(range);
        }
        r.directory.reserve(directory);
        for _ in 0..directory {
            let copy = decode_directory_copy(&mut c)?;
            if r.directory
                .last()
                .is_some_and(|p| p.page.addr >= copy.page.addr)
            {
                return Err(corrupt("report directory copies unsorted"));
            }
            r.directory.push(copy);
        }
        r.pages.reserve(pages);
        for _ in 0..pages {
            let page = GlobalAddr(c.u128()?);
            let owner = c.u16()?;
            let flags = c.u16()?;
            let reserved = c.u32()?;
            let copyset = NodeSet(c.u64()?);
            let version = c.u64()?;
            if !page.is_page_aligned() {
                return Err(corrupt("report page not page-aligned"));
            }
            if owner >= MAX_NODES && owner != NO_NODE {
                return Err(corrupt("report page owner"));
            }
            if flags & !PAGE_FLAG_BUSY != 0 || reserved != 0 {
                return Err(corrupt("report page flags"));
            }
            if r.pages.last().is_some_and(|p| p.page >= page) {
                return Err(corrupt("report pages unsorted"));
            }
            r.pages.push(PageRecord {
                page,
                owner: (owner != NO_NODE).then_some(owner),
                copyset,
                version,
                busy: flags & PAGE_FLAG_BUSY != 0,
            });
        }
        if c.at != len {
            return Err(corrupt("report length does not match its sections"));
        }
        Ok(r)
    }
}

/// The directory page cached at `addr`, if its bytes are one (zeros at the
/// root are the empty root).
fn directory_page(addr: GlobalAddr, data: &PageBuf) -> Option<DirectoryPage> {
    if addr == ROOT_DIRECTORY && data.0.iter().all(|&b| b == 0) {
        return Some(DirectoryPage::empty_root());
    }
    DirectoryPage::decode(&data.0, addr).ok()
}

fn decode_directory_copy(c: &mut Cursor<'_>) -> Result<DirectoryCopy, ShmError> {
    let addr = GlobalAddr(c.u128()?);
    let first = GlobalAddr(c.u128()?);
    let last = GlobalAddr(c.u128()?);
    let version = c.u64()?;
    let level = c.u16()?;
    let entries = usize::from(c.u16()?);
    let rights = match c.u8()? {
        1 => Rights::Read,
        2 => Rights::Write,
        _ => return Err(corrupt("report directory copy rights")),
    };
    let flags = c.u8()?;
    if flags & !(DIRECTORY_FLAG_OWNER | DIRECTORY_FLAG_DIRTY) != 0 || c.u16()? != 0 {
        return Err(corrupt("report directory copy flags"));
    }
    if entries > DIRECTORY_ENTRIES {
        return Err(corrupt("report directory copy entry count"));
    }
    if !addr.in_directory_space() || !addr.is_page_aligned() {
        return Err(corrupt("report directory copy address"));
    }
    let mut page = DirectoryPage {
        addr,
        level,
        first,
        last,
        entries: Vec::with_capacity(entries),
    };
    for _ in 0..entries {
        let (first, last, child) = (c.u128()?, c.u128()?, c.u128()?);
        let responsible = c.u16()?;
        if c.take(6)?.iter().any(|&b| b != 0) {
            return Err(corrupt("reserved report directory entry bytes"));
        }
        let e = DirEntry {
            first: GlobalAddr(first),
            last: GlobalAddr(last),
            child: GlobalAddr(child),
            responsible,
            replicas: NodeSet(c.u64()?),
        };
        page.entries.push(e);
    }
    // The page format's own checks, on the page this copy describes.
    let image: PageBuf = page.encode();
    let page = DirectoryPage::decode(&image.0, addr).map_err(|e| match e {
        super::DsmError::CorruptDirectory { what } => corrupt(what),
        _ => corrupt("report directory copy"),
    })?;
    Ok(DirectoryCopy {
        version,
        rights,
        owner: flags & DIRECTORY_FLAG_OWNER != 0,
        dirty: flags & DIRECTORY_FLAG_DIRTY != 0,
        page,
    })
}

/// Bytes left for a report's sections.
struct Room(usize);

impl Room {
    /// Takes `len` bytes if that many are left.
    fn take(&mut self, len: usize) -> bool {
        let fits = len <= self.0;
        if fits {
            self.0 -= len;
        }
        fits
    }
}

/// A bounds-checked little-endian reader.
struct Cursor<'b> {
    b: &'b [u8],
    at: usize,
}

impl<'b> Cursor<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], ShmError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(corrupt("report section past its length"))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(corrupt("report section past its length"))?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ShmError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, ShmError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ShmError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ShmError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ShmError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, ShmError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
}

/// The device offset range of a report region: `offset .. offset + len`,
/// checked to hold at least a region header and a report header.
fn region_span(offset: u64, len: u64) -> Result<(usize, usize), ShmError> {
    let offset = usize::try_from(offset).map_err(|_| ShmError::OutOfBounds)?;
    let len = usize::try_from(len).map_err(|_| ShmError::OutOfBounds)?;
    if len < REGION_HEADER_LEN + HEADER_LEN {
        return Err(ShmError::TooSmall);
    }
    offset.checked_add(len).ok_or(ShmError::OutOfBounds)?;
    Ok((offset, len))
}

/// Writes the encoded report `bytes` into the report region of `len`
/// bytes at device offset `offset`, under its sequence lock (see the
/// module docs). `TooLarge` if it does not fit.
pub fn write_region(
    region: Region<'_>,
    offset: u64,
    len: u64,
    bytes: &[u8],
) -> Result<(), ShmError> {
    let (offset, len) = region_span(offset, len)?;
    if bytes.len() > len - REGION_HEADER_LEN || bytes.len() > MAX_REPORT_LEN {
        return Err(ShmError::TooLarge);
    }
    let word = region.atomic_u64(offset)?;
    // Odd whatever the word held before (it may be an allocation's leftovers).
    let odd = (word.load(Ordering::Relaxed) & !1).wrapping_add(1);
    word.store(odd, Ordering::Relaxed);
    fence(Ordering::Release);
    region.write_bytes(offset + REGION_HEADER_LEN, bytes)?;
    word.store(odd.wrapping_add(1), Ordering::Release);
    Ok(())
}

/// Reads and decodes the report in the region of `len` bytes at device
/// offset `offset`: `Busy` while it is being rewritten (read again),
/// `NotInitialized` for a zeroed region nothing was written to yet, a
/// named `Corrupt` if it does not validate.
pub fn read_region(region: Region<'_>, offset: u64, len: u64) -> Result<NodeReport, ShmError> {
    let (offset, len) = region_span(offset, len)?;
    let word = region.atomic_u64(offset)?;
    let before = word.load(Ordering::Acquire);
    if before & 1 == 1 {
        return Err(ShmError::Busy);
    }
    let mut header = [0u8; HEADER_LEN];
    region.read_bytes(offset + REGION_HEADER_LEN, &mut header)?;
    if before == 0 && header.iter().all(|&b| b == 0) {
        // A fresh region whose node has not written it yet.
        return Err(ShmError::NotInitialized);
    }
    let mut l = [0u8; 4];
    l.copy_from_slice(&header[field::LENGTH..field::LENGTH + 4]);
    let report_len = (u32::from_le_bytes(l) as usize)
        .clamp(HEADER_LEN, (len - REGION_HEADER_LEN).min(MAX_REPORT_LEN));
    let mut bytes = alloc::vec![0u8; report_len];
    region.read_bytes(offset + REGION_HEADER_LEN, &mut bytes)?;
    fence(Ordering::Acquire);
    if word.load(Ordering::Relaxed) != before {
        return Err(ShmError::Busy);
    }
    NodeReport::decode(&bytes)
}

/// Opens the report pool (creating it if this node is the first: a node
/// that loses the race to create it opens the winner's) and allocates
/// this node's report region, owned by this node alone, after freeing any
/// region an earlier incarnation of this node left in the pool (regions
/// owned by exactly this node are its reports). The new region reads as
/// empty (`NotInitialized`) until this node writes it. A node that finds
/// the pool full gets `OutOfMemory`.
pub fn claim_region(pools: &Pools<'_>, shm: &Shm<'_>) -> Result<RegionInfo, ShmError> {
    let pool_bytes = POOL_REGIONS * REGION_BYTES;
    let pool = match pools.pool_open(REPORT_POOL) {
        Ok(p) => p,
        Err(ShmError::NoSuchPool) => match pools.pool_create(REPORT_POOL, pool_bytes) {
            Err(ShmError::PoolExists) => pools.pool_open(REPORT_POOL)?,
            r => r?,
        },
        Err(e) => return Err(e),
    };
    let me = NodeSet(1u64.checked_shl(u32::from(pools.node())).unwrap_or(0));
    if me.is_empty() {
        return Err(ShmError::NoSuchNode);
    }
    let mut stale = Vec::new();
    pool_regions(shm, REPORT_POOL, &mut |r| {
        if r.owners == me && r.pool == pool.index {
            stale.push(r.handle);
        }
    })?;
    for handle in stale {
        // Gone meanwhile, or not ours after all: either way not in the way.
        let _ = pools.shm_free(handle);
    }
    let handle = pools.shm_alloc_owned(pool, REGION_BYTES, 64, me.0)?;
    let info = pools.region_info(handle)?;
    // The memory may hold a freed region's report: blank its start, so
    // that it reads as "nothing written yet" until this node writes.
    let start = usize::try_from(info.offset).map_err(|_| ShmError::OutOfBounds)?;
    shm.region()
        .write_bytes(start, &[0u8; REGION_HEADER_LEN + HEADER_LEN])?;
    Ok(info)
}

/// One report region as the host found it: where it lies and whose it is
/// by the pool, and what it holds.
#[derive(Clone, Debug)]
pub struct Published {
    /// The region, as the pool lists it.
    pub region: RegionReport,
    /// Its report, or why it was refused (`Busy`: being rewritten, read
    /// again; `NotInitialized`: nothing written yet; `Corrupt`: damaged).
    pub report: Result<NodeReport, ShmError>,
}

/// Reads every region of the report pool, without locking anything
/// (`NoSuchPool` if no node published yet). A report is refused, with a
/// named error, when it does not decode, or when its region is not owned
/// by exactly the node the report names.
pub fn read_published(shm: &Shm<'_>) -> Result<Vec<Published>, ShmError> {
    let mut regions = Vec::new();
    pool_regions(shm, REPORT_POOL, &mut |r| regions.push(r))?;
    Ok(regions
        .into_iter()
        .map(|region| Published {
            region,
            report: read_region(shm.region(), region.offset, region.len).and_then(|r| {
                if region.owners.len() == 1 && region.owners.contains(r.node) {
                    Ok(r)
                } else {
                    Err(corrupt("report names a node that does not own its region"))
                }
            }),
        })
        .collect())
}
