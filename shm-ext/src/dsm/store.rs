//! The on-disk format of a node's durable DSM pages, and [`PageStore`]: the
//! [`Disk`] on any [`BlockDevice`] (virtio-blk in the kernel, a `Vec` in
//! tests).
//!
//! # Layout (4 KiB blocks, little-endian)
//!
//! | blocks                                  | holds                                                    |
//! |-----------------------------------------|----------------------------------------------------------|
//! | 0, 1                                    | two copies of the superblock; the valid one with the greater generation is current |
//! | `table start .. + table blocks`         | the entry table: 64 entries of 64 bytes per block; entry `i` describes data block `i` |
//! | `data start .. + data blocks`           | page copies, one per block                               |
//! | `data start + data blocks .. blocks`    | unused (the few blocks too few for one more table block, or past [`MAX_DATA_BLOCKS`]) |
//!
//! [`PageStore::format`] takes the most data blocks the device allows
//! (`2 + ceil(data / 64) + data <= device blocks`, at most
//! [`MAX_DATA_BLOCKS`]); the device needs [`MIN_DEVICE_BLOCKS`]. One data
//! block is always kept spare, so the store holds `data blocks - 1` pages
//! and a stored page can always be rewritten out of place.
//!
//! # Superblock (blocks 0 and 1)
//!
//! | offset | size | field          | value                                                      |
//! |-------:|-----:|----------------|------------------------------------------------------------|
//! |      0 |    8 | magic          | `b"SHMOSDSK"`                                              |
//! |      8 |    4 | version        | 1                                                          |
//! |     12 |    2 | node           | the node the disk was formatted for                        |
//! |     14 |    2 | copy           | 0 or 1: the block this copy must sit in                    |
//! |     16 |    8 | generation     | bumped by every superblock write; the greater valid one wins |
//! |     24 |    8 | blocks         | device blocks at format time (a smaller device is truncated) |
//! |     32 |    8 | table start    | 2                                                          |
//! |     40 |    8 | table blocks   | `ceil(data blocks / 64)`                                   |
//! |     48 |    8 | data start     | `table start + table blocks`                               |
//! |     56 |    8 | data blocks    | `2 ..= MAX_DATA_BLOCKS`; `data start + data blocks <= blocks` |
//! |     64 |    4 | meta set       | bit `k`: meta key `k` holds a value (bits 16.. are 0)       |
//! |     68 |    4 | reserved       | 0                                                          |
//! |     72 |    8 | checksum       | FNV-1a 64 of the 4096 bytes, this field read as 0          |
//! |     80 | 16 x 16 | meta        | durable `u128` values for the kernel ([`PageStore::meta`]); 0 where unset |
//! |    336 | 3760 | reserved       | 0                                                          |
//!
//! Everything that changes lives in the first 512-byte sector. A meta
//! update writes the copy that is not current, with the next generation,
//! so a write torn by a crash leaves the other copy (the previous values).
//!
//! # Table entries (64 bytes)
//!
//! | offset | size | field          | value                                                      |
//! |-------:|-----:|----------------|------------------------------------------------------------|
//! |      0 |   16 | page           | global address of the page (page-aligned)                  |
//! |     16 |    8 | stamp version  | [`Stamp::version`]                                         |
//! |     24 |    8 | stamp seq      | [`Stamp::seq`]                                             |
//! |     32 |    8 | serial         | the store's write counter: orders copies with equal stamps |
//! |     40 |    8 | data checksum  | FNV-1a 64 of the data block                                |
//! |     48 |    4 | flags          | 1 (in use)                                                 |
//! |     52 |    4 | reserved       | 0                                                          |
//! |     56 |    8 | checksum       | FNV-1a 64 of the data block's number (u64) then bytes 0..56 |
//!
//! An all-zero entry is free. Any other entry is trusted only if its
//! checksum (which binds it to its slot, so a table block written to the
//! wrong place is refused), flags, reserved bytes and page alignment are
//! right and it describes a block inside the data area; otherwise
//! [`PageStore::open`] counts it as bad and ignores it.
//!
//! # Writing, crashes and reopening
//!
//! A save writes the copy into a free data block (next fit), then that
//! block's table block, rebuilt from the in-RAM state (no read-modify-write:
//! 2 block writes per save, no reads). The page's previous copy, entry and
//! data, stays on disk as a *held* block. [`Disk::sync`] flushes, then
//! clears the held entries, flushes again and frees their blocks; when no
//! block is free, a save does the same itself. So a held copy is never
//! overwritten before its replacement is durable. A remove (or a load that
//! finds a bad copy) clears the page's entries: table blocks of held copies
//! first, the current copy's last.
//!
//! On open, when several valid entries name one page, the copies are tried
//! from the greatest (stamp, serial) down, reading their data blocks; the
//! first whose data checksum holds wins and the others are held again. A
//! page with one entry is checked when loaded: a bad copy is `BadPage` and
//! is forgotten.
//!
//! What a crash leaves (both tested with a device that drops writes):
//!
//! - if the device keeps writes in order (a VM killed, a kernel panic):
//!   every page and meta value is as before or as after the operation
//!   that was cut short;
//! - if it drops any writes since its last flush (power loss): every page
//!   is in a state it had at the last successful sync or since (a new
//!   page whose data never reached the disk is listed, then loads as
//!   `BadPage` and is gone), and the meta values are as some superblock
//!   write since that sync left them. Nothing synced is lost.
//!
//! After an I/O error the blocks whose entries may or may not have reached
//! the device are kept out of use (*limbo*) and cleared at the next flush;
//! a failed save may still turn up after a crash, as if it had succeeded.
//!
//! Nothing on the device is trusted: a refused superblock is a
//! [`StoreRefused`] (and the device is handed back), a refused entry or
//! copy is counted and ignored, and no byte read can make the store panic.
//! RAM use: a bitmap of the data blocks and a map entry per stored page.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::addr::GlobalAddr;
use super::cache::PageBuf;
use super::durable::{BLOCK_BYTES, BlockDevice, Disk, DiskError, Stamp};

