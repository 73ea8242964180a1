//! Property tests: the allocator against a model, and random bytes in the
//! pool heap (directory, pool headers, slot tables) never causing a panic.
#![cfg(feature = "std")]

mod pool_common;

use std::sync::OnceLock;

use pool_common::{attach, check_pool, declare_dead, is_named, join};
use proptest::prelude::*;
use shm_ext::host::HeapRegion;
use shm_ext::pool::layout::{DIR_OFFSET, POOLS_OFFSET};
use shm_ext::{Generation, PoolId, Pools, RegionHandle, Shm, ShmError, Snapshot};

const SIZE: usize = 1 << 20;
const POOL: u64 = 128 * 1024;
/// Image size for the corruption properties (small: each case copies it).
const IMG: usize = 512 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Alloc { len: u64, align_log2: u32 },
    Free { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..6000, 0u32..=13).prop_map(|(len, align_log2)| Op::Alloc { len, align_log2 }),
        1 => (1u64..40, 0u32..=17).prop_map(|(len, align_log2)| Op::Alloc { len, align_log2 }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

/// Model region: what the allocator promised.
#[derive(Debug, Clone, Copy)]
struct Live {
    handle: RegionHandle,
    offset: u64,
    len: u64,
    align: u64,
}

/// Could a request of `len` at `align` be placed in a gap `lo..hi`, with the
/// slots left? (Mirrors the documented policy: a slot each for the head and
/// tail the region leaves.)
fn gap_fits(lo: u64, hi: u64, len: u64, align: u64, spare: u64) -> bool {
    let size = len.next_multiple_of(64);
    let at = lo.next_multiple_of(align.max(64));
    at + size <= hi && u64::from(at > lo) + u64::from(at + size < hi) <= spare
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn allocator_matches_model(ops in prop::collection::vec(op(), 1..160)) {
        let mem = HeapRegion::new(SIZE);
        let shm = attach(mem.region());
        let p = join(&shm, 0);
        let pool = p.pool_create("model", POOL).unwrap();
        let mut live: Vec<Live> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { len, align_log2 } => {
                    let align = 1u64 << align_log2;
                    let stat = p.pool_stat(pool).unwrap();
                    match p.shm_alloc(pool, len, align) {
                        Ok(handle) => {
                            let info = p.region_info(handle).unwrap();
                            prop_assert_eq!(info.len, len);
                            live.push(Live { handle, offset: info.offset, len, align });
                        }
                        Err(ShmError::OutOfMemory) => {
                            // Legit only if no gap between live regions could take it.
                            let mut spans: Vec<(u64, u64)> = live
                                .iter()
                                .map(|l| (l.offset, l.offset + l.len.next_multiple_of(64)))
                                .collect();
                            spans.sort();
                            let spare = stat.slots - stat.slots_used;
                            let mut cursor = stat.data_offset;
                            let end = stat.data_offset + stat.size;
                            for (s, e) in spans.iter().copied().chain([(end, end)]) {
                                prop_assert!(
                                    s <= cursor || !gap_fits(cursor, s, len, align, spare),
                                    "OutOfMemory although {:#x}..{:#x} fits {} @ {}", cursor, s, len, align
                                );
                                cursor = e;
                            }
                        }
                        Err(e) => prop_assert!(false, "alloc({len}, {align}): {e:?}"),
                    }
                }
                Op::Free { pick } => {
                    if live.is_empty() {
                        continue;
                    }
                    let l = live.swap_remove(pick % live.len());
                    p.shm_free(l.handle).unwrap();
                    prop_assert_eq!(p.shm_free(l.handle), Err(ShmError::NoSuchRegion));
                }
            }
            // After every step: alignment, containment, no overlap, exact
            // accounting (check_pool), and the model agrees on the set.
            let (stat, regions) = check_pool(&shm, &p, pool);
            prop_assert_eq!(regions.len(), live.len());
            for l in &live {
                prop_assert_eq!(l.offset % l.align, 0);
                let info = p.region_info(l.handle).unwrap();
                prop_assert_eq!((info.offset, info.len), (l.offset, l.len));
            }
            prop_assert_eq!(stat.regions, live.len() as u64);
        }
        for l in live.drain(..) {
            p.shm_free(l.handle).unwrap();
        }
        let (stat, _) = check_pool(&shm, &p, pool);
        prop_assert_eq!((stat.free, stat.largest_free, stat.slots_used), (POOL, POOL, 1));
        p.pool_destroy(pool).unwrap();
    }
}

/// A valid image: two pools with regions (some owned), node 2 dead.
struct Image {
    bytes: Vec<u8>,
    pools: Vec<PoolId>,
    handles: Vec<RegionHandle>,
    dead_gen: Generation,
    /// Device offsets of the directory, and of the first pool's extent.
    dir: usize,
    pool_area: usize,
}

/// Built once: every case starts from a copy.
fn valid_image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(build_image)
}

