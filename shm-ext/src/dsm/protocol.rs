//! The per-node protocol engine: consumes events (local faults, received
//! messages, evictions) and returns actions (send, map, unmap, resume).
//!
//! One engine runs on every node. It plays three roles at once, for
//! different pages: requester (its own faults), owner (serving copies of
//! pages it owns) and responsible node (the manager of its ranges, keeping
//! each page's owner and copyset and running one transaction per page at a
//! time). Messages a node sends itself are handled inside the same call,
//! so the kernel only ever sees messages to other nodes.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use super::addr::{GlobalAddr, GlobalRange, MAX_NODES, NO_NODE, PAGE_SIZE};
use super::cache::{CacheEntry, PageBuf, PageCache, Rights};
use super::durable::{Disk, Stamp};
use super::error::DsmError;
use super::wire::{Kind, Message};
use crate::format::FreeSpace;
use crate::shm::NodeSet;

/// The access a fault needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
}

impl Access {
    /// The rights that satisfy this access.
    pub const fn rights(self) -> Rights {
        match self {
            Self::Read => Rights::Read,
            Self::Write => Rights::Write,
        }
    }
}

/// Something that happened to the node, for [`Engine::handle`].
#[derive(Debug)]
pub enum Event {
    /// A thread faulted on global address `addr` wanting `access`; it
    /// waits until a [`Action::Resume`] for the page.
    Fault {
        /// The faulting global address.
        addr: GlobalAddr,
        /// What it tried to do.
        access: Access,
    },
    /// A protocol message arrived from node `from` (already decoded with
    /// [`Message::decode`]; `from` is the transport's sender id).
    Message {
        /// The sending node.
        from: u16,
        /// The message.
        msg: Message,
    },
    /// The local copy of the page holding `addr` is no longer wanted
    /// (unmap, memory pressure). Read copies are dropped; an owner keeps
    /// its page, since it is the copy the others are served from.
    Evict {
        /// An address in the page.
        addr: GlobalAddr,
    },
}

/// What the kernel must do, in order, after an event.
#[derive(Debug)]
pub enum Action {
    /// Send `msg` to node `to` (encode with [`Message::encode`], port
    /// [`DSM_PORT`](super::wire::DSM_PORT)).
    Send {
        /// Destination node.
        to: u16,
        /// The message.
        msg: Message,
    },
    /// Map the cached frame of `page` ([`Engine::page`]) with `rights`,
    /// replacing any mapping (also a downgrade from write to read).
    Map {
        /// The page.
        page: GlobalAddr,
        /// Read-only or read-write.
        rights: Rights,
    },
    /// Remove every mapping of `page`: the local copy is gone.
    Unmap {
        /// The page.
        page: GlobalAddr,
    },
    /// The sync started by [`Engine::sync`] with this id finished.
    Synced {
        /// The id `sync` returned.
        id: u64,
        /// Whether every page of the range is on its disks.
        result: Result<(), DsmError>,
    },
    /// Threads waiting on a fault in `page` may go on: retry the access
    /// (`Ok`; it may fault again if the rights moved meanwhile) or fail
    /// with the error.
    Resume {
        /// The page.
        page: GlobalAddr,
        /// Whether the fault was served.
        result: Result<(), DsmError>,
    },
}

/// The responsible node's record of one page, as reported.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageState {
    /// The owner, or `None` for a page nobody touched yet (zeros).
    pub owner: Option<u16>,
    /// Nodes holding read copies besides the owner.
    pub copyset: NodeSet,
    /// Version tag: ownership transfers for writing so far.
    pub version: u64,
    /// True while a transaction runs or requests wait.
    pub busy: bool,
}

/// This node's own fault on a page, waiting for its transaction.
#[derive(Clone, Copy, Debug)]
struct Pending {
    txn: u64,
    access: Access,
    responsible: u16,
}

/// A request queued at the responsible node.
#[derive(Clone, Copy, Debug)]
struct Request {
    requester: u16,
    txn: u64,
    access: Access,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for these nodes' invalidation acks.
    Acks(NodeSet),
    /// Waiting for a stored copy from a holder; these are still to ask.
    Fetch(NodeSet),
    /// Waiting for the requester's confirm.
    Confirm,
}

/// The transaction the responsible node runs on a page.
#[derive(Clone, Copy, Debug)]
struct Active {
    req: Request,
    phase: Phase,
    /// Ownership moves to the requester (writes, and first touches).
    grants_ownership: bool,
    version: u64,
}

/// The responsible node's RAM copyset entry for one page.
#[derive(Debug, Default)]
struct PageRecord {
    owner: Option<u16>,
    copyset: NodeSet,
    version: u64,
    active: Option<Active>,
    queue: VecDeque<Request>,
    /// The group whose nodes sent the latest requests, and how many in a
    /// row (the migration controller's measure of who uses the page).
    streak: (u32, u32),
}

/// How the node keeps, places and moves pages (the policy controller's,
/// replication controller's and migration controller's settings).
#[derive(Clone, Debug)]
pub struct Policy {
    /// Disks that hold each durable page (the responsible node's and the
    /// next live nodes', same group first); at least 1.
    pub copies: u16,
    /// Pages this node keeps in RAM before paging some out.
    pub ram_pages: usize,
    /// Read requests in a row from one group (not the owner's) after which
    /// the page's ownership moves to the requester; 0 never.
    pub migrate_after: u32,
    /// The group of each node (index: node id); nodes not listed are each
    /// their own group.
    pub groups: Vec<u16>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            copies: 2,
            ram_pages: usize::MAX,
            migrate_after: 3,
            groups: Vec::new(),
        }
    }
}

impl Policy {
    /// The group of `node` (an unlisted node is alone in its own group).
    pub fn group(&self, node: u16) -> u32 {
        match self.groups.get(usize::from(node)) {
            Some(&g) => u32::from(g),
            None => 0x1_0000 + u32::from(node),
        }
    }
}

/// What the durability, paging and migration machinery did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Owned pages that left this node's RAM for the disks.
    pub page_outs: u64,
    /// Pages this node (as responsible node) brought back from a disk.
    pub page_ins: u64,
    /// Read copies dropped to make room.
    pub dropped_copies: u64,
    /// Write-backs this node sent (as owner).
    pub write_backs: u64,
    /// Copies this node stored on its disk (write-backs and replicas).
    pub stored: u64,
    /// Ownership moves this node decided for read requests (migration).
    pub migrations: u64,
    /// Disk operations that failed here.
    pub disk_errors: u64,
}

/// A write-back the responsible node is replicating.
#[derive(Debug)]
struct Replication {
    origin: u16,
    page: GlobalAddr,
    stamp: Stamp,
    waiting: NodeSet,
    error: u32,
}

/// A sync this node takes part in.
#[derive(Debug)]
struct SyncState {
    range: GlobalRange,
    /// This node's write-backs it waits for.
    pages: BTreeSet<GlobalAddr>,
    /// Pages still to write back (a few at a time: each is a 4 KiB send).
    todo: VecDeque<GlobalAddr>,
    /// Nodes that have not answered the current phase (initiator only).
    nodes: NodeSet,
    phase: u32,
    result: Result<(), DsmError>,
}

fn without(set: NodeSet, node: u16) -> NodeSet {
    let mut s = set;
    if node < MAX_NODES {
        s.0 &= !(1u64 << node);
    }
    s
}

fn unexpected(what: &'static str) -> DsmError {
    DsmError::Unexpected { what }
}