/// Magic at offset 0 of both superblock copies.
pub const STORE_MAGIC: [u8; 8] = *b"SHMOSDSK";
/// Page store format version.
pub const STORE_VERSION: u32 = 1;
/// Superblock copies, in blocks `0..SUPERBLOCK_COPIES`.
pub const SUPERBLOCK_COPIES: u64 = 2;
/// Durable meta values the superblock holds (keys `0..META_KEYS`).
pub const META_KEYS: usize = 16;
/// Bytes of one table entry.
pub const ENTRY_LEN: usize = 64;
/// Table entries per table block.
pub const ENTRIES_PER_BLOCK: u64 = (BLOCK_BYTES / ENTRY_LEN) as u64;
/// Most data blocks a store has (2^28 pages, 1 TiB: a 32 MiB bitmap in RAM).
pub const MAX_DATA_BLOCKS: u64 = 1 << 28;
/// Smallest device that can be formatted: two superblocks, one table
/// block, two data blocks (one page and the spare).
pub const MIN_DEVICE_BLOCKS: u64 = SUPERBLOCK_COPIES + 1 + 2;

/// Byte offsets of the superblock fields.
pub mod superblock {
    /// Magic, 8 bytes.
    pub const MAGIC: usize = 0;
    /// Format version, u32.
    pub const VERSION: usize = 8;
    /// Node the disk was formatted for, u16.
    pub const NODE: usize = 12;
    /// Which copy (0 or 1) this is, u16.
    pub const COPY: usize = 14;
    /// Generation, u64.
    pub const GENERATION: usize = 16;
    /// Device blocks at format time, u64.
    pub const BLOCKS: usize = 24;
    /// First table block, u64.
    pub const TABLE_START: usize = 32;
    /// Table blocks, u64.
    pub const TABLE_BLOCKS: usize = 40;
    /// First data block, u64.
    pub const DATA_START: usize = 48;
    /// Data blocks, u64.
    pub const DATA_BLOCKS: usize = 56;
    /// Mask of the meta keys that hold a value, u32.
    pub const META_SET: usize = 64;
    /// Reserved, 4 bytes of zero.
    pub const RESERVED: usize = 68;
    /// Checksum, u64.
    pub const CHECKSUM: usize = 72;
    /// Meta values, 16 x u128.
    pub const META: usize = 80;
    /// First byte past the fields; the rest of the block is zero.
    pub const END: usize = META + 16 * super::META_KEYS;
}