fn build_image() -> Image {
    let mem = HeapRegion::new(IMG);
    let shm = attach(mem.region());
    let p0 = join(&shm, 0);
    let p2 = join(&shm, 2);
    let a = p0.pool_create("a", 32 * 1024).unwrap();
    let b = p0.pool_create("b", 16 * 1024).unwrap();
    let mut handles = Vec::new();
    for i in 0..12u64 {
        let pool = if i % 3 == 0 { b } else { a };
        let owners = [0, 1, 1 << 2, 0b101][i as usize % 4];
        let by = if i % 2 == 0 { &p0 } else { &p2 };
        handles.push(
            by.shm_alloc_owned(pool, 100 + 300 * i, 1 << (i % 8), owners)
                .unwrap(),
        );
    }
    // Holes, so the free lists have several entries.
    for i in [1, 4, 7] {
        p0.shm_free(handles[i])
            .unwrap_or_else(|_| p2.shm_free(handles[i]).unwrap());
    }
    declare_dead(&shm, 2, &[&p0]);
    let heap = shm.superblock().layout.heap;
    Image {
        bytes: mem.to_bytes(),
        pools: vec![a, b],
        handles,
        dead_gen: p2.generation(),
        dir: (heap.offset + DIR_OFFSET) as usize,
        pool_area: (heap.offset + POOLS_OFFSET) as usize,
    }
}

fn ok_or_named<T>(r: Result<T, ShmError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(is_named(&e), "{e:?}");
    }
    Ok(())
}

/// Runs every pool call against an image; only Ok or named errors allowed.
fn exercise(img: &Image, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mem = HeapRegion::from_bytes(bytes);
    let snap = Snapshot::read(mem.region()).unwrap();
    let _ = snap.to_string();
    let _ = serde_json::to_string(&snap).unwrap();
    let shm = Shm::open(mem.region()).unwrap();
    let p = match Pools::attach(&shm, 0, Generation(1)) {
        Ok(p) => p.with_spin_limit(50),
        Err(e) => {
            prop_assert!(is_named(&e));
            return Ok(());
        }
    };
    ok_or_named(p.recover_node(2, img.dead_gen))?;
    for &pool in &img.pools {
        ok_or_named(p.pool_stat(pool))?;
        for len in [1, 100, 5000] {
            if let Ok(h) = p.shm_alloc(pool, len, 64) {
                ok_or_named(p.region_info(h))?;
                ok_or_named(p.shm_free(h))?;
            }
        }
    }
    for &h in &img.handles {
        ok_or_named(p.region_info(h))?;
        ok_or_named(p.may_map(h, 1, true))?;
        ok_or_named(p.shm_own(h, 0, 1))?;
        ok_or_named(p.shm_transfer(h, 0, 1, 2))?;
        ok_or_named(p.shm_free(h))?;
    }
    ok_or_named(p.pool_open("a"))?;
    ok_or_named(p.pool_open("b"))?;
    ok_or_named(p.pool_create("c", 8192))?;
    for &pool in &img.pools {
        ok_or_named(p.pool_destroy(pool))?;
    }
    let snap = Snapshot::read(mem.region()).unwrap();
    let _ = snap.to_string();
    let _ = serde_json::to_string(&snap).unwrap();
    Ok(())
}

proptest! {
    // Each case copies and exercises a whole image.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A few random byte changes anywhere in the heap header, directory,
    /// pool headers and slot tables.
    #[test]
    fn mutated_pool_metadata_never_panics(
        muts in prop::collection::vec((0usize..(64 * 1024), any::<u8>()), 1..24),
    ) {
        let img = valid_image();
        let mut bytes = img.bytes.clone();
        let heap = img.dir - DIR_OFFSET as usize;
        for (i, b) in muts {
            bytes[heap + i] = b;
        }
        exercise(img, &bytes)?;
    }

    /// Single 64-bit words set to plausible-looking values (small numbers,
    /// offsets, NIL), which reach deeper than random bytes.
    #[test]
    fn plausible_words_in_pool_metadata_never_panic(
        muts in prop::collection::vec((0usize..(48 * 1024 / 8), prop_oneof![
            0u64..200,
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            (0u64..(1 << 20)).prop_map(|v| v & !63),
        ]), 1..8),
    ) {
        let img = valid_image();
        let mut bytes = img.bytes.clone();
        for (w, v) in muts {
            let at = img.pool_area + 8 * w;
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        exercise(img, &bytes)?;
    }

    /// A directory full of random bytes.
    #[test]
    fn random_directory_never_panics(dir in prop::collection::vec(any::<u8>(), 8192)) {
        let img = valid_image();
        let mut bytes = img.bytes.clone();
        bytes[img.dir..img.dir + 8192].copy_from_slice(&dir);
        exercise(img, &bytes)?;
    }

    /// A slot table (and pool header) full of random bytes.
    #[test]
    fn random_slot_table_never_panics(table in prop::collection::vec(any::<u8>(), 8192), header in any::<bool>()) {
        let img = valid_image();
        let mut bytes = img.bytes.clone();
        let at = img.pool_area + if header { 0 } else { 4096 };
        bytes[at..at + 8192].copy_from_slice(&table);
        exercise(img, &bytes)?;
    }
}
