//! Pools, allocation, release, ownership and transfer: every call and every
//! error path, on process-local memory (threads are the nodes).
#![cfg(feature = "std")]

mod pool_common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use pool_common::{attach, check_pool, declare_dead, generation_of, join};
use shm_ext::host::HeapRegion;
use shm_ext::pool::layout::{DIR_ENTRY_LEN, DIR_OFFSET, MAX_ALIGN, dir};
use shm_ext::{Generation, NodeSet, PoolId, Pools, RegionHandle, RegionState, ShmError, Snapshot};

const SIZE: usize = 1 << 20;
const KIB: u64 = 1024;

fn invalid(r: Result<impl std::fmt::Debug, ShmError>) {
    assert!(
        matches!(r, Err(ShmError::InvalidArgument { .. })),
        "expected InvalidArgument: {r:?}"
    );
}

#[test]
fn create_open_stat_and_names() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p0 = join(&shm, 0);
    let p1 = join(&shm, 1);

    let a = p0.pool_create("alpha", 64 * KIB).unwrap();
    assert_eq!(p1.pool_open("alpha").unwrap(), a);
    assert_eq!(p1.pool_create("alpha", 4 * KIB), Err(ShmError::PoolExists));
    let s = p1.pool_stat(a).unwrap();
    assert_eq!(s.name.as_str(), "alpha");
    assert_eq!(s.id, a);
    assert_eq!(
        (s.size, s.free, s.largest_free, s.regions),
        (64 * KIB, 64 * KIB, 64 * KIB, 0)
    );
    assert_eq!(s.slots, 64);
    assert_eq!(s.data_offset % 4096, 0);
    let heap = shm.superblock().layout.heap;
    assert!(s.data_offset >= heap.offset && s.data_offset + s.size <= heap.end());

    // Sizes round up to pages; the longest name fits.
    let name32 = "n".repeat(32);
    let b = p0.pool_create(&name32, 1).unwrap();
    assert_eq!(p0.pool_stat(b).unwrap().size, 4096);
    assert_eq!(p0.pool_open(&name32).unwrap(), b);
    assert_ne!(a, b);
    // Pools do not overlap.
    let sb = p0.pool_stat(b).unwrap();
    assert!(sb.data_offset >= s.data_offset + s.size || sb.data_offset + sb.size <= s.data_offset);

    invalid(p0.pool_create("", 4096));
    invalid(p0.pool_create(&"x".repeat(33), 4096));
    invalid(p0.pool_create("nul\0name", 4096));
    invalid(p0.pool_create("zero", 0));
    invalid(p0.pool_open(""));
    assert_eq!(p0.pool_open("beta"), Err(ShmError::NoSuchPool));
    assert_eq!(p0.pool_create("huge", u64::MAX), Err(ShmError::TooLarge));
    assert_eq!(p0.pool_create("big", heap.len), Err(ShmError::TooLarge));
    // Fits the pool area, not what the two pools above left of it.
    let area = heap.len - 12 * KIB;
    assert_eq!(
        p0.pool_create("rest", area - 64 * KIB),
        Err(ShmError::OutOfMemory)
    );
    // A pool id that never existed, or names an index past the directory.
    let ghost = PoolId {
        index: 9,
        generation: 1,
    };
    assert_eq!(p0.pool_stat(ghost), Err(ShmError::NoSuchPool));
    assert_eq!(
        p0.pool_stat(PoolId {
            index: 200,
            generation: 1
        }),
        Err(ShmError::NoSuchPool)
    );
    assert_eq!(p0.shm_alloc(ghost, 1, 1), Err(ShmError::NoSuchPool));
    assert_eq!(PoolId::from_raw(a.to_raw()), Some(a));
    assert_eq!(PoolId::from_raw(64), None);
}

#[test]
fn attach_validates_identity() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    assert_eq!(
        Pools::attach(&shm, 32, Generation(1)).unwrap_err(),
        ShmError::NoSuchNode
    );
    invalid(Pools::attach(&shm, 0, Generation(0)));
}

#[test]
fn directory_fills_up() {
    let mem = HeapRegion::new(4 << 20);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let ids: Vec<PoolId> = (0..64)
        .map(|i| p.pool_create(&format!("p{i}"), 4096).unwrap())
        .collect();
    assert_eq!(p.pool_create("one more", 4096), Err(ShmError::OutOfMemory));
    p.pool_destroy(ids[17]).unwrap();
    let again = p.pool_create("one more", 4096).unwrap();
    assert_eq!(again.index, 17);
    assert_ne!(again.generation, ids[17].generation);
}