/// Byte offsets of the table entry fields.
pub mod entry {
    /// Page global address, u128.
    pub const PAGE: usize = 0;
    /// Stamp version, u64.
    pub const VERSION: usize = 16;
    /// Stamp seq, u64.
    pub const SEQ: usize = 24;
    /// Write serial, u64.
    pub const SERIAL: usize = 32;
    /// FNV-1a 64 of the data block, u64.
    pub const DATA_CHECKSUM: usize = 40;
    /// Flags, u32 (1: in use).
    pub const FLAGS: usize = 48;
    /// Reserved, 4 bytes of zero.
    pub const RESERVED: usize = 52;
    /// Entry checksum, u64.
    pub const CHECKSUM: usize = 56;
    /// The only flags value of an entry in use.
    pub const IN_USE: u32 = 1;
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `h` (start with the offset basis).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a 64 of a data block, as the table records it.
pub fn data_checksum(block: &[u8; BLOCK_BYTES]) -> u64 {
    fnv(FNV_OFFSET, block)
}

/// FNV-1a 64 of a superblock with its checksum field read as 0.
pub fn superblock_checksum(block: &[u8; BLOCK_BYTES]) -> u64 {
    let h = fnv(FNV_OFFSET, &block[..superblock::CHECKSUM]);
    let h = fnv(h, &[0; 8]);
    fnv(h, &block[superblock::CHECKSUM + 8..])
}

/// FNV-1a 64 of data block `block`'s number, then entry bytes 0..56.
pub fn entry_checksum(block: u64, entry: &[u8]) -> u64 {
    let h = fnv(FNV_OFFSET, &block.to_le_bytes());
    fnv(h, &entry[..entry::CHECKSUM])
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn u128_at(b: &[u8], o: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    u128::from_le_bytes(a)
}

fn put(b: &mut [u8], o: usize, v: &[u8]) {
    b[o..o + v.len()].copy_from_slice(v);
}

/// Where the areas of a store lie, in blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Geometry {
    /// Device blocks at format time.
    pub blocks: u64,
    /// First table block.
    pub table_start: u64,
    /// Table blocks.
    pub table_blocks: u64,
    /// First data block.
    pub data_start: u64,
    /// Data blocks (pages held: one less).
    pub data_blocks: u64,
}

impl Geometry {
    /// The layout [`PageStore::format`] gives a device of `blocks` blocks:
    /// the most data blocks that fit (at most [`MAX_DATA_BLOCKS`]); `None`
    /// below [`MIN_DEVICE_BLOCKS`].
    pub fn for_device(blocks: u64) -> Option<Self> {
        if blocks < MIN_DEVICE_BLOCKS {
            return None;
        }
        let room = blocks - SUPERBLOCK_COPIES;
        let fits = |d: u64| d + d.div_ceil(ENTRIES_PER_BLOCK) <= room;
        // About 64 of every 65 blocks hold data; settle the rounding.
        let mut data = (room - room.div_ceil(ENTRIES_PER_BLOCK + 1)).min(MAX_DATA_BLOCKS);
        while data > 0 && !fits(data) {
            data -= 1;
        }
        while data < MAX_DATA_BLOCKS && fits(data + 1) {
            data += 1;
        }
        let table_blocks = data.div_ceil(ENTRIES_PER_BLOCK);
        Some(Self {
            blocks,
            table_start: SUPERBLOCK_COPIES,
            table_blocks,
            data_start: SUPERBLOCK_COPIES + table_blocks,
            data_blocks: data,
        })
    }

    /// Checks the areas against each other and the recorded block count.
    fn check(&self) -> Result<(), &'static str> {
        if self.table_start != SUPERBLOCK_COPIES {
            return Err("table start");
        }
        if self.data_blocks < 2 || self.data_blocks > MAX_DATA_BLOCKS {
            return Err("data block count");
        }
        if self.table_blocks != self.data_blocks.div_ceil(ENTRIES_PER_BLOCK) {
            return Err("table size");
        }
        if self.data_start != self.table_start + self.table_blocks {
            return Err("data start");
        }
        match self.data_start.checked_add(self.data_blocks) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err("areas past the recorded end"),
        }
    }
}

/// Why [`PageStore::open`] refused a device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum StoreRefused {
    /// Both superblock copies are all zeros (or missing): never formatted.
    NotFormatted,
    /// No superblock copy starts with the magic: not a page store.
    BadMagic,
    /// A superblock of a format version this code does not read.
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// No superblock copy passes its checksum.
    BadChecksum,
    /// The superblock's checksum holds but its fields do not: areas that
    /// overlap or leave the recorded device, the wrong copy number, or
    /// bytes that must be zero.
    BadGeometry {
        /// Which check failed.
        what: &'static str,
    },
    /// The device is smaller than when it was formatted.
    Truncated {
        /// Blocks recorded at format time.
        recorded: u64,
        /// Blocks the device has now.
        actual: u64,
    },
    /// The device failed a read.
    Io,
}

impl StoreRefused {
    /// How far a superblock copy got through validation: when no copy is
    /// valid, the one that got furthest names the reason.
    fn rank(&self) -> u8 {
        match self {
            Self::NotFormatted => 0,
            Self::BadMagic => 1,
            Self::UnsupportedVersion { .. } => 2,
            Self::BadChecksum => 3,
            Self::BadGeometry { .. } => 4,
            Self::Truncated { .. } => 5,
            Self::Io => 6,
        }
    }
}

impl fmt::Display for StoreRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFormatted => f.write_str("disk not formatted as a page store"),
            Self::BadMagic => f.write_str("not a page store (bad magic)"),
            Self::UnsupportedVersion { found } => {
                write!(f, "page store format version {found} not supported")
            }
            Self::BadChecksum => f.write_str("page store superblock failed its checksum"),
            Self::BadGeometry { what } => write!(f, "page store superblock invalid: {what}"),
            Self::Truncated { recorded, actual } => write!(
                f,
                "disk truncated: formatted with {recorded} blocks, has {actual}"
            ),
            Self::Io => f.write_str("disk I/O error while opening the page store"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StoreRefused {}

/// What [`PageStore::open`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct OpenReport {
    /// Pages stored.
    pub pages: u64,
    /// Table entries ignored: bad checksum, flags or reserved bytes, a page
    /// address not page-aligned, or a slot past the data area.
    pub bad_entries: u64,
    /// Older copies of a page also stored (a crash or no sync since their
    /// replacement); kept until the next flush, then cleared.
    pub superseded: u64,
    /// Newer copies of a page whose data failed its checksum, passed over
    /// for an older copy (or, with no good copy left, the page is dropped).
    pub bad_copies: u64,
    /// Valid superblock copies (1 or 2).
    pub superblocks: u8,
}

