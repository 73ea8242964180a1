//! One shared counter, incremented by every node under one global lock.
//!
//! Node 0 creates a pool, allocates one shared region (owner set 0: every
//! node may map it writable), reserves one lock and sends the three ids to
//! every other live node (port 0). After a barrier each node increments the
//! counter M times, each time under the lock with a plain read and write
//! (no atomic add: only the lock keeps increments from being lost), and
//! counts its own increments in its slot of the region. After a second
//! barrier every node reads the counter and prints
//! `counter: expected T, actual A`, T being the sum of what each node that
//! was live at the start set out to do (nodes x M); it exits 0 only if
//! T = A. A node that died on the way counts with the increments its slot
//! shows (`counter: node N did not finish (K increments)`).
//!
//! Arguments: `[M [hold]]`, by default `1000`. With `hold` the node makes
//! no increment: it takes the lock, prints
//! `counter: node N holds the lock and never lets go`, and keeps it until
//! it is killed (for the test that a dead holder does not stop the others).
#![no_std]
#![no_main]

use demo_common::{App, Check, Mapping, Outcome, PAGE, PATIENCE_NS, live_nodes, nodes_of, now};
use shmos_rt::lock::Locks;
use shmos_rt::{Error, println, sys};

shmos_rt::entry!(main);

/// Port of the setup message from node 0.
const PORT: u32 = 0;
/// First word of the setup message and word 1 of the region ("COUNTER").
const MAGIC: u64 = u64::from_le_bytes(*b"COUNTER\0");
/// Name of the pool node 0 creates.
const POOL: &str = "demo-counter";
/// Bytes of the pool (its smallest useful size: the region is one page).
const POOL_SIZE: u64 = 64 * 1024;

/// Word offsets in the region.
mod at {
    /// The counter.
    pub const COUNTER: usize = 0;
    /// Set to MAGIC by node 0 before it publishes the region.
    pub const MAGIC: usize = 1;
    /// 1 + the node that made the last increment.
    pub const LAST: usize = 2;
    /// 64 words: increments done by node N (written under the lock).
    pub const DONE: usize = 64;
    /// 64 words: increments node N set out to do.
    pub const TARGET: usize = 128;
    /// 64 words: 1 once node N made all of them.
    pub const FINISHED: usize = 192;
}

/// Work inside the critical section, between reading and writing the
/// counter (widens the window a broken lock would let another node into).
const INSIDE_NS: u64 = 2_000;
/// Work between increments, outside the lock: the nodes leave the barrier
/// up to a timer tick (10 ms) apart, and each node's run must outlast that
/// for the increments to interleave.
const OUTSIDE_NS: u64 = 30_000;

fn main() -> i32 {
    demo_common::run("counter", counter)
}

/// What node 0 sets up and the others receive.
struct Shared {
    pool: u64,
    region: u64,
    lock: u32,
}

