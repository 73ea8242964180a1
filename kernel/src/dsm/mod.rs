//! The DSM in the kernel: one `shm_ext::dsm::Engine` per node, fed with
//! page faults and with the protocol messages other nodes' kernels send,
//! whose actions (send, map, unmap, resume) are applied here.
//!
//! - State: [`Dsm`] behind one interrupt-safe lock. It is never held
//!   across a wait: a fault hands its event to the engine under the lock,
//!   releases it, and blocks until the engine's `Resume` for the page.
//! - Transport ([`transport`]): extension-layer messages on `DSM_PORT`,
//!   sent as process [`DSM_PROCESS`] of this node; received messages from
//!   anyone else are dropped. The receive pump ([`pump`]) runs from every
//!   DSM wait and from the boot task's wait for the apps (woken by the
//!   `MESSAGE` doorbell), so a node that is not faulting still serves.
//!   Sends that meet a full queue stay in an outbox, in order per
//!   destination, and are retried by every pump (never blocking the pump,
//!   so two nodes sending to each other cannot deadlock).
//! - Mappings: `dsm_map` reserves a user window with nothing mapped; a
//!   fault in it becomes [`Event::Fault`] ([`fault`]). `Map` points the
//!   page's PTE in every process mapping it at the engine's cached frame
//!   (a `PageBuf` in the kernel heap, which lives in the direct map, so
//!   phys = virt - direct map base); `Unmap` clears those PTEs.
//! - Directory ([`directory`]): the engine's directory pages, read and
//!   written through the engine itself, under a cluster-wide lock word
//!   kept in a DSM page too.
//!
//! Uniprocessor: while the engine handles an event no user code runs (the
//! lock keeps interrupts off), so no CPU writes a page the engine sends.

pub mod directory;
pub mod disk;
pub mod fault;
pub mod report;
pub mod transport;

use crate::cluster::Node;
use crate::sync::IrqMutex;
use crate::task::{self, Events, Pid};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use shm_ext::NodeSet;
use shm_ext::dsm::{
    Action, AddressGenerator, DsmError, Engine, Event, GlobalAddr, PAGE_SIZE, Policy, Rights, Space,
};

/// The process number of the kernel's own DSM traffic in extension-layer
/// caller tags (user pids stay far below it).
pub const DSM_PROCESS: u16 = 0xfffe;

/// The wait event a `Resume` notifies.
pub const RESUMED: Events = Events::custom(8);

/// One `dsm_map` of a process: `len` bytes at user address `va` show the
/// global range starting at `start`.
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    /// The process.
    pub pid: Pid,
    /// Its user address.
    pub va: u64,
    /// Bytes mapped (whole pages).
    pub len: u64,
    /// The global address shown at `va`.
    pub start: GlobalAddr,
    /// Whether stores are allowed (else a write fault kills the app).
    pub writable: bool,
}

impl Mapping {
    /// The user address of global page `page`, if this mapping shows it.
    fn va_of(&self, page: GlobalAddr) -> Option<u64> {
        let off = page.0.checked_sub(self.start.0)?;
        (off < u128::from(self.len)).then(|| self.va + off as u64)
    }
}

/// Everything the kernel keeps for the DSM.
pub struct Dsm {
    /// The protocol engine.
    pub engine: Engine,
    /// This node.
    pub node: &'static Node,
    /// Every process mapping of DSM ranges on this node.
    pub maps: Vec<Mapping>,
    /// Encoded messages not yet accepted by their destination's queue.
    outbox: VecDeque<(u16, Vec<u8>)>,
    /// Requests received while the outbox was full, handled once it drains.
    held: VecDeque<(u16, shm_ext::dsm::Message)>,
    /// Per page: how many `Resume`s it saw, and the last one's result.
    resumes: BTreeMap<GlobalAddr, (u64, Result<(), DsmError>)>,
    /// Hands out data ranges (`dsm_alloc`).
    pub data: AddressGenerator,
    /// Hands out directory pages.
    pub dir: AddressGenerator,
    /// Receive buffer (the largest message this node's queue takes).
    rx: Vec<u8>,
    /// Messages refused (bad sender, undecodable, rejected by the engine).
    pub refused: u64,
    /// Syncs that finished, by id, with their results.
    synced: BTreeMap<u64, Result<(), DsmError>>,
    /// Where restoring the disk's copies goes on (`None`: not running).
    rereplicating: Option<Option<GlobalAddr>>,
}