/// One trusted table entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    page: GlobalAddr,
    stamp: Stamp,
    serial: u64,
    sum: u64,
}

impl Entry {
    fn encode(&self, block: u64, out: &mut [u8]) {
        out.fill(0);
        put(out, entry::PAGE, &self.page.0.to_le_bytes());
        put(out, entry::VERSION, &self.stamp.version.to_le_bytes());
        put(out, entry::SEQ, &self.stamp.seq.to_le_bytes());
        put(out, entry::SERIAL, &self.serial.to_le_bytes());
        put(out, entry::DATA_CHECKSUM, &self.sum.to_le_bytes());
        put(out, entry::FLAGS, &entry::IN_USE.to_le_bytes());
        let sum = entry_checksum(block, out);
        put(out, entry::CHECKSUM, &sum.to_le_bytes());
    }

    /// `Ok(None)`: a free (all-zero) entry; `Err`: a bad one.
    fn decode(b: &[u8], block: u64) -> Result<Option<Self>, ()> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if u64_at(b, entry::CHECKSUM) != entry_checksum(block, b)
            || u32_at(b, entry::FLAGS) != entry::IN_USE
            || u32_at(b, entry::RESERVED) != 0
        {
            return Err(());
        }
        let page = GlobalAddr(u128_at(b, entry::PAGE));
        if !page.is_page_aligned() {
            return Err(());
        }
        Ok(Some(Self {
            page,
            stamp: Stamp {
                version: u64_at(b, entry::VERSION),
                seq: u64_at(b, entry::SEQ),
            },
            serial: u64_at(b, entry::SERIAL),
            sum: u64_at(b, entry::DATA_CHECKSUM),
        }))
    }
}

/// A decoded superblock copy.
struct Superblock {
    node: u16,
    generation: u64,
    geometry: Geometry,
    meta_set: u32,
    meta: [u128; META_KEYS],
}

impl Superblock {
    fn encode(&self, copy: u16, out: &mut [u8; BLOCK_BYTES]) {
        out.fill(0);
        let g = &self.geometry;
        put(out, superblock::MAGIC, &STORE_MAGIC);
        put(out, superblock::VERSION, &STORE_VERSION.to_le_bytes());
        put(out, superblock::NODE, &self.node.to_le_bytes());
        put(out, superblock::COPY, &copy.to_le_bytes());
        put(out, superblock::GENERATION, &self.generation.to_le_bytes());
        put(out, superblock::BLOCKS, &g.blocks.to_le_bytes());
        put(out, superblock::TABLE_START, &g.table_start.to_le_bytes());
        put(out, superblock::TABLE_BLOCKS, &g.table_blocks.to_le_bytes());
        put(out, superblock::DATA_START, &g.data_start.to_le_bytes());
        put(out, superblock::DATA_BLOCKS, &g.data_blocks.to_le_bytes());
        put(out, superblock::META_SET, &self.meta_set.to_le_bytes());
        for (k, v) in self.meta.iter().enumerate() {
            put(out, superblock::META + 16 * k, &v.to_le_bytes());
        }
        let sum = superblock_checksum(out);
        put(out, superblock::CHECKSUM, &sum.to_le_bytes());
    }

    /// Decodes and validates the copy read from block `copy`.
    fn decode(b: &[u8; BLOCK_BYTES], copy: u16) -> Result<Self, StoreRefused> {
        if b.iter().all(|&x| x == 0) {
            return Err(StoreRefused::NotFormatted);
        }
        if b[superblock::MAGIC..superblock::MAGIC + 8] != STORE_MAGIC {
            return Err(StoreRefused::BadMagic);
        }
        let version = u32_at(b, superblock::VERSION);
        if version != STORE_VERSION {
            return Err(StoreRefused::UnsupportedVersion { found: version });
        }
        if u64_at(b, superblock::CHECKSUM) != superblock_checksum(b) {
            return Err(StoreRefused::BadChecksum);
        }
        let bad = |what| Err(StoreRefused::BadGeometry { what });
        if u16_at(b, superblock::COPY) != copy {
            return bad("superblock copy number");
        }
        if u32_at(b, superblock::RESERVED) != 0 || b[superblock::END..].iter().any(|&x| x != 0) {
            return bad("reserved superblock bytes");
        }
        let meta_set = u32_at(b, superblock::META_SET);
        if meta_set >> META_KEYS != 0 {
            return bad("meta key mask");
        }
        let mut meta = [0u128; META_KEYS];
        for (k, v) in meta.iter_mut().enumerate() {
            *v = u128_at(b, superblock::META + 16 * k);
            if meta_set & (1 << k) == 0 && *v != 0 {
                return bad("value of an unset meta key");
            }
        }
        let geometry = Geometry {
            blocks: u64_at(b, superblock::BLOCKS),
            table_start: u64_at(b, superblock::TABLE_START),
            table_blocks: u64_at(b, superblock::TABLE_BLOCKS),
            data_start: u64_at(b, superblock::DATA_START),
            data_blocks: u64_at(b, superblock::DATA_BLOCKS),
        };
        if let Err(what) = geometry.check() {
            return bad(what);
        }
        Ok(Self {
            node: u16_at(b, superblock::NODE),
            generation: u64_at(b, superblock::GENERATION),
            geometry,
            meta_set,
            meta,
        })
    }
}

