//! The directory: a tree of 4 KiB directory pages that maps ranges of the
//! global data space to their responsible nodes (format in
//! [`dsm`](super)), and the linker that inserts and removes ranges.
//!
//! The tree is a B+ tree keyed by range start. An interior page's entries
//! cover its span contiguously, each naming a child page with exactly that
//! span and one level lower; a leaf's entries are allocated ranges whose
//! start lies in its span (a range may run on past the leaf's span end).
//! Only the root, at [`ROOT_DIRECTORY`], may be an empty leaf. A full page
//! splits in two; a full root moves its entries into two new children and
//! stays where it is. An emptied page is unlinked and its span merged into
//! a sibling; a root left with one child takes that child's place.
//!
//! Pages come and go through [`DirectoryPages`], so the same code runs on
//! pages fetched through the coherence protocol or on a plain map in tests.
//! Every page is validated as it is read, and checked against its parent
//! entry (span and level), so a corrupt page is refused, never followed;
//! levels strictly decrease downwards, so no walk can loop.

use alloc::vec::Vec;

use crate::NodeSet;

use super::addr::{
    DATA_SPACE_START, GlobalAddr, GlobalRange, MAX_NODES, NO_NODE, PAGE_BYTES, PAGE_SIZE,
    ROOT_DIRECTORY,
};
use super::cache::PageBuf;
use super::error::DsmError;

/// Magic at offset 0 of every directory page.
pub const DIRECTORY_MAGIC: [u8; 8] = *b"SHMDSMD1";
/// Directory page format version.
pub const DIRECTORY_VERSION: u32 = 1;
/// Bytes of the directory page header.
pub const DIRECTORY_HEADER_LEN: usize = 128;
/// Bytes of one directory entry.
pub const DIRECTORY_ENTRY_LEN: usize = 64;
/// Entries a directory page holds.
pub const DIRECTORY_ENTRIES: usize = (PAGE_BYTES - DIRECTORY_HEADER_LEN) / DIRECTORY_ENTRY_LEN;
/// Highest level a page may have (the tree is at most this deep + 1).
pub const MAX_LEVEL: u16 = 16;

/// Byte offsets of the header fields.
pub mod header {
    /// Magic, 8 bytes.
    pub const MAGIC: usize = 0;
    /// Version, u32.
    pub const VERSION: usize = 8;
    /// Level, u16: 0 for a leaf.
    pub const LEVEL: usize = 12;
    /// Entry count, u16.
    pub const COUNT: usize = 14;
    /// This page's own global address, u128.
    pub const SELF_ADDR: usize = 16;
    /// First address of the span the page indexes, u128.
    pub const SPAN_FIRST: usize = 32;
    /// Last address (inclusive) of the span, u128.
    pub const SPAN_LAST: usize = 48;
    /// Start of the reserved bytes (zero).
    pub const RESERVED: usize = 64;
    /// Checksum, u64.
    pub const CHECKSUM: usize = 120;
}

/// Byte offsets of the entry fields.
pub mod entry {
    /// Range start, u128.
    pub const FIRST: usize = 0;
    /// Range last address (inclusive), u128.
    pub const LAST: usize = 16;
    /// Child directory page address (interior), or 0 (leaf), u128.
    pub const CHILD: usize = 32;
    /// Responsible node, u16.
    pub const RESPONSIBLE: usize = 48;
    /// Start of the reserved bytes (zero).
    pub const RESERVED: usize = 50;
    /// End of the reserved bytes.
    pub const RESERVED_END: usize = 56;
    /// The nodes the policy controller chose to hold the range's copies
    /// besides its responsible node (leaf; 0 in interior entries and for
    /// ranges placed by ring order), a node bit set, u64.
    pub const REPLICAS: usize = 56;
}

/// One directory entry as decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct DirEntry {
    /// First address of the range (leaf) or child span (interior).
    pub first: GlobalAddr,
    /// Last address, inclusive.
    pub last: GlobalAddr,
    /// Child directory page (interior), or address 0 (leaf).
    pub child: GlobalAddr,
    /// The responsible node of the range (leaf) or of the child page
    /// (interior); [`NO_NODE`] for a range nobody is responsible for.
    pub responsible: u16,
    /// The disks chosen for the range's copies besides the responsible
    /// node's (leaf); empty: ring order.
    pub replicas: NodeSet,
}