static DSM: IrqMutex<Option<Dsm>> = IrqMutex::new(None);

/// Generators of a restarted node resume past the ranges its earlier
/// incarnations handed out: each generation starts `2^80` bytes further
/// into the slice (addresses are never reused, see `AddressGenerator`).
fn generator(node: &Node, space: Space) -> Result<AddressGenerator, DsmError> {
    let base = AddressGenerator::new(node.id, space)?;
    let step: u128 = match space {
        Space::Data => 1 << 80,
        Space::Directory => 1 << 40,
    };
    let skip = step.saturating_mul(u128::from(node.generation().0.saturating_sub(1)));
    let at = base.next().0.saturating_add(skip);
    AddressGenerator::resume(node.id, space, GlobalAddr(at)).or(Ok(base))
}

/// The engine's policy from the command line (`dsm.copies`, `dsm.ram`,
/// `dsm.migrate`, `dsm.groups`).
fn policy(args: &crate::cmdline::Args) -> Policy {
    let mut p = Policy::default();
    if let Some(c) = args.dsm_copies {
        p.copies = c.max(1);
    }
    // Pages live in the kernel heap: half of it by default.
    p.ram_pages = args
        .dsm_ram_pages
        .unwrap_or(crate::memory::heap::size() / 2 / PAGE_SIZE as usize)
        .max(16);
    if let Some(m) = args.dsm_migrate {
        p.migrate_after = m;
    }
    if let Some(g) = args.dsm_groups {
        p.groups = g.split('.').filter_map(|x| x.parse().ok()).collect();
    }
    p
}

/// Starts this node's engine (after the cluster join; the cluster's node
/// table size is the engine's node count), with its disk if it has one.
pub fn init(node: &'static Node, args: &crate::cmdline::Args) {
    let r = (|| -> Result<Dsm, DsmError> {
        let nodes = node.shm().max_nodes();
        let rx_len = node
            .shm()
            .msg_max_len(node.id)
            .unwrap_or(shm_ext::dsm::MAX_MESSAGE_LEN);
        let mut engine = Engine::new(node.id, nodes)?;
        engine.set_policy(policy(args));
        if let Some((disk, complete)) = disk::open(node.id, args.quiet) {
            if disk.stored() > 0 {
                // A restarted node: ranges come from the directory first.
                engine.set_not_ready();
            }
            engine.set_disk(disk, complete);
        }
        Ok(Dsm {
            engine,
            node,
            maps: Vec::new(),
            outbox: VecDeque::new(),
            held: VecDeque::new(),
            resumes: BTreeMap::new(),
            data: generator(node, Space::Data)?,
            dir: generator(node, Space::Directory)?,
            rx: alloc::vec![0; rx_len.max(shm_ext::dsm::MAX_MESSAGE_LEN)],
            refused: 0,
            synced: BTreeMap::new(),
            rereplicating: None,
        })
    })();
    match r {
        Ok(d) => *DSM.lock() = Some(d),
        Err(e) => crate::kprintln!("node {}: DSM unavailable: {e}", node.id),
    }
}

/// Runs `f` on the DSM state; `None` when this node has no DSM (no
/// cluster). Never call it from inside `f`, nor wait inside `f`.
pub fn with<R>(f: impl FnOnce(&mut Dsm) -> R) -> Option<R> {
    DSM.lock().as_mut().map(f)
}

