//! A small key-value store in shared memory, written by every node at once
//! and checked against a model.
//!
//! The table: B buckets of E = 16 entries (key, value, check word) in one
//! shared region, one global lock per bucket. Node 0 creates the pool and
//! the region, reserves the B locks and sends their ids to every other
//! node (port 0). Keys are partitioned: node n owns keys n*KP+1 ..= n*KP+KP,
//! and key k lives in bucket k % B.
//!
//! Each node runs OPS operations, operation j drawn from
//! `splitmix64(n << 48 | j)`: put (45%) or delete (20%) of one of its own
//! keys, get of one of its own keys (15%: must equal its local model, as it
//! is the only writer), get of another node's key (20%). Every access takes
//! the bucket's lock. A value put by operation j carries j, so a reader
//! recomputes the owner's operation j and checks that it put exactly that
//! value, that successive reads of a key never go back in the owner's
//! order, and that a key found absent after a value was seen has a delete
//! after it in the owner's sequence.
//!
//! After a barrier, node 0 replays every node's sequence from its seed and
//! checks the whole table against the result (every entry, no duplicates,
//! no missing key): `kv: state matches the model (K keys)`. Every node
//! prints `kv: node N: ... all reads consistent` and exits 0 only if its
//! reads (and for node 0 the table) were consistent.
//!
//! Arguments: `[OPS [B [KP]]]`, by default `20000 32 32`.
#![no_std]
#![no_main]

use demo_common::{
    App, Check, Mapping, Outcome, PAGE, PATIENCE_NS, live_nodes, nodes_of, now, splitmix64,
};
use shmos_rt::lock::Locks;
use shmos_rt::{Error, println, sys};

shmos_rt::entry!(main);

/// Port of the setup message from node 0.
const PORT: u32 = 0;
/// First word of the setup message ("KVSTORE").
const MAGIC: u64 = u64::from_le_bytes(*b"KVSTORE\0");
/// Name of node 0's pool.
const POOL: &str = "demo-kv";
/// Entries per bucket.
const ENTRIES: usize = 16;
/// Words per entry: key (0 = empty), value, check word, unused.
const ENTRY_WORDS: usize = 4;
/// Most buckets (one lock each; `lock_reserve` hands out 64 at a time).
const MAX_BUCKETS: u64 = 64;
/// Most keys per node.
const MAX_KEYS: u64 = 64;
/// Most nodes (the readers' per-key state is a fixed array).
const MAX_NODES: usize = 16;
/// Header words of the setup message before the lock ids.
const SETUP_WORDS: usize = 6;

fn main() -> i32 {
    demo_common::run("kv", kv)
}

/// The store's shape, the same on every node.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    ops: u64,
    buckets: u64,
    keys: u64,
}

/// One operation of a node's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Put value into own key `idx`.
    Put { idx: u64, value: u64 },
    /// Delete own key `idx`.
    Delete { idx: u64 },
    /// Get own key `idx`.
    GetOwn { idx: u64 },
    /// Get key `idx` of another node (`pick` chooses which).
    GetOther { idx: u64, pick: u64 },
}

/// Operation `j` of node `node`: a pure function of both, so that any node
/// can recompute any other's.
fn op(shape: Shape, node: u16, j: u64) -> Op {
    let r = splitmix64(u64::from(node) << 48 | j);
    let idx = (r >> 8) % shape.keys;
    match r % 100 {
        0..45 => Op::Put {
            idx,
            value: (j + 1) << 32 | (splitmix64(r) & 0xffff_ffff),
        },
        45..65 => Op::Delete { idx },
        65..80 => Op::GetOwn { idx },
        _ => Op::GetOther { idx, pick: r >> 32 },
    }
}

/// The key of node `node`'s key number `idx`.
fn key(shape: Shape, node: u16, idx: u64) -> u64 {
    u64::from(node) * shape.keys + idx + 1
}

/// The check word of an entry.
fn check_word(key: u64, value: u64) -> u64 {
    splitmix64(key ^ value.rotate_left(17)) | 1
}

/// The table in the mapped region, with its locks.
struct Table<'a> {
    map: &'a Mapping,
    shape: Shape,
    locks: &'a Locks,
    ids: &'a [u32],
    /// Lock acquires that took unusually long (see `demo_common::acquire`).
    slow: u64,
}

