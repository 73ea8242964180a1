//! The on-device format, version 1: superblock, areas and node table.
//!
//! All integers are little-endian and naturally aligned. Offsets and lengths
//! are in bytes from the start of the shared region; every area starts and
//! ends on a 4 KiB boundary.
//!
//! # Regions of the device
//!
//! | area        | offset                   | length                                   | contents                          |
//! |-------------|--------------------------|------------------------------------------|-----------------------------------|
//! | superblock  | 0                        | 4 KiB                                    | header below; rest reserved       |
//! | node table  | 4 KiB                    | `max_nodes * 128`, rounded up to 4 KiB   | one 128-byte entry per node       |
//! | lock table  | after the node table     | `lock_table_len` (default 64 KiB)        | barrier, then global locks (below) |
//! | queue area  | after the lock table     | `queue_area_len` (default 256 KiB)       | one message queue per node (below) |
//! | heap        | after the queue area     | the rest, rounded down to 4 KiB (>= 4 KiB) | pool directory, then pools (below) |
//!
//! The superblock records every area's offset and length, so readers follow
//! the recorded layout, never the defaults above.
//!
//! # Superblock header (first 256 bytes of the region)
//!
//! | offset | size | field                   | value                                               |
//! |-------:|-----:|-------------------------|-----------------------------------------------------|
//! |      0 |    8 | magic                   | `b"SHMOS\0v1"`                                      |
//! |      8 |    4 | version                 | 1                                                   |
//! |     12 |    4 | init word (atomic)      | 0 blank, 1 being initialised, 2 ready               |
//! |     16 |    8 | total size              | bytes of the region in use (multiple of 4 KiB)      |
//! |     24 |    4 | superblock length       | 4096                                                |
//! |     28 |    4 | max nodes               | 1..=64 entries in the node table                    |
//! |     32 |    4 | node entry size         | 128                                                 |
//! |     36 |    4 | flags                   | 0                                                   |
//! |     40 |    8 | heartbeat timeout (ns)  | > 0; default 1 s                                    |
//! |     48 |   16 | node table              | offset u64, length u64                              |
//! |     64 |   16 | lock table              | offset u64, length u64                              |
//! |     80 |   16 | queue area              | offset u64, length u64                              |
//! |     96 |   16 | heap                    | offset u64, length u64                              |
//! |    112 |  136 | reserved                | 0                                                   |
//! |    248 |    8 | checksum                | FNV-1a 64 of bytes 0..248, init word read as 0      |
//!
//! The checksum leaves out the init word because that word changes after the
//! header is written. FNV-1a changes its result for any change confined to
//! one byte, so every single-field corruption is caught.
//!
//! Initialisation: the first node to compare-and-swap the init word 0 -> 1
//! writes the header and zeroes the node, lock and queue areas, then stores
//! 2 with release ordering. Everyone else waits (acquire) for 2 and validates
//! the header: magic, version, checksum, sizes, and that every area is
//! aligned, non-empty, inside the region and overlaps no other area.
//!
//! # Node table entry (128 bytes; entry `i` at `node_table.offset + 128 * i`)
//!
//! | offset | size | field          | value                                                    |
//! |-------:|-----:|----------------|----------------------------------------------------------|
//! |      0 |    4 | state          | 0 unused, 1 joining, 2 live, 3 dead, 4 left              |
//! |      4 |    4 | generation     | 0 before the first join; +1 (mod 2^32, skipping 0) per join |
//! |      8 |    8 | heartbeat      | counter the node increments while live (atomic)          |
//! |     16 |    4 | doorbell peer  | ivshmem IVPosition, `u32::MAX` when none                 |
//! |     20 |    4 | app count      | number of apps the node runs                             |
//! |     24 |    8 | memory MiB     | the node's RAM                                           |
//! |     32 |    4 | label length   | 0..=48                                                   |
//! |     36 |    4 | reserved       | 0                                                        |
//! |     40 |   48 | label          | UTF-8 (e.g. the app list), `label length` bytes used     |
//! |     88 |    4 | pending        | doorbell vectors rung, not yet taken (atomic, bit each)  |
//! |     92 |    4 | progress       | published progress for barriers (atomic)                 |
//! |     96 |    8 | signals        | signals raised, not yet taken (atomic, bit each)         |
//! |    104 |    4 | barrier        | barrier epoch this node arrived at, 0 never (atomic)     |
//! |    108 |   20 | reserved       | 0                                                        |
//!
//! State and generation form one 64-bit atomic "status word" at offset 0
//! (`generation << 32 | state`), so that a join, a leave and a declaration
//! of death are each a single compare-and-swap that also checks the
//! generation. The facts (16..128) are written while the state is
//! "joining"; readers re-check the status word around their copy. A join
//! thereby also zeroes the pending, progress, signal and barrier fields.
//!
//! # Lock table (see [`lock`](crate::lock) and [`barrier`](crate::barrier))
//!
//! 64-byte slots. Slot 0: the barrier's released epoch (u32 at 0, atomic),
//! rest 0. Slot `i >= 1`: lock id `i`: lock word (u64 at 0: holder tag
//! `generation << 32 | process << 16 | node << 8`, bit 0 contended, 0
//! free), waiting-node bitmap (u64 at 8), reservation (u64 at 16:
//! `generation << 32 | node << 8 | 1`, 0 free), rest 0. `len / 64 - 1`
//! locks: 1023 by default.
//!
//! # Queue area (see [`message`](crate::message))
//!
//! Node `n`'s queue at `queue_area.offset + n * Q`, `Q = queue_area.len /
//! max_nodes` rounded down to 64: a 128-byte header (head u64 at 0, reserve
//! lock u64 at 8, space waiters u64 at 16, tail u64 at 64, receive lock u64
//! at 72) and a ring of `Q - 128` (rounded down to 32) bytes of records, each
//! a 32-byte header (control u64 = `position / 32 << 8 | state`, port u32,
//! length u32, sender tag u64, span u32, destination generation u32) and
//! the payload, padded to 32 bytes. Largest message: ring - 32 bytes (8,032
//! by default; 64 KiB needs `queue_area_len >= max_nodes * (64 KiB + 192)`).
//!
//! # Heap (see [`pool`](crate::pool) for every field)
//!
//! | offset in the heap | length      | contents                                                   |
//! |-------------------:|-------------|------------------------------------------------------------|
//! |                  0 | 4 KiB       | magic `SHMPOOL1`, init word, directory lock                 |
//! |              4 KiB | 8 KiB       | pool directory: 64 entries of 128 bytes (state, lock, extent, name) |
//! |             12 KiB | the rest    | pool extents, page-aligned: header page (counters, free lists, journal), slot table (64 B per region slot), data |
//!
//! Not zeroed when the superblock is written: the first `Pools::attach`
//! initialises a blank (all-zero) heap.

