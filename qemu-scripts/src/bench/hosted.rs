//! shm-ext between two host processes over one shared file (hosted mode):
//! the figures the VMs measure, without the VM boundary. Set beside the VM
//! figures they show what virtualisation costs; beside the host baselines,
//! what shm-ext itself costs.
//!
//! This process is node 0; a `bench-peer hosted` child (see
//! [`super::peer`]) is node 1. Both run the same fixed script, phase by
//! phase, so neither needs to be told what comes next:
//!
//! 1. message round trips on [`PORT_ECHO`]: 64 B then 4 KiB, each
//!    `warmup + iterations` times; node 1 echoes every message back;
//! 2. 64 KiB messages on [`PORT_STREAM`]: a warm-up batch, then the timed
//!    batch; node 1 acknowledges each batch with one small message;
//! 3. node 0 alone: uncontended lock, then allocate + free (node 1 waits);
//! 4. lock handoff on [`PORT_LOCK`]: node 0 sends "go", both increment a
//!    shared counter under one lock, node 1 answers "done"; warm-up round,
//!    then the timed round;
//! 5. ownership transfer round trips on [`PORT_TRANSFER`].
//!
//! Waits poll (no doorbells between host processes) and give up after
//! [`WAIT`](super::baseline::WAIT); the child dies with this thread.

use super::baseline::{Peer, shared_workdir, spin_until, warmup};
use anyhow::{Context, Result, bail, ensure};
use shm_ext::host::SharedFile;
use shm_ext::{
    Caller, InitParams, LockTable, NoDoorbell, NodeFacts, NodeSet, Pools, RegionHandle, Shm,
    ShmError, TryLock,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// This process's node.
pub const PARENT: u16 = 0;
/// The child's node.
pub const CHILD: u16 = 1;
/// Port of the round-trip messages.
pub const PORT_ECHO: u32 = 1;
/// Port of the 64 KiB stream and its acknowledgements.
pub const PORT_STREAM: u32 = 2;
/// Port of the lock handoff's go and done messages.
pub const PORT_LOCK: u32 = 3;
/// Port of the ownership transfer messages.
pub const PORT_TRANSFER: u32 = 4;
/// Message sizes of the round trips.
pub const ECHO_SIZES: [usize; 2] = [64, 4096];
/// Bytes of each stream message.
pub const STREAM_LEN: usize = 64 * 1024;
/// Stream messages one queue holds at once: enough that the sender rarely
/// waits for the receiver's copy, as a pipe's buffer would be.
pub const STREAM_IN_FLIGHT: u64 = 4;
/// Bytes of the shared file.
pub const FILE_LEN: usize = 4 << 20;
/// Data bytes of the benchmark's pool.
const POOL_LEN: u64 = 1 << 20;
/// Bytes of the allocate + free pair.
const ALLOC_LEN: u64 = 64;

/// Per-operation figures of shm-ext between two host processes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct HostedFigures {
    /// Polled message round trip, 64 bytes, ns.
    pub msg_rtt_64_ns: f64,
    /// Polled message round trip, 4 KiB, ns.
    pub msg_rtt_4k_ns: f64,
    /// One-way 64 KiB message throughput, MB/s (10^6 bytes/s).
    pub msg_throughput_64k_mb_s: f64,
    /// Uncontended `try_acquire_fast` + `release_fast`, ns per pair.
    pub lock_ns: f64,
    /// Lock acquisition with both nodes contending, ns per acquisition.
    pub lock_handoff_ns: f64,
    /// `shm_alloc` + `shm_free` of 64 bytes, ns per pair.
    pub alloc_free_ns: f64,
    /// Ownership transfer to the other node and back, with a message each
    /// way, ns per round trip.
    pub transfer_rtt_ns: f64,
}

/// The shared file's format: two nodes, each queue large enough for
/// [`STREAM_IN_FLIGHT`] messages of 64 KiB (a record is the payload and a
/// 32-byte header; a queue's header and rounding take another 192 bytes).
pub fn params() -> InitParams {
    let per_queue = STREAM_IN_FLIGHT * (STREAM_LEN as u64 + 32) + 192;
    InitParams {
        max_nodes: 2,
        queue_area_len: 2 * per_queue,
        ..InitParams::default()
    }
}

/// What each node says about itself in the node table.
pub(crate) fn facts() -> NodeFacts<'static> {
    NodeFacts {
        doorbell_peer: None,
        memory_mib: 0,
        app_count: 0,
        label: "shmos bench (hosted)",
    }
}

