//! Node death at every step: each pool operation is run by a "victim" node
//! that crashes (fault injection) at its 1st, 2nd, ... crash point until
//! one run completes. After each crash a survivor declares the victim dead
//! and runs `recover_node`; then every pool must be exactly consistent,
//! fully usable, and free everything back to one block.
#![cfg(feature = "std")]

mod pool_common;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use pool_common::{attach, check_pool, declare_dead, join};
use shm_ext::host::HeapRegion;
use shm_ext::pool::fault;
use shm_ext::{NodeSet, PoolId, Pools, RecoveryReport, RegionHandle, Shm, ShmError, Snapshot};

const SIZE: usize = 1 << 20;
const KIB: u64 = 1024;

/// Runs `op` on `victim`, crashing at crash point `n`; true if it crashed.
fn crash_at(n: u64, op: impl FnOnce()) -> bool {
    fault::arm(n);
    let r = catch_unwind(AssertUnwindSafe(op));
    fault::disarm();
    match r {
        Ok(()) => false,
        Err(p) if fault::is_crash(&*p) => true,
        Err(p) => resume_unwind(p),
    }
}

/// Checks every pool, frees every region the survivor may free (all of them
/// must be: the victim's own were reclaimed), then checks each pool is one
/// free block, destroys it, and checks the heap can hold one pool as big as
/// ever (no extent leaked).
fn settle_and_check(shm: &Shm<'_>, p0: &Pools<'_>, victim: u16) {
    let snap = shm.snapshot();
    assert!(snap.pools.error.is_none(), "{snap}");
    let ids: Vec<PoolId> = snap
        .pools
        .pools()
        .iter()
        .map(|r| {
            assert!(r.error.is_none(), "{snap}");
            r.id
        })
        .collect();
    for &id in &ids {
        check_pool(shm, p0, id);
    }
    for r in snap.pools.regions() {
        assert_ne!(
            r.owners,
            NodeSet(1 << victim),
            "victim's own region survived: {snap}"
        );
        p0.shm_free(r.handle).unwrap();
    }
    for &id in &ids {
        let (s, _) = check_pool(shm, p0, id);
        assert_eq!((s.free, s.largest_free, s.regions), (s.size, s.size, 0));
        p0.pool_destroy(id).unwrap();
    }
    let heap = shm.superblock().layout.heap;
    let whole = p0.pool_create("everything", heap.len - 64 * KIB).unwrap();
    p0.pool_destroy(whole).unwrap();
}

/// What a sweep saw over all crash points.
#[derive(Default, Debug)]
struct Seen {
    points: u64,
    replayed: u32,
    freed: u32,
    rolled_back: u32,
    completed: u32,
}