use core::fmt;

use crate::error::ShmError;

/// Magic at offset 0 of the superblock.
pub const MAGIC: [u8; 8] = *b"SHMOS\0v1";
/// Version of the on-device format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment and granularity of every area.
pub const PAGE_SIZE: u64 = 4096;
/// Length of the superblock area.
pub const SUPERBLOCK_LEN: u64 = 4096;
/// Length of the checksummed superblock header.
pub const HEADER_LEN: usize = 256;
/// Size of one node-table entry.
pub const NODE_ENTRY_LEN: usize = 128;
/// Most nodes the format supports (a `u64` bitmap holds them).
pub const MAX_NODES: usize = 64;
/// Longest node label in bytes.
pub const LABEL_MAX: usize = 48;
/// Smallest heap area the format accepts.
pub const MIN_HEAP_LEN: u64 = PAGE_SIZE;

/// Init word: nobody has started initialising.
pub const INIT_BLANK: u32 = 0;
/// Init word: a node is writing the superblock.
pub const INIT_BUSY: u32 = 1;
/// Init word: the superblock is written and may be validated.
pub const INIT_READY: u32 = 2;

/// Byte offsets of the superblock header fields.
pub mod sb {
    /// Magic, 8 bytes.
    pub const MAGIC: usize = 0;
    /// Version, u32.
    pub const VERSION: usize = 8;
    /// Init word, atomic u32.
    pub const INIT: usize = 12;
    /// Total size, u64.
    pub const TOTAL_SIZE: usize = 16;
    /// Superblock length, u32.
    pub const SUPERBLOCK_LEN: usize = 24;
    /// Max nodes, u32.
    pub const MAX_NODES: usize = 28;
    /// Node entry size, u32.
    pub const NODE_ENTRY_LEN: usize = 32;
    /// Flags, u32.
    pub const FLAGS: usize = 36;
    /// Heartbeat timeout in ns, u64.
    pub const HEARTBEAT_TIMEOUT_NS: usize = 40;
    /// Node table offset and length, 2 x u64.
    pub const NODE_TABLE: usize = 48;
    /// Lock table offset and length, 2 x u64.
    pub const LOCK_TABLE: usize = 64;
    /// Queue area offset and length, 2 x u64.
    pub const QUEUE_AREA: usize = 80;
    /// Heap offset and length, 2 x u64.
    pub const HEAP: usize = 96;
    /// Start of the reserved bytes.
    pub const RESERVED: usize = 112;
    /// Checksum, u64.
    pub const CHECKSUM: usize = 248;
}

