//! `Shm`: an attached shared memory node (superblock validated) and the
//! node-table operations: join, heartbeat, leave, read.

use core::fmt;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::error::ShmError;
use crate::format::{
    Area, FreeSpace, Generation, HEADER_LEN, INIT_BLANK, INIT_BUSY, INIT_READY, InitParams,
    MAX_NODES, NO_PEER, NODE_ENTRY_LEN, NodeFacts, NodeInfo, NodeState, SUPERBLOCK_LEN, Superblock,
    entry, sb, split_status, status_word,
};
use crate::platform::Doorbell;
use crate::region::Region;

/// How often `node()` re-reads an entry that changes under it before `Busy`.
const READ_RETRIES: usize = 64;

/// A shared memory region whose superblock has been initialised or validated.
///
/// The validated superblock is kept here: later corruption of the device's
/// superblock cannot move the areas this handle uses.
#[derive(Debug, Clone, Copy)]
pub struct Shm<'a> {
    region: Region<'a>,
    sb: Superblock,
    initialised_here: bool,
}

/// A set of node ids (bit `i` = node `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct NodeSet(pub u64);

impl NodeSet {
    /// True if `node` is in the set.
    pub fn contains(self, node: u16) -> bool {
        node < 64 && self.0 & (1 << node) != 0
    }

    /// Adds `node` (ids >= 64 are ignored).
    pub fn insert(&mut self, node: u16) {
        if node < 64 {
            self.0 |= 1 << node;
        }
    }

    /// Number of nodes in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True if the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The node ids in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        (0..64u16).filter(move |&n| self.contains(n))
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, n) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        f.write_str("}")
    }
}

fn to_usize(v: u64) -> Result<usize, ShmError> {
    usize::try_from(v).map_err(|_| ShmError::OutOfBounds)
}

/// Region too short to even hold the init word: that is a size problem.
fn small(e: ShmError) -> ShmError {
    match e {
        ShmError::OutOfBounds => ShmError::TooSmall,
        e => e,
    }
}

impl<'a> Shm<'a> {
    /// Initialises a blank region or validates an initialised one.
    ///
    /// Whoever wins the compare-and-swap of the init word (0 -> 1) writes the
    /// superblock from `params`; the others poll until it reads 2, calling
    /// `now_ns` between polls, and give up with `NotInitialized` once
    /// `now_ns()` passes `deadline_ns` (same clock). A winner whose `params`
    /// do not fit the region puts the word back to 0 and returns the error.
    /// `now_ns` must advance, or a crashed initialiser is waited for forever.
    pub fn attach(
        region: Region<'a>,
        params: &InitParams,
        mut now_ns: impl FnMut() -> u64,
        deadline_ns: u64,
    ) -> Result<Self, ShmError> {
        let init = region.atomic_u32(sb::INIT).map_err(small)?;
        loop {
            match init.load(Ordering::Acquire) {
                INIT_BLANK => {
                    if init
                        .compare_exchange(
                            INIT_BLANK,
                            INIT_BUSY,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return Self::initialise(region, params, init);
                    }
                    // Lost the race: wait for the winner like everyone else.
                }
                INIT_READY => return Self::open(region),
                INIT_BUSY => {}
                _ => {
                    return Err(ShmError::Corrupt {
                        what: "superblock init word",
                    });
                }
            }
            if now_ns() > deadline_ns {
                return Err(ShmError::NotInitialized);
            }
            spin_loop();
        }
    }

    /// Validates an initialised region without ever initialising it (inspector).
    pub fn open(region: Region<'a>) -> Result<Self, ShmError> {
        match region
            .atomic_u32(sb::INIT)
            .map_err(small)?
            .load(Ordering::Acquire)
        {
            INIT_READY => {}
            INIT_BLANK | INIT_BUSY => return Err(ShmError::NotInitialized),
            _ => {
                return Err(ShmError::Corrupt {
                    what: "superblock init word",
                });
            }
        }
        let mut h = [0u8; HEADER_LEN];
        region.read_bytes(0, &mut h).map_err(small)?;
        let sb = Superblock::parse(&h, region.len())?;
        Ok(Self {
            region,
            sb,
            initialised_here: false,
        })
    }

    /// Formats the region unconditionally, whatever it held.
    ///
    /// Only for a region no node is using (a host-side reset, tests):
    /// attached nodes would see their entries vanish.
    pub fn format(region: Region<'a>, params: &InitParams) -> Result<Self, ShmError> {
        let init = region.atomic_u32(sb::INIT).map_err(small)?;
        // Validate the parameters before touching anything.
        Superblock::plan(region.len(), params)?;
        init.store(INIT_BUSY, Ordering::Release);
        Self::initialise(region, params, init)
    }