/// A node's durable DSM pages on a [`BlockDevice`] (format in the module
/// docs).
///
/// In RAM: the index of stored pages, the entry every table slot should
/// hold (table blocks are rebuilt from it, never read back), and which data
/// blocks are in use. All of it is rebuilt from the device by
/// [`open`](Self::open); nothing else survives a reopen.
pub struct PageStore<D: BlockDevice> {
    dev: D,
    geometry: Geometry,
    node: u16,
    /// Generation of the current superblock copy.
    generation: u64,
    /// The copy (0 or 1) holding `generation`.
    current: u16,
    meta_set: u32,
    meta: [u128; META_KEYS],
    /// Stored pages: stamp and data block.
    index: BTreeMap<GlobalAddr, (Stamp, u64)>,
    /// The entry each data block's table slot holds (current and held
    /// copies); slots not here are written as zeros.
    entries: BTreeMap<u64, Entry>,
    /// Older copies whose entries stay on disk until the next flush.
    held: BTreeSet<(GlobalAddr, u64)>,
    /// Blocks whose entry may or may not be on the device (a table write
    /// failed): out of use until the next flush clears them.
    limbo: BTreeSet<u64>,
    /// Bit per data block: in `entries` or `limbo` (bits past the end set).
    used: Vec<u64>,
    /// Block where the search for a free block starts.
    cursor: u64,
    /// Serial of the next entry written.
    next_serial: u64,
    /// Scratch block for table and superblock images.
    scratch: Box<PageBuf>,
    reads: u64,
    writes: u64,
    flushes: u64,
}

impl<D: BlockDevice> fmt::Debug for PageStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageStore")
            .field("node", &self.node)
            .field("geometry", &self.geometry)
            .field("generation", &self.generation)
            .field("pages", &self.index.len())
            .field("held", &self.held.len())
            .field("limbo", &self.limbo.len())
            .field("reads", &self.reads)
            .field("writes", &self.writes)
            .field("flushes", &self.flushes)
            .finish()
    }
}

impl<D: BlockDevice> PageStore<D> {
    fn empty(dev: D, geometry: Geometry, node: u16) -> Self {
        let words = geometry.data_blocks.div_ceil(64) as usize;
        let mut used = vec![0u64; words];
        let tail = geometry.data_blocks % 64;
        if tail != 0 {
            // Blocks past the end look used, so the search never picks them.
            used[words - 1] = !0 << tail;
        }
        Self {
            dev,
            geometry,
            node,
            generation: 0,
            current: 1,
            meta_set: 0,
            meta: [0; META_KEYS],
            index: BTreeMap::new(),
            entries: BTreeMap::new(),
            held: BTreeSet::new(),
            limbo: BTreeSet::new(),
            used,
            cursor: 0,
            next_serial: 1,
            scratch: PageBuf::zeroed(),
            reads: 0,
            writes: 0,
            flushes: 0,
        }
    }

    /// Formats `dev` as an empty store for node `node`: invalidates the
    /// superblocks, zeroes the table, flushes, writes both superblock
    /// copies and flushes again (a crash mid-format leaves `NotFormatted`).
    /// `Full` for a device below [`MIN_DEVICE_BLOCKS`].
    pub fn format(dev: D, node: u16) -> Result<Self, DiskError> {
        let geometry = Geometry::for_device(dev.blocks()).ok_or(DiskError::Full)?;
        let mut s = Self::empty(dev, geometry, node);
        s.scratch.0.fill(0);
        for b in 0..SUPERBLOCK_COPIES {
            s.write_scratch(b)?;
        }
        for t in 0..geometry.table_blocks {
            s.write_scratch(geometry.table_start + t)?;
        }
        s.flush()?;
        s.write_superblock()?;
        s.write_superblock()?;
        s.flush()?;
        Ok(s)
    }