/// Sweeps every crash point of `op` (run by node 1 after `setup`), with
/// node 0 recovering; `after` checks the outcome.
fn sweep<S>(
    setup: impl Fn(&Pools<'_>, &Pools<'_>) -> S,
    op: impl Fn(&Pools<'_>, &S),
    after: impl Fn(&Shm<'_>, &Pools<'_>, &S, &RecoveryReport),
) -> Seen {
    let mut seen = Seen::default();
    for n in 1.. {
        let mem = HeapRegion::new(SIZE);
        let shm = attach(mem.region());
        let p0 = join(&shm, 0);
        let p1 = join(&shm, 1);
        let state = setup(&p0, &p1);
        if !crash_at(n, || op(&p1, &state)) {
            seen.points = n - 1;
            break;
        }
        declare_dead(&shm, 1, &[&p0]);
        let report = p0.recover_node(1, p1.generation()).unwrap();
        assert_eq!(report.first_error, None, "crash point {n}: {report:?}");
        // The dead node's stale access is refused, not obeyed.
        seen.replayed += report.journals_replayed;
        seen.freed += report.regions_freed;
        seen.rolled_back += report.creates_rolled_back;
        seen.completed += report.destroys_completed;
        after(&shm, &p0, &state, &report);
        settle_and_check(&shm, &p0, 1);
    }
    assert!(seen.points >= 3, "{seen:?}");
    println!("{seen:?}");
    seen
}

/// A pool with regions at 0..1 KiB and 3..4 KiB and a hole between, so an
/// aligned allocation in the hole leaves a head and a tail.
fn fragmented(p0: &Pools<'_>) -> (PoolId, Vec<RegionHandle>) {
    let pool = p0.pool_create("frag", 64 * KIB).unwrap();
    let hs: Vec<RegionHandle> = (0..3)
        .map(|_| p0.shm_alloc(pool, 1024, 64).unwrap())
        .collect();
    let hole = p0.shm_alloc(pool, 2048, 64).unwrap();
    let last = p0.shm_alloc(pool, 1024, 64).unwrap();
    p0.shm_free(hole).unwrap();
    (pool, vec![hs[0], hs[1], hs[2], last])
}

#[test]
fn crash_in_shared_alloc() {
    let seen = sweep(
        |p0, _| fragmented(p0),
        |p1, (pool, _)| {
            let h = p1.shm_alloc(*pool, 700, 2048).unwrap();
            // Split three ways: the hole is 3..5 KiB, the region lands at 4 KiB.
            let data = p1.pool_stat(*pool).unwrap().data_offset;
            assert_eq!(p1.region_info(h).unwrap().offset, data + 4096);
        },
        |shm, p0, (pool, hs), _| {
            let (s, regions) = check_pool(shm, p0, *pool);
            // Either it never happened, or the region exists (the crash came
            // after the call's last step): shared, so it stays.
            assert!(s.regions == 4 || s.regions == 5, "{s:?}");
            for h in hs {
                assert!(regions.iter().any(|r| r.0 == *h));
            }
        },
    );
    assert!(seen.replayed > 0 && seen.freed > 0, "{seen:?}");
}

#[test]
fn crash_in_owned_alloc_leaks_nothing() {
    let seen = sweep(
        |p0, _| fragmented(p0),
        |p1, (pool, _)| {
            p1.shm_alloc_owned(*pool, 700, 2048, 1 << 1).unwrap();
        },
        |shm, p0, (pool, _), _| {
            let (s, _) = check_pool(shm, p0, *pool);
            assert_eq!(s.regions, 4, "{s:?}");
        },
    );
    assert!(seen.replayed > 0 && seen.freed > 0, "{seen:?}");
}

#[test]
fn crash_in_coalescing_free() {
    let seen = sweep(
        |p0, _| {
            let pool = p0.pool_create("co", 64 * KIB).unwrap();
            let hs: Vec<RegionHandle> = (0..5)
                .map(|_| p0.shm_alloc(pool, 1000, 1).unwrap())
                .collect();
            p0.shm_free(hs[1]).unwrap();
            p0.shm_free(hs[3]).unwrap();
            (pool, hs)
        },
        // Merges with free blocks on both sides.
        |p1, (_, hs)| p1.shm_free(hs[2]).unwrap(),
        |shm, p0, (pool, hs), _| {
            let (s, _) = check_pool(shm, p0, *pool);
            match p0.region_info(hs[2]) {
                Ok(_) => assert_eq!(s.regions, 3),
                Err(e) => {
                    assert_eq!(e, ShmError::NoSuchRegion);
                    assert_eq!(s.regions, 2);
                }
            }
        },
    );
    assert!(seen.replayed > 0, "{seen:?}");
}

#[test]
fn crash_in_pool_create() {
    let seen = sweep(
        |p0, _| p0.pool_create("before", 16 * KIB).unwrap(),
        |p1, _| {
            p1.pool_create("made", 64 * KIB).unwrap();
        },
        |_, p0, before, _| {
            p0.pool_stat(*before).unwrap();
            match p0.pool_open("made") {
                Ok(id) => {
                    let s = p0.pool_stat(id).unwrap();
                    assert_eq!((s.free, s.size), (64 * KIB, 64 * KIB));
                }
                Err(e) => {
                    assert_eq!(e, ShmError::NoSuchPool);
                    // The name is free again.
                    let id = p0.pool_create("made", 4 * KIB).unwrap();
                    p0.pool_destroy(id).unwrap();
                }
            }
        },
    );
    assert!(seen.rolled_back > 0, "{seen:?}");
}

#[test]
fn crash_in_pool_destroy() {
    let seen = sweep(
        |p0, _| {
            let keep = p0.pool_create("keep", 16 * KIB).unwrap();
            let gone = p0.pool_create("gone", 16 * KIB).unwrap();
            let h = p0.shm_alloc(gone, 10, 1).unwrap();
            p0.shm_free(h).unwrap();
            (keep, gone, h)
        },
        |p1, (_, gone, _)| p1.pool_destroy(*gone).unwrap(),
        |_, p0, (keep, gone, old), _| {
            p0.pool_stat(*keep).unwrap();
            match p0.pool_stat(*gone) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, ShmError::NoSuchPool);
                    // Re-created in the same entry: old handles stay dead.
                    let id = p0.pool_create("gone", 16 * KIB).unwrap();
                    let h = p0.shm_alloc(id, 10, 1).unwrap();
                    assert_ne!(h, *old);
                    assert_eq!(p0.region_info(*old), Err(ShmError::NoSuchRegion));
                    p0.shm_free(h).unwrap();
                }
            }
        },
    );
    assert!(seen.completed > 0, "{seen:?}");
}