/// The events a DSM waiter wakes on: a resume, a DSM message (or room in
/// a queue), and the tick (polling on ivshmem-plain; lost-wake safety).
pub fn wait_events() -> Events {
    RESUMED | Events::doorbell_or_tick(shm_ext::platform::vector::MESSAGE) | Events::TICK
}

/// When [`pump_background`] may pump next (`time::now_ns`).
static NEXT_BACKGROUND_PUMP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// [`pump`] for a task that only serves other nodes (the boot task while
/// the apps run). A pump that finds no DSM message is rationed to a fifth
/// of the time: it scans the node's whole message queue, and under this
/// host's KVM (kernel code emulated) a queue holding an app's unread
/// messages made each scan cost milliseconds; scanning at every tick and
/// doorbell then starved the apps, whose messages piled up and made the
/// scans longer. A pump that serves requests is never held back.
///
/// Returns `Some(when)` if it skipped: pump again at `when`, or a request
/// that came meanwhile waits for the next tick.
pub fn pump_background() -> Option<u64> {
    use core::sync::atomic::Ordering::Relaxed;
    let start = crate::time::now_ns();
    let due = NEXT_BACKGROUND_PUMP.load(Relaxed);
    if start < due {
        return Some(due);
    }
    let served = with(|d| {
        let n = transport::receive(d);
        transport::flush(d);
        d.rereplicate_step();
        n
    })
    .unwrap_or(0);
    let cost = crate::time::now_ns().saturating_sub(start);
    let rest = if served == 0 {
        cost.saturating_mul(4)
    } else {
        0
    };
    NEXT_BACKGROUND_PUMP.store(crate::time::now_ns().saturating_add(rest), Relaxed);
    None
}

/// Receives and handles pending DSM messages and retries the outbox.
/// Cheap when there is nothing to do; never blocks.
pub fn pump() {
    with(|d| {
        transport::receive(d);
        transport::flush(d);
    });
}

/// Sends waiting for room in peers' queues above which this node's own
/// faults wait (each queued send holds up to a page of kernel heap).
pub const OUTBOX_SOFT_LIMIT: usize = 64;

impl Dsm {
    /// Sends waiting for room in a peer's queue.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The result of sync `id`, once it finished (taken).
    pub fn take_synced(&mut self, id: u64) -> Option<Result<(), DsmError>> {
        self.synced.remove(&id)
    }

    /// How many `Resume`s page `page` saw so far.
    pub fn resume_count(&self, page: GlobalAddr) -> u64 {
        self.resumes.get(&page).map_or(0, |r| r.0)
    }

    /// The result of the last `Resume` of `page`.
    pub fn last_result(&self, page: GlobalAddr) -> Result<(), DsmError> {
        self.resumes.get(&page).map_or(Ok(()), |r| r.1)
    }

    /// Hands `event` to the engine and applies what it asks, in order.
    #[inline(never)]
    pub fn handle(&mut self, event: Event) -> Result<(), DsmError> {
        let mut actions = Vec::new();
        let r = self.engine.handle(event, &mut actions);
        self.apply(actions);
        r
    }