#[test]
fn alloc_any_length_and_alignment() {
    let mem = HeapRegion::new(8 << 20);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let pool = p.pool_create("lens", 4 << 20).unwrap();
    let mut handles = Vec::new();
    for (len, align) in [
        (1, 1),
        (63, 8),
        (64, 64),
        (65, 16),
        (4097, 4096),
        (100, 1 << 16),
        (3, MAX_ALIGN),
        (777, 2),
    ] {
        let h = p.shm_alloc(pool, len, align).unwrap();
        let info = p.region_info(h).unwrap();
        assert_eq!(info.len, len);
        assert_eq!(info.offset % align, 0, "align {align}");
        assert_eq!(info.offset % 64, 0);
        assert_eq!(info.reserved, len.next_multiple_of(64));
        assert_eq!(info.pool, pool);
        assert_eq!(info.owners, NodeSet(0));
        assert_eq!(
            (info.allocated_by, info.allocator_generation),
            (0, p.generation())
        );
        // The region is usable memory.
        let data = vec![0xa5u8; len as usize];
        mem.region()
            .write_bytes(info.offset as usize, &data)
            .unwrap();
        handles.push(h);
    }
    check_pool(&shm, &p, pool);
    for h in handles {
        p.shm_free(h).unwrap();
    }
    let (s, _) = check_pool(&shm, &p, pool);
    assert_eq!(s.free, s.size);
}

#[test]
fn alloc_argument_errors_and_exhaustion() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let pool = p.pool_create("small", 16 * KIB).unwrap();
    invalid(p.shm_alloc(pool, 0, 8));
    invalid(p.shm_alloc(pool, 8, 0));
    invalid(p.shm_alloc(pool, 8, 3));
    invalid(p.shm_alloc(pool, 8, MAX_ALIGN * 2));
    invalid(p.shm_alloc_owned(pool, 8, 8, 1 << 40));
    assert_eq!(p.shm_alloc(pool, 16 * KIB + 1, 1), Err(ShmError::TooLarge));
    assert_eq!(p.shm_alloc(pool, u64::MAX, 1), Err(ShmError::TooLarge));

    let whole = p.shm_alloc(pool, 16 * KIB, 1).unwrap();
    assert_eq!(p.shm_alloc(pool, 1, 1), Err(ShmError::OutOfMemory));
    p.shm_free(whole).unwrap();
    // 256 regions of 64 bytes would fill the pool, but its 64 slots run out
    // first (63 regions and the free tail): OutOfMemory, no accounting drift.
    let mut hs = Vec::new();
    loop {
        match p.shm_alloc(pool, 64, 1) {
            Ok(h) => hs.push(h),
            Err(e) => {
                assert_eq!(e, ShmError::OutOfMemory);
                break;
            }
        }
    }
    assert_eq!(hs.len(), 63);
    check_pool(&shm, &p, pool);
    for h in hs {
        p.shm_free(h).unwrap();
    }
    check_pool(&shm, &p, pool);
}

#[test]
fn free_coalesces_in_any_order() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let pool = p.pool_create("co", 64 * KIB).unwrap();
    for order in [[0, 1, 2, 3], [1, 0, 3, 2], [3, 1, 2, 0], [2, 0, 3, 1]] {
        let hs: Vec<RegionHandle> = (0..4)
            .map(|_| p.shm_alloc(pool, 1000, 64).unwrap())
            .collect();
        let offs: Vec<u64> = hs
            .iter()
            .map(|&h| p.region_info(h).unwrap().offset)
            .collect();
        // First fit from the start of the pool: contiguous, in order.
        for w in offs.windows(2) {
            assert_eq!(w[1], w[0] + 1024);
        }
        for i in order {
            p.shm_free(hs[i]).unwrap();
            check_pool(&shm, &p, pool);
        }
        let s = p.pool_stat(pool).unwrap();
        assert_eq!((s.free, s.largest_free, s.slots_used), (s.size, s.size, 1));
    }
}