/// One node's DSM protocol engine.
pub struct Engine {
    me: u16,
    nodes: u16,
    cache: PageCache,
    /// Ranges this node knows (from directory lookups) and their
    /// responsible nodes, by start.
    ranges: BTreeMap<GlobalAddr, (GlobalRange, u16)>,
    /// The nodes the policy controller chose for a known range's copies
    /// besides its responsible node, by range start (none: ring order).
    replicas: BTreeMap<GlobalAddr, NodeSet>,
    /// What each node last published free (index: node id).
    published: Vec<Option<FreeSpace>>,
    /// Ranges this node is responsible for, by start.
    managed: BTreeMap<GlobalAddr, GlobalRange>,
    /// Owner and copyset of every touched page of the managed ranges.
    records: BTreeMap<GlobalAddr, PageRecord>,
    pending: BTreeMap<GlobalAddr, Pending>,
    next_txn: u64,
    loopback: VecDeque<Message>,
    disk: Option<Box<dyn Disk + Send>>,
    /// The disk holds every copy this node should hold (it was not found
    /// damaged and reformatted); else missing copies are fetched.
    disk_complete: bool,
    policy: Policy,
    live: NodeSet,
    /// Data-page requests are served (the kernel learned the ranges).
    ready: bool,
    deferred: VecDeque<(u16, Message)>,
    /// Owner: write-backs sent and not yet acknowledged.
    flushing: BTreeMap<GlobalAddr, Stamp>,
    /// Owner: pages to page out once clean.
    evicting: BTreeSet<GlobalAddr>,
    /// Owner: releases sent and not yet acknowledged.
    releasing: BTreeSet<GlobalAddr>,
    /// RAM cache entries by age, oldest first (stale ones skipped).
    lru: VecDeque<(u64, GlobalAddr)>,
    age: u64,
    /// Responsible: write-backs being replicated, by replication id.
    replicating: BTreeMap<u64, Replication>,
    /// Syncs by (initiator, id).
    syncs: BTreeMap<(u16, u64), SyncState>,
    stats: Stats,
}

