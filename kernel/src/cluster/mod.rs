//! This node's membership in the cluster.
//!
//! Attaches the shared memory node (ivshmem BAR2) through `shm-ext`, which
//! initialises or validates the on-device format; joins the node table under
//! the id from the command line; beats its heart from the timer tick; and
//! watches the other nodes' heartbeats from the main loop, logging who joins,
//! leaves or dies. Doorbells ring through the node table, so that nodes on
//! ivshmem-plain (no interrupts) find them by polling.

pub mod bench;
pub mod smoke;

use crate::drivers::ivshmem;
use crate::sync::IrqMutex;
use crate::time;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shm_ext::lock::Caller;
use shm_ext::pool::Pools;
use shm_ext::{
    Doorbell, EventKind, Generation, InitParams, LivenessMonitor, NodeFacts, NodeSet, Region, Shm,
    ShmError,
};

/// Progress value a node publishes when it is ready to start its apps
/// (`cluster.wait_live`); app barriers count from above it.
pub const READY_PROGRESS: u32 = 1;

/// Heartbeat period (ten ticks at 100 Hz).
const HEARTBEAT_NS: u64 = 100_000_000;
/// A beat this long after the last one is reported (the others declare a
/// node dead after the superblock's timeout, 1 s by default).
const LATE_BEAT_NS: u64 = 400_000_000;
/// When the heart last beat (`time::now_ns`).
static LAST_BEAT_NS: AtomicU64 = AtomicU64::new(0);
/// How long a node waits for another to finish initialising the superblock
/// (zeroing 64 MiB took over 5 s under this host's KVM, ring 0 emulated,
/// while the host was busy).
const ATTACH_WAIT_NS: u64 = 30_000_000_000;

/// This node: its id, its incarnation, and the shared memory it sits on.
pub struct Node {
    /// Node id (index in the node table).
    pub id: u16,
    generation: IrqMutex<Generation>,
    shm: Shm<'static>,
    monitor: IrqMutex<LivenessMonitor>,
    /// Set by the tick when a heartbeat is refused (we were declared dead).
    lost: AtomicBool,
    /// The pools on the shared memory, as this node (none if the heap is damaged).
    pools: IrqMutex<Option<Pools<'static>>>,
}

static NODE: spin::Once<Node> = spin::Once::new();

/// Rings doorbells through the ivshmem device's Doorbell register.
pub struct IvshmemDoorbell;

impl Doorbell for IvshmemDoorbell {
    fn ring(&self, peer: u16, vector: u16) {
        if let Some(dev) = ivshmem::device() {
            dev.ring(peer, vector);
        }
    }
    fn local_peer(&self) -> Option<u16> {
        ivshmem::device()
            .filter(|d| d.has_doorbells())
            .map(|d| d.position() as u16)
    }
}

/// Why this node could not join.
#[derive(Debug)]
pub enum JoinError {
    /// No usable ivshmem device.
    NoDevice,
    /// The shared memory refused us (corrupt, too small, table full, ...).
    Shm(ShmError),
}

impl core::fmt::Display for JoinError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            JoinError::NoDevice => f.write_str("no ivshmem device"),
            JoinError::Shm(e) => write!(f, "shared memory: {e} ({})", e.name()),
        }
    }
}

fn facts(dev: &ivshmem::Ivshmem) -> NodeFacts<'static> {
    NodeFacts {
        doorbell_peer: IvshmemDoorbell.local_peer(),
        memory_mib: crate::memory::stats().usable_bytes >> 20,
        app_count: 0,
        label: if dev.has_doorbells() {
            "shmos doorbell"
        } else {
            "shmos plain"
        },
    }
}