    /// Writes the superblock; the caller holds the init word at 1.
    fn initialise(
        region: Region<'a>,
        params: &InitParams,
        init: &AtomicU32,
    ) -> Result<Self, ShmError> {
        let result = Superblock::plan(region.len(), params).and_then(|sb| {
            let l = &sb.layout;
            // The areas may hold leftovers of an earlier use of the device.
            zero(
                region,
                Area {
                    offset: HEADER_LEN as u64,
                    len: SUPERBLOCK_LEN - HEADER_LEN as u64,
                },
            )?;
            zero(region, l.node_table)?;
            zero(region, l.lock_table)?;
            zero(region, l.queue_area)?;
            let h = sb.encode();
            // Everything but the init word, which stays under atomic control.
            region.write_bytes(0, &h[..sb::INIT])?;
            region.write_bytes(sb::INIT + 4, &h[sb::INIT + 4..])?;
            Ok(sb)
        });
        match result {
            Ok(sb) => {
                // Release: the header and zeroed areas are visible to anyone
                // who reads 2 with acquire.
                init.store(INIT_READY, Ordering::Release);
                Ok(Self {
                    region,
                    sb,
                    initialised_here: true,
                })
            }
            Err(e) => {
                // Let another node (perhaps with parameters that fit) try.
                init.store(INIT_BLANK, Ordering::Release);
                Err(e)
            }
        }
    }