/// What the parent set up and the child needs, passed on its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setup {
    /// Timed iterations.
    pub iterations: usize,
    /// The lock both nodes contend for (reserved by node 0).
    pub lock: u32,
    /// Device offset of the shared counter word.
    pub counter: usize,
    /// The region whose ownership goes back and forth.
    pub transfer: RegionHandle,
}

impl Setup {
    /// The command-line arguments after the file path.
    pub fn to_args(self) -> [String; 4] {
        [
            self.iterations.to_string(),
            self.lock.to_string(),
            self.counter.to_string(),
            self.transfer.0.to_string(),
        ]
    }

    /// Parses what `to_args` made.
    pub fn from_args(args: &[String]) -> Result<Self> {
        let [iterations, lock, counter, transfer] = args else {
            bail!("expected ITERATIONS LOCK COUNTER TRANSFER, got {args:?}");
        };
        Ok(Self {
            iterations: iterations.parse().context("iterations")?,
            lock: lock.parse().context("lock id")?,
            counter: counter.parse().context("counter offset")?,
            transfer: RegionHandle(transfer.parse().context("transfer handle")?),
        })
    }
}

/// A node's view of the shared file during the benchmark.
pub(crate) struct Node<'a> {
    pub shm: Shm<'a>,
    pub me: Caller,
}

impl Node<'_> {
    /// Takes the next message on `port` into `buf` (polling); returns its
    /// length. Fails if it did not come from `from`.
    pub fn recv(
        &self,
        from: u16,
        port: u32,
        buf: &mut [u8],
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<usize> {
        let got = spin_until("a message", alive, || {
            match self.shm.msg_recv(&NoDoorbell, self.me, port, buf) {
                Ok(r) => Ok(Some(r)),
                Err(ShmError::NoMessage | ShmError::Busy) => Ok(None),
                Err(e) => Err(e).with_context(|| format!("receiving on port {port}")),
            }
        })?;
        ensure!(
            got.from.node() == from,
            "message on port {port} from node {}, expected node {from}",
            got.from.node()
        );
        Ok(got.len)
    }

    /// Sends `bytes` to `port` of node `to`, retrying while its queue is
    /// full or busy.
    pub fn send(
        &self,
        to: u16,
        port: u32,
        bytes: &[u8],
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        spin_until("room in the queue", alive, || {
            match self.shm.msg_send(&NoDoorbell, self.me, to, port, bytes) {
                Ok(()) => Ok(Some(())),
                Err(ShmError::QueueFull | ShmError::Busy) => Ok(None),
                Err(e) => Err(e).with_context(|| format!("sending to node {to} port {port}")),
            }
        })
    }

    /// `n` times: take lock `id` (spinning on the fast path), increment
    /// `counter` by a plain load and store (only the lock keeps increments
    /// from being lost), release.
    pub fn contend(
        &self,
        table: &LockTable<'_>,
        id: u32,
        counter: &AtomicU64,
        n: usize,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        for _ in 0..n {
            spin_until("the lock", alive, || {
                match table.try_acquire_fast(id, self.me).context("acquiring")? {
                    TryLock::Acquired => Ok(Some(())),
                    TryLock::WouldBlock { .. } => Ok(None),
                }
            })?;
            let v = counter.load(Ordering::Relaxed);
            counter.store(v + 1, Ordering::Relaxed);
            table.release_fast(id, self.me).context("releasing")?;
        }
        Ok(())
    }
}

/// A small message carrying one number (sequence numbers, batch sizes).
pub(crate) fn number(v: usize) -> [u8; 8] {
    (v as u64).to_le_bytes()
}

/// The number in the first 8 bytes of `bytes`, if it has them.
pub(crate) fn read_number(bytes: &[u8]) -> Option<usize> {
    let b = bytes.get(..8)?.try_into().ok()?;
    usize::try_from(u64::from_le_bytes(b)).ok()
}