/// The layout this node proposes if it is the one that initialises the
/// shared memory. Devices of 64 MiB or more give an eighth to the message
/// queues (up to 16 MiB), so that every node's queue holds several
/// `MAX_MESSAGE` (64 KiB) messages; smaller ones keep the default 256 KiB
/// and their heap (a 16 MiB device with 2 MiB of queues left the fuzz
/// test's pools without room). `heartbeat_ms` (`cluster.heartbeat_ms`)
/// replaces the default heartbeat timeout.
fn init_params(len: usize, heartbeat_ms: Option<u64>) -> InitParams {
    let mut defaults = InitParams::default();
    if let Some(ms) = heartbeat_ms.filter(|&ms| ms > 0) {
        defaults.heartbeat_timeout_ns = ms.saturating_mul(1_000_000);
    }
    if len < 64 << 20 {
        return defaults;
    }
    let eighth = len / 8;
    let pow2 = 1usize << (usize::BITS - 1 - eighth.leading_zeros());
    InitParams {
        queue_area_len: pow2.min(16 << 20) as u64,
        ..defaults
    }
}

/// Attaches the shared memory node and joins as `id` (proposing a
/// heartbeat timeout of `heartbeat_ms` if it initialises it).
pub fn join(id: u16, heartbeat_ms: Option<u64>) -> Result<&'static Node, JoinError> {
    let dev = ivshmem::device().ok_or(JoinError::NoDevice)?;
    // SAFETY: BAR2 is mapped for the kernel's whole life at `shared` with
    // `shared_len` bytes; other nodes write it concurrently, which shm-ext
    // allows for by touching it only through atomics and volatile copies.
    let region = unsafe { Region::new(dev.shared as *mut u8, dev.shared_len as usize) };
    let deadline = time::now_ns() + ATTACH_WAIT_NS;
    let shm = Shm::attach(region, &init_params(region.len(), heartbeat_ms), time::now_ns, deadline)
        .map_err(JoinError::Shm)?;
    let generation = shm.join(id, &facts(dev)).map_err(JoinError::Shm)?;
    crate::kprintln!(
        "node {id}: joined as generation {} ({} the shared memory, {} MiB, heartbeat timeout {} ms)",
        generation.0,
        if shm.initialised_here() {
            "initialised"
        } else {
            "validated"
        },
        dev.shared_len >> 20,
        shm.heartbeat_timeout_ns() / 1_000_000
    );
    let node = NODE.call_once(|| Node {
        id,
        generation: IrqMutex::new(generation),
        shm,
        monitor: IrqMutex::new(LivenessMonitor::new(Some(id))),
        lost: AtomicBool::new(false),
        pools: IrqMutex::new(attach_pools(&shm, id, generation)),
    });
    Ok(node)
}