#[test]
fn double_free_stale_and_forged_handles() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let pool = p.pool_create("stale", 64 * KIB).unwrap();
    let h = p.shm_alloc(pool, 100, 1).unwrap();
    p.shm_free(h).unwrap();
    assert_eq!(p.shm_free(h), Err(ShmError::NoSuchRegion));
    // The slot is reused by the next allocation; the old handle stays dead.
    let h2 = p.shm_alloc(pool, 100, 1).unwrap();
    assert_eq!(h2.slot(), h.slot());
    assert_ne!(h2, h);
    assert_eq!(p.region_info(h), Err(ShmError::NoSuchRegion));
    assert_eq!(p.shm_free(h), Err(ShmError::NoSuchRegion));
    assert_eq!(p.may_map(h, 0, false), Err(ShmError::NoSuchRegion));
    assert_eq!(p.shm_own(h, 0, 1), Err(ShmError::NoSuchRegion));
    assert_eq!(p.shm_transfer(h, 0, 1, 2), Err(ShmError::NoSuchRegion));
    assert!(p.region_info(h2).is_ok());
    // Forged handles: other pools, slots past the table, generation 0.
    for raw in [
        0u64,
        1,
        h2.0 ^ (1 << 26),
        h2.0 & 0xffff_ffff,
        (7 << 32) | 500,
        u64::MAX,
    ] {
        let f = RegionHandle(raw);
        assert_eq!(p.region_info(f), Err(ShmError::NoSuchRegion), "{raw:#x}");
        assert_eq!(p.shm_free(f), Err(ShmError::NoSuchRegion), "{raw:#x}");
    }
    p.shm_free(h2).unwrap();
}

#[test]
fn destroy_busy_then_empty_and_recreate() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let pool = p.pool_create("d", 32 * KIB).unwrap();
    let h = p.shm_alloc(pool, 10, 1).unwrap();
    assert_eq!(p.pool_destroy(pool), Err(ShmError::Busy));
    p.shm_free(h).unwrap();
    p.pool_destroy(pool).unwrap();
    assert_eq!(p.pool_destroy(pool), Err(ShmError::NoSuchPool));
    assert_eq!(p.pool_stat(pool), Err(ShmError::NoSuchPool));
    assert_eq!(p.pool_open("d"), Err(ShmError::NoSuchPool));
    assert_eq!(p.shm_alloc(pool, 1, 1), Err(ShmError::NoSuchPool));

    // Same name, same directory entry and place: a new id, and handles
    // from the old incarnation never resolve, even at the same slot.
    let again = p.pool_create("d", 32 * KIB).unwrap();
    assert_eq!(again.index, pool.index);
    assert_ne!(again, pool);
    assert_eq!(p.pool_stat(pool), Err(ShmError::NoSuchPool));
    let h2 = p.shm_alloc(again, 10, 1).unwrap();
    assert_eq!(h2.slot(), h.slot());
    assert_ne!(h2.generation(), h.generation());
    assert_eq!(p.region_info(h), Err(ShmError::NoSuchRegion));
    assert_eq!(p.shm_free(h), Err(ShmError::NoSuchRegion));
}

#[test]
fn ownership_rules() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p0 = join(&shm, 0);
    let p1 = join(&shm, 1);
    let p2 = join(&shm, 2);
    let pool = p0.pool_create("own", 64 * KIB).unwrap();

    // Shared: everyone may map it writable, and free it.
    let h = p0.shm_alloc(pool, 256, 64).unwrap();
    for n in 0..3 {
        p0.may_map(h, n, true).unwrap();
    }
    assert_eq!(p0.may_map(h, 32, false), Err(ShmError::NoSuchNode));
    // Shared regions cannot be transferred (the caller is in no set).
    assert_eq!(p0.shm_transfer(h, 0, 0, 1 << 1), Err(ShmError::NotOwner));

    // Owned by node 0: others read only, cannot own, free or transfer it.
    p0.shm_own(h, 0, 1 << 0).unwrap();
    assert_eq!(p0.region_info(h).unwrap().owners, NodeSet(1));
    p0.may_map(h, 0, true).unwrap();
    p0.may_map(h, 1, false).unwrap();
    assert_eq!(p1.may_map(h, 1, true), Err(ShmError::NotOwner));
    assert_eq!(p1.shm_own(h, 1, 1 << 1), Err(ShmError::NotOwner));
    assert_eq!(p1.shm_free(h), Err(ShmError::NotOwner));
    assert_eq!(
        p1.shm_transfer(h, 1, 1 << 0, 1 << 1),
        Err(ShmError::NotOwner)
    );

    // Transfer 0 -> {1, 2}; then from the wrong set, or by an outsider.
    p0.shm_transfer(h, 0, 1 << 0, 0b110).unwrap();
    assert_eq!(p0.may_map(h, 0, true), Err(ShmError::NotOwner));
    p0.may_map(h, 1, true).unwrap();
    p0.may_map(h, 2, true).unwrap();
    assert_eq!(
        p0.shm_transfer(h, 0, 1 << 0, 1 << 0),
        Err(ShmError::NotOwner)
    );
    assert_eq!(
        p1.shm_transfer(h, 1, 1 << 1, 1 << 0),
        Err(ShmError::NotOwner)
    );
    assert_eq!(p0.shm_free(h), Err(ShmError::NotOwner));
    invalid(p1.shm_transfer(h, 1, 0b110, 1 << 50));
    invalid(p1.shm_own(h, 1, 1 << 33));
    assert_eq!(p1.shm_own(h, 40, 1), Err(ShmError::NoSuchNode));
    assert_eq!(p1.shm_transfer(h, 40, 1, 1), Err(ShmError::NoSuchNode));
    p2.shm_transfer(h, 2, 0b110, 1 << 2).unwrap();
    assert_eq!(p1.shm_free(h), Err(ShmError::NotOwner));
    // Owner makes it shared again; then anyone may free it.
    p2.shm_own(h, 2, 0).unwrap();
    p1.shm_free(h).unwrap();

    // Allocated owned from the start, for another node.
    let h = p0.shm_alloc_owned(pool, 10, 1, 1 << 1).unwrap();
    assert_eq!(p0.may_map(h, 0, true), Err(ShmError::NotOwner));
    assert_eq!(p0.shm_free(h), Err(ShmError::NotOwner));
    p1.shm_free(h).unwrap();
    check_pool(&shm, &p0, pool);
}