#[test]
fn crash_in_own_and_transfer() {
    // own: shared -> {victim}; after a crash it is shared, or owned by the
    // victim alone and then reclaimed.
    sweep(
        |p0, _| {
            let pool = p0.pool_create("own", 16 * KIB).unwrap();
            (pool, p0.shm_alloc(pool, 10, 1).unwrap())
        },
        |p1, (_, h)| p1.shm_own(*h, 1, 1 << 1).unwrap(),
        |_, p0, (_, h), _| match p0.region_info(*h) {
            Ok(info) => assert_eq!(info.owners, NodeSet(0)),
            Err(e) => assert_eq!(e, ShmError::NoSuchRegion),
        },
    );
    // transfer {victim} -> {0}: afterwards node 0 owns it, or it was the
    // victim's alone and is gone.
    sweep(
        |_, p1| {
            let pool = p1.pool_create("xfer", 16 * KIB).unwrap();
            (pool, p1.shm_alloc_owned(pool, 10, 1, 1 << 1).unwrap())
        },
        |p1, (_, h)| p1.shm_transfer(*h, 1, 1 << 1, 1 << 0).unwrap(),
        |_, p0, (_, h), _| match p0.region_info(*h) {
            Ok(info) => assert_eq!(info.owners, NodeSet(1)),
            Err(e) => assert_eq!(e, ShmError::NoSuchRegion),
        },
    );
}

#[test]
fn crash_while_initialising_the_heap() {
    for n in 1.. {
        let mem = HeapRegion::new(SIZE);
        let shm = attach(mem.region());
        let g1 = shm.join(1, &pool_common::facts("victim")).unwrap();
        if !crash_at(n, || {
            Pools::attach(&shm, 1, g1).unwrap();
        }) {
            assert!(n > 2);
            break;
        }
        // While the initialiser is live, its stamp stays: nobody takes over.
        let g0 = shm.join(0, &pool_common::facts("survivor")).unwrap();
        assert_eq!(
            Snapshot::read(mem.region()).unwrap().pools.error,
            Some(ShmError::NotInitialized)
        );
        let mut mon = shm_ext::LivenessMonitor::new(None);
        mon.observe(&shm, 0);
        shm.heartbeat(0, g0).unwrap();
        mon.observe(&shm, pool_common::TIMEOUT_NS + 1);
        // Once the node table shows it dead, attach takes over by itself.
        let p0 = Pools::attach(&shm, 0, g0).unwrap();
        p0.recover_node(1, g1).unwrap();
        let id = p0.pool_create("after", 8 * KIB).unwrap();
        check_pool(&shm, &p0, id);
    }
}

#[test]
fn crash_during_recovery_is_recovered_too() {
    // Node 1 dies in the middle of applying an allocation; node 2 dies at
    // each point of its recovery of node 1; node 0 recovers both.
    let victim_point = 45;
    let mut swept = 0;
    for m in 1.. {
        let mem = HeapRegion::new(SIZE);
        let shm = attach(mem.region());
        let p0 = join(&shm, 0);
        let p1 = join(&shm, 1);
        let p2 = join(&shm, 2);
        let (pool, _) = fragmented(&p0);
        assert!(crash_at(victim_point, || {
            p1.shm_alloc_owned(pool, 700, 2048, 1 << 1).unwrap();
        }));
        declare_dead(&shm, 1, &[&p0, &p2]);
        let crashed = crash_at(m, || {
            p2.recover_node(1, p1.generation()).unwrap();
        });
        if !crashed {
            swept = m - 1;
            break;
        }
        declare_dead(&shm, 2, &[&p0]);
        let r2 = p0.recover_node(2, p2.generation()).unwrap();
        assert_eq!(r2.first_error, None);
        let r1 = p0.recover_node(1, p1.generation()).unwrap();
        assert_eq!(r1.first_error, None);
        let (s, _) = check_pool(&shm, &p0, pool);
        assert_eq!(s.regions, 4);
        settle_and_check(&shm, &p0, 1);
    }
    assert!(swept > 5, "{swept}");
}