/// Byte offsets of the node-table entry fields.
pub mod entry {
    /// Status word: state (low u32) and generation (high u32), atomic u64.
    pub const STATUS: usize = 0;
    /// Heartbeat counter, atomic u64.
    pub const HEARTBEAT: usize = 8;
    /// Start of the facts the joining node writes.
    pub const FACTS: usize = 16;
    /// Doorbell peer id, u32.
    pub const DOORBELL_PEER: usize = 16;
    /// App count, u32.
    pub const APP_COUNT: usize = 20;
    /// Memory in MiB, u64.
    pub const MEMORY_MIB: usize = 24;
    /// Label length, u32.
    pub const LABEL_LEN: usize = 32;
    /// Label bytes.
    pub const LABEL: usize = 40;
    /// Doorbell vectors rung on this node and not yet taken, one bit each
    /// (atomic u32). Rings set it even with hardware doorbells, so a node on
    /// ivshmem-plain finds them by polling; zeroed at join.
    pub const PENDING: usize = 88;
    /// Progress this node has published through a cluster-wide step, for
    /// barriers (atomic u32); zeroed at join.
    pub const PROGRESS: usize = 92;
    /// Signals raised on this node and not yet taken, one bit each (atomic
    /// u64); zeroed at join.
    pub const SIGNALS: usize = 96;
    /// Cluster barrier epoch this node arrived at, 0 = never (atomic u32);
    /// zeroed at join.
    pub const BARRIER: usize = 104;
    /// DSM RAM pages this node has free (atomic u32), published for the
    /// other nodes' policy controllers; zeroed at join.
    pub const DSM_FREE_RAM: usize = 108;
    /// DSM disk pages this node has free (atomic u32); zeroed at join.
    pub const DSM_FREE_DISK: usize = 112;
}

/// What a node has free for the DSM, as it publishes it in its node-table
/// entry: the policy controllers of the others place copies and migrate
/// pages by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct FreeSpace {
    /// Pages of its DSM RAM budget not in use.
    pub ram_pages: u32,
    /// Pages its disk can still store.
    pub disk_pages: u32,
}

/// Doorbell peer value meaning "no doorbell".
pub const NO_PEER: u32 = u32::MAX;

/// Parameters the initialising node writes into a blank region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    /// Entries in the node table (1..=64).
    pub max_nodes: u16,
    /// A live node whose heartbeat does not change for this long is dead.
    pub heartbeat_timeout_ns: u64,
    /// Bytes reserved for the lock table (rounded up to 4 KiB, > 0).
    pub lock_table_len: u64,
    /// Bytes reserved for the message queues (rounded up to 4 KiB, > 0).
    pub queue_area_len: u64,
}

impl Default for InitParams {
    fn default() -> Self {
        Self {
            max_nodes: 32,
            heartbeat_timeout_ns: 1_000_000_000,
            lock_table_len: 64 * 1024,
            queue_area_len: 256 * 1024,
        }
    }
}

/// One area of the region: `offset..offset + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Area {
    /// Start, in bytes from the region's base.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Area {
    /// One past the last byte (validated areas never overflow).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    fn overlaps(&self, other: &Area) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

/// Where each area lies, as recorded in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Layout {
    /// The superblock itself.
    pub superblock: Area,
    /// The node table.
    pub node_table: Area,
    /// Reserved for global locks.
    pub lock_table: Area,
    /// Reserved for message queues.
    pub queue_area: Area,
    /// Reserved for pools and the allocator.
    pub heap: Area,
}