impl Table<'_> {
    fn word(b: u64, e: usize, w: usize) -> usize {
        (b as usize * ENTRIES + e) * ENTRY_WORDS + w
    }

    /// Runs `f` on bucket `k % B` under its lock.
    fn locked<T>(
        &mut self,
        app: &App,
        k: u64,
        f: impl FnOnce(&Mapping, u64) -> Outcome<T>,
    ) -> Outcome<T> {
        let b = k % self.shape.buckets;
        let id = [self.ids[b as usize]];
        demo_common::acquire(app, self.locks, &id, &mut self.slow)?;
        let result = f(self.map, b);
        // Released whatever happened: a failure must not strand the others.
        let released = self.locks.release(&id);
        let value = result?;
        released.map_err(|e| app.fail(format_args!("lock release of bucket {b}: {e}")))?;
        Ok(value)
    }

    /// The entry of `k` in bucket `b`, checked.
    fn find(app: &App, map: &Mapping, b: u64, k: u64) -> Outcome<Option<usize>> {
        for e in 0..ENTRIES {
            if map.get(Self::word(b, e, 0)) == k {
                let value = map.get(Self::word(b, e, 1));
                app.ensure(
                    map.get(Self::word(b, e, 2)) == check_word(k, value),
                    format_args!("key {k}: entry {e} of bucket {b} has a wrong check word"),
                )?;
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    fn put(&mut self, app: &App, k: u64, value: u64) -> Outcome<()> {
        self.locked(app, k, |map, b| {
            let e = match Self::find(app, map, b, k)? {
                Some(e) => e,
                None => (0..ENTRIES)
                    .find(|&e| map.get(Self::word(b, e, 0)) == 0)
                    .ok_or_else(|| app.fail(format_args!("bucket {b} is full (key {k})")))?,
            };
            map.set(Self::word(b, e, 0), k);
            map.set(Self::word(b, e, 1), value);
            map.set(Self::word(b, e, 2), check_word(k, value));
            Ok(())
        })
    }

    fn delete(&mut self, app: &App, k: u64) -> Outcome<()> {
        self.locked(app, k, |map, b| {
            if let Some(e) = Self::find(app, map, b, k)? {
                for w in 0..3 {
                    map.set(Self::word(b, e, w), 0);
                }
            }
            Ok(())
        })
    }

    fn get(&mut self, app: &App, k: u64) -> Outcome<Option<u64>> {
        self.locked(app, k, |map, b| {
            Ok(Self::find(app, map, b, k)?.map(|e| map.get(Self::word(b, e, 1))))
        })
    }
}

/// What this node has seen of another node's key.
#[derive(Clone, Copy, Default)]
struct Seen {
    /// The owner's operation index the key's state is known to be at or after.
    at: u64,
    /// Whether that state had the key present (a put at `at`).
    present: bool,
}

fn kv(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let shape = Shape {
        ops: demo_common::number(app, words.next(), "operations per node", 20000)?,
        buckets: demo_common::number(app, words.next(), "buckets", 32)?,
        keys: demo_common::number(app, words.next(), "keys per node", 32)?,
    };
    app.ensure(
        (1..=MAX_BUCKETS).contains(&shape.buckets)
            && (1..=MAX_KEYS).contains(&shape.keys)
            && shape.ops < 1 << 31,
        format_args!("buckets must be 1..={MAX_BUCKETS}, keys per node 1..={MAX_KEYS}"),
    )?;
    let live = live_nodes(app)?;
    let nodes = demo_common::count(live) as u64;
    // Each node's keys spread evenly over the buckets (key k in k % B).
    let per_bucket = nodes * shape.keys.div_ceil(shape.buckets);
    app.ensure(
        nodes as usize <= MAX_NODES && per_bucket <= ENTRIES as u64,
        format_args!(
            "{nodes} nodes with {} keys each need {per_bucket} entries per bucket, the table has {ENTRIES}",
            shape.keys
        ),
    )?;
    let locks = Locks::get().or_fail(app, "lock_map (the lock fast path)")?;
    let len = (shape.buckets as usize * ENTRIES * ENTRY_WORDS * 8) as u64;
    let len = len.next_multiple_of(PAGE);

    let mut setup = [0u64; SETUP_WORDS + MAX_BUCKETS as usize];
    let mut ids = [0u32; MAX_BUCKETS as usize];
    let b = shape.buckets as usize;
    if app.node == 0 {
        set_up(app, shape, len, live, &mut setup, &mut ids[..b])?;
    } else {
        let got = demo_common::recv_words(app, PORT, &mut setup, PATIENCE_NS)?;
        app.ensure(
            got.sender == 0
                && got.words == SETUP_WORDS + b
                && setup[0] == MAGIC
                && setup[3..SETUP_WORDS] == [shape.ops, shape.buckets, shape.keys],
            format_args!(
                "setup message {:?} from node {} does not match this node's arguments",
                &setup[..got.words.min(SETUP_WORDS)],
                got.sender
            ),
        )?;
        for (id, w) in ids.iter_mut().zip(&setup[SETUP_WORDS..SETUP_WORDS + b]) {
            *id = *w as u32;
        }
    }
    let (pool, region) = (setup[1], setup[2]);
    let map = Mapping::map(region, len, true).or_fail(app, "shm_map of the table")?;
    sys::barrier().or_fail(app, "barrier before the operations")?;

    let mut table = Table {
        map: &map,
        shape,
        locks,
        ids: &ids[..b],
        slow: 0,
    };
    let started = now(app)?;
    let counts = run_ops(app, &mut table, live)?;
    let ms = (now(app)? - started) / 1_000_000;
    println!(
        "kv: node {}: {} operations in {ms} ms ({} puts, {} deletes, {} gets of its own keys, {} of other nodes' keys, {} of which saw a change), all reads consistent ({} lock waits took over {} ms)",
        app.node,
        shape.ops,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        table.slow,
        demo_common::LOCK_SLICE_NS / 1_250_000
    );
    sys::barrier().or_fail(app, "barrier after the operations")?;
    if app.node != 0 {
        return map.unmap().or_fail(app, "shm_unmap");
    }
    let keys = check_table(app, &map, shape, live)?;
    println!("kv: state matches the model ({keys} keys)");
    map.unmap().or_fail(app, "shm_unmap")?;
    sys::shm_free(region).or_fail(app, "shm_free")?;
    sys::pool_destroy(pool).or_fail(app, "pool_destroy")?;
    for chunk in ids[..b].chunks(16) {
        sys::lock_unreserve(chunk).or_fail(app, "lock_unreserve")?;
    }
    Ok(())
}

/// Node 0: pool, zeroed table, bucket locks; sends the setup to the others.
fn set_up(
    app: &App,
    shape: Shape,
    len: u64,
    live: u64,
    setup: &mut [u64],
    ids: &mut [u32],
) -> Outcome<()> {
    let pool = match sys::pool_create(POOL, (2 * len).max(64 * 1024)) {
        Ok(p) => p,
        Err(Error::AlreadyExists) => sys::pool_open(POOL).or_fail(app, "pool_open")?,
        Err(e) => return Err(app.fail(format_args!("pool_create {POOL}: {e}"))),
    };
    let region = sys::shm_alloc(pool, len, PAGE).or_fail(app, "shm_alloc")?;
    let map = Mapping::map(region, len, true).or_fail(app, "shm_map")?;
    for i in 0..map.len() {
        map.set(i, 0);
    }
    map.unmap().or_fail(app, "shm_unmap")?;
    sys::lock_reserve(ids).or_fail(app, "lock_reserve")?;
    setup[..SETUP_WORDS].copy_from_slice(&[
        MAGIC,
        pool,
        region,
        shape.ops,
        shape.buckets,
        shape.keys,
    ]);
    for (w, id) in setup[SETUP_WORDS..].iter_mut().zip(ids.iter()) {
        *w = u64::from(*id);
    }
    let msg = &setup[..SETUP_WORDS + ids.len()];
    for node in nodes_of(live).filter(|&n| n != app.node) {
        demo_common::send_words(app, node, PORT, msg)?;
    }
    Ok(())
}

/// This node's operations; returns how many of each kind it made (puts,
/// deletes, own gets, other gets) and how many other gets saw a change.
fn run_ops(app: &App, table: &mut Table<'_>, live: u64) -> Outcome<[u64; 5]> {
    let shape = table.shape;
    let me = app.node;
    let others: ([u16; 64], usize) = {
        let mut list = [0u16; 64];
        let mut n = 0;
        for node in nodes_of(live).filter(|&n| n != me) {
            list[n] = node;
            n += 1;
        }
        (list, n)
    };
    let mut own = [0u64; MAX_KEYS as usize];
    let mut seen = [Seen::default(); MAX_NODES * MAX_KEYS as usize];
    let mut counts = [0u64; 5];
    for j in 0..shape.ops {
        match op(shape, me, j) {
            Op::Put { idx, value } => {
                table.put(app, key(shape, me, idx), value)?;
                own[idx as usize] = value;
                counts[0] += 1;
            }
            Op::Delete { idx } => {
                table.delete(app, key(shape, me, idx))?;
                own[idx as usize] = 0;
                counts[1] += 1;
            }
            Op::GetOwn { idx } => {
                let got = table.get(app, key(shape, me, idx))?.unwrap_or(0);
                app.ensure(
                    got == own[idx as usize],
                    format_args!(
                        "operation {j}: own key {} reads {got:#x}, this node last wrote {:#x}",
                        key(shape, me, idx),
                        own[idx as usize]
                    ),
                )?;
                counts[2] += 1;
            }
            Op::GetOther { idx, pick } => {
                if others.1 == 0 {
                    continue;
                }
                let slot = (pick % others.1 as u64) as usize;
                let owner = others.0[slot];
                let k = key(shape, owner, idx);
                let got = table.get(app, k)?;
                let s = &mut seen[slot * MAX_KEYS as usize + idx as usize];
                let now_seen = check_read(shape, owner, idx, got, *s).map_err(|why| {
                    app.fail(format_args!(
                        "operation {j}: key {k} of node {owner}: {why}"
                    ))
                })?;
                if (now_seen.at, now_seen.present) != (s.at, s.present) {
                    counts[4] += 1;
                }
                *s = now_seen;
                counts[3] += 1;
            }
        }
    }
    Ok(counts)
}

/// Checks a read of `owner`'s key `idx` that found `got`, against what was
/// seen before; returns the new knowledge, or why the read is impossible.
fn check_read(
    shape: Shape,
    owner: u16,
    idx: u64,
    got: Option<u64>,
    before: Seen,
) -> Result<Seen, &'static str> {
    match got {
        Some(value) => {
            let j = (value >> 32).wrapping_sub(1);
            if j >= shape.ops || op(shape, owner, j) != (Op::Put { idx, value }) {
                return Err("the value is not one its owner ever put there");
            }
            if j < before.at {
                return Err("the value is older than one read before");
            }
            Ok(Seen {
                at: j,
                present: true,
            })
        }
        None if !before.present => Ok(before),
        None => {
            match (before.at + 1..shape.ops).find(|&d| op(shape, owner, d) == Op::Delete { idx }) {
                Some(d) => Ok(Seen {
                    at: d,
                    present: false,
                }),
                None => Err("absent, but its owner never deleted the value read before"),
            }
        }
    }
}

/// Node 0, after everyone finished: the table against the replayed model.
/// Returns the number of keys present.
fn check_table(app: &App, map: &Mapping, shape: Shape, live: u64) -> Outcome<u64> {
    let mut model = [0u64; MAX_NODES * MAX_KEYS as usize];
    let mut owners = [u16::MAX; MAX_NODES];
    for (slot, node) in nodes_of(live).enumerate() {
        owners[slot] = node;
        for j in 0..shape.ops {
            match op(shape, node, j) {
                Op::Put { idx, value } => model[slot * MAX_KEYS as usize + idx as usize] = value,
                Op::Delete { idx } => model[slot * MAX_KEYS as usize + idx as usize] = 0,
                _ => {}
            }
        }
    }
    let mut found = [false; MAX_NODES * MAX_KEYS as usize];
    let mut present = 0u64;
    for b in 0..shape.buckets {
        for e in 0..ENTRIES {
            let k = map.get(Table::word(b, e, 0));
            let value = map.get(Table::word(b, e, 1));
            let check = map.get(Table::word(b, e, 2));
            if k == 0 {
                app.ensure(
                    value == 0 && check == 0,
                    format_args!("bucket {b} entry {e}: empty but not cleared"),
                )?;
                continue;
            }
            app.ensure(
                check == check_word(k, value) && k % shape.buckets == b,
                format_args!("bucket {b} entry {e}: key {k} is damaged or in the wrong bucket"),
            )?;
            let (owner, idx) = ((k - 1) / shape.keys, (k - 1) % shape.keys);
            let slot = owners
                .iter()
                .position(|&n| u64::from(n) == owner)
                .ok_or_else(|| app.fail(format_args!("key {k} belongs to no node that ran")))?;
            let i = slot * MAX_KEYS as usize + idx as usize;
            app.ensure(!found[i], format_args!("key {k} is in the table twice"))?;
            found[i] = true;
            app.ensure(
                model[i] == value,
                format_args!("key {k} holds {value:#x}, the model says {:#x}", model[i]),
            )?;
            present += 1;
        }
    }
    let expected = model.iter().filter(|&&v| v != 0).count() as u64;
    app.ensure(
        present == expected,
        format_args!("the table holds {present} keys, the model {expected}"),
    )?;
    Ok(present)
}