#[test]
fn concurrent_creators_one_wins() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let pools: Vec<Pools> = (0..8).map(|n| join(&shm, n)).collect();
    let results: Vec<Result<PoolId, ShmError>> = std::thread::scope(|s| {
        let hs: Vec<_> = pools
            .iter()
            .map(|p| s.spawn(move || p.pool_create("race", 16 * KIB)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || *r == Err(ShmError::PoolExists))
    );
    for p in &pools {
        assert_eq!(p.pool_open("race").unwrap(), *won[0]);
    }
}

#[test]
fn threads_allocate_concurrently_without_overlap() {
    let mem = HeapRegion::new(4 << 20);
    let shm = attach(mem.region());
    let pools: Vec<Pools> = (0..4).map(|n| join(&shm, n)).collect();
    let pool = pools[0].pool_create("threads", 2 << 20).unwrap();
    let region = mem.region();
    std::thread::scope(|s| {
        for p in &pools {
            s.spawn(move || {
                let me = p.node() as u8;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(me);
                let mut live: Vec<(RegionHandle, u64, u64)> = Vec::new();
                for i in 0..2000u32 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if live.len() < 20 && !rng.is_multiple_of(3) {
                        let len = 1 + rng % 3000;
                        let align = 1 << ((rng >> 20) % 10);
                        let h = p.shm_alloc_owned(pool, len, align, 1 << me).unwrap();
                        let info = p.region_info(h).unwrap();
                        let fill = me.wrapping_mul(31).wrapping_add(i as u8);
                        region
                            .write_bytes(info.offset as usize, &vec![fill; len as usize])
                            .unwrap();
                        live.push((h, info.offset, (u64::from(fill) << 32) | len));
                    } else if !live.is_empty() {
                        let (h, off, tag) = live.swap_remove((rng % live.len() as u64) as usize);
                        let (fill, len) = ((tag >> 32) as u8, tag & 0xffff_ffff);
                        let mut buf = vec![0; len as usize];
                        region.read_bytes(off as usize, &mut buf).unwrap();
                        assert!(buf.iter().all(|&b| b == fill), "region overwritten");
                        p.shm_free(h).unwrap();
                    }
                }
                for (h, _, _) in live {
                    p.shm_free(h).unwrap();
                }
            });
        }
    });
    let (s, _) = check_pool(&shm, &pools[0], pool);
    assert_eq!((s.free, s.regions), (s.size, 0));
}