impl core::fmt::Debug for Engine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("nodes", &self.nodes)
            .field("cached", &self.cache.len())
            .field("records", &self.records.len())
            .field("pending", &self.pending)
            .field("live", &self.live)
            .field("disk", &self.disk.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The engine of node `me` in a cluster of nodes `0..nodes`.
    pub fn new(me: u16, nodes: u16) -> Result<Self, DsmError> {
        if nodes == 0 || nodes > MAX_NODES || me >= nodes {
            return Err(DsmError::NoSuchNode);
        }
        Ok(Self {
            me,
            nodes,
            cache: PageCache::default(),
            ranges: BTreeMap::new(),
            replicas: BTreeMap::new(),
            published: alloc::vec![None; usize::from(nodes)],
            managed: BTreeMap::new(),
            records: BTreeMap::new(),
            pending: BTreeMap::new(),
            // Starts at 1 so a zeroed message never matches a transaction.
            next_txn: 1,
            loopback: VecDeque::new(),
            disk: None,
            disk_complete: true,
            policy: Policy::default(),
            live: NodeSet(u64::MAX >> (64 - u32::from(nodes))),
            ready: true,
            deferred: VecDeque::new(),
            flushing: BTreeMap::new(),
            evicting: BTreeSet::new(),
            releasing: BTreeSet::new(),
            lru: VecDeque::new(),
            age: 0,
            replicating: BTreeMap::new(),
            syncs: BTreeMap::new(),
            stats: Stats::default(),
        })
    }

    /// Gives the engine this node's disk; `complete` is false when the
    /// disk was just formatted (found missing or damaged), so copies it
    /// should hold are fetched from the other holders.
    pub fn set_disk(&mut self, disk: Box<dyn Disk + Send>, complete: bool) {
        self.disk = Some(disk);
        self.disk_complete = complete;
    }

    /// This node's disk, if it has one.
    pub fn disk(&self) -> Option<&(dyn Disk + Send)> {
        self.disk.as_deref()
    }

    /// Takes this node's disk away (a node shutting down hands it on).
    pub fn take_disk(&mut self) -> Option<Box<dyn Disk + Send>> {
        self.disk.take()
    }

    /// Sets the policy (copies, RAM budget, migration, groups).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What durability, paging and migration did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Holds data-page requests for ranges this node does not know yet
    /// until [`set_ready`](Self::set_ready) (a restarted node learns its
    /// ranges from the directory first).
    pub fn set_not_ready(&mut self) {
        self.ready = false;
    }

    /// Serves the data-page requests held since `set_not_ready`.
    pub fn set_ready(&mut self, out: &mut Vec<Action>) -> Result<(), DsmError> {
        self.ready = true;
        let mut first_err = Ok(());
        while let Some((from, msg)) = self.deferred.pop_front() {
            let r = self.on_request(from, msg, out);
            if first_err.is_ok() {
                first_err = r;
            }
        }
        let d = self.finish(out);
        first_err.and(d)
    }

    /// This node's id.
    pub fn node(&self) -> u16 {
        self.me
    }

    /// The local RAM cache.
    pub fn cache(&self) -> &PageCache {
        &self.cache
    }

    /// The bytes of `page` if held with read or write rights.
    pub fn page(&self, page: GlobalAddr) -> Option<&PageBuf> {
        self.cache
            .get(page.page())
            .filter(|e| e.rights >= Rights::Read)
            .map(|e| &*e.data)
    }

    /// The bytes of `page` for writing: `NoAccess` unless held read-write.
    /// Marks the page dirty.
    pub fn page_mut(&mut self, page: GlobalAddr) -> Result<&mut PageBuf, DsmError> {
        let e = self
            .cache
            .get_mut(page.page())
            .filter(|e| e.rights == Rights::Write)
            .ok_or(DsmError::NoAccess)?;
        e.dirty = true;
        e.volatile = true;
        Ok(&mut e.data)
    }

    /// The responsible node's record of `page`, if this node manages it.
    pub fn page_state(&self, page: GlobalAddr) -> Option<PageState> {
        let page = page.page();
        if !self.manages(page) {
            return None;
        }
        Some(match self.records.get(&page) {
            Some(r) => PageState {
                owner: r.owner,
                copyset: r.copyset,
                version: r.version,
                busy: r.active.is_some() || !r.queue.is_empty(),
            },
            None => PageState {
                owner: None,
                copyset: NodeSet::default(),
                version: 0,
                busy: false,
            },
        })
    }

    /// The ranges this node is responsible for, in address order.
    pub fn managed_ranges(&self) -> impl Iterator<Item = GlobalRange> + '_ {
        self.managed.values().copied()
    }

    /// The ranges this node knows from directory lookups, with their
    /// responsible nodes, in address order.
    pub fn known_ranges(&self) -> impl Iterator<Item = (GlobalRange, u16)> + '_ {
        self.ranges.values().copied()
    }

    /// Every touched page this node is responsible for, with its state, in
    /// address order.
    pub fn page_states(&self) -> impl Iterator<Item = (GlobalAddr, PageState)> + '_ {
        self.records.iter().map(|(&p, r)| {
            (
                p,
                PageState {
                    owner: r.owner,
                    copyset: r.copyset,
                    version: r.version,
                    busy: r.active.is_some() || !r.queue.is_empty(),
                },
            )
        })
    }

    /// True when no fault of this node waits and no transaction runs here.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self
                .records
                .values()
                .all(|r| r.active.is_none() && r.queue.is_empty())
    }

    /// Registers `range`, just created and linked into the directory with
    /// this node as responsible node; its pages start as zeros.
    pub fn create_range(&mut self, range: GlobalRange) -> Result<(), DsmError> {
        if range.start().in_directory_space() {
            return Err(DsmError::OutOfRange);
        }
        self.map_range(range, self.me)?;
        self.managed.insert(range.start(), range);
        Ok(())
    }

    /// Tells the engine that `range` (from a directory lookup) has
    /// `responsible` as responsible node, so faults in it can be served.
    pub fn map_range(&mut self, range: GlobalRange, responsible: u16) -> Result<(), DsmError> {
        if responsible == NO_NODE {
            return Err(DsmError::Unowned);
        }
        if responsible >= MAX_NODES {
            return Err(DsmError::NoSuchNode);
        }
        if range.start().in_directory_space() {
            return Err(DsmError::OutOfRange);
        }
        let before = self.known_range(range.last());
        match before {
            Some((r, resp)) if r == range && resp == responsible => return Ok(()),
            Some((r, _)) if r.last() >= range.start() => return Err(DsmError::Overlap),
            _ => {}
        }
        self.ranges.insert(range.start(), (range, responsible));
        Ok(())
    }

    /// Records where the policy controller placed known range `range`'s
    /// copies besides its responsible node (its directory entry's
    /// replicas); `NotAllocated` if the range is not known.
    pub fn place_range(&mut self, range: GlobalRange, replicas: NodeSet) -> Result<(), DsmError> {
        match self.known_range(range.start()) {
            Some((r, _)) if r == range => {
                let chosen = NodeSet(replicas.0 & (u64::MAX >> (64 - u32::from(self.nodes))));
                if chosen.is_empty() {
                    self.replicas.remove(&range.start());
                } else {
                    self.replicas.insert(range.start(), chosen);
                }
                Ok(())
            }
            _ => Err(DsmError::NotAllocated),
        }
    }

    /// Tells the engine what `node` published free (its node-table entry):
    /// the policy controller places copies and migrates pages by it.
    pub fn set_published(&mut self, node: u16, free: FreeSpace) {
        if let Some(p) = self.published.get_mut(usize::from(node)) {
            *p = Some(free);
        }
    }

    /// What this node has free for the DSM, to publish: RAM budget left
    /// and disk pages left (0 without a disk).
    pub fn free_space(&self) -> FreeSpace {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let budget = self.policy.ram_pages as u64;
        FreeSpace {
            ram_pages: clamp(budget.saturating_sub(self.cache.len() as u64)),
            disk_pages: clamp(self.disk.as_ref().map_or(0, |d| d.free_pages())),
        }
    }

    /// The policy controller's placement of a new range of `pages` pages
    /// created here: the `copies - 1` live nodes besides this one whose
    /// disks will hold its copies, chosen from what the nodes published.
    /// Nodes whose free disk takes the whole range come first, then this
    /// node's group (migration prefers it too), then the most free disk,
    /// then ring order; a node that published nothing counts as having
    /// no room. Empty when one copy is kept.
    pub fn choose_replicas(&self, pages: u64) -> NodeSet {
        let group = self.policy.group(self.me);
        let mut candidates: Vec<(bool, bool, core::cmp::Reverse<u32>, u16, u16)> = (1..self.nodes)
            .map(|i| (self.me + i) % self.nodes)
            .filter(|&n| self.is_live(n))
            .map(|n| {
                let disk = self.published[usize::from(n)].map_or(0, |f| f.disk_pages);
                let ring = (n + self.nodes - self.me) % self.nodes;
                (
                    u64::from(disk) < pages,
                    self.policy.group(n) != group,
                    core::cmp::Reverse(disk),
                    ring,
                    n,
                )
            })
            .collect();
        candidates.sort_unstable();
        let mut chosen = NodeSet::default();
        let want = usize::from(self.policy.copies.max(1)) - 1;
        for c in candidates.into_iter().take(want) {
            chosen.insert(c.4);
        }
        chosen
    }

    /// Frees `range` at its responsible node (after the directory entry
    /// was removed): every copy is told to drop the page, and later
    /// requests are refused with `NotAllocated`. `Busy` if a transaction
    /// on one of its pages is under way (try again when idle).
    pub fn free_range(
        &mut self,
        range: GlobalRange,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let known = self.known_range(range.start()) == Some((range, self.nominal(range)));
        if !known || self.responsible_of(range.start()) != Ok(self.me) {
            return Err(DsmError::NotAllocated);
        }
        let busy = self
            .records
            .range(range.start()..=range.last())
            .any(|(_, r)| r.active.is_some() || !r.queue.is_empty());
        if busy {
            return Err(DsmError::Busy);
        }
        let pages: Vec<GlobalAddr> = self
            .records
            .range(range.start()..=range.last())
            .map(|(&p, _)| p)
            .collect();
        let disk_holders = self.holders(range.start());
        for p in pages {
            if let Some(r) = self.records.remove(&p) {
                let mut holders = r.copyset;
                if let Some(o) = r.owner {
                    holders.insert(o);
                }
                for &n in &disk_holders {
                    holders.insert(n);
                }
                for n in holders.iter() {
                    self.send(n, Message::new(Kind::Drop, self.me, 0, p), out);
                }
            }
        }
        // Stored pages nobody touched since this node started.
        let mut after = range.start().0.checked_sub(1).map(GlobalAddr);
        while let Some(disk) = self.disk.as_ref() {
            let batch = disk.pages_after(after, 256);
            let Some(&last) = batch.last() else { break };
            after = Some(last);
            for p in batch.into_iter().filter(|&p| range.contains(p)) {
                for &n in &disk_holders {
                    self.send(n, Message::new(Kind::Drop, self.me, 0, p), out);
                }
            }
            if last >= range.last() {
                break;
            }
        }
        self.managed.remove(&range.start());
        self.ranges.remove(&range.start());
        self.replicas.remove(&range.start());
        self.drain(out)
    }

    /// The nominal responsible node of a known range.
    fn nominal(&self, range: GlobalRange) -> u16 {
        self.known_range(range.start()).map_or(self.me, |(_, r)| r)
    }

    /// Handles one event, appending the actions it causes to `out`.
    ///
    /// An error refuses the event and leaves the engine's state as it was:
    /// for a fault (`NotAllocated`, `NoSuchNode`) the thread fails now; for
    /// a message (`Unexpected`, `NoSuchNode`) it was dropped.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let r = match event {
            Event::Fault { addr, access } => self.on_fault(addr, access, out),
            Event::Message { from, msg } => {
                if from >= self.nodes || msg.requester >= self.nodes {
                    return Err(DsmError::NoSuchNode);
                }
                self.on_message(from, msg, out)
            }
            Event::Evict { addr } => {
                let page = addr.page();
                if self.cache.get(page).is_some_and(|e| !e.owner) {
                    self.cache.remove(page);
                    out.push(Action::Unmap { page });
                }
                Ok(())
            }
        };
        let d = self.finish(out);
        r.and(d)
    }

    /// Runs the loopback, then the RAM budget and the syncs' progress.
    fn finish(&mut self, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let mut r = self.drain(out);
        self.enforce_budget(out);
        self.progress_syncs(out);
        let d = self.drain(out);
        if r.is_ok() {
            r = d;
        }
        r
    }

    fn known_range(&self, addr: GlobalAddr) -> Option<(GlobalRange, u16)> {
        self.ranges.range(..=addr).next_back().map(|(_, &v)| v)
    }

    /// The responsible node of `page`: from the directory slice for
    /// directory pages, else from the known ranges.
    fn responsible_of(&self, page: GlobalAddr) -> Result<u16, DsmError> {
        Ok(self.effective(self.nominal_of(page)?))
    }

    /// The responsible node the directory names for `page` (it may be
    /// lost: [`effective`](Self::effective) says who stands in).
    fn nominal_of(&self, page: GlobalAddr) -> Result<u16, DsmError> {
        if let Some(n) = page.directory_slice_node() {
            return if n < MAX_NODES {
                Ok(n)
            } else {
                Err(DsmError::NoSuchNode)
            };
        }
        match self.known_range(page) {
            Some((r, resp)) if r.contains(page) => Ok(resp),
            _ => Err(DsmError::NotAllocated),
        }
    }

    /// True if `node` is a live node of the cluster.
    fn is_live(&self, node: u16) -> bool {
        node < self.nodes && self.live.contains(node)
    }

    /// The node that acts for nominal responsible node `nominal`: itself
    /// while live, else the next live node in id order (wrapping), which
    /// is also the first of its disk holders.
    pub fn effective(&self, nominal: u16) -> u16 {
        (0..MAX_NODES)
            .map(|i| (nominal % MAX_NODES + i) % MAX_NODES)
            .find(|&n| self.is_live(n))
            .unwrap_or(self.me)
    }

    /// The nodes whose disks hold `page`: the acting responsible node,
    /// then the live nodes the policy controller chose for its range (see
    /// [`choose_replicas`](Self::choose_replicas)), then live nodes of the
    /// responsible node's group in ring order, then the others; `copies`
    /// of them (fewer if fewer nodes live). Directory pages and ranges
    /// placed before the controller follow ring order alone.
    pub fn holders(&self, page: GlobalAddr) -> Vec<u16> {
        let Ok(nominal) = self.nominal_of(page) else {
            return Vec::new();
        };
        let chosen = self
            .known_range(page)
            .and_then(|(r, _)| self.replicas.get(&r.start()).copied())
            .unwrap_or_default();
        let first = self.effective(nominal);
        let group = self.policy.group(first);
        let ring = || {
            (0..MAX_NODES)
                .map(move |i| (first + i) % MAX_NODES)
                .filter(|&n| self.is_live(n))
        };
        let mut v: Vec<u16> = alloc::vec![first];
        for n in ring()
            .filter(|&n| chosen.contains(n))
            .chain(ring().filter(|&n| self.policy.group(n) == group))
            .chain(ring().filter(|&n| self.policy.group(n) != group))
        {
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v.truncate(usize::from(self.policy.copies.max(1)));
        v
    }

    /// True if this node is the (acting) responsible node of `page`.
    fn manages(&self, page: GlobalAddr) -> bool {
        self.responsible_of(page) == Ok(self.me)
    }

    fn send(&mut self, to: u16, msg: Message, out: &mut Vec<Action>) {
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            out.push(Action::Send { to, msg });
        }
    }

    /// Handles the messages this node sent itself.
    fn drain(&mut self, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let mut first_err = Ok(());
        while let Some(m) = self.loopback.pop_front() {
            let r = self.on_message(self.me, m, out);
            if first_err.is_ok() {
                first_err = r;
            }
        }
        first_err
    }

    fn on_fault(
        &mut self,
        addr: GlobalAddr,
        access: Access,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let page = addr.page();
        let responsible = self.responsible_of(page)?;
        let have = self.cache.rights(page);
        if have >= access.rights() {
            // A fault raced with the install that already served it, or a
            // write to a page mapped read-only after its write-back.
            if access == Access::Write
                && let Some(e) = self.cache.get_mut(page)
            {
                e.dirty = true;
                e.volatile = true;
            }
            out.push(Action::Map { page, rights: have });
            out.push(Action::Resume {
                page,
                result: Ok(()),
            });
            return Ok(());
        }
        if self.pending.contains_key(&page) || self.releasing.contains(&page) {
            // Waits for the transaction (or the release) under way;
            // retries after Resume.
            return Ok(());
        }
        let txn = self.next_txn;
        self.next_txn += 1;
        self.pending.insert(
            page,
            Pending {
                txn,
                access,
                responsible,
            },
        );
        let kind = match access {
            Access::Read => Kind::ReadRequest,
            Access::Write => Kind::WriteRequest,
        };
        self.send(responsible, Message::new(kind, self.me, txn, page), out);
        Ok(())
    }

    fn on_message(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        match msg.kind {
            Kind::ReadRequest | Kind::WriteRequest => self.on_request(from, msg, out),
            Kind::InvalidateAck => self.on_invalidate_ack(from, msg, out),
            Kind::Confirm => self.on_confirm(from, msg, out),
            Kind::ReadCopy | Kind::WriteCopy => self.on_copy(msg, out),
            Kind::Nack => self.on_nack(from, msg, out),
            Kind::WriteBack => self.on_write_back(from, msg, out),
            Kind::WriteBackAck => self.on_write_back_ack(from, msg, out),
            Kind::Replicate => self.on_replicate(from, msg, out),
            Kind::ReplicaAck => self.on_replica_ack(from, msg, out),
            Kind::Release => self.on_release(from, msg, out),
            Kind::ReleaseAck => self.on_release_ack(from, msg, out),
            Kind::Fetch => self.on_fetch(from, msg, out),
            Kind::Fetched => self.on_fetched(from, msg, out),
            Kind::SyncRequest => self.on_sync_request(from, msg, out),
            Kind::SyncDone => self.on_sync_done(from, msg, out),
            Kind::ForwardRead | Kind::ForwardWrite | Kind::Invalidate | Kind::Drop => {
                // Only the page's responsible node sends these (a Drop may
                // reach a disk holder that never looked the range up).
                let unknown = self.responsible_of(msg.page) == Err(DsmError::NotAllocated);
                let drop_to_holder = msg.kind == Kind::Drop && unknown;
                if self.responsible_of(msg.page) != Ok(from) && !drop_to_holder {
                    return Err(unexpected("order not from the page's responsible node"));
                }
                match msg.kind {
                    Kind::ForwardRead => self.on_forward_read(msg, out),
                    Kind::ForwardWrite => self.on_forward_write(msg, out),
                    Kind::Invalidate => {
                        // A page being released is no longer the owner's.
                        let releasing = self.releasing.contains(&msg.page);
                        self.drop_copy(msg.page, releasing, out);
                        let ack =
                            Message::new(Kind::InvalidateAck, msg.requester, msg.txn, msg.page);
                        self.send(from, ack, out);
                        Ok(())
                    }
                    _ => {
                        self.drop_copy(msg.page, true, out);
                        if let Some(d) = self.disk.as_mut() {
                            let _ = d.remove(msg.page);
                        }
                        self.flushing.remove(&msg.page);
                        self.evicting.remove(&msg.page);
                        self.releasing.remove(&msg.page);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Drops the local copy of `page`; an owner's only if `even_owner`.
    fn drop_copy(&mut self, page: GlobalAddr, even_owner: bool, out: &mut Vec<Action>) {
        if self.cache.get(page).is_some_and(|e| even_owner || !e.owner) {
            self.cache.remove(page);
            out.push(Action::Unmap { page });
        }
    }

    // ---- responsible node ----

    fn on_request(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if msg.requester != from {
            return Err(unexpected("request on behalf of another node"));
        }
        let page = msg.page;
        if !self.ready && self.nominal_of(page) == Err(DsmError::NotAllocated) {
            // Served once the kernel has learned the ranges.
            self.deferred.push_back((from, msg));
            return Ok(());
        }
        if !self.manages(page) {
            let mut nack = Message::new(Kind::Nack, from, msg.txn, page);
            nack.reason = DsmError::NotAllocated.code();
            self.send(from, nack, out);
            return Ok(());
        }
        let rec = self.records.entry(page).or_default();
        // A node faults on a page once at a time, but its next request may
        // overtake the Confirm of its last one: so one queued request per
        // node besides its running transaction, and no repeated txn.
        let dup = rec
            .active
            .is_some_and(|a| a.req.requester == from && a.req.txn == msg.txn)
            || rec.queue.iter().any(|q| q.requester == from);
        if dup {
            return Err(unexpected("second request from a node for one page"));
        }
        let access = if msg.kind == Kind::ReadRequest {
            Access::Read
        } else {
            Access::Write
        };
        let group = self.policy.group(from);
        rec.streak = match rec.streak {
            (g, n) if g == group => (g, n.saturating_add(1)),
            _ => (group, 1),
        };
        rec.queue.push_back(Request {
            requester: from,
            txn: msg.txn,
            access,
        });
        self.try_start(page, out);
        Ok(())
    }

    /// Starts the next queued transaction on `page` if none runs.
    fn try_start(&mut self, page: GlobalAddr, out: &mut Vec<Action>) {
        let Some(rec) = self.records.get_mut(&page) else {
            return;
        };
        if rec.active.is_some() {
            return;
        }
        let Some(req) = rec.queue.pop_front() else {
            return;
        };
        // The migration controller: a page that one group (not the
        // owner's) keeps asking for moves to it, unless the requester
        // published that its DSM RAM is full (the page would only be
        // paged out there).
        let room = self
            .published
            .get(usize::from(req.requester))
            .copied()
            .flatten()
            .is_none_or(|f| f.ram_pages > 0);
        let migrate = |owner: u16| {
            let (group, run) = rec.streak;
            self.policy.migrate_after > 0
                && run >= self.policy.migrate_after
                && group == self.policy.group(req.requester)
                && self.policy.group(owner) != group
                && room
        };
        let migrating = matches!((req.access, rec.owner), (Access::Read, Some(o)) if migrate(o));
        if migrating {
            self.stats.migrations += 1;
            rec.streak.1 = 0;
        }
        match (req.access, rec.owner) {
            (Access::Read, Some(owner)) if !migrating => {
                rec.active = Some(Active {
                    req,
                    phase: Phase::Confirm,
                    grants_ownership: false,
                    version: rec.version,
                });
                let fwd = Message::new(Kind::ForwardRead, req.requester, req.txn, page);
                self.send(owner, fwd, out);
            }
            _ => {
                // A write, or the first touch of a page: ownership moves.
                let mut others = without(rec.copyset, req.requester);
                if let Some(o) = rec.owner {
                    others = without(others, o);
                }
                let version = rec.version + 1;
                rec.active = Some(Active {
                    req,
                    phase: Phase::Acks(others),
                    grants_ownership: true,
                    version,
                });
                if others.is_empty() {
                    self.grant_write(page, out);
                } else {
                    for n in others.iter() {
                        let inv = Message::new(Kind::Invalidate, req.requester, req.txn, page);
                        self.send(n, inv, out);
                    }
                }
            }
        }
    }

    /// Every other copy is gone: move the page and ownership to the writer.
    fn grant_write(&mut self, page: GlobalAddr, out: &mut Vec<Action>) {
        let Some(rec) = self.records.get_mut(&page) else {
            return;
        };
        let Some(active) = rec.active.as_mut() else {
            return;
        };
        active.phase = Phase::Confirm;
        let a = *active;
        match rec.owner {
            Some(owner) => {
                let mut fwd = Message::new(Kind::ForwardWrite, a.req.requester, a.req.txn, page);
                fwd.version = a.version;
                self.send(owner, fwd, out);
            }
            None => {
                // In no node's RAM: the page comes from a disk, or is a
                // page nobody wrote (zeros).
                let stored = match self.disk.as_mut().map(|d| d.load(page)) {
                    Some(Ok(Some(found))) => Some(found),
                    Some(Err(_)) => {
                        self.stats.disk_errors += 1;
                        None
                    }
                    _ => None,
                };
                if stored.is_none() {
                    // Other holders may have it: this disk was reformatted,
                    // or this node stands in for a lost one.
                    let nominal = self.nominal_of(page).unwrap_or(self.me);
                    if !self.disk_complete || nominal != self.me {
                        let mut ask = NodeSet::default();
                        for n in self.holders(page) {
                            if n != self.me {
                                ask.insert(n);
                            }
                        }
                        if !ask.is_empty() {
                            return self.fetch_next(page, ask, out);
                        }
                    }
                }
                self.grant_stored(page, stored, out);
            }
        }
    }

    /// Asks the next holder in `ask` for its stored copy of `page`.
    fn fetch_next(&mut self, page: GlobalAddr, ask: NodeSet, out: &mut Vec<Action>) {
        let Some(next) = ask.iter().next() else {
            return self.grant_stored(page, None, out);
        };
        let Some(a) = self.records.get_mut(&page).and_then(|r| r.active.as_mut()) else {
            return;
        };
        a.phase = Phase::Fetch(without(ask, next));
        let (requester, txn) = (a.req.requester, a.req.txn);
        self.send(next, Message::new(Kind::Fetch, requester, txn, page), out);
    }

    /// Sends the page that was in no RAM to the transaction's requester:
    /// the stored copy, or zeros.
    fn grant_stored(
        &mut self,
        page: GlobalAddr,
        stored: Option<(Stamp, Box<PageBuf>)>,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.records.get_mut(&page).and_then(|r| r.active.as_mut()) else {
            return;
        };
        a.phase = Phase::Confirm;
        let mut copy = Message::new(Kind::WriteCopy, a.req.requester, a.req.txn, page);
        match stored {
            Some((stamp, data)) => {
                // Past every version the disks have seen.
                a.version = a.version.max(stamp.version + 1);
                copy.data = Some(data);
                copy.clean = true;
                self.stats.page_ins += 1;
            }
            None => copy.data = Some(PageBuf::zeroed()),
        }
        copy.version = a.version;
        let to = a.req.requester;
        self.send(to, copy, out);
    }

    fn active_of(&mut self, msg: &Message) -> Result<&mut PageRecord, DsmError> {
        let rec = self
            .records
            .get_mut(&msg.page)
            .ok_or(unexpected("no transaction on the page"))?;
        match rec.active {
            Some(a) if a.req.requester == msg.requester && a.req.txn == msg.txn => Ok(rec),
            _ => Err(unexpected("not the page's current transaction")),
        }
    }

    fn on_invalidate_ack(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let rec = self.active_of(&msg)?;
        let Some(a) = rec.active.as_mut() else {
            return Err(unexpected("no transaction"));
        };
        let Phase::Acks(waiting) = a.phase else {
            return Err(unexpected("ack when none is awaited"));
        };
        if !waiting.contains(from) {
            return Err(unexpected("ack from a node not invalidated"));
        }
        let left = without(waiting, from);
        a.phase = Phase::Acks(left);
        if left.is_empty() {
            self.grant_write(msg.page, out);
        }
        Ok(())
    }

    fn on_confirm(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if msg.requester != from {
            return Err(unexpected("confirm on behalf of another node"));
        }
        let rec = self.active_of(&msg)?;
        let Some(a) = rec.active else {
            return Err(unexpected("no transaction"));
        };
        if !matches!(a.phase, Phase::Confirm) {
            return Err(unexpected("confirm before the page was sent"));
        }
        if a.grants_ownership {
            rec.owner = Some(from);
            rec.copyset = NodeSet::default();
            rec.version = a.version;
        } else if rec.owner != Some(from) {
            rec.copyset.insert(from);
        }
        rec.active = None;
        self.try_start(msg.page, out);
        Ok(())
    }

    // ---- owner ----

    fn on_forward_read(&mut self, msg: Message, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let page = msg.page;
        let e = self
            .cache
            .get_mut(page)
            .filter(|e| e.owner)
            .ok_or(unexpected(
                "forwarded read to a node that does not own the page",
            ))?;
        if e.rights == Rights::Write {
            // Single writer: once a reader exists the owner may only read.
            e.rights = Rights::Read;
            out.push(Action::Map {
                page,
                rights: Rights::Read,
            });
        }
        let mut copy = Message::new(Kind::ReadCopy, msg.requester, msg.txn, page);
        copy.version = e.version;
        copy.data = Some(e.data.clone());
        self.send(msg.requester, copy, out);
        Ok(())
    }

    fn on_forward_write(&mut self, msg: Message, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let page = msg.page;
        if !self.cache.get(page).is_some_and(|e| e.owner) {
            return Err(unexpected(
                "forwarded write to a node that does not own the page",
            ));
        }
        if msg.requester == self.me {
            // The owner itself wants to write: the others are invalidated.
            let p = self.take_pending(&msg)?;
            if let Some(e) = self.cache.get_mut(page) {
                e.rights = Rights::Write;
                e.version = msg.version;
                e.dirty = true;
            }
            out.push(Action::Map {
                page,
                rights: Rights::Write,
            });
            out.push(Action::Resume {
                page,
                result: Ok(()),
            });
            let confirm = Message::new(Kind::Confirm, self.me, msg.txn, page);
            self.send(p.responsible, confirm, out);
            return Ok(());
        }
        let Some(e) = self.cache.remove(page) else {
            return Err(unexpected("owner lost its page"));
        };
        out.push(Action::Unmap { page });
        self.evicting.remove(&page);
        let mut copy = Message::new(Kind::WriteCopy, msg.requester, msg.txn, page);
        copy.version = msg.version;
        copy.clean = !e.dirty && !e.volatile && !self.flushing.contains_key(&page);
        copy.data = Some(e.data);
        self.send(msg.requester, copy, out);
        Ok(())
    }

    // ---- requester ----

    /// Removes and returns this node's pending fault that `msg` answers.
    fn take_pending(&mut self, msg: &Message) -> Result<Pending, DsmError> {
        match self.pending.get(&msg.page) {
            Some(p) if msg.requester == self.me && p.txn == msg.txn => {
                let p = *p;
                self.pending.remove(&msg.page);
                Ok(p)
            }
            _ => Err(unexpected("answer to no pending fault")),
        }
    }

    fn on_copy(&mut self, mut msg: Message, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let write = msg.kind == Kind::WriteCopy;
        match self.pending.get(&msg.page) {
            Some(p) if p.access == Access::Write && !write => {
                return Err(unexpected("read copy for a write fault"));
            }
            _ => {}
        }
        let data = msg.data.take().ok_or(DsmError::BadMessage {
            what: "copy without a page",
        })?;
        let p = self.take_pending(&msg)?;
        let page = msg.page;
        let rights = if write { Rights::Write } else { Rights::Read };
        self.age += 1;
        self.lru.push_back((self.age, page));
        self.cache.insert(
            page,
            CacheEntry {
                data,
                version: msg.version,
                rights,
                owner: write,
                dirty: write && !msg.clean,
                volatile: !msg.clean,
                seq: 0,
                age: self.age,
            },
        );
        // A clean page is mapped read-only even for its writer, so that
        // the first store faults and marks it dirty.
        let mapped = if msg.clean { Rights::Read } else { rights };
        out.push(Action::Map {
            page,
            rights: mapped,
        });
        out.push(Action::Resume {
            page,
            result: Ok(()),
        });
        let confirm = Message::new(Kind::Confirm, self.me, msg.txn, page);
        self.send(p.responsible, confirm, out);
        Ok(())
    }

    fn on_nack(&mut self, from: u16, msg: Message, out: &mut Vec<Action>) -> Result<(), DsmError> {
        match self.pending.get(&msg.page) {
            Some(p) if p.responsible == from => {}
            _ => return Err(unexpected("nack from a node not asked")),
        }
        let reason = DsmError::from_nack_code(msg.reason).unwrap_or(DsmError::NotAllocated);
        self.take_pending(&msg)?;
        out.push(Action::Resume {
            page: msg.page,
            result: Err(reason),
        });
        Ok(())
    }
}

// ---- durability: write-back, replication, paging, sync, recovery ----
impl Engine {
    fn ack_code(r: Result<(), DsmError>) -> u32 {
        match r {
            Ok(()) => 0,
            Err(e) if DsmError::from_ack_code(e.code()).is_some() => e.code(),
            Err(_) => DsmError::DiskFailed.code(),
        }
    }

    /// Stores a copy on this node's disk (newer stamps only).
    fn store_local(
        &mut self,
        page: GlobalAddr,
        stamp: Stamp,
        data: &PageBuf,
    ) -> Result<(), DsmError> {
        let Some(disk) = self.disk.as_mut() else {
            return Err(DsmError::NoDisk);
        };
        if disk.stamp(page).is_some_and(|s| s >= stamp) {
            return Ok(());
        }
        match disk.save(page, stamp, data) {
            Ok(()) => {
                self.stats.stored += 1;
                Ok(())
            }
            Err(_) => {
                self.stats.disk_errors += 1;
                Err(DsmError::DiskFailed)
            }
        }
    }

    /// Owner: sends the current content of `page` to its disks (through
    /// its responsible node) and maps it read-only, so that the next store
    /// marks it dirty again.
    fn flush_page(&mut self, page: GlobalAddr, out: &mut Vec<Action>) {
        let Ok(responsible) = self.responsible_of(page) else {
            return;
        };
        let Some(e) = self.cache.get_mut(page).filter(|e| e.owner) else {
            return;
        };
        if !e.dirty && !e.volatile {
            return;
        }
        if !e.dirty && self.flushing.contains_key(&page) {
            return;
        }
        e.seq += 1;
        e.dirty = false;
        let stamp = Stamp {
            version: e.version,
            seq: e.seq,
        };
        let mut msg = Message::new(Kind::WriteBack, self.me, 0, page);
        msg.set_stamp(stamp);
        msg.data = Some(e.data.clone());
        if e.rights == Rights::Write {
            out.push(Action::Map {
                page,
                rights: Rights::Read,
            });
        }
        self.flushing.insert(page, stamp);
        self.stats.write_backs += 1;
        self.send(responsible, msg, out);
    }

    /// Responsible: an owner's write-back; store it here and on the other
    /// holders, then acknowledge.
    fn on_write_back(
        &mut self,
        from: u16,
        mut msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if msg.requester != from {
            return Err(unexpected("write-back on behalf of another node"));
        }
        let page = msg.page;
        let stamp = msg.stamp();
        let mut ack = Message::new(Kind::WriteBackAck, from, 0, page);
        ack.set_stamp(stamp);
        if !self.manages(page) {
            ack.reason = DsmError::NotAllocated.code();
            self.send(from, ack, out);
            return Ok(());
        }
        let data = msg.data.take().ok_or(DsmError::BadMessage {
            what: "write-back without a page",
        })?;
        let stored = self.store_local(page, stamp, &data);
        if stored.is_err() {
            ack.reason = Self::ack_code(stored);
            self.send(from, ack, out);
            return Ok(());
        }
        let mut waiting = NodeSet::default();
        for n in self.holders(page) {
            if n != self.me {
                waiting.insert(n);
            }
        }
        if waiting.is_empty() {
            self.send(from, ack, out);
            return Ok(());
        }
        let id = self.next_txn;
        self.next_txn += 1;
        for n in waiting.iter() {
            let mut r = Message::new(Kind::Replicate, self.me, id, page);
            r.set_stamp(stamp);
            r.data = Some(data.clone());
            self.send(n, r, out);
        }
        self.replicating.insert(
            id,
            Replication {
                origin: from,
                page,
                stamp,
                waiting,
                error: 0,
            },
        );
        Ok(())
    }

    fn on_replicate(
        &mut self,
        from: u16,
        mut msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let data = msg.data.take().ok_or(DsmError::BadMessage {
            what: "replica without a page",
        })?;
        let stamp = msg.stamp();
        let r = self.store_local(msg.page, stamp, &data);
        let mut ack = Message::new(Kind::ReplicaAck, msg.requester, msg.txn, msg.page);
        ack.reason = Self::ack_code(r);
        self.send(from, ack, out);
        Ok(())
    }

    fn on_replica_ack(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if msg.txn == 0 {
            // A copy restored by `rereplicate`: nobody waits for it.
            return Ok(());
        }
        let Some(rep) = self.replicating.get_mut(&msg.txn) else {
            return Err(unexpected("replica ack for no replication"));
        };
        if rep.page != msg.page || !rep.waiting.contains(from) {
            return Err(unexpected("replica ack from a node not asked"));
        }
        rep.waiting = without(rep.waiting, from);
        if msg.reason != 0 && rep.error == 0 {
            rep.error = msg.reason;
        }
        if rep.waiting.is_empty()
            && let Some(rep) = self.replicating.remove(&msg.txn)
        {
            self.finish_replication(rep, out);
        }
        Ok(())
    }

    fn finish_replication(&mut self, rep: Replication, out: &mut Vec<Action>) {
        let mut ack = Message::new(Kind::WriteBackAck, rep.origin, 0, rep.page);
        ack.set_stamp(rep.stamp);
        ack.reason = rep.error;
        self.send(rep.origin, ack, out);
    }

    /// Owner: the write-back `msg` names is on every holder's disk.
    fn on_write_back_ack(
        &mut self,
        _from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if msg.requester != self.me {
            return Err(unexpected("write-back ack for another node"));
        }
        let page = msg.page;
        let stamp = msg.stamp();
        match self.flushing.get(&page) {
            Some(&s) if s == stamp => {
                self.flushing.remove(&page);
            }
            Some(_) => {}
            None => return Ok(()),
        }
        let error = DsmError::from_ack_code(msg.reason);
        if let Some(e) = error {
            for st in self.syncs.values_mut() {
                if st.pages.contains(&page) && st.result.is_ok() {
                    st.result = Err(e);
                }
            }
        } else if let Some(e) = self.cache.get_mut(page)
            && e.owner
            && !e.dirty
            && (Stamp {
                version: e.version,
                seq: e.seq,
            }) == stamp
        {
            e.volatile = false;
        }
        if !self.flushing.contains_key(&page) {
            for st in self.syncs.values_mut() {
                st.pages.remove(&page);
            }
        }
        if self.evicting.contains(&page) {
            if error.is_some() {
                // The disks refused it: it stays in RAM.
                self.evicting.remove(&page);
            } else {
                self.try_release(page, out);
            }
        }
        Ok(())
    }

    /// Owner: a clean page being paged out goes from RAM once its
    /// responsible node agrees (it then serves it from the disks).
    fn try_release(&mut self, page: GlobalAddr, out: &mut Vec<Action>) {
        let Ok(responsible) = self.responsible_of(page) else {
            return;
        };
        if self.pending.contains_key(&page) {
            // This node's own fault on it is under way: it stays (and is
            // a candidate again later).
            self.evicting.remove(&page);
            if let Some(e) = self.cache.get(page) {
                self.lru.push_back((e.age, page));
            }
            return;
        }
        let clean = !self.flushing.contains_key(&page)
            && self
                .cache
                .get(page)
                .is_some_and(|e| e.owner && !e.dirty && !e.volatile);
        if !clean {
            self.flush_page(page, out);
            return;
        }
        self.evicting.remove(&page);
        self.releasing.insert(page);
        if let Some(e) = self.cache.get_mut(page) {
            // No store may change it behind the disks' copy.
            if e.rights == Rights::Write {
                e.rights = Rights::Read;
                out.push(Action::Map {
                    page,
                    rights: Rights::Read,
                });
            }
        }
        self.send(
            responsible,
            Message::new(Kind::Release, self.me, 0, page),
            out,
        );
    }

    fn on_release(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if msg.requester != from {
            return Err(unexpected("release on behalf of another node"));
        }
        let page = msg.page;
        let mut ack = Message::new(Kind::ReleaseAck, from, 0, page);
        if !self.manages(page) {
            ack.reason = DsmError::NotAllocated.code();
        } else if self.disk.is_none() {
            ack.reason = DsmError::NoDisk.code();
        } else {
            match self.records.get_mut(&page) {
                Some(r) if r.owner == Some(from) && r.active.is_none() && r.queue.is_empty() => {
                    r.owner = None;
                    // Until its copy is gone it counts as a reader.
                    r.copyset.insert(from);
                }
                _ => ack.reason = DsmError::Busy.code(),
            }
        }
        self.send(from, ack, out);
        Ok(())
    }

    fn on_release_ack(
        &mut self,
        _from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let page = msg.page;
        if !self.releasing.remove(&page) {
            return Ok(());
        }
        // Faults that waited for the release retry now.
        out.push(Action::Resume {
            page,
            result: Ok(()),
        });
        match DsmError::from_ack_code(msg.reason) {
            None | Some(DsmError::NotAllocated) => {
                if self.cache.remove(page).is_some() {
                    out.push(Action::Unmap { page });
                    self.stats.page_outs += 1;
                }
            }
            Some(_) => {
                // Busy (a transaction runs on it) or no disk: keep it, and
                // let a later pass try again.
                self.age += 1;
                if let Some(e) = self.cache.get_mut(page) {
                    e.age = self.age;
                }
                self.lru.push_back((self.age, page));
            }
        }
        Ok(())
    }

    fn on_fetch(&mut self, from: u16, msg: Message, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let mut reply = Message::new(Kind::Fetched, msg.requester, msg.txn, msg.page);
        if let Some(disk) = self.disk.as_mut() {
            match disk.load(msg.page) {
                Ok(Some((stamp, data))) => {
                    reply.set_stamp(stamp);
                    reply.data = Some(data);
                }
                Ok(None) => {}
                Err(_) => self.stats.disk_errors += 1,
            }
        }
        self.send(from, reply, out);
        Ok(())
    }

    fn on_fetched(
        &mut self,
        _from: u16,
        mut msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let rec = self.active_of(&msg)?;
        let Some(a) = rec.active else {
            return Err(unexpected("no transaction"));
        };
        let Phase::Fetch(left) = a.phase else {
            return Err(unexpected("fetched copy when none is awaited"));
        };
        let page = msg.page;
        match msg.data.take() {
            Some(data) => {
                let stamp = msg.stamp();
                // Restores this node's copy too.
                let _ = self.store_local(page, stamp, &data);
                self.grant_stored(page, Some((stamp, data)), out);
            }
            None => self.fetch_next(page, left, out),
        }
        Ok(())
    }

    // ---- paging: the policy controller ----

    /// Pages out the oldest pages while more than the RAM budget are
    /// cached: read copies are dropped; owned pages are written back and
    /// released to their disks. Directory pages stay.
    fn enforce_budget(&mut self, out: &mut Vec<Action>) {
        let budget = self.policy.ram_pages;
        // Pages that left by other paths leave stale entries behind.
        if self.lru.len() > 2 * self.cache.len() + 64 {
            let cache = &self.cache;
            self.lru
                .retain(|&(age, page)| cache.get(page).is_some_and(|e| e.age == age));
        }
        let mut tries = self.lru.len();
        while tries > 0 {
            let leaving = self.evicting.len() + self.releasing.len();
            if self.cache.len().saturating_sub(leaving) <= budget {
                return;
            }
            tries -= 1;
            let Some((age, page)) = self.lru.pop_front() else {
                return;
            };
            let Some(e) = self.cache.get(page) else {
                continue;
            };
            if e.age != age
                || page.in_directory_space()
                || self.evicting.contains(&page)
                || self.releasing.contains(&page)
                || self.pending.contains_key(&page)
            {
                if e.age == age {
                    self.lru.push_back((age, page));
                }
                continue;
            }
            if !e.owner {
                self.cache.remove(page);
                out.push(Action::Unmap { page });
                self.stats.dropped_copies += 1;
                continue;
            }
            self.evicting.insert(page);
            self.try_release(page, out);
        }
    }

    /// Offers page `addr` for paging out now (the kernel's hint).
    pub fn page_out(&mut self, addr: GlobalAddr, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let page = addr.page();
        match self.cache.get(page) {
            Some(e) if e.owner => {
                self.evicting.insert(page);
                self.try_release(page, out);
            }
            Some(_) => {
                self.cache.remove(page);
                out.push(Action::Unmap { page });
            }
            None => {}
        }
        self.finish(out)
    }

    /// True while this node has write-backs or releases in flight.
    pub fn is_flushing(&self) -> bool {
        !self.flushing.is_empty() || !self.releasing.is_empty() || !self.evicting.is_empty()
    }

    // ---- sync ----

    /// Starts making `range` durable on every node: each writes back its
    /// dirty pages of the range and every directory page it owns, then
    /// every disk is flushed. An [`Action::Synced`] with the returned id
    /// reports the end.
    pub fn sync(&mut self, range: GlobalRange, out: &mut Vec<Action>) -> Result<u64, DsmError> {
        let id = self.next_txn;
        self.next_txn += 1;
        let mut nodes = NodeSet::default();
        for n in 0..self.nodes {
            if n != self.me && self.is_live(n) {
                nodes.insert(n);
            }
        }
        let (pages, todo) = self.flush_range(range);
        self.syncs.insert(
            (self.me, id),
            SyncState {
                range,
                pages,
                todo,
                nodes,
                phase: 1,
                result: Ok(()),
            },
        );
        for n in nodes.iter() {
            self.send(n, Self::sync_message(Kind::SyncRequest, id, range, 1), out);
        }
        self.finish(out)?;
        Ok(id)
    }

    fn sync_message(kind: Kind, id: u64, range: GlobalRange, phase: u32) -> Message {
        let mut m = Message::new(kind, 0, id, range.start());
        m.version = u64::try_from(range.pages()).unwrap_or(u64::MAX);
        m.reason = phase;
        m
    }

    /// The pages a sync of `range` waits for (write-backs in flight and
    /// dirty owned pages of the range and of the directory), and the dirty
    /// ones still to write back.
    fn flush_range(&self, range: GlobalRange) -> (BTreeSet<GlobalAddr>, VecDeque<GlobalAddr>) {
        let dirty: Vec<GlobalAddr> = self
            .cache
            .iter()
            .filter(|(p, e)| {
                e.owner
                    && (e.dirty || e.volatile)
                    && (range.contains(**p) || p.in_directory_space())
            })
            .map(|(p, _)| *p)
            .collect();
        let mut pages: BTreeSet<GlobalAddr> = self
            .flushing
            .keys()
            .filter(|p| range.contains(**p) || p.in_directory_space())
            .copied()
            .collect();
        pages.extend(dirty.iter().copied());
        (pages, dirty.into_iter().collect())
    }

    /// Write-backs in flight at most (each holds a 4 KiB send).
    const MAX_FLUSHING: usize = 32;

    fn on_sync_request(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let range = GlobalRange::new(msg.page, u128::from(msg.version) * PAGE_SIZE)?;
        if msg.reason == 2 {
            let r = match self.disk.as_mut().map(|d| d.sync()) {
                Some(Err(_)) => DsmError::DiskFailed.code(),
                _ => 0,
            };
            let mut done = Self::sync_message(Kind::SyncDone, msg.txn, range, 2);
            done.version = u64::from(r);
            self.send(from, done, out);
            return Ok(());
        }
        let (pages, todo) = self.flush_range(range);
        self.syncs.insert(
            (from, msg.txn),
            SyncState {
                range,
                pages,
                todo,
                nodes: NodeSet::default(),
                phase: 1,
                result: Ok(()),
            },
        );
        Ok(())
    }

    fn on_sync_done(
        &mut self,
        from: u16,
        msg: Message,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        let Some(st) = self.syncs.get_mut(&(self.me, msg.txn)) else {
            return Err(unexpected("sync answer for no sync"));
        };
        if st.phase != msg.reason || !st.nodes.contains(from) {
            return Err(unexpected("sync answer out of phase"));
        }
        st.nodes = without(st.nodes, from);
        if msg.version != 0 && st.result.is_ok() {
            st.result = Err(u32::try_from(msg.version)
                .ok()
                .and_then(DsmError::from_ack_code)
                .unwrap_or(DsmError::DiskFailed));
        }
        self.progress_syncs(out);
        Ok(())
    }

    /// Moves every sync whose awaited write-backs and answers are in to
    /// its next phase, or to its end.
    fn progress_syncs(&mut self, out: &mut Vec<Action>) {
        // Tops up the write-backs in flight from the syncs' lists.
        let keys: Vec<(u16, u64)> = self.syncs.keys().copied().collect();
        for key in keys {
            while self.flushing.len() < Self::MAX_FLUSHING {
                let Some(page) = self.syncs.get_mut(&key).and_then(|st| st.todo.pop_front()) else {
                    break;
                };
                self.flush_page(page, out);
                if !self.flushing.contains_key(&page)
                    && let Some(st) = self.syncs.get_mut(&key)
                {
                    // Nothing to write back any more (moved, or clean).
                    st.pages.remove(&page);
                }
            }
        }
        let ready: Vec<(u16, u64)> = self
            .syncs
            .iter()
            .filter(|(_, st)| st.pages.is_empty() && st.nodes.is_empty())
            .map(|(&k, _)| k)
            .collect();
        for key in ready {
            let Some(mut st) = self.syncs.remove(&key) else {
                continue;
            };
            let (origin, id) = key;
            if origin != self.me {
                let mut done = Self::sync_message(Kind::SyncDone, id, st.range, 1);
                done.version = u64::from(Self::ack_code(st.result));
                self.send(origin, done, out);
                continue;
            }
            if st.phase == 1 {
                if let Some(Err(_)) = self.disk.as_mut().map(|d| d.sync()) {
                    st.result = st.result.and(Err(DsmError::DiskFailed));
                }
                st.phase = 2;
                for n in 0..self.nodes {
                    if n != self.me && self.is_live(n) {
                        st.nodes.insert(n);
                        self.send(
                            n,
                            Self::sync_message(Kind::SyncRequest, id, st.range, 2),
                            out,
                        );
                    }
                }
                if !st.nodes.is_empty() {
                    self.syncs.insert(key, st);
                    continue;
                }
            }
            out.push(Action::Synced {
                id,
                result: st.result,
            });
        }
    }

    // ---- membership and recovery ----

    /// The nodes this engine counts as live.
    pub fn live(&self) -> NodeSet {
        self.live
    }

    /// Sets the live nodes. A node that left stops being an owner, a
    /// reader, a holder or a party to a transaction; its ranges pass to
    /// the next live node (which holds their pages' replicas). Call
    /// [`rereplicate`](Self::rereplicate) afterwards to restore the
    /// copies.
    pub fn set_live(&mut self, live: NodeSet, out: &mut Vec<Action>) -> Result<(), DsmError> {
        let mut live = live;
        live.insert(self.me);
        let gone = NodeSet(self.live.0 & !live.0);
        self.live = live;
        if gone.is_empty() {
            return self.finish(out);
        }
        let pages: Vec<GlobalAddr> = self.records.keys().copied().collect();
        for page in pages {
            let Some(rec) = self.records.get_mut(&page) else {
                continue;
            };
            if rec.owner.is_some_and(|o| gone.contains(o)) {
                rec.owner = None;
            }
            rec.copyset = NodeSet(rec.copyset.0 & !gone.0);
            rec.queue.retain(|q| !gone.contains(q.requester));
            let restart = match rec.active {
                Some(a) if gone.contains(a.req.requester) => {
                    rec.active = None;
                    false
                }
                Some(a) => match a.phase {
                    Phase::Acks(w) => {
                        let left = NodeSet(w.0 & !gone.0);
                        if let Some(act) = rec.active.as_mut() {
                            act.phase = Phase::Acks(left);
                        }
                        if left.is_empty() {
                            self.grant_write(page, out);
                        }
                        false
                    }
                    // The owner or a holder it waited for may be gone:
                    // start over (the requester ignores a duplicate answer).
                    Phase::Confirm | Phase::Fetch(_) => true,
                },
                None => false,
            };
            if restart && let Some(rec) = self.records.get_mut(&page) {
                let Some(a) = rec.active.take() else { continue };
                rec.queue.push_front(a.req);
            }
            self.try_start(page, out);
        }
        // Replications waiting for lost holders.
        let ids: Vec<u64> = self.replicating.keys().copied().collect();
        for id in ids {
            if let Some(rep) = self.replicating.get_mut(&id) {
                rep.waiting = NodeSet(rep.waiting.0 & !gone.0);
                if rep.waiting.is_empty()
                    && let Some(rep) = self.replicating.remove(&id)
                {
                    self.finish_replication(rep, out);
                }
            }
        }
        for st in self.syncs.values_mut() {
            st.nodes = NodeSet(st.nodes.0 & !gone.0);
        }
        // Syncs started by lost nodes answer nobody.
        self.syncs.retain(|&(origin, _), _| !gone.contains(origin));
        // This node's faults and write-backs that went to a lost node.
        let waiting: Vec<(GlobalAddr, Pending)> = self
            .pending
            .iter()
            .filter(|(_, p)| gone.contains(p.responsible))
            .map(|(&a, &p)| (a, p))
            .collect();
        for (page, p) in waiting {
            self.pending.remove(&page);
            self.on_fault(page, p.access, out)?;
        }
        let lost: Vec<GlobalAddr> = self.flushing.keys().copied().collect();
        for page in lost {
            self.flushing.remove(&page);
            if let Some(e) = self.cache.get_mut(page) {
                e.volatile = true;
            }
            self.flush_page(page, out);
        }
        let releasing: Vec<GlobalAddr> = core::mem::take(&mut self.releasing).into_iter().collect();
        for page in releasing {
            self.evicting.insert(page);
            self.try_release(page, out);
        }
        self.finish(out)
    }

    /// Restores the copies of the pages on this node's disk: each is sent
    /// to its other holders (which keep it only if theirs is older), and a
    /// page of no known range is removed. Works through at most `max`
    /// pages after `after`; returns where to go on, `None` when done.
    pub fn rereplicate(
        &mut self,
        after: Option<GlobalAddr>,
        max: usize,
        out: &mut Vec<Action>,
    ) -> Option<GlobalAddr> {
        let batch = self.disk.as_ref()?.pages_after(after, max);
        let last = batch.last().copied();
        for page in batch {
            if self.nominal_of(page).is_err() {
                if let Some(d) = self.disk.as_mut() {
                    let _ = d.remove(page);
                }
                continue;
            }
            let others: Vec<u16> = self
                .holders(page)
                .into_iter()
                .filter(|&n| n != self.me)
                .collect();
            if others.is_empty() {
                continue;
            }
            let loaded = self.disk.as_mut().map(|d| d.load(page));
            let Some(Ok(Some((stamp, data)))) = loaded else {
                continue;
            };
            for n in others {
                let mut r = Message::new(Kind::Replicate, self.me, 0, page);
                r.set_stamp(stamp);
                r.data = Some(data.clone());
                self.send(n, r, out);
            }
        }
        let _ = self.drain(out);
        last
    }
}