/// A validated superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Superblock {
    /// Format version (1).
    pub version: u32,
    /// Bytes of the region in use.
    pub total_size: u64,
    /// Entries in the node table.
    pub max_nodes: u16,
    /// Heartbeat timeout in nanoseconds.
    pub heartbeat_timeout_ns: u64,
    /// Where each area lies.
    pub layout: Layout,
}

fn round_up_page(n: u64) -> Option<u64> {
    n.checked_add(PAGE_SIZE - 1)
        .map(|v| v / PAGE_SIZE * PAGE_SIZE)
}

fn get<const N: usize>(bytes: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    // Offsets are this module's constants, always in range; the fallback
    // keeps the function total anyway.
    if let Some(s) = bytes.get(off..off.saturating_add(N)) {
        out.copy_from_slice(s);
    }
    out
}

fn put(bytes: &mut [u8], off: usize, val: &[u8]) {
    if let Some(s) = bytes.get_mut(off..off.saturating_add(val.len())) {
        s.copy_from_slice(val);
    }
}

pub(crate) fn le_u32(bytes: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get(bytes, off))
}

pub(crate) fn le_u64(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get(bytes, off))
}

/// FNV-1a 64 over the header up to the checksum, with the init word as 0.
pub fn header_checksum(header: &[u8; HEADER_LEN]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in header.iter().enumerate().take(sb::CHECKSUM) {
        let b = if (sb::INIT..sb::INIT + 4).contains(&i) {
            0
        } else {
            b
        };
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Superblock {
    /// The layout a region of `region_len` bytes gets with `params`.
    pub fn plan(region_len: usize, params: &InitParams) -> Result<Self, ShmError> {
        if params.max_nodes == 0 || usize::from(params.max_nodes) > MAX_NODES {
            return Err(ShmError::InvalidArgument {
                what: "max_nodes must be 1..=64",
            });
        }
        if params.heartbeat_timeout_ns == 0 {
            return Err(ShmError::InvalidArgument {
                what: "heartbeat timeout must be > 0",
            });
        }
        let area_len = |len: u64, what| match round_up_page(len) {
            Some(l) if l > 0 => Ok(l),
            _ => Err(ShmError::InvalidArgument { what }),
        };
        let node_table_len = area_len(
            u64::from(params.max_nodes) * NODE_ENTRY_LEN as u64,
            "node table",
        )?;
        let lock_len = area_len(params.lock_table_len, "lock table length")?;
        let queue_len = area_len(params.queue_area_len, "queue area length")?;

        let total =
            u64::try_from(region_len).map_err(|_| ShmError::TooSmall)? / PAGE_SIZE * PAGE_SIZE;
        let mut next = SUPERBLOCK_LEN;
        let mut take = |len: u64| -> Result<Area, ShmError> {
            let a = Area { offset: next, len };
            next = next.checked_add(len).ok_or(ShmError::TooSmall)?;
            Ok(a)
        };
        let node_table = take(node_table_len)?;
        let lock_table = take(lock_len)?;
        let queue_area = take(queue_len)?;
        let heap_len = total.checked_sub(next).ok_or(ShmError::TooSmall)?;
        if heap_len < MIN_HEAP_LEN {
            return Err(ShmError::TooSmall);
        }
        Ok(Self {
            version: FORMAT_VERSION,
            total_size: total,
            max_nodes: params.max_nodes,
            heartbeat_timeout_ns: params.heartbeat_timeout_ns,
            layout: Layout {
                superblock: Area {
                    offset: 0,
                    len: SUPERBLOCK_LEN,
                },
                node_table,
                lock_table,
                queue_area,
                heap: Area {
                    offset: next,
                    len: heap_len,
                },
            },
        })
    }

    /// The header bytes for this superblock, checksum included, init word 0.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        put(&mut h, sb::MAGIC, &MAGIC);
        put(&mut h, sb::VERSION, &self.version.to_le_bytes());
        put(&mut h, sb::TOTAL_SIZE, &self.total_size.to_le_bytes());
        put(
            &mut h,
            sb::SUPERBLOCK_LEN,
            &(SUPERBLOCK_LEN as u32).to_le_bytes(),
        );
        put(
            &mut h,
            sb::MAX_NODES,
            &u32::from(self.max_nodes).to_le_bytes(),
        );
        put(
            &mut h,
            sb::NODE_ENTRY_LEN,
            &(NODE_ENTRY_LEN as u32).to_le_bytes(),
        );
        put(
            &mut h,
            sb::HEARTBEAT_TIMEOUT_NS,
            &self.heartbeat_timeout_ns.to_le_bytes(),
        );
        let l = &self.layout;
        for (off, a) in [
            (sb::NODE_TABLE, l.node_table),
            (sb::LOCK_TABLE, l.lock_table),
            (sb::QUEUE_AREA, l.queue_area),
            (sb::HEAP, l.heap),
        ] {
            put(&mut h, off, &a.offset.to_le_bytes());
            put(&mut h, off + 8, &a.len.to_le_bytes());
        }
        let sum = header_checksum(&h);
        put(&mut h, sb::CHECKSUM, &sum.to_le_bytes());
        h
    }

    /// Validates header bytes read from a region of `region_len` bytes.
    ///
    /// Does not look at the init word: the caller has already waited for it.
    pub fn parse(h: &[u8; HEADER_LEN], region_len: usize) -> Result<Self, ShmError> {
        if get::<8>(h, sb::MAGIC) != MAGIC {
            return Err(ShmError::BadMagic);
        }
        let version = le_u32(h, sb::VERSION);
        if version != FORMAT_VERSION {
            return Err(ShmError::UnsupportedVersion { found: version });
        }
        if le_u64(h, sb::CHECKSUM) != header_checksum(h) {
            return Err(ShmError::Corrupt {
                what: "superblock checksum",
            });
        }
        let corrupt = |what| Err(ShmError::Corrupt { what });
        if u64::from(le_u32(h, sb::SUPERBLOCK_LEN)) != SUPERBLOCK_LEN {
            return corrupt("superblock length");
        }
        if le_u32(h, sb::NODE_ENTRY_LEN) as usize != NODE_ENTRY_LEN {
            return corrupt("node entry size");
        }
        if le_u32(h, sb::FLAGS) != 0 {
            return corrupt("superblock flags");
        }
        let max_nodes = le_u32(h, sb::MAX_NODES);
        let max_nodes = match u16::try_from(max_nodes) {
            Ok(n) if n >= 1 && usize::from(n) <= MAX_NODES => n,
            _ => return corrupt("max nodes"),
        };
        let heartbeat_timeout_ns = le_u64(h, sb::HEARTBEAT_TIMEOUT_NS);
        if heartbeat_timeout_ns == 0 {
            return corrupt("heartbeat timeout");
        }
        let total_size = le_u64(h, sb::TOTAL_SIZE);
        if !total_size.is_multiple_of(PAGE_SIZE) {
            return corrupt("total size");
        }
        // A formatted size larger than what this node mapped: the areas at
        // the end are not there for us.
        if u64::try_from(region_len).is_ok_and(|r| total_size > r) {
            return Err(ShmError::TooSmall);
        }
        let area = |off: usize, what| {
            let a = Area {
                offset: le_u64(h, off),
                len: le_u64(h, off + 8),
            };
            let fits = a.offset.checked_add(a.len).is_some_and(|e| e <= total_size);
            if !a.offset.is_multiple_of(PAGE_SIZE)
                || !a.len.is_multiple_of(PAGE_SIZE)
                || a.len == 0
                || !fits
            {
                Err(ShmError::Corrupt { what })
            } else {
                Ok(a)
            }
        };
        let layout = Layout {
            superblock: Area {
                offset: 0,
                len: SUPERBLOCK_LEN,
            },
            node_table: area(sb::NODE_TABLE, "node table area")?,
            lock_table: area(sb::LOCK_TABLE, "lock table area")?,
            queue_area: area(sb::QUEUE_AREA, "queue area")?,
            heap: area(sb::HEAP, "heap area")?,
        };
        if total_size < SUPERBLOCK_LEN {
            return corrupt("total size");
        }
        if layout.node_table.len < u64::from(max_nodes) * NODE_ENTRY_LEN as u64 {
            return corrupt("node table too short for max nodes");
        }
        let areas = layout.areas();
        for (i, a) in areas.iter().enumerate() {
            for b in areas.iter().skip(i + 1) {
                if a.overlaps(b) {
                    return corrupt("areas overlap");
                }
            }
        }
        Ok(Self {
            version,
            total_size,
            max_nodes,
            heartbeat_timeout_ns,
            layout,
        })
    }
}

impl Layout {
    /// All areas, superblock first.
    pub fn areas(&self) -> [Area; 5] {
        [
            self.superblock,
            self.node_table,
            self.lock_table,
            self.queue_area,
            self.heap,
        ]
    }
}

/// Lifecycle state of a node-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
#[repr(u32)]
pub enum NodeState {
    /// Never used.
    Unused = 0,
    /// A node is writing its facts.
    Joining = 1,
    /// The node is up and heartbeating.
    Live = 2,
    /// An observer saw its heartbeat stop.
    Dead = 3,
    /// The node left in an orderly way.
    Left = 4,
}

impl NodeState {
    /// The state for a raw value read from shared memory, if it is one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Unused,
            1 => Self::Joining,
            2 => Self::Live,
            3 => Self::Dead,
            4 => Self::Left,
            _ => return None,
        })
    }

    /// Lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unused => "unused",
            Self::Joining => "joining",
            Self::Live => "live",
            Self::Dead => "dead",
            Self::Left => "left",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Incarnation number of a node entry; each join takes a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Generation(pub u32);