#[test]
fn busy_lock_and_recovery_of_a_dead_holder() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p0 = join(&shm, 0);
    let p1 = join(&shm, 1);
    let pool = p0.pool_create("locked", 64 * KIB).unwrap();
    let h = p0.shm_alloc(pool, 10, 1).unwrap();
    // Node 1 "dies" holding the pool lock.
    let heap = shm.superblock().layout.heap;
    let lock_off =
        heap.offset + DIR_OFFSET + u64::from(pool.index) * DIR_ENTRY_LEN + dir::LOCK as u64;
    let stamp = (2u64 << 32) | u64::from(p1.generation().0);
    mem.region()
        .atomic_u64(lock_off as usize)
        .unwrap()
        .store(stamp, Ordering::SeqCst);
    let quick = p0.with_spin_limit(100);
    assert_eq!(quick.shm_alloc(pool, 1, 1), Err(ShmError::Busy));
    assert_eq!(quick.shm_free(h), Err(ShmError::Busy));
    // Read-only calls do not need the lock.
    quick.region_info(h).unwrap();
    // Recovery refuses a live node, itself, and ids past the table.
    invalid(p0.recover_node(1, p1.generation()));
    invalid(p0.recover_node(0, p0.generation()));
    invalid(p0.recover_node(1, Generation(0)));
    assert_eq!(
        p0.recover_node(40, Generation(1)),
        Err(ShmError::NoSuchNode)
    );
    declare_dead(&shm, 1, &[&p0]);
    let r = p0.recover_node(1, p1.generation()).unwrap();
    assert_eq!(r.pool_locks_broken, 1);
    assert!(r.first_error.is_none());
    quick.shm_free(h).unwrap();
    // Idempotent.
    let again = p0.recover_node(1, p1.generation()).unwrap();
    assert_eq!(again.pool_locks_broken, 0);
    check_pool(&shm, &p0, pool);
}

#[test]
fn recovery_frees_what_the_dead_node_owned_alone() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p0 = join(&shm, 0);
    let p1 = join(&shm, 1);
    let pool = p0.pool_create("rec", 64 * KIB).unwrap();
    let mine = p1.shm_alloc_owned(pool, 1000, 1, 1 << 1).unwrap();
    let shared = p1.shm_alloc(pool, 1000, 1).unwrap();
    let both = p1.shm_alloc_owned(pool, 1000, 1, 0b11).unwrap();
    let given = p0.shm_alloc_owned(pool, 1000, 1, 1 << 0).unwrap();
    p0.shm_transfer(given, 0, 1, 1 << 1).unwrap();
    declare_dead(&shm, 1, &[&p0]);
    let r = p0.recover_node(1, p1.generation()).unwrap();
    assert!(r.exclusive_reclaimed);
    assert_eq!(r.regions_freed, 2);
    assert_eq!(r.bytes_freed, 2 * 1024);
    assert_eq!(p0.region_info(mine), Err(ShmError::NoSuchRegion));
    assert_eq!(p0.region_info(given), Err(ShmError::NoSuchRegion));
    p0.region_info(shared).unwrap();
    p0.region_info(both).unwrap();
    let (s, _) = check_pool(&shm, &p0, pool);
    assert_eq!(s.regions, 2);
}

#[test]
fn recovery_spares_exclusive_regions_once_the_node_is_back() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p0 = join(&shm, 0);
    let old = join(&shm, 1);
    let pool = p0.pool_create("back", 64 * KIB).unwrap();
    let h = old.shm_alloc_owned(pool, 100, 1, 1 << 1).unwrap();
    // Node 1 restarts (new generation) before anyone recovered the old one.
    let new = join(&shm, 1);
    assert_ne!(new.generation(), old.generation());
    let h_new = new.shm_alloc_owned(pool, 100, 1, 1 << 1).unwrap();
    let r = p0.recover_node(1, old.generation()).unwrap();
    assert!(!r.exclusive_reclaimed);
    assert_eq!(r.regions_freed, 0);
    p0.region_info(h_new).unwrap();
    // The node itself may reclaim what its previous incarnation owned (it
    // is the one who knows it has handed nothing out yet)...
    new.shm_free(h_new).unwrap();
    let r = new.recover_node(1, old.generation()).unwrap();
    assert!(r.exclusive_reclaimed);
    assert_eq!(r.regions_freed, 1);
    assert_eq!(new.region_info(h), Err(ShmError::NoSuchRegion));
    assert_eq!(generation_of(&shm, 1), new.generation());
    check_pool(&shm, &p0, pool);
}