    /// Applies the engine's actions in order, then sends what they queued.
    pub fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            // A long batch runs with interrupts off, where the tick cannot
            // beat the heart.
            crate::cluster::beat_if_due("DSM engine");
            match a {
                Action::Send { to, msg } => transport::queue(self, to, &msg),
                Action::Map { page, rights } => self.map_page(page, rights),
                Action::Unmap { page } => self.unmap_page(page),
                Action::Resume { page, result } => {
                    let e = self.resumes.entry(page).or_insert((0, Ok(())));
                    *e = (e.0.wrapping_add(1), result);
                    task::notify(RESUMED);
                }
                Action::Synced { id, result } => {
                    self.synced.insert(id, result);
                    task::notify(RESUMED);
                }
            }
        }
        transport::flush(self);
    }

    /// Points every process mapping of `page` at the engine's frame.
    fn map_page(&mut self, page: GlobalAddr, rights: Rights) {
        // The page may already be gone again (a later action unmaps it).
        let Some(buf) = self.engine.page(page) else {
            return self.unmap_page(page);
        };
        let phys = buf as *const _ as u64 - crate::memory::paging::phys_to_virt(0);
        for m in &self.maps {
            let Some(va) = m.va_of(page) else { continue };
            let writable = m.writable && rights == Rights::Write;
            if let Some(t) = task::find(m.pid) {
                let r = t.with_space(|s| s.set_foreign_page(va, phys, writable));
                if let Some(Err(e)) = r {
                    log::warn!("dsm: cannot map {page} at {va:#x} in pid {}: {e:?}", m.pid);
                }
            }
        }
    }

    /// Clears every process mapping of `page`.
    fn unmap_page(&mut self, page: GlobalAddr) {
        for m in &self.maps {
            let Some(va) = m.va_of(page) else { continue };
            if let Some(t) = task::find(m.pid) {
                t.with_space(|s| s.clear_foreign_page(va));
            }
        }
    }

    /// The mapping of process `pid` that holds user address `va`, and the
    /// global address there.
    pub fn lookup(&self, pid: Pid, va: u64) -> Option<(Mapping, GlobalAddr)> {
        let m = self
            .maps
            .iter()
            .find(|m| m.pid == pid && va >= m.va && va - m.va < m.len)?;
        Some((*m, GlobalAddr(m.start.0 + u128::from(va - m.va))))
    }
}

/// Forgets the mappings of process `pid` (it ended; its page tables go
/// with its address space, and they own none of the DSM frames).
pub fn process_exited(pid: Pid) {
    with(|d| d.maps.retain(|m| m.pid != pid));
}

/// Bytes in a DSM page, as the kernel's u64.
pub const PAGE: u64 = PAGE_SIZE as u64;

/// Pages restored per background step (bounded: each is a 4 KiB message
/// in the outbox until the peer's queue takes it).
const REREPLICATE_BATCH: usize = 32;

impl Dsm {
    /// Restores another batch of the disk's copies, while the outbox is
    /// nearly empty.
    fn rereplicate_step(&mut self) {
        let Some(after) = self.rereplicating else {
            return;
        };
        if self.outbox.len() > 4 {
            return;
        }
        let mut out = Vec::new();
        let next = self.engine.rereplicate(after, REREPLICATE_BATCH, &mut out);
        self.apply(out);
        self.rereplicating = next.map(Some);
        if next.is_none() {
            crate::kprintln!("node {}: DSM copies restored", self.node.id);
        }
    }
}

/// Brings the DSM back after a (re)start, once the cluster's nodes are
/// live: learns the ranges from the directory (a node with stored pages
/// serves requests for them only then), moves the address generators past
/// what earlier incarnations handed out, counts the live nodes (a node
/// missing now passes its ranges to the next live one), and starts
/// restoring the copies the lost nodes held.
pub fn recover(node: &'static Node) {
    let Some(stored) = with(|d| d.engine.disk().map(|disk| disk.stored())) else {
        return;
    };
    // The live nodes first: the directory walk asks the responsible nodes
    // of its pages, and one missing now must be stood in for (else the
    // walk waited for it and gave up with `Busy`).
    let live = node.live();
    with(|d| {
        let mut out = Vec::new();
        let _ = d.engine.set_live(live, &mut out);
        d.apply(out);
    });
    let walked = match stored {
        Some(n) if n > 0 => learn_ranges(node),
        _ => Ok(0),
    };
    if let Err(e) = walked {
        crate::kprintln!("node {}: DSM: cannot read the directory: {e}", node.id);
    }
    with(|d| {
        let mut out = Vec::new();
        let _ = d.engine.set_ready(&mut out);
        d.apply(out);
        if stored.is_some_and(|n| n > 0) && walked.is_ok() {
            d.rereplicating = Some(None);
        }
    });
}