fn attach_pools(shm: &Shm<'static>, id: u16, generation: Generation) -> Option<Pools<'static>> {
    Pools::attach(shm, id, generation)
        .inspect_err(|e| log::error!("node {id}: pools unusable: {e}"))
        .ok()
}

/// Called from the timer interrupt: beats the heart once a period has
/// passed (by the clock, not by counting ticks: ticks held off while
/// interrupts are off are not all delivered afterwards).
pub fn on_tick() {
    beat_if_due("tick");
}

/// Beats the heart if a beat is overdue. Also for long stretches with
/// interrupts off, when the tick cannot: the DSM engine does its polled
/// disk I/O under its lock, and under this host's KVM (ring 0 emulated) a
/// page-out burst or a sync held interrupts off past the heartbeat
/// timeout, so the others declared a busy node dead. `from` names the
/// caller in the warning about a late beat.
pub fn beat_if_due(from: &str) {
    let now = time::now_ns();
    let last = LAST_BEAT_NS.load(Ordering::Relaxed);
    let since = now.saturating_sub(last);
    if since < HEARTBEAT_NS {
        return;
    }
    LAST_BEAT_NS.store(now, Ordering::Relaxed);
    let Some(node) = NODE.get() else { return };
    if last != 0 && since > LATE_BEAT_NS {
        log::warn!(
            "node {}: heartbeat {} ms late (beaten from the {from})",
            node.id,
            (since - HEARTBEAT_NS) / 1_000_000
        );
    }
    if node.shm.heartbeat(node.id, node.generation()).is_err() {
        node.lost.store(true, Ordering::Relaxed);
    }
}

impl Node {
    /// This node's current incarnation.
    pub fn generation(&self) -> Generation {
        *self.generation.lock()
    }

    /// The shared memory node.
    pub fn shm(&self) -> &Shm<'static> {
        &self.shm
    }

    /// Nodes currently live in the node table.
    pub fn live(&self) -> NodeSet {
        self.shm.live_nodes()
    }

    /// Main-loop work: watch the others' heartbeats and log what changed;
    /// rejoin if the others declared us dead (we stalled past the timeout).
    pub fn poll(&self) -> Events {
        if self.lost.swap(false, Ordering::Relaxed) {
            match self.shm.join(
                self.id,
                &facts(ivshmem::device().expect("joined through it")),
            ) {
                Ok(g) => {
                    *self.pools.lock() = attach_pools(&self.shm, self.id, g);
                    log::warn!(
                        "node {}: declared dead by the others; rejoined as generation {}",
                        self.id,
                        g.0
                    );
                    *self.generation.lock() = g;
                }
                Err(e) => log::error!("node {}: cannot rejoin: {e}", self.id),
            }
        }
        let events = self.monitor.lock().observe(&self.shm, time::now_ns());
        let mut out = Events::default();
        for e in events.iter().filter(|e| e.node != self.id) {
            let g = e.generation.0;
            match e.kind {
                EventKind::Joined => {
                    crate::kprintln!("node {}: node {} joined (generation {g})", self.id, e.node)
                }
                EventKind::Left => {
                    crate::kprintln!("node {}: node {} left (generation {g})", self.id, e.node)
                }
                EventKind::Died { declared_here } => crate::kprintln!(
                    "node {}: node {} died (generation {g}){}",
                    self.id,
                    e.node,
                    if declared_here {
                        ", declared dead here"
                    } else {
                        ""
                    }
                ),
            }
            match e.kind {
                EventKind::Joined => out.joined.insert(e.node),
                EventKind::Died { .. } => {
                    self.recover(e.node, e.generation);
                    out.died.insert(e.node)
                }
                EventKind::Left => {}
            }
        }
        out
    }

    /// Frees what a dead incarnation held: its locks, queue reservations,
    /// half-done allocations and exclusive regions. Several survivors may do
    /// this at once; both recoveries are idempotent.
    fn recover(&self, dead: u16, generation: Generation) {
        if let Ok(pools) = self.pools()
            && let Err(e) = pools.recover_node(dead, generation)
        {
            log::warn!("node {}: pool recovery for node {dead}: {e}", self.id);
        }
        let me = match self.caller(0) {
            Ok(me) => me,
            Err(e) => return log::warn!("node {}: cannot recover node {dead}: {e}", self.id),
        };
        if let Err(e) = self.shm.recover_ipc(&IvshmemDoorbell, me, dead, generation) {
            log::warn!("node {}: lock/queue recovery for node {dead}: {e}", self.id);
        }
    }

    /// This node's handle on the pools (a copy: the lock is not held while
    /// a pool operation spins on the shared memory).
    pub fn pools(&self) -> Result<Pools<'static>, ShmError> {
        (*self.pools.lock()).ok_or(ShmError::Corrupt { what: "pool area" })
    }

    /// The lock and message identity of process `pid` on this node.
    pub fn caller(&self, pid: u64) -> Result<Caller, ShmError> {
        Caller::new(self.id, self.generation(), (pid & 0xffff) as u16)
    }

    /// Rings `vector` on node `node` (interrupt if it has doorbells, else it polls).
    pub fn ring(&self, node: u16, vector: u16) -> Result<(), ShmError> {
        self.shm.ring(&IvshmemDoorbell, node, vector)
    }

    /// Vectors rung on this node since the last call.
    ///
    /// The node table's pending word is the only record: one ring sets its
    /// bit and also raises the interrupt, and the two may arrive in either
    /// order, so the interrupt is only the wake-up that ends a halt (counting
    /// both would report one ring twice).
    pub fn take_doorbells(&self) -> u32 {
        ivshmem::take_pending();
        self.shm.take_pending(self.id).unwrap_or(0)
    }

    /// Leaves the node table in an orderly way (before powering off).
    pub fn leave(&self) {
        if let Err(e) = self.shm.leave(self.id, self.generation()) {
            log::warn!("node {}: leave: {e}", self.id);
        }
    }
}

/// What one [`Node::poll`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Events {
    /// Nodes that joined (a new generation seen live).
    pub joined: NodeSet,
    /// Nodes that died.
    pub died: NodeSet,
}