    /// Opens a formatted store: validates the superblock copies (the valid
    /// one with the greater generation is current) and the geometry against
    /// the device, then scans the table into the index; entries that fail
    /// validation are counted and ignored, and where several name one page
    /// the newest copy whose data holds wins. On refusal the device is
    /// handed back with the reason; nothing has been written to it.
    pub fn open(mut dev: D) -> Result<(Self, OpenReport), (D, StoreRefused)> {
        let mut reads = 0;
        let (sb, copy, copies) = match read_superblocks(&mut dev, &mut reads) {
            Ok(found) => found,
            Err(e) => return Err((dev, e)),
        };
        let actual = dev.blocks();
        if actual < sb.geometry.blocks {
            let recorded = sb.geometry.blocks;
            return Err((dev, StoreRefused::Truncated { recorded, actual }));
        }
        let mut s = Self::empty(dev, sb.geometry, sb.node);
        s.generation = sb.generation;
        s.current = copy;
        s.meta_set = sb.meta_set;
        s.meta = sb.meta;
        s.reads = reads;
        match s.scan() {
            Ok(mut report) => {
                report.superblocks = copies;
                Ok((s, report))
            }
            Err(e) => Err((s.dev, e)),
        }
    }

    /// Reads the table into `entries`, `index` and `held`.
    fn scan(&mut self) -> Result<OpenReport, StoreRefused> {
        let g = self.geometry;
        let mut report = OpenReport::default();
        // Pages named by more than one valid entry, and all their blocks.
        let mut dups: BTreeMap<GlobalAddr, Vec<u64>> = BTreeMap::new();
        let mut max_serial = 0;
        for t in 0..g.table_blocks {
            self.read_scratch(g.table_start + t)
                .map_err(|_| StoreRefused::Io)?;
            for i in 0..ENTRIES_PER_BLOCK {
                let block = t * ENTRIES_PER_BLOCK + i;
                let raw = &self.scratch.0[i as usize * ENTRY_LEN..][..ENTRY_LEN];
                let e = match Entry::decode(raw, block) {
                    Ok(None) => continue,
                    Ok(Some(e)) if block < g.data_blocks => e,
                    Ok(Some(_)) | Err(()) => {
                        report.bad_entries += 1;
                        continue;
                    }
                };
                max_serial = max_serial.max(e.serial);
                self.entries.insert(block, e);
                self.mark_used(block);
                match self.index.get(&e.page) {
                    None => {
                        self.index.insert(e.page, (e.stamp, block));
                    }
                    Some(&(_, first)) => dups
                        .entry(e.page)
                        .or_insert_with(|| vec![first])
                        .push(block),
                }
            }
        }
        self.next_serial = max_serial.saturating_add(1);
        for (page, mut blocks) in dups {
            let key = |b: &u64| self.entries.get(b).map(|e| (e.stamp, e.serial));
            blocks.sort_by_key(|b| core::cmp::Reverse(key(b)));
            let mut winner = None;
            for b in blocks {
                let Some(e) = self.entries.get(&b).copied() else {
                    continue;
                };
                if winner.is_none() {
                    self.read_scratch(g.data_start + b)
                        .map_err(|_| StoreRefused::Io)?;
                    if data_checksum(&self.scratch.0) == e.sum {
                        winner = Some((e.stamp, b));
                        continue;
                    }
                    report.bad_copies += 1;
                } else {
                    report.superseded += 1;
                }
                self.held.insert((page, b));
            }
            match winner {
                Some(w) => self.index.insert(page, w),
                None => self.index.remove(&page),
            };
        }
        report.pages = self.index.len() as u64;
        Ok(report)
    }

    /// The node the disk was formatted for.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// Where the areas lie.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Pages the store can hold (one data block is the spare).
    pub fn capacity(&self) -> u64 {
        self.geometry.data_blocks - 1
    }

    /// The durable value of meta key `key`; `None` if never set or `key`
    /// is not below [`META_KEYS`].
    pub fn meta(&self, key: usize) -> Option<u128> {
        (key < META_KEYS && self.meta_set & (1 << key) != 0).then(|| self.meta[key])
    }

    /// Sets meta key `key` (below [`META_KEYS`], else `OutOfRange`) by
    /// writing the superblock copy that is not current; on the device when
    /// this returns, durable at the next sync. On error the old value stays.
    pub fn set_meta(&mut self, key: usize, value: u128) -> Result<(), DiskError> {
        if key >= META_KEYS {
            return Err(DiskError::OutOfRange);
        }
        let (old_set, old) = (self.meta_set, self.meta[key]);
        self.meta_set |= 1 << key;
        self.meta[key] = value;
        let r = self.write_superblock();
        if r.is_err() {
            self.meta_set = old_set;
            self.meta[key] = old;
        }
        r
    }

    /// Block reads issued so far (opening included).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Block writes issued so far (formatting included).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Device flushes issued so far.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// The device underneath.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Gives the device back (nothing is flushed: [`Disk::sync`] first).
    pub fn into_device(self) -> D {
        self.dev
    }

    fn read_scratch(&mut self, n: u64) -> Result<(), DiskError> {
        self.reads += 1;
        self.dev.read_block(n, &mut self.scratch.0)
    }