impl DirEntry {
    /// The entry's range.
    pub fn range(&self) -> Result<GlobalRange, DsmError> {
        GlobalRange::from_bounds(self.first, self.last)
    }
}

/// A directory page as decoded.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirectoryPage {
    /// The page's own global address.
    pub addr: GlobalAddr,
    /// 0 for a leaf; children have the parent's level - 1.
    pub level: u16,
    /// First address of the span the page indexes.
    pub first: GlobalAddr,
    /// Last address of the span, inclusive.
    pub last: GlobalAddr,
    /// The entries, sorted by address.
    pub entries: Vec<DirEntry>,
}

/// FNV-1a 64 over a page with the checksum field read as zero.
pub fn directory_checksum(page: &[u8; PAGE_BYTES]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in page.iter().enumerate() {
        let b = if (header::CHECKSUM..header::CHECKSUM + 8).contains(&i) {
            0
        } else {
            b
        };
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn corrupt(what: &'static str) -> DsmError {
    DsmError::CorruptDirectory { what }
}

fn u128_at(b: &[u8], o: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    u128::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn is_page_last(a: GlobalAddr) -> bool {
    a.0 % PAGE_SIZE == PAGE_SIZE - 1
}

impl DirectoryPage {
    /// An empty leaf spanning the whole data space: the fresh root.
    pub fn empty_root() -> Self {
        Self {
            addr: ROOT_DIRECTORY,
            level: 0,
            first: GlobalAddr(DATA_SPACE_START),
            last: GlobalAddr(u128::MAX),
            entries: Vec::new(),
        }
    }

    /// True for a leaf (entries are ranges).
    pub fn is_leaf(&self) -> bool {
        self.level == 0
    }

    /// The page image, checksum included. Does not validate: tests use it
    /// to build bad pages with good checksums.
    pub fn encode(&self) -> PageBuf {
        let mut p = PageBuf([0; PAGE_BYTES]);
        let b = &mut p.0;
        b[header::MAGIC..header::MAGIC + 8].copy_from_slice(&DIRECTORY_MAGIC);
        b[header::VERSION..header::VERSION + 4].copy_from_slice(&DIRECTORY_VERSION.to_le_bytes());
        b[header::LEVEL..header::LEVEL + 2].copy_from_slice(&self.level.to_le_bytes());
        let count = self.entries.len().min(usize::from(u16::MAX)) as u16;
        b[header::COUNT..header::COUNT + 2].copy_from_slice(&count.to_le_bytes());
        b[header::SELF_ADDR..header::SELF_ADDR + 16].copy_from_slice(&self.addr.0.to_le_bytes());
        b[header::SPAN_FIRST..header::SPAN_FIRST + 16].copy_from_slice(&self.first.0.to_le_bytes());
        b[header::SPAN_LAST..header::SPAN_LAST + 16].copy_from_slice(&self.last.0.to_le_bytes());
        for (i, e) in self.entries.iter().take(DIRECTORY_ENTRIES).enumerate() {
            let o = DIRECTORY_HEADER_LEN + i * DIRECTORY_ENTRY_LEN;
            b[o + entry::FIRST..o + entry::FIRST + 16].copy_from_slice(&e.first.0.to_le_bytes());
            b[o + entry::LAST..o + entry::LAST + 16].copy_from_slice(&e.last.0.to_le_bytes());
            b[o + entry::CHILD..o + entry::CHILD + 16].copy_from_slice(&e.child.0.to_le_bytes());
            b[o + entry::RESPONSIBLE..o + entry::RESPONSIBLE + 2]
                .copy_from_slice(&e.responsible.to_le_bytes());
            b[o + entry::REPLICAS..o + entry::REPLICAS + 8]
                .copy_from_slice(&e.replicas.0.to_le_bytes());
        }
        let sum = directory_checksum(b);
        b[header::CHECKSUM..header::CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
        p
    }

    /// Decodes and validates the page image read from global address
    /// `addr`: magic, version, checksum, level, count, own address, span,
    /// reserved bytes, and every entry (aligned, sorted, disjoint, inside
    /// the span; interior entries covering it contiguously with in-range
    /// child addresses; known responsible nodes).
    pub fn decode(bytes: &[u8; PAGE_BYTES], addr: GlobalAddr) -> Result<Self, DsmError> {
        if bytes[header::MAGIC..header::MAGIC + 8] != DIRECTORY_MAGIC {
            return Err(corrupt("magic"));
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[header::VERSION..header::VERSION + 4]);
        if u32::from_le_bytes(v) != DIRECTORY_VERSION {
            return Err(corrupt("version"));
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[header::CHECKSUM..header::CHECKSUM + 8]);
        if u64::from_le_bytes(c) != directory_checksum(bytes) {
            return Err(corrupt("checksum"));
        }
        let level = u16_at(bytes, header::LEVEL);
        if level > MAX_LEVEL {
            return Err(corrupt("level"));
        }
        let count = usize::from(u16_at(bytes, header::COUNT));
        if count > DIRECTORY_ENTRIES {
            return Err(corrupt("entry count"));
        }
        if GlobalAddr(u128_at(bytes, header::SELF_ADDR)) != addr
            || !addr.is_page_aligned()
            || !addr.in_directory_space()
        {
            return Err(corrupt("page address"));
        }
        let first = GlobalAddr(u128_at(bytes, header::SPAN_FIRST));
        let last = GlobalAddr(u128_at(bytes, header::SPAN_LAST));
        if first.0 < DATA_SPACE_START
            || !first.is_page_aligned()
            || !is_page_last(last)
            || last < first
        {
            return Err(corrupt("span"));
        }
        if bytes[header::RESERVED..header::CHECKSUM]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(corrupt("reserved header bytes"));
        }
        let end = DIRECTORY_HEADER_LEN + count * DIRECTORY_ENTRY_LEN;
        if bytes[end..].iter().any(|&b| b != 0) {
            return Err(corrupt("bytes after the last entry"));
        }
        let leaf = level == 0;
        if count == 0 && !(leaf && addr == ROOT_DIRECTORY) {
            return Err(corrupt("empty page other than the root"));
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let b = &bytes[DIRECTORY_HEADER_LEN + i * DIRECTORY_ENTRY_LEN..][..DIRECTORY_ENTRY_LEN];
            let e = DirEntry {
                first: GlobalAddr(u128_at(b, entry::FIRST)),
                last: GlobalAddr(u128_at(b, entry::LAST)),
                child: GlobalAddr(u128_at(b, entry::CHILD)),
                responsible: u16_at(b, entry::RESPONSIBLE),
                replicas: NodeSet(u64_at(b, entry::REPLICAS)),
            };
            if b[entry::RESERVED..entry::RESERVED_END]
                .iter()
                .any(|&x| x != 0)
            {
                return Err(corrupt("reserved entry bytes"));
            }
            if !e.first.is_page_aligned() || !is_page_last(e.last) || e.last < e.first {
                return Err(corrupt("entry range not whole pages"));
            }
            if e.first < first || e.first > last {
                return Err(corrupt("entry outside the page's span"));
            }
            if let Some(prev) = entries.last() {
                let prev: &DirEntry = prev;
                if e.first <= prev.last {
                    return Err(corrupt("entries unsorted or overlapping"));
                }
                if !leaf && prev.last.0.checked_add(1) != Some(e.first.0) {
                    return Err(corrupt("interior entries leave a gap"));
                }
            }
            if leaf {
                if e.child.0 != 0 {
                    return Err(corrupt("child address in a leaf entry"));
                }
                if e.responsible >= MAX_NODES && e.responsible != NO_NODE {
                    return Err(corrupt("responsible node"));
                }
            } else {
                if e.child == ROOT_DIRECTORY
                    || e.child == addr
                    || !e.child.is_page_aligned()
                    || !e.child.in_directory_space()
                {
                    return Err(corrupt("child address out of range or looping"));
                }
                if e.responsible >= MAX_NODES {
                    return Err(corrupt("responsible node of a child page"));
                }
                if !e.replicas.is_empty() {
                    return Err(corrupt("replicas in an interior entry"));
                }
                if e.last > last {
                    return Err(corrupt("child span past the page's span"));
                }
            }
            entries.push(e);
        }
        if !leaf {
            let (Some(a), Some(z)) = (entries.first(), entries.last()) else {
                return Err(corrupt("empty interior page"));
            };
            if a.first != first || z.last != last {
                return Err(corrupt("interior entries do not cover the span"));
            }
        }
        Ok(Self {
            addr,
            level,
            first,
            last,
            entries,
        })
    }
}

/// Where directory pages come from and go to: the page images of the
/// global directory space (through the coherence protocol in the kernel).
pub trait DirectoryPages {
    /// Reads the page image at `addr` into `out`.
    fn load(&mut self, addr: GlobalAddr, out: &mut PageBuf) -> Result<(), DsmError>;
    /// Writes the page image at `addr`.
    fn store(&mut self, addr: GlobalAddr, page: &PageBuf) -> Result<(), DsmError>;
    /// A fresh directory page address and its responsible node (the linker
    /// writes the page before linking it in).
    fn allocate(&mut self) -> Result<(GlobalAddr, u16), DsmError>;
    /// The page at `addr` is no longer part of the tree.
    fn release(&mut self, addr: GlobalAddr) -> Result<(), DsmError>;
}

/// The path from the root down to a leaf: interior pages and the index
/// taken in each.
type Path = Vec<(DirectoryPage, usize)>;

fn read_page<S: DirectoryPages>(s: &mut S, addr: GlobalAddr) -> Result<DirectoryPage, DsmError> {
    let mut buf = PageBuf::zeroed();
    s.load(addr, &mut buf)?;
    DirectoryPage::decode(&buf.0, addr)
}

fn write_page<S: DirectoryPages>(s: &mut S, page: &DirectoryPage) -> Result<(), DsmError> {
    s.store(page.addr, &page.encode())
}

/// Reads the child named by `e` of a page at `parent_level` and checks it
/// against the entry: same span, one level lower.
fn read_child<S: DirectoryPages>(
    s: &mut S,
    e: &DirEntry,
    parent_level: u16,
) -> Result<DirectoryPage, DsmError> {
    let c = read_page(s, e.child)?;
    if c.level.checked_add(1) != Some(parent_level) {
        return Err(corrupt("child level is not one below its parent"));
    }
    if c.first != e.first || c.last != e.last {
        return Err(corrupt("child span disagrees with its parent entry"));
    }
    Ok(c)
}

/// Walks from the root to the leaf whose span holds `addr`.
fn descend<S: DirectoryPages>(
    s: &mut S,
    addr: GlobalAddr,
) -> Result<(Path, DirectoryPage), DsmError> {
    let root = read_page(s, ROOT_DIRECTORY)?;
    if root.first.0 != DATA_SPACE_START || root.last.0 != u128::MAX {
        return Err(corrupt("root span is not the whole data space"));
    }
    let mut path = Path::new();
    let mut page = root;
    while !page.is_leaf() {
        let i = page
            .entries
            .iter()
            .position(|e| e.first <= addr && addr <= e.last)
            .ok_or(corrupt("no interior entry covers the address"))?;
        let child = read_child(s, &page.entries[i], page.level)?;
        path.push((page, i));
        page = child;
    }
    Ok((path, page))
}

fn check_data_addr(addr: GlobalAddr) -> Result<(), DsmError> {
    if addr.in_directory_space() {
        return Err(DsmError::OutOfRange);
    }
    Ok(())
}

/// Writes a fresh, empty root. Run once when the cluster's DSM is created.
pub fn format_root<S: DirectoryPages>(s: &mut S) -> Result<(), DsmError> {
    write_page(s, &DirectoryPage::empty_root())
}

/// The range with the greatest start `<= addr`, if any.
fn find_le<S: DirectoryPages>(s: &mut S, addr: GlobalAddr) -> Result<Option<DirEntry>, DsmError> {
    let mut a = addr;
    // Non-root leaves are never empty, so the predecessor is in this leaf
    // or the one before; a few steps bound the walk on a damaged tree.
    for _ in 0..4 {
        let (_, leaf) = descend(s, a)?;
        if let Some(e) = leaf.entries.iter().rev().find(|e| e.first <= a) {
            return Ok(Some(*e));
        }
        if leaf.first.0 == DATA_SPACE_START {
            return Ok(None);
        }
        a = GlobalAddr(leaf.first.0 - 1);
    }
    Err(corrupt("empty leaves in a row"))
}

/// The directory entry of the range holding `addr`.
pub fn lookup<S: DirectoryPages>(s: &mut S, addr: GlobalAddr) -> Result<DirEntry, DsmError> {
    check_data_addr(addr)?;
    match find_le(s, addr)? {
        Some(e) if addr <= e.last => Ok(e),
        _ => Err(DsmError::NotAllocated),
    }
}

/// The range holding `addr`, its responsible node and the nodes chosen
/// for its copies, as `dsm_map` needs: `NotAllocated` if none, `Unowned`
/// if its entry names no node.
pub fn resolve<S: DirectoryPages>(
    s: &mut S,
    addr: GlobalAddr,
) -> Result<(GlobalRange, u16, NodeSet), DsmError> {
    let e = lookup(s, addr)?;
    if e.responsible == NO_NODE {
        return Err(DsmError::Unowned);
    }
    Ok((e.range()?, e.responsible, e.replicas))
}

/// Links `range` into the directory with its responsible node (or
/// [`NO_NODE`]), its copies placed by ring order; `Overlap` if it overlaps
/// an allocated range.
pub fn insert<S: DirectoryPages>(
    s: &mut S,
    range: GlobalRange,
    responsible: u16,
) -> Result<(), DsmError> {
    insert_placed(s, range, responsible, NodeSet::default())
}

/// [`insert`], recording the nodes chosen to hold the range's copies
/// besides `responsible` (see `Engine::choose_replicas`).
pub fn insert_placed<S: DirectoryPages>(
    s: &mut S,
    range: GlobalRange,
    responsible: u16,
    replicas: NodeSet,
) -> Result<(), DsmError> {
    check_data_addr(range.start())?;
    if responsible >= MAX_NODES && responsible != NO_NODE {
        return Err(DsmError::NoSuchNode);
    }
    // The range with the greatest start <= our last overlaps us iff any does.
    if let Some(e) = find_le(s, range.last())?
        && e.last >= range.start()
    {
        return Err(DsmError::Overlap);
    }
    let (mut path, mut page) = descend(s, range.start())?;
    let at = page.entries.partition_point(|e| e.first < range.start());
    page.entries.insert(
        at,
        DirEntry {
            first: range.start(),
            last: range.last(),
            child: GlobalAddr(0),
            responsible,
            replicas,
        },
    );
    loop {
        if page.entries.len() <= DIRECTORY_ENTRIES {
            return write_page(s, &page);
        }
        if page.addr == ROOT_DIRECTORY {
            return split_root(s, page);
        }
        let (mut parent, idx) = path
            .pop()
            .ok_or(corrupt("non-root page without a parent"))?;
        let right_entries = page.entries.split_off(page.entries.len() / 2);
        let sep = right_entries[0].first;
        let (addr, resp) = s.allocate()?;
        let right = DirectoryPage {
            addr,
            level: page.level,
            first: sep,
            last: page.last,
            entries: right_entries,
        };
        page.last = GlobalAddr(sep.0 - 1);
        // Children first, so the parent never names a page not yet written.
        write_page(s, &right)?;
        write_page(s, &page)?;
        parent.entries[idx].last = page.last;
        parent.entries.insert(
            idx + 1,
            DirEntry {
                first: sep,
                last: right.last,
                child: addr,
                responsible: resp,
                replicas: NodeSet::default(),
            },
        );
        page = parent;
    }
}

/// Moves an over-full root's entries into two new children; the root
/// becomes an interior page one level up, still at its address.
fn split_root<S: DirectoryPages>(s: &mut S, mut root: DirectoryPage) -> Result<(), DsmError> {
    if root.level >= MAX_LEVEL {
        return Err(corrupt("tree too deep"));
    }
    let right_entries = root.entries.split_off(root.entries.len() / 2);
    let sep = right_entries[0].first;
    let (la, lr) = s.allocate()?;
    let (ra, rr) = s.allocate()?;
    let left = DirectoryPage {
        addr: la,
        level: root.level,
        first: root.first,
        last: GlobalAddr(sep.0 - 1),
        entries: core::mem::take(&mut root.entries),
    };
    let right = DirectoryPage {
        addr: ra,
        level: root.level,
        first: sep,
        last: root.last,
        entries: right_entries,
    };
    write_page(s, &left)?;
    write_page(s, &right)?;
    root.level += 1;
    root.entries = alloc::vec![
        DirEntry {
            first: left.first,
            last: left.last,
            child: la,
            responsible: lr,
            replicas: NodeSet::default(),
        },
        DirEntry {
            first: right.first,
            last: right.last,
            child: ra,
            responsible: rr,
            replicas: NodeSet::default(),
        },
    ];
    write_page(s, &root)
}

/// Which edge of a subtree's span moves when a sibling is unlinked.
#[derive(Clone, Copy)]
enum Edge {
    First,
    Last,
}

/// Moves one edge of the subtree under `old` (the parent entry as it was)
/// to `to`, down its spine, so every page keeps matching its parent entry.
fn move_edge<S: DirectoryPages>(
    s: &mut S,
    old: DirEntry,
    parent_level: u16,
    edge: Edge,
    to: GlobalAddr,
) -> Result<(), DsmError> {
    let mut entry = old;
    let mut level = parent_level;
    loop {
        let mut page = read_child(s, &entry, level)?;
        let leaf = page.is_leaf();
        let next = match edge {
            Edge::First => {
                page.first = to;
                page.entries.first_mut().filter(|_| !leaf).map(|e| {
                    let was = *e;
                    e.first = to;
                    was
                })
            }
            Edge::Last => {
                page.last = to;
                page.entries.last_mut().filter(|_| !leaf).map(|e| {
                    let was = *e;
                    e.last = to;
                    was
                })
            }
        };
        write_page(s, &page)?;
        match next {
            Some(e) => {
                entry = e;
                level = page.level;
            }
            None => return Ok(()),
        }
    }
}

/// Unlinks `range` (which must match an entry exactly) from the directory
/// and returns its entry; `NotAllocated` if no entry matches.
pub fn remove<S: DirectoryPages>(s: &mut S, range: GlobalRange) -> Result<DirEntry, DsmError> {
    check_data_addr(range.start())?;
    let (mut path, mut page) = descend(s, range.start())?;
    let i = page
        .entries
        .iter()
        .position(|e| e.first == range.start() && e.last == range.last())
        .ok_or(DsmError::NotAllocated)?;
    let removed = page.entries.remove(i);
    loop {
        if page.addr == ROOT_DIRECTORY {
            return collapse_root(s, page).map(|()| removed);
        }
        if !page.entries.is_empty() {
            return write_page(s, &page).map(|()| removed);
        }
        s.release(page.addr)?;
        let (mut parent, idx) = path
            .pop()
            .ok_or(corrupt("non-root page without a parent"))?;
        let gone = parent.entries.remove(idx);
        if idx > 0 {
            let old = parent.entries[idx - 1];
            parent.entries[idx - 1].last = gone.last;
            move_edge(s, old, parent.level, Edge::Last, gone.last)?;
        } else if let Some(next) = parent.entries.first().copied() {
            parent.entries[0].first = gone.first;
            move_edge(s, next, parent.level, Edge::First, gone.first)?;
        }
        page = parent;
    }
}

/// Writes the root after a removal: an interior root with one child takes
/// that child's place (and entries); one with none becomes an empty leaf.
fn collapse_root<S: DirectoryPages>(s: &mut S, mut root: DirectoryPage) -> Result<(), DsmError> {
    while !root.is_leaf() && root.entries.len() <= 1 {
        match root.entries.first().copied() {
            None => root = DirectoryPage::empty_root(),
            Some(e) => {
                let child = read_child(s, &e, root.level)?;
                s.release(child.addr)?;
                root.level = child.level;
                root.entries = child.entries;
            }
        }
    }
    write_page(s, &root)
}

/// The tree's depth (1 for a root leaf), following the leftmost spine.
pub fn depth<S: DirectoryPages>(s: &mut S) -> Result<u16, DsmError> {
    let root = read_page(s, ROOT_DIRECTORY)?;
    Ok(root.level + 1)
}

/// Every range entry in address order, reading (and validating) the whole
/// tree; also checks that ranges are disjoint across leaves.
pub fn ranges<S: DirectoryPages>(s: &mut S) -> Result<Vec<DirEntry>, DsmError> {
    let root = read_page(s, ROOT_DIRECTORY)?;
    let mut out: Vec<DirEntry> = Vec::new();
    let mut stack = alloc::vec![root];
    while let Some(page) = stack.pop() {
        if page.is_leaf() {
            if let (Some(a), Some(prev)) = (page.entries.first(), out.last())
                && a.first <= prev.last
            {
                return Err(corrupt("ranges overlap across leaves"));
            }
            out.extend(page.entries.iter().copied());
            continue;
        }
        // Right to left onto the stack, so leaves come out left to right.
        for e in page.entries.iter().rev() {
            stack.push(read_child(s, e, page.level)?);
        }
    }
    Ok(out)
}