fn counter(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let m = demo_common::number(app, words.next(), "increments per node", 1000)?;
    let hold = match words.next() {
        None => false,
        Some("hold") => true,
        Some(w) => return Err(app.fail(format_args!("unknown argument {w:?} (expected hold)"))),
    };
    let me = usize::from(app.node);
    let start_set = live_nodes(app)?;
    let locks = Locks::get().or_fail(app, "lock_map (the lock fast path)")?;

    let shared = if app.node == 0 {
        set_up(app, start_set)?
    } else {
        let mut msg = [0u64; 4];
        let got = demo_common::recv_words(app, PORT, &mut msg, PATIENCE_NS)?;
        app.ensure(
            got.sender == 0 && got.words == 4 && msg[0] == MAGIC,
            format_args!(
                "unexpected setup message {:?} from node {}",
                &msg[..got.words],
                got.sender
            ),
        )?;
        Shared {
            pool: msg[1],
            region: msg[2],
            lock: msg[3] as u32,
        }
    };
    let region =
        Mapping::map(shared.region, PAGE, true).or_fail(app, "shm_map of the counter region")?;
    app.ensure(
        region.get(at::MAGIC) == MAGIC,
        format_args!("the region does not hold node 0's mark"),
    )?;
    region.set(at::TARGET + me, if hold { 0 } else { m });
    sys::barrier().or_fail(app, "barrier before the increments")?;

    let ids = [shared.lock];
    if hold {
        demo_common::acquire(app, locks, &ids, &mut 0)?;
        println!("counter: node {me} holds the lock and never lets go");
        loop {
            // Holding on until this node is killed; a failing sleep spins.
            if sys::sleep_ns(1_000_000_000).is_err() {
                core::hint::spin_loop();
            }
        }
    }

    let started = now(app)?;
    let (mut handoffs, mut slices) = (0u64, 0u64);
    for i in 0..m {
        demo_common::acquire(app, locks, &ids, &mut slices)?;
        // A read and a write, not an atomic add, with a pause between: a
        // lost update would show.
        let c = region.get(at::COUNTER);
        pause(app, INSIDE_NS)?;
        region.set(at::COUNTER, c + 1);
        region.set(at::DONE + me, region.get(at::DONE + me) + 1);
        if region.get(at::LAST) != me as u64 + 1 {
            handoffs += 1;
            region.set(at::LAST, me as u64 + 1);
        }
        locks
            .release(&ids)
            .map_err(|e| app.fail(format_args!("lock release after increment {i}: {e}")))?;
        pause(app, OUTSIDE_NS)?;
    }
    let ms = (now(app)? - started) / 1_000_000;
    region.set(at::FINISHED + me, 1);
    println!(
        "counter: node {me} made {m} increments in {ms} ms ({handoffs} took the lock over from another node, {slices} lock waits took over {} ms)",
        demo_common::LOCK_SLICE_NS / 1_250_000
    );
    sys::barrier().or_fail(app, "barrier after the increments")?;

    let actual = region.get(at::COUNTER);
    let mut expected = 0u64;
    for n in nodes_of(start_set).map(usize::from) {
        let done = region.get(at::DONE + n);
        if region.get(at::FINISHED + n) == 1 {
            expected += region.get(at::TARGET + n);
        } else {
            // It did not reach the barrier: it died (the barrier waits for
            // every live node). What it made before counts.
            println!("counter: node {n} did not finish ({done} increments)");
            expected += done;
        }
    }
    println!("counter: expected {expected}, actual {actual}");
    let own = region.get(at::DONE + me);
    // Node 0 cleans up once everyone has read the counter.
    sys::barrier().or_fail(app, "barrier before the cleanup")?;
    region.unmap().or_fail(app, "shm_unmap")?;
    if app.node == 0 {
        clean_up(app, &shared)?;
    }
    app.ensure(
        own == m,
        format_args!("this node's slot shows {own} increments, not {m}"),
    )?;
    app.ensure(
        expected == actual,
        format_args!("the counter is {actual}, not {expected}: increments were lost"),
    )
}

/// Node 0: the pool, the region (zeroed, marked) and the lock, announced to
/// every other node of `start_set`.
fn set_up(app: &App, start_set: u64) -> Outcome<Shared> {
    let pool = match sys::pool_create(POOL, POOL_SIZE) {
        Ok(p) => p,
        // A cluster reused without a fresh shared memory: take the old pool.
        Err(Error::AlreadyExists) => sys::pool_open(POOL).or_fail(app, "pool_open")?,
        Err(e) => return Err(app.fail(format_args!("pool_create {POOL}: {e}"))),
    };
    let region = sys::shm_alloc(pool, PAGE, PAGE).or_fail(app, "shm_alloc")?;
    let map = Mapping::map(region, PAGE, true).or_fail(app, "shm_map")?;
    for i in 0..map.len() {
        map.set(i, 0);
    }
    map.set(at::MAGIC, MAGIC);
    map.unmap().or_fail(app, "shm_unmap")?;
    let mut lock = [0u32; 1];
    sys::lock_reserve(&mut lock).or_fail(app, "lock_reserve")?;
    let msg = [MAGIC, pool, region, u64::from(lock[0])];
    for node in nodes_of(start_set).filter(|&n| n != app.node) {
        demo_common::send_words(app, node, PORT, &msg)?;
    }
    Ok(Shared {
        pool,
        region,
        lock: lock[0],
    })
}

fn clean_up(app: &App, shared: &Shared) -> Outcome<()> {
    sys::lock_unreserve(&[shared.lock]).or_fail(app, "lock_unreserve")?;
    sys::shm_free(shared.region).or_fail(app, "shm_free")?;
    sys::pool_destroy(shared.pool).or_fail(app, "pool_destroy")
}

/// Busy for `ns` nanoseconds (no yield, no sleep: this is work).
fn pause(app: &App, ns: u64) -> Outcome<()> {
    let until = now(app)?.saturating_add(ns);
    while now(app)? < until {
        for _ in 0..32 {
            core::hint::spin_loop();
        }
    }
    Ok(())
}
