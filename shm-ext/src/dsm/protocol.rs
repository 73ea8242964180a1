//! The per-node protocol engine: consumes events (local faults, received
//! messages, evictions) and returns actions (send, map, unmap, resume).
//!
//! One engine runs on every node. It plays three roles at once, for
//! different pages: requester (its own faults), owner (serving copies of
//! pages it owns) and responsible node (the manager of its ranges, keeping
//! each page's owner and copyset and running one transaction per page at a
//! time). Messages a node sends itself are handled inside the same call,
//! so the kernel only ever sees messages to other nodes.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::addr::{GlobalAddr, GlobalRange, MAX_NODES, NO_NODE};
use super::cache::{CacheEntry, PageBuf, PageCache, Rights};
use super::error::DsmError;
use super::wire::{Kind, Message};
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
#[derive(Debug)]
pub struct Engine {
    me: u16,
    nodes: u16,
    cache: PageCache,
    /// Ranges this node knows (from directory lookups) and their
    /// responsible nodes, by start.
    ranges: BTreeMap<GlobalAddr, (GlobalRange, u16)>,
    /// Ranges this node is responsible for, by start.
    managed: BTreeMap<GlobalAddr, GlobalRange>,
    /// Owner and copyset of every touched page of the managed ranges.
    records: BTreeMap<GlobalAddr, PageRecord>,
    pending: BTreeMap<GlobalAddr, Pending>,
    next_txn: u64,
    loopback: VecDeque<Message>,
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
            managed: BTreeMap::new(),
            records: BTreeMap::new(),
            pending: BTreeMap::new(),
            // Starts at 1 so a zeroed message never matches a transaction.
            next_txn: 1,
            loopback: VecDeque::new(),
        })
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
        if responsible >= self.nodes {
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

    /// Frees `range` at its responsible node (after the directory entry
    /// was removed): every copy is told to drop the page, and later
    /// requests are refused with `NotAllocated`. `Busy` if a transaction
    /// on one of its pages is under way (try again when idle).
    pub fn free_range(
        &mut self,
        range: GlobalRange,
        out: &mut Vec<Action>,
    ) -> Result<(), DsmError> {
        if self.managed.get(&range.start()) != Some(&range) {
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
        for p in pages {
            if let Some(r) = self.records.remove(&p) {
                let mut holders = r.copyset;
                if let Some(o) = r.owner {
                    holders.insert(o);
                }
                for n in holders.iter() {
                    self.send(n, Message::new(Kind::Drop, self.me, 0, p), out);
                }
            }
        }
        self.managed.remove(&range.start());
        self.drain(out)
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
        let d = self.drain(out);
        r.and(d)
    }

    fn known_range(&self, addr: GlobalAddr) -> Option<(GlobalRange, u16)> {
        self.ranges.range(..=addr).next_back().map(|(_, &v)| v)
    }

    /// The responsible node of `page`: from the directory slice for
    /// directory pages, else from the known ranges.
    fn responsible_of(&self, page: GlobalAddr) -> Result<u16, DsmError> {
        if let Some(n) = page.directory_slice_node() {
            return if n < self.nodes {
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

    /// True if this node is the responsible node of `page`.
    fn manages(&self, page: GlobalAddr) -> bool {
        if let Some(n) = page.directory_slice_node() {
            return n == self.me;
        }
        self.managed
            .range(..=page)
            .next_back()
            .is_some_and(|(_, r)| r.contains(page))
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
            // A fault raced with the install that already served it.
            out.push(Action::Map { page, rights: have });
            out.push(Action::Resume {
                page,
                result: Ok(()),
            });
            return Ok(());
        }
        if self.pending.contains_key(&page) {
            // Waits for the transaction under way; retries after Resume.
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
            Kind::ForwardRead | Kind::ForwardWrite | Kind::Invalidate | Kind::Drop => {
                // Only the page's responsible node sends these.
                if self.responsible_of(msg.page) != Ok(from) {
                    return Err(unexpected("order not from the page's responsible node"));
                }
                match msg.kind {
                    Kind::ForwardRead => self.on_forward_read(msg, out),
                    Kind::ForwardWrite => self.on_forward_write(msg, out),
                    Kind::Invalidate => {
                        self.drop_copy(msg.page, false, out);
                        let ack =
                            Message::new(Kind::InvalidateAck, msg.requester, msg.txn, msg.page);
                        self.send(from, ack, out);
                        Ok(())
                    }
                    _ => {
                        self.drop_copy(msg.page, true, out);
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
        match (req.access, rec.owner) {
            (Access::Read, Some(owner)) => {
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
                // Never touched: the responsible node hands out the zeros.
                let mut copy = Message::new(Kind::WriteCopy, a.req.requester, a.req.txn, page);
                copy.version = a.version;
                copy.data = Some(PageBuf::zeroed());
                self.send(a.req.requester, copy, out);
            }
        }
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
        let mut copy = Message::new(Kind::WriteCopy, msg.requester, msg.txn, page);
        copy.version = msg.version;
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
        self.cache.insert(
            page,
            CacheEntry {
                data,
                version: msg.version,
                rights,
                owner: write,
                dirty: write,
                volatile: true,
            },
        );
        out.push(Action::Map { page, rights });
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