    fn write_scratch(&mut self, n: u64) -> Result<(), DiskError> {
        self.writes += 1;
        self.dev.write_block(n, &self.scratch.0)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        self.flushes += 1;
        self.dev.flush()
    }

    /// Writes the superblock copy that is not current, one generation on.
    fn write_superblock(&mut self) -> Result<(), DiskError> {
        let copy = 1 - self.current;
        let sb = Superblock {
            node: self.node,
            generation: self.generation.saturating_add(1),
            geometry: self.geometry,
            meta_set: self.meta_set,
            meta: self.meta,
        };
        sb.encode(copy, &mut self.scratch.0);
        self.write_scratch(u64::from(copy))?;
        self.current = copy;
        self.generation = sb.generation;
        Ok(())
    }

    /// Writes table block `t` as `entries` says it should be.
    fn write_table(&mut self, t: u64) -> Result<(), DiskError> {
        let first = t * ENTRIES_PER_BLOCK;
        self.scratch.0.fill(0);
        for (&b, e) in self.entries.range(first..first + ENTRIES_PER_BLOCK) {
            let i = (b - first) as usize;
            e.encode(b, &mut self.scratch.0[i * ENTRY_LEN..][..ENTRY_LEN]);
        }
        self.write_scratch(self.geometry.table_start + t)
    }

    fn mark_used(&mut self, b: u64) {
        self.used[(b / 64) as usize] |= 1 << (b % 64);
    }

    fn mark_free(&mut self, b: u64) {
        self.used[(b / 64) as usize] &= !(1 << (b % 64));
    }

    /// A data block not in use: the first after the last one handed out
    /// (next fit, so blocks are used in turn and a freed block is reused
    /// as late as possible).
    fn find_free(&mut self) -> Option<u64> {
        let n = self.used.len();
        let start = (self.cursor / 64) as usize;
        for k in 0..=n {
            let w = (start + k) % n;
            let mut word = self.used[w];
            if k == 0 {
                // Blocks before the cursor in its word come last.
                word |= (1u64 << (self.cursor % 64)) - 1;
            }
            if word != u64::MAX {
                let b = w as u64 * 64 + u64::from(word.trailing_ones());
                self.cursor = (b + 1) % self.geometry.data_blocks;
                return Some(b);
            }
        }
        None
    }

    /// A free data block; flushes and releases held blocks if none is.
    fn alloc_block(&mut self) -> Result<u64, DiskError> {
        if let Some(b) = self.find_free() {
            return Ok(b);
        }
        if self.held.is_empty() && self.limbo.is_empty() {
            return Err(DiskError::Full);
        }
        self.flush()?;
        self.release()?;
        self.find_free().ok_or(DiskError::Full)
    }

    /// After a flush (the copies that replaced the held ones are durable):
    /// clears the entries of held and limbo blocks, flushes again (so no
    /// cleared entry can come back after a crash) and frees the blocks. A
    /// table block that fails to write leaves its blocks in limbo, tried
    /// again next time; the first error is returned.
    fn release(&mut self) -> Result<(), DiskError> {
        if self.held.is_empty() && self.limbo.is_empty() {
            return Ok(());
        }
        let mut by_table: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (_, b) in core::mem::take(&mut self.held) {
            self.entries.remove(&b);
            by_table.entry(b / ENTRIES_PER_BLOCK).or_default().push(b);
        }
        for b in core::mem::take(&mut self.limbo) {
            by_table.entry(b / ENTRIES_PER_BLOCK).or_default().push(b);
        }
        let mut result = Ok(());
        let mut cleared = Vec::new();
        for (t, blocks) in by_table {
            match self.write_table(t) {
                Ok(()) => cleared.extend(blocks),
                Err(e) => {
                    self.limbo.extend(blocks);
                    result = result.and(Err(e));
                }
            }
        }
        if let Err(e) = self.flush() {
            self.limbo.extend(cleared);
            return Err(e);
        }
        cleared.iter().for_each(|&b| self.mark_free(b));
        result
    }

    /// Drops every entry of `page` from RAM and clears them on disk: held
    /// copies' table blocks first, the current copy's last, so a crash in
    /// between leaves the current copy. Stops at the first failed write;
    /// the blocks not known to be cleared go to limbo.
    fn forget(&mut self, page: GlobalAddr) -> Result<(), DiskError> {
        let current = self.index.remove(&page).map(|(_, b)| b);
        let held: Vec<u64> = self
            .held
            .range((page, 0)..=(page, u64::MAX))
            .map(|&(_, b)| b)
            .collect();
        let mut blocks = held.clone();
        blocks.extend(current);
        for &b in &held {
            self.held.remove(&(page, b));
        }
        for &b in &blocks {
            self.entries.remove(&b);
        }
        let last = current.map(|b| b / ENTRIES_PER_BLOCK);
        let mut tables: Vec<u64> = held.iter().map(|b| b / ENTRIES_PER_BLOCK).collect();
        tables.sort_unstable();
        tables.dedup();
        tables.retain(|&t| Some(t) != last);
        tables.extend(last);
        let mut pending = blocks;
        for t in tables {
            if let Err(e) = self.write_table(t) {
                self.limbo.extend(pending);
                return Err(e);
            }
            pending.retain(|&b| {
                if b / ENTRIES_PER_BLOCK == t {
                    self.mark_free(b);
                    false
                } else {
                    true
                }
            });
        }
        Ok(())
    }
}