impl Generation {
    /// The generation the next join takes (wraps, skipping 0 = never joined).
    pub fn next(self) -> Self {
        match self.0.wrapping_add(1) {
            0 => Self(1),
            g => Self(g),
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The status word of an entry: `generation << 32 | state`.
pub(crate) fn status_word(state: NodeState, generation: Generation) -> u64 {
    (u64::from(generation.0) << 32) | state as u64
}

/// Splits a status word into raw state and generation.
pub(crate) fn split_status(word: u64) -> (u32, Generation) {
    (word as u32, Generation((word >> 32) as u32))
}

/// A node's label: validated UTF-8, at most 48 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Label {
    len: u8,
    bytes: [u8; LABEL_MAX],
}

impl Label {
    /// A label from `s`, if it is at most 48 bytes.
    pub fn new(s: &str) -> Option<Self> {
        let src = s.as_bytes();
        if src.len() > LABEL_MAX {
            return None;
        }
        let mut bytes = [0u8; LABEL_MAX];
        bytes[..src.len()].copy_from_slice(src);
        Some(Self {
            len: src.len() as u8,
            bytes,
        })
    }

    /// The label text.
    pub fn as_str(&self) -> &str {
        // Built only from validated UTF-8, so the fallback never shows.
        core::str::from_utf8(self.bytes.get(..usize::from(self.len)).unwrap_or(&[])).unwrap_or("")
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a node tells the others about itself when it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts<'a> {
    /// Its ivshmem peer id, if its device has doorbells.
    pub doorbell_peer: Option<u16>,
    /// Its RAM in MiB.
    pub memory_mib: u64,
    /// How many apps it runs.
    pub app_count: u32,
    /// Free text, e.g. the app list (at most 48 bytes of UTF-8).
    pub label: &'a str,
}

impl NodeFacts<'_> {
    /// The facts bytes (entry offsets 16..128).
    pub fn encode(&self) -> Result<[u8; NODE_ENTRY_LEN - entry::FACTS], ShmError> {
        let label = Label::new(self.label).ok_or(ShmError::InvalidArgument {
            what: "label longer than 48 bytes",
        })?;
        let mut f = [0u8; NODE_ENTRY_LEN - entry::FACTS];
        let at = |off: usize| off - entry::FACTS;
        let peer = self.doorbell_peer.map_or(NO_PEER, u32::from);
        put(&mut f, at(entry::DOORBELL_PEER), &peer.to_le_bytes());
        put(&mut f, at(entry::APP_COUNT), &self.app_count.to_le_bytes());
        put(
            &mut f,
            at(entry::MEMORY_MIB),
            &self.memory_mib.to_le_bytes(),
        );
        put(
            &mut f,
            at(entry::LABEL_LEN),
            &u32::from(label.len).to_le_bytes(),
        );
        put(&mut f, at(entry::LABEL), label.as_str().as_bytes());
        Ok(f)
    }
}

/// A validated copy of one node-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct NodeInfo {
    /// Index in the node table.
    pub id: u16,
    /// Lifecycle state.
    pub state: NodeState,
    /// Incarnation.
    pub generation: Generation,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// ivshmem peer id to ring, if any.
    pub doorbell_peer: Option<u16>,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// Number of apps.
    pub app_count: u32,
    /// Free text (the app list).
    pub label: Label,
    /// What it last published free for the DSM.
    pub dsm_free: FreeSpace,
}

impl NodeInfo {
    /// Validates the 128 bytes of entry `id`.
    pub fn parse(id: u16, e: &[u8; NODE_ENTRY_LEN]) -> Result<Self, ShmError> {
        let (raw_state, generation) = split_status(le_u64(e, entry::STATUS));
        let state =
            NodeState::from_raw(raw_state).ok_or(ShmError::Corrupt { what: "node state" })?;
        if state != NodeState::Unused && generation.0 == 0 {
            return Err(ShmError::Corrupt {
                what: "node generation",
            });
        }
        let doorbell_peer = match le_u32(e, entry::DOORBELL_PEER) {
            NO_PEER => None,
            p => Some(u16::try_from(p).map_err(|_| ShmError::Corrupt {
                what: "node doorbell peer",
            })?),
        };
        // Range-check before any arithmetic with the length.
        let raw_label = usize::try_from(le_u32(e, entry::LABEL_LEN))
            .ok()
            .filter(|&n| n <= LABEL_MAX)
            .and_then(|n| e.get(entry::LABEL..entry::LABEL + n))
            .ok_or(ShmError::Corrupt {
                what: "node label length",
            })?;
        let label = core::str::from_utf8(raw_label)
            .ok()
            .and_then(Label::new)
            .ok_or(ShmError::Corrupt { what: "node label" })?;
        Ok(Self {
            id,
            state,
            generation,
            heartbeat: le_u64(e, entry::HEARTBEAT),
            doorbell_peer,
            memory_mib: le_u64(e, entry::MEMORY_MIB),
            app_count: le_u32(e, entry::APP_COUNT),
            label,
            dsm_free: FreeSpace {
                ram_pages: le_u32(e, entry::DSM_FREE_RAM),
                disk_pages: le_u32(e, entry::DSM_FREE_DISK),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_encode_parse_round_trip() {
        let sbk = Superblock::plan(1 << 20, &InitParams::default()).unwrap();
        assert_eq!(sbk.layout.node_table.offset, 4096);
        assert_eq!(sbk.layout.node_table.len, 4096);
        assert_eq!(sbk.layout.heap.end(), 1 << 20);
        let h = sbk.encode();
        assert_eq!(Superblock::parse(&h, 1 << 20), Ok(sbk));
        // The init word does not take part in the checksum.
        let mut h2 = h;
        h2[sb::INIT] = 2;
        assert_eq!(Superblock::parse(&h2, 1 << 20), Ok(sbk));
    }

    #[test]
    fn plan_refuses_small_regions_and_bad_params() {
        assert_eq!(
            Superblock::plan(64 * 1024, &InitParams::default()),
            Err(ShmError::TooSmall)
        );
        let p = InitParams {
            max_nodes: 65,
            ..InitParams::default()
        };
        assert!(matches!(
            Superblock::plan(1 << 20, &p),
            Err(ShmError::InvalidArgument { .. })
        ));
        let p = InitParams {
            lock_table_len: u64::MAX,
            ..InitParams::default()
        };
        assert!(Superblock::plan(1 << 20, &p).is_err());
    }

    #[test]
    fn node_entry_round_trip() {
        let facts = NodeFacts {
            doorbell_peer: Some(3),
            memory_mib: 512,
            app_count: 2,
            label: "ping,pong",
        };
        let mut e = [0u8; NODE_ENTRY_LEN];
        e[entry::FACTS..].copy_from_slice(&facts.encode().unwrap());
        e[..8].copy_from_slice(&status_word(NodeState::Live, Generation(7)).to_le_bytes());
        let info = NodeInfo::parse(5, &e).unwrap();
        assert_eq!(info.id, 5);
        assert_eq!(info.state, NodeState::Live);
        assert_eq!(info.generation, Generation(7));
        assert_eq!(info.doorbell_peer, Some(3));
        assert_eq!(info.label.as_str(), "ping,pong");
    }

    #[test]
    fn label_is_validated() {
        let mut e = [0u8; NODE_ENTRY_LEN];
        e[entry::LABEL_LEN] = 49;
        assert!(NodeInfo::parse(0, &e).is_err());
        e[entry::LABEL_LEN] = 2;
        e[entry::LABEL] = 0xff;
        assert_eq!(
            NodeInfo::parse(0, &e),
            Err(ShmError::Corrupt { what: "node label" })
        );
    }
}