/// Takes nodes the cluster declared dead out of the DSM while the others
/// run on: their ranges pass to the next live node, the pages they owned
/// come back from the disk copies (the last write-back or sync), and the
/// copies they held are restored in the background. Nodes that left
/// cleanly are not taken out here: their owned pages would silently read
/// as their last synced state.
pub fn nodes_lost(node: &'static Node, died: NodeSet) {
    let Some(Some(used_disk)) = with(|d| {
        let live = NodeSet(d.engine.live().0 & !died.0);
        if live == d.engine.live() {
            return None;
        }
        let mut out = Vec::new();
        let _ = d.engine.set_live(live, &mut out);
        d.apply(out);
        let used = d.engine.known_ranges().next().is_some();
        Some(d.engine.disk().map(|disk| used || disk.stored() > 0))
    }) else {
        return;
    };
    // Restoring copies forgets stored pages of ranges this node does not
    // know: learn them all first (this node may never have mapped some).
    // Not on a node that never used the DSM: nothing to restore, and the
    // walk would wait for directory pages on nodes that left (they are not
    // taken out).
    let restoring = used_disk == Some(true)
        && match learn_ranges(node) {
            Ok(_) => with(|d| d.rereplicating = Some(None)).is_some(),
            Err(e) => {
                crate::kprintln!("node {}: DSM: cannot read the directory: {e}", node.id);
                false
            }
        };
    crate::kprintln!(
        "node {}: DSM: node(s) {died} lost; their pages come from the disks{}",
        node.id,
        if restoring { ", restoring copies" } else { "" }
    );
}

/// Publishes what this node has free for the DSM in its node-table entry
/// and reads what the other live nodes published, for the policy
/// controller.
pub fn exchange_free_space() {
    with(|d| {
        let shm = d.node.shm();
        let _ = shm.publish_free(d.node.id, d.node.generation(), d.engine.free_space());
        for n in d.engine.live().iter().filter(|&n| n != d.node.id) {
            if let Ok(free) = shm.free_space(n) {
                d.engine.set_published(n, free);
            }
        }
    });
}

/// True while copies are being restored in the background.
pub fn restoring_copies() -> bool {
    with(|d| d.rereplicating.is_some()).unwrap_or(false)
}

/// Walks the directory: every range is made known to the engine, and the
/// generators skip this node's ranges and directory pages.
fn learn_ranges(node: &'static Node) -> Result<usize, DsmError> {
    use shm_ext::dsm::directory as dir;
    let entries = {
        let _guard = directory::lock()?;
        dir::ranges(&mut directory::KernelDirectory)?
    };
    with(|d| {
        let me = node.id;
        let mut data_end = None;
        for e in &entries {
            let Ok(r) = e.range() else { continue };
            if d.engine.map_range(r, e.responsible).is_ok() {
                let _ = d.engine.place_range(r, e.replicas);
            }
            if r.start().data_slice_node() == Some(me) {
                data_end = data_end.max(Some(r.last()));
            }
        }
        if let Some(last) = data_end {
            let next = GlobalAddr(last.0.saturating_add(1));
            if next > d.data.next()
                && let Ok(g) = AddressGenerator::resume(me, Space::Data, next)
            {
                d.data = g;
            }
        }
        // Directory pages of this node's slice that earlier incarnations
        // wrote are on its disk.
        let dir_last = d.engine.disk().and_then(|disk| {
            disk.pages()
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| p.directory_slice_node() == Some(me))
                .max()
        });
        if let Some(last) = dir_last {
            let next = GlobalAddr(last.0.saturating_add(PAGE_SIZE));
            if next > d.dir.next()
                && let Ok(g) = AddressGenerator::resume(me, Space::Directory, next)
            {
                d.dir = g;
            }
        }
        entries.len()
    })
    .ok_or(DsmError::NoSuchNode)
}