/// Reads and decodes both superblock copies: the valid one with the
/// greater generation, its copy number and how many copies are valid; or,
/// with none valid, the reason of the copy that got furthest.
fn read_superblocks<D: BlockDevice>(
    dev: &mut D,
    reads: &mut u64,
) -> Result<(Superblock, u16, u8), StoreRefused> {
    let blocks = dev.blocks();
    let mut buf = PageBuf::zeroed();
    let mut best: Option<(Superblock, u16)> = None;
    let mut valid = 0u8;
    let mut why = StoreRefused::NotFormatted;
    for copy in 0..SUPERBLOCK_COPIES as u16 {
        if u64::from(copy) >= blocks {
            continue;
        }
        *reads += 1;
        dev.read_block(u64::from(copy), &mut buf.0)
            .map_err(|_| StoreRefused::Io)?;
        match Superblock::decode(&buf.0, copy) {
            Ok(sb) => {
                valid += 1;
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| sb.generation > b.generation)
                {
                    best = Some((sb, copy));
                }
            }
            Err(e) if e.rank() > why.rank() => why = e,
            Err(_) => {}
        }
    }
    best.map(|(sb, copy)| (sb, copy, valid)).ok_or(why)
}

impl<D: BlockDevice> Disk for PageStore<D> {
    fn load(&mut self, page: GlobalAddr) -> Result<Option<(Stamp, Box<PageBuf>)>, DiskError> {
        let Some(&(stamp, b)) = self.index.get(&page) else {
            return Ok(None);
        };
        let mut buf = PageBuf::zeroed();
        self.reads += 1;
        self.dev
            .read_block(self.geometry.data_start + b, &mut buf.0)?;
        if self.entries.get(&b).map(|e| e.sum) != Some(data_checksum(&buf.0)) {
            // Forgotten even if clearing its entries fails: the copy is bad
            // either way, and a failed clear is retried at the next flush.
            let _ = self.forget(page);
            return Err(DiskError::BadPage);
        }
        Ok(Some((stamp, buf)))
    }

    fn stamp(&self, page: GlobalAddr) -> Option<Stamp> {
        self.index.get(&page).map(|&(s, _)| s)
    }

    /// Writes the copy to a free block, then its table block; the previous
    /// copy is held until the next flush. `OutOfRange` for a page address
    /// that is not page-aligned (the table could not hold it).
    fn save(&mut self, page: GlobalAddr, stamp: Stamp, data: &PageBuf) -> Result<(), DiskError> {
        if !page.is_page_aligned() {
            return Err(DiskError::OutOfRange);
        }
        let old = self.index.get(&page).copied();
        match old {
            Some((s, _)) if s > stamp => return Ok(()),
            None if self.index.len() as u64 >= self.capacity() => return Err(DiskError::Full),
            _ => {}
        }
        let b = self.alloc_block()?;
        self.writes += 1;
        self.dev
            .write_block(self.geometry.data_start + b, &data.0)?;
        let e = Entry {
            page,
            stamp,
            serial: self.next_serial,
            sum: data_checksum(&data.0),
        };
        self.next_serial = self.next_serial.saturating_add(1);
        self.entries.insert(b, e);
        self.mark_used(b);
        if let Err(err) = self.write_table(b / ENTRIES_PER_BLOCK) {
            self.entries.remove(&b);
            self.limbo.insert(b);
            return Err(err);
        }
        if let Some((_, a)) = old {
            self.held.insert((page, a));
        }
        self.index.insert(page, (stamp, b));
        Ok(())
    }

    /// Clears the page's entries (current and held) on disk.
    fn remove(&mut self, page: GlobalAddr) -> Result<(), DiskError> {
        self.forget(page)
    }

    /// Flushes the device; then, if copies are held, clears their entries,
    /// flushes again and frees their blocks.
    fn sync(&mut self) -> Result<(), DiskError> {
        self.flush()?;
        self.release()
    }

    fn free_pages(&self) -> u64 {
        self.capacity().saturating_sub(self.index.len() as u64)
    }

    fn pages(&self) -> Vec<(GlobalAddr, Stamp)> {
        self.index.iter().map(|(&a, &(s, _))| (a, s)).collect()
    }

    fn stored(&self) -> u64 {
        self.index.len() as u64
    }

    /// From the index, without listing every page (the default does: a
    /// walk over a full disk in batches cost seconds with ring 0 emulated).
    fn pages_after(&self, after: Option<GlobalAddr>, max: usize) -> Vec<GlobalAddr> {
        super::durable::keys_after(&self.index, after, max)
    }
}