#[test]
fn snapshot_lists_pools_and_regions() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let before = Snapshot::read(mem.region()).unwrap();
    assert!(!before.pools.initialised);
    assert!(before.to_string().contains("heap not initialised"));
    let p = join(&shm, 3);
    let a = p.pool_create("inspect-me", 64 * KIB).unwrap();
    p.pool_create("second", 8 * KIB).unwrap();
    let h = p.shm_alloc_owned(a, 1234, 256, 0b1010).unwrap();
    let snap = Snapshot::read(mem.region()).unwrap();
    assert!(snap.pools.initialised);
    assert_eq!(snap.pools.pools().len(), 2);
    let pr = snap.pools.pools()[0];
    let st = pr.stat.unwrap();
    assert_eq!(
        (st.name.as_str(), st.size, st.free, st.regions),
        ("inspect-me", 64 * KIB, 64 * KIB - 1280, 1)
    );
    assert_eq!(snap.pools.regions().len(), 1);
    let r = snap.pools.regions()[0];
    assert_eq!(
        (
            r.handle,
            r.len,
            r.reserved,
            r.owners,
            r.state,
            r.allocated_by
        ),
        (h, 1234, 1280, NodeSet(0b1010), RegionState::Allocated, 3)
    );
    let text = snap.to_string();
    assert!(
        text.contains("inspect-me") && text.contains("second"),
        "{text}"
    );
    assert!(
        text.contains(&h.to_string()) && text.contains("{1,3}"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::to_value(snap).unwrap();
    assert_eq!(json["pools"]["pools"][0]["stat"]["name"], "inspect-me");
    assert_eq!(json["pools"]["regions"][0]["len"], 1234);
    assert_eq!(json["pools"]["regions_total"], 1);
}

#[test]
fn handles_are_unique_across_many_allocations() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let pool = p.pool_create("uniq", 8 * KIB).unwrap();
    let mut seen = HashSet::new();
    for _ in 0..5000 {
        let h = p.shm_alloc(pool, 64, 1).unwrap();
        assert!(seen.insert(h));
        p.shm_free(h).unwrap();
    }
}

#[test]
fn damaged_pool_is_refused_and_others_keep_working() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    let bad = p.pool_create("bad", 16 * KIB).unwrap();
    let good = p.pool_create("good", 16 * KIB).unwrap();
    let hb = p.shm_alloc(bad, 100, 1).unwrap();
    let hg = p.shm_alloc(good, 100, 1).unwrap();
    // Scribble over the bad pool's region slot (its extent, as the region says).
    let info = p.region_info(hb).unwrap();
    let stat = p.pool_stat(bad).unwrap();
    let slot0 = stat.data_offset - 4096; // slot table: one page for 64 slots
    assert!(info.offset >= stat.data_offset);
    mem.region()
        .atomic_u64(slot0 as usize + 64 * hb.slot() as usize + 8)
        .unwrap()
        .store(u64::MAX - 7, Ordering::SeqCst);
    assert!(matches!(p.region_info(hb), Err(ShmError::Corrupt { .. })));
    assert!(matches!(p.shm_free(hb), Err(ShmError::Corrupt { .. })));
    // The other pool does not notice.
    p.shm_free(hg).unwrap();
    check_pool(&shm, &p, good);
    let h = p.shm_alloc(good, 5000, 4096).unwrap();
    p.shm_free(h).unwrap();
    // A damaged header tag refuses the whole pool, by name too.
    let tag_off = stat.data_offset - 4096 - 4096;
    mem.region()
        .atomic_u64(tag_off as usize)
        .unwrap()
        .store(7, Ordering::SeqCst);
    assert!(matches!(p.pool_stat(bad), Err(ShmError::Corrupt { .. })));
    assert!(matches!(
        p.shm_alloc(bad, 1, 1),
        Err(ShmError::Corrupt { .. })
    ));
    assert!(matches!(p.pool_destroy(bad), Err(ShmError::Corrupt { .. })));
    assert_eq!(p.pool_open("bad").unwrap(), bad);
    let text = Snapshot::read(mem.region()).unwrap().to_string();
    assert!(
        text.contains("unreadable: corrupt shared memory: pool header tag"),
        "{text}"
    );
    assert!(text.contains("good"), "{text}");
}

#[test]
fn format_resets_a_damaged_heap() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region());
    let p = join(&shm, 0);
    p.pool_create("old", 16 * KIB).unwrap();
    let heap = shm.superblock().layout.heap.offset as usize;
    mem.region()
        .atomic_u64(heap + 8)
        .unwrap()
        .store(0xdead, Ordering::SeqCst);
    assert!(matches!(
        Pools::attach(&shm, 0, p.generation()),
        Err(ShmError::Corrupt { .. })
    ));
    assert!(Snapshot::read(mem.region()).unwrap().pools.error.is_some());
    Pools::format(&shm).unwrap();
    let p = Pools::attach(&shm, 0, p.generation()).unwrap();
    assert_eq!(p.pool_open("old"), Err(ShmError::NoSuchPool));
    p.pool_create("new", 16 * KIB).unwrap();
}