/// Mean nanoseconds per operation.
fn per_op_ns(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// Measures every [`HostedFigures`] figure once, with `iterations` timed
/// operations each, against a `bench-peer hosted` child run from `peer`
/// (the shmos executable).
pub fn run(peer: &Path, iterations: usize) -> Result<HostedFigures> {
    ensure!(iterations > 0, "iterations must be at least 1");
    // Removed on return, error or not (and on Ctrl-C).
    let dir = shared_workdir()?;
    let path = dir.path().join("hosted");
    let file = SharedFile::open_or_create(&path, FILE_LEN)
        .with_context(|| format!("creating {}", path.display()))?;
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_nanos() as u64;
    let shm = Shm::attach(file.region(), &params(), now, 1_000_000_000)
        .context("formatting the shared file")?;
    let generation = shm.join(PARENT, &facts()).context("joining as node 0")?;
    let node = Node {
        shm,
        me: Caller::new(PARENT, generation, 0)?,
    };
    let pools = Pools::attach(&shm, PARENT, generation).context("attaching the pools")?;
    let pool = pools.pool_create("bench", POOL_LEN)?;
    let counter_region = pools.shm_alloc(pool, 8, 64)?;
    let counter_offset = usize::try_from(pools.region_info(counter_region)?.offset)?;
    let transfer = pools.shm_alloc_owned(pool, ALLOC_LEN, 64, 1 << PARENT)?;
    let mut lock = [0u32; 1];
    shm.lock_reserve(node.me, &mut lock)
        .context("reserving a lock")?;
    let setup = Setup {
        iterations,
        lock: lock[0],
        counter: counter_offset,
        transfer,
    };
    let args = setup.to_args();
    let mut argv = vec![path.as_os_str()];
    argv.extend(args.iter().map(OsStr::new));
    let child = Peer::spawn(peer, "hosted", &argv)?;
    child.run(|child| {
        let alive = &mut || child.check();
        spin_until("node 1 to join", alive, || {
            Ok(node.shm.live_nodes().contains(CHILD).then_some(()))
        })?;
        let counter = shm.region().atomic_u64(counter_offset)?;
        let warm = warmup(iterations);
        let msg_rtt_64_ns = echo(&node, ECHO_SIZES[0], warm, iterations, alive)?;
        let msg_rtt_4k_ns = echo(&node, ECHO_SIZES[1], warm, iterations, alive)?;
        let msg_throughput_64k_mb_s = stream(&node, warm, iterations, alive)?;
        let table = shm.lock_table()?;
        let lock_ns = uncontended_lock(&node, &table, setup.lock, warm, iterations)?;
        let alloc_free_ns = alloc_free(&pools, pool, warm, iterations)?;
        let lock_handoff_ns = handoff(&node, &table, setup.lock, counter, warm, iterations, alive)?;
        let transfer_rtt_ns = transfer_rtt(&node, &pools, transfer, warm, iterations, alive)?;
        Ok(HostedFigures {
            msg_rtt_64_ns,
            msg_rtt_4k_ns,
            msg_throughput_64k_mb_s,
            lock_ns,
            lock_handoff_ns,
            alloc_free_ns,
            transfer_rtt_ns,
        })
    })
}

/// Round trips of `size`-byte messages that node 1 echoes; checks every
/// echoed byte. Mean ns per round trip.
fn echo(
    node: &Node<'_>,
    size: usize,
    warm: usize,
    n: usize,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    let mut out: Vec<u8> = (0..size).map(|j| (j * 7 + size) as u8).collect();
    let mut back = vec![0u8; size];
    let mut start = Instant::now();
    for i in 0..warm + n {
        if i == warm {
            start = Instant::now();
        }
        // A sequence number in every message: a stale echo cannot pass.
        out[..8].copy_from_slice(&number(i));
        node.send(CHILD, PORT_ECHO, &out, alive)?;
        let len = node.recv(CHILD, PORT_ECHO, &mut back, alive)?;
        ensure!(
            len == size && back == out,
            "echo {i} of {size} bytes came back different ({len} bytes)"
        );
    }
    Ok(per_op_ns(start.elapsed(), n))
}

/// Streams a warm-up batch and then `n` messages of 64 KiB to node 1, each
/// batch closed by node 1's acknowledgement. MB/s of the timed batch.
fn stream(
    node: &Node<'_>,
    warm: usize,
    n: usize,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    let mut out: Vec<u8> = (0..STREAM_LEN).map(|j| (j % 251) as u8).collect();
    let mut ack = [0u8; 8];
    let mut secs = 0.0;
    for batch in [warm, n] {
        let start = Instant::now();
        for i in 0..batch {
            out[..8].copy_from_slice(&number(i));
            node.send(CHILD, PORT_STREAM, &out, alive)?;
        }
        let len = node.recv(CHILD, PORT_STREAM, &mut ack, alive)?;
        ensure!(
            read_number(&ack[..len]) == Some(batch),
            "node 1 acknowledged {:?} stream messages, expected {batch}",
            read_number(&ack[..len])
        );
        secs = start.elapsed().as_secs_f64();
    }
    Ok((n * STREAM_LEN) as f64 / secs / 1e6)
}

/// Node 0 alone: `try_acquire_fast` + `release_fast` of one lock. Mean ns
/// per pair.
fn uncontended_lock(
    node: &Node<'_>,
    table: &LockTable<'_>,
    id: u32,
    warm: usize,
    n: usize,
) -> Result<f64> {
    let mut start = Instant::now();
    for i in 0..warm + n {
        if i == warm {
            start = Instant::now();
        }
        let got = table.try_acquire_fast(id, node.me)?;
        ensure!(got == TryLock::Acquired, "uncontended lock busy: {got:?}");
        table.release_fast(id, node.me)?;
    }
    Ok(per_op_ns(start.elapsed(), n))
}

/// Node 0 alone: `shm_alloc` + `shm_free` of 64 bytes. Mean ns per pair.
fn alloc_free(pools: &Pools<'_>, pool: shm_ext::PoolId, warm: usize, n: usize) -> Result<f64> {
    let mut start = Instant::now();
    for i in 0..warm + n {
        if i == warm {
            start = Instant::now();
        }
        let h = pools.shm_alloc(pool, ALLOC_LEN, 64)?;
        pools.shm_free(h)?;
    }
    Ok(per_op_ns(start.elapsed(), n))
}

/// Both nodes take the lock `n` times each, incrementing the counter under
/// it (a warm-up round first). Mean ns per acquisition; fails unless the
/// counter ends at exactly `2 * n`.
fn handoff(
    node: &Node<'_>,
    table: &LockTable<'_>,
    id: u32,
    counter: &AtomicU64,
    warm: usize,
    n: usize,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    let mut done = [0u8; 8];
    let mut per_acquisition = f64::NAN;
    for round in [warm, n] {
        // Node 1 is idle between rounds: it waits for this "go".
        counter.store(0, Ordering::Release);
        let start = Instant::now();
        node.send(CHILD, PORT_LOCK, &number(round), alive)?;
        node.contend(table, id, counter, round, alive)?;
        let len = node.recv(CHILD, PORT_LOCK, &mut done, alive)?;
        let elapsed = start.elapsed();
        ensure!(
            read_number(&done[..len]) == Some(round),
            "node 1 reported {:?} acquisitions, expected {round}",
            read_number(&done[..len])
        );
        let total = counter.load(Ordering::Acquire);
        ensure!(
            total == 2 * round as u64,
            "lost updates under the shm-ext lock: counter {total}, expected {}",
            2 * round
        );
        per_acquisition = per_op_ns(elapsed, 2 * round);
    }
    Ok(per_acquisition)
}

/// Ownership transfer round trips: node 0 hands the region to node 1 and
/// tells it; node 1 hands it back and answers. Mean ns per round trip;
/// fails unless node 0 owns the region alone at the end.
fn transfer_rtt(
    node: &Node<'_>,
    pools: &Pools<'_>,
    region: RegionHandle,
    warm: usize,
    n: usize,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    let mut back = [0u8; 8];
    let mut start = Instant::now();
    for i in 0..warm + n {
        if i == warm {
            start = Instant::now();
        }
        pools
            .shm_transfer(region, PARENT, 1 << PARENT, 1 << CHILD)
            .with_context(|| format!("transfer {i} to node 1"))?;
        node.send(CHILD, PORT_TRANSFER, &number(i), alive)?;
        let len = node.recv(CHILD, PORT_TRANSFER, &mut back, alive)?;
        ensure!(
            read_number(&back[..len]) == Some(i),
            "transfer reply {:?}, expected {i}",
            read_number(&back[..len])
        );
    }
    let elapsed = start.elapsed();
    let owners = pools.region_info(region)?.owners;
    let mut want = NodeSet::default();
    want.insert(PARENT);
    ensure!(
        owners == want,
        "after the transfers the region is owned by {owners}, expected {want}"
    );
    Ok(per_op_ns(elapsed, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_round_trips_through_args() {
        let s = Setup {
            iterations: 100,
            lock: 3,
            counter: 123_456,
            transfer: RegionHandle(0x1234_5678_9abc),
        };
        let args = s.to_args();
        assert_eq!(Setup::from_args(&args).expect("parses"), s);
        assert!(Setup::from_args(&args[..3]).is_err());
    }

    #[test]
    fn params_fit_a_stream_message_and_the_file() {
        let map = shm_ext::host::HeapRegion::new(FILE_LEN);
        let shm = Shm::format(map.region(), &params()).expect("format");
        let max = shm.msg_max_len(CHILD).expect("queue");
        assert!(max >= STREAM_LEN, "largest message {max}");
        let g = shm.join(PARENT, &facts()).expect("join");
        let pools = Pools::attach(&shm, PARENT, g).expect("pools");
        pools.pool_create("bench", POOL_LEN).expect("pool fits");
    }

    #[test]
    fn numbers_round_trip() {
        assert_eq!(read_number(&number(42)), Some(42));
        assert_eq!(read_number(&[1, 2, 3]), None);
    }
}