    /// The mapped region.
    pub fn region(&self) -> Region<'a> {
        self.region
    }

    /// The validated superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// True if this call to `attach` (or `format`) wrote the superblock.
    pub fn initialised_here(&self) -> bool {
        self.initialised_here
    }

    /// Entries in the node table.
    pub fn max_nodes(&self) -> u16 {
        self.sb.max_nodes
    }

    /// Heartbeat timeout recorded in the superblock.
    pub fn heartbeat_timeout_ns(&self) -> u64 {
        self.sb.heartbeat_timeout_ns
    }

    fn entry_offset(&self, node: u16) -> Result<usize, ShmError> {
        if node >= self.sb.max_nodes || usize::from(node) >= MAX_NODES {
            return Err(ShmError::NoSuchNode);
        }
        let off = self
            .sb
            .layout
            .node_table
            .offset
            .checked_add(u64::from(node) * NODE_ENTRY_LEN as u64)
            .ok_or(ShmError::OutOfBounds)?;
        to_usize(off)
    }

    /// The status word (state and generation) of `node`'s entry.
    pub(crate) fn status(&self, node: u16) -> Result<&'a AtomicU64, ShmError> {
        self.region
            .atomic_u64(self.entry_offset(node)? + entry::STATUS)
    }

    /// The heartbeat counter of `node`'s entry.
    pub(crate) fn heartbeat_counter(&self, node: u16) -> Result<&'a AtomicU64, ShmError> {
        self.region
            .atomic_u64(self.entry_offset(node)? + entry::HEARTBEAT)
    }

    /// Takes entry `node` for this node: a new generation, heartbeat 0, live.
    ///
    /// A node that comes back (reboot) joins again and gets a higher
    /// generation; its old incarnation's heartbeats then fail.
    pub fn join(&self, node: u16, facts: &NodeFacts<'_>) -> Result<Generation, ShmError> {
        let facts = facts.encode()?;
        let status = self.status(node)?;
        let mut cur = status.load(Ordering::Acquire);
        loop {
            let (_, g) = split_status(cur);
            let next = g.next();
            match status.compare_exchange_weak(
                cur,
                status_word(NodeState::Joining, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return self.finish_join(node, status, next, &facts),
                Err(v) => cur = v,
            }
        }
    }

    /// Takes the first free entry (unused or left, else dead) for this node.
    pub fn join_free(&self, facts: &NodeFacts<'_>) -> Result<(u16, Generation), ShmError> {
        let facts = facts.encode()?;
        let passes: [&[NodeState]; 2] = [&[NodeState::Unused, NodeState::Left], &[NodeState::Dead]];
        for wanted in passes {
            for node in 0..self.sb.max_nodes {
                let status = self.status(node)?;
                let cur = status.load(Ordering::Acquire);
                let (raw, g) = split_status(cur);
                if !NodeState::from_raw(raw).is_some_and(|s| wanted.contains(&s)) {
                    continue;
                }
                let next = g.next();
                // Losing this race means someone else took the entry: move on.
                if status
                    .compare_exchange(
                        cur,
                        status_word(NodeState::Joining, next),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return Ok((node, self.finish_join(node, status, next, &facts)?));
                }
            }
        }
        Err(ShmError::NodeTableFull)
    }

    /// Second half of a join: the entry is ours, marked joining at `generation`.
    fn finish_join(
        &self,
        node: u16,
        status: &AtomicU64,
        generation: Generation,
        facts: &[u8; NODE_ENTRY_LEN - entry::FACTS],
    ) -> Result<Generation, ShmError> {
        // Seqlock writer: the facts must not become visible before "joining".
        fence(Ordering::Release);
        self.heartbeat_counter(node)?.store(0, Ordering::Relaxed);
        self.region
            .write_bytes(self.entry_offset(node)? + entry::FACTS, facts)?;
        status
            .compare_exchange(
                status_word(NodeState::Joining, generation),
                status_word(NodeState::Live, generation),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .map_err(|_| ShmError::StaleGeneration)?;
        Ok(generation)
    }

    /// Why an operation by `generation` on a status word `word` cannot go on.
    fn refusal(word: u64, generation: Generation) -> ShmError {
        let (raw, g) = split_status(word);
        if g != generation {
            return ShmError::StaleGeneration;
        }
        match NodeState::from_raw(raw) {
            Some(NodeState::Dead) => ShmError::NodeDead,
            Some(_) => ShmError::NotLive,
            None => ShmError::Corrupt { what: "node state" },
        }
    }

    /// Increments `node`'s heartbeat counter; returns the new value.
    ///
    /// Fails with `StaleGeneration` if a newer incarnation took the entry and
    /// `NodeDead` if an observer declared this one dead: the node must join
    /// again (its locks may already have been recovered).
    pub fn heartbeat(&self, node: u16, generation: Generation) -> Result<u64, ShmError> {
        let word = self.status(node)?.load(Ordering::Acquire);
        if word != status_word(NodeState::Live, generation) {
            return Err(Self::refusal(word, generation));
        }
        // If the entry changes between the check and the add, the extra tick
        // only delays a verdict on a live node; it cannot revive a dead one
        // (observers watch the status word too).
        let hb = self.heartbeat_counter(node)?;
        Ok(hb.fetch_add(1, Ordering::Relaxed).wrapping_add(1))
    }

    /// Marks `node` (incarnation `generation`) as having left.
    pub fn leave(&self, node: u16, generation: Generation) -> Result<(), ShmError> {
        self.status(node)?
            .compare_exchange(
                status_word(NodeState::Live, generation),
                status_word(NodeState::Left, generation),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|w| Self::refusal(w, generation))
    }

    /// A validated copy of `node`'s entry.
    ///
    /// An entry that is joining reads with empty facts (they are being
    /// written); one that keeps changing under the reader gives `Busy`.
    pub fn node(&self, node: u16) -> Result<NodeInfo, ShmError> {
        let status = self.status(node)?;
        let hb = self.heartbeat_counter(node)?;
        let facts_off = self.entry_offset(node)? + entry::FACTS;
        for _ in 0..READ_RETRIES {
            let s1 = status.load(Ordering::Acquire);
            let mut e = [0u8; NODE_ENTRY_LEN];
            self.region.read_bytes(facts_off, &mut e[entry::FACTS..])?;
            let beat = hb.load(Ordering::Relaxed);
            // Seqlock reader: the copy above happens before the re-check.
            fence(Ordering::Acquire);
            let s2 = status.load(Ordering::Relaxed);
            if s1 != s2 {
                spin_loop();
                continue;
            }
            if split_status(s1).0 == NodeState::Joining as u32 {
                e[entry::FACTS..].fill(0);
                e[entry::DOORBELL_PEER..entry::DOORBELL_PEER + 4]
                    .copy_from_slice(&NO_PEER.to_le_bytes());
            }
            e[entry::STATUS..entry::STATUS + 8].copy_from_slice(&s1.to_le_bytes());
            e[entry::HEARTBEAT..entry::HEARTBEAT + 8].copy_from_slice(&beat.to_le_bytes());
            return NodeInfo::parse(node, &e);
        }
        Err(ShmError::Busy)
    }

    /// The nodes whose entries are live right now.
    pub fn live_nodes(&self) -> NodeSet {
        let mut set = NodeSet::default();
        for node in 0..self.sb.max_nodes {
            // Generation 0 never joined: a "live" entry with it is corrupt.
            let live = self.status(node).map(|s| {
                let (state, g) = split_status(s.load(Ordering::Acquire));
                state == NodeState::Live as u32 && g.0 != 0
            });
            if live == Ok(true) {
                set.insert(node);
            }
        }
        set
    }

    /// Rings interrupt `vector` (0..32) on live node `node`: marks it pending
    /// in the node's entry, then rings its doorbell peer id if it has one.
    /// A node without doorbells (ivshmem-plain) finds the vector by polling
    /// [`Shm::take_pending`].
    pub fn ring(&self, doorbell: &impl Doorbell, node: u16, vector: u16) -> Result<(), ShmError> {
        if vector >= 32 {
            return Err(ShmError::InvalidArgument {
                what: "doorbell vector must be below 32",
            });
        }
        // The hot path of every message and wake-up: read only the two
        // words it needs rather than validating the whole entry (`node`).
        let status = self.status(node)?;
        let s1 = status.load(Ordering::Acquire);
        if split_status(s1).0 != NodeState::Live as u32 {
            return Err(ShmError::NotLive);
        }
        let peer = self
            .entry_u32(node, entry::DOORBELL_PEER)?
            .load(Ordering::Relaxed);
        self.entry_u32(node, entry::PENDING)?
            .fetch_or(1 << vector, Ordering::AcqRel);
        // A peer id is written while the entry is Joining; an unchanged
        // status word means it belongs to this incarnation. Out-of-range
        // ids (damage) are not rung: the pending bit is the record anyway.
        if status.load(Ordering::Acquire) == s1
            && let Ok(peer) = u16::try_from(peer)
        {
            doorbell.ring(peer, vector);
        }
        Ok(())
    }

    /// Takes the vectors rung on `node` since the last call (bit `v` = vector `v`).
    pub fn take_pending(&self, node: u16) -> Result<u32, ShmError> {
        Ok(self
            .entry_u32(node, entry::PENDING)?
            .swap(0, Ordering::AcqRel))
    }

    /// Publishes `value` as `node`'s progress, if `generation` still owns the entry.
    pub fn set_progress(
        &self,
        node: u16,
        generation: Generation,
        value: u32,
    ) -> Result<(), ShmError> {
        self.check_live_as(node, generation)?;
        self.entry_u32(node, entry::PROGRESS)?
            .store(value, Ordering::Release);
        Ok(())
    }

    /// The progress `node` last published (0 after it joined).
    pub fn progress(&self, node: u16) -> Result<u32, ShmError> {
        Ok(self
            .entry_u32(node, entry::PROGRESS)?
            .load(Ordering::Acquire))
    }

    /// Publishes what `node` has free for the DSM (refused once it is no
    /// longer live as `generation`).
    pub fn publish_free(
        &self,
        node: u16,
        generation: Generation,
        free: FreeSpace,
    ) -> Result<(), ShmError> {
        self.check_live_as(node, generation)?;
        self.entry_u32(node, entry::DSM_FREE_RAM)?
            .store(free.ram_pages, Ordering::Relaxed);
        self.entry_u32(node, entry::DSM_FREE_DISK)?
            .store(free.disk_pages, Ordering::Relaxed);
        Ok(())
    }

    /// What `node` last published free for the DSM (zeros before it did).
    pub fn free_space(&self, node: u16) -> Result<FreeSpace, ShmError> {
        Ok(FreeSpace {
            ram_pages: self
                .entry_u32(node, entry::DSM_FREE_RAM)?
                .load(Ordering::Relaxed),
            disk_pages: self
                .entry_u32(node, entry::DSM_FREE_DISK)?
                .load(Ordering::Relaxed),
        })
    }

    /// `Ok` while `node` is live as `generation`; else why not.
    fn check_live_as(&self, node: u16, generation: Generation) -> Result<(), ShmError> {
        let word = self.status(node)?.load(Ordering::Acquire);
        let (state, g) = split_status(word);
        if g != generation || NodeState::from_raw(state) != Some(NodeState::Live) {
            return Err(Self::refusal(word, generation));
        }
        Ok(())
    }

    fn entry_u32(&self, node: u16, field: usize) -> Result<&'a AtomicU32, ShmError> {
        self.region.atomic_u32(self.entry_offset(node)? + field)
    }
}

/// Zeroes an area of the region.
fn zero(region: Region<'_>, area: Area) -> Result<(), ShmError> {
    const CHUNK: [u8; 512] = [0; 512];
    let mut off = to_usize(area.offset)?;
    let end = to_usize(area.end())?;
    while off < end {
        let n = (end - off).min(CHUNK.len());
        region.write_bytes(off, &CHUNK[..n])?;
        off += n;
    }
    Ok(())
}
