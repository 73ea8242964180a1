//! Global locks in one process: reservations, the fast path, several locks
//! at once, futex-style wait and wake, recovery, reports, error paths.
#![cfg(feature = "std")]

mod locks_support;

use locks_support::{Recorder, attach, join};
use shm_ext::host::HeapRegion;
use shm_ext::lock::{CONTENDED, LOCK_SLOT_LEN, MAX_LOCKS_PER_CALL};
use shm_ext::platform::vector;
use shm_ext::{
    Caller, Generation, InitParams, LockTable, LockWait, NoDoorbell, Region, ShmError, TryLock,
};

const SIZE: usize = 1 << 20;

fn params() -> InitParams {
    InitParams::default()
}

#[test]
fn default_table_has_1023_locks_and_reservations_account_exactly() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    assert_eq!(shm.lock_table().unwrap().count(), 1023);
    assert_eq!(shm.locks_free().unwrap(), 1023);

    let mut ids = [0u32; 10];
    shm.lock_reserve(a, &mut ids).unwrap();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(shm.locks_free().unwrap(), 1013);
    let info = shm.lock_info(3).unwrap();
    assert_eq!(
        info.reserved_by,
        Some(Caller::new(0, a.generation(), 0).unwrap())
    );
    assert_eq!(info.holder, None);

    // Only the reserving node gives ids back, and only ids it reserved.
    assert_eq!(
        shm.lock_unreserve(&NoDoorbell, b, &[3]),
        Err(ShmError::NotReserved)
    );
    assert_eq!(
        shm.lock_unreserve(&NoDoorbell, a, &[3, 11]),
        Err(ShmError::NotReserved)
    );
    assert_eq!(shm.locks_free().unwrap(), 1013, "all or nothing");
    shm.lock_unreserve(&NoDoorbell, a, &[3, 5]).unwrap();
    assert_eq!(shm.locks_free().unwrap(), 1015);
    assert_eq!(shm.lock_info(3).unwrap().reserved_by, None);

    // The freed ids are handed out again, lowest first.
    let mut more = [0u32; 3];
    shm.lock_reserve(b, &mut more).unwrap();
    assert_eq!(more, [3, 5, 11]);

    // Exhaustion: all or nothing, NoSuchLock.
    let mut rest = vec![0u32; 1013];
    assert_eq!(shm.lock_reserve(b, &mut rest), Err(ShmError::NoSuchLock));
    assert_eq!(shm.locks_free().unwrap(), 1012);
    let mut rest = vec![0u32; 1012];
    shm.lock_reserve(b, &mut rest).unwrap();
    assert_eq!(shm.locks_free().unwrap(), 0);
    assert_eq!(shm.lock_reserve(a, &mut [0]), Err(ShmError::NoSuchLock));
    assert!(matches!(
        shm.lock_reserve(a, &mut []),
        Err(ShmError::InvalidArgument { .. })
    ));
}

#[test]
fn smaller_and_larger_tables_follow_init_params() {
    for (len, count) in [(4096u64, 63u32), (256 * 1024, 4095)] {
        let mem = HeapRegion::new(2 << 20);
        let p = InitParams {
            lock_table_len: len,
            ..params()
        };
        let shm = attach(mem.region(), &p);
        assert_eq!(shm.lock_table().unwrap().count(), count);
        let a = join(&shm, 0);
        let mut ids = vec![0u32; count as usize];
        shm.lock_reserve(a, &mut ids).unwrap();
        assert_eq!(*ids.last().unwrap(), count);
        assert_eq!(shm.lock_reserve(a, &mut [0]), Err(ShmError::NoSuchLock));
    }
}

#[test]
fn fast_path_acquires_and_releases_with_one_cas_and_no_node_table() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let mut id = [0u32];
    shm.lock_reserve(a, &mut id).unwrap();
    let id = id[0];
    let t = shm.lock_table().unwrap();
    let p1 = Caller::new(0, a.generation(), 17).unwrap();
    let p2 = Caller::new(1, Generation(4), 9).unwrap(); // any node may use it

    assert_eq!(t.try_acquire_fast(id, p1), Ok(TryLock::Acquired));
    let info = t.info(id).unwrap();
    assert_eq!(info.holder, Some(p1));
    assert_eq!(info.word, p1.tag());
    match t.try_acquire_fast(id, p2) {
        Ok(TryLock::WouldBlock { id: i, observed }) => {
            assert_eq!(i, id);
            assert_eq!(observed, p1.tag());
        }
        other => panic!("{other:?}"),
    }
    // Re-acquiring one's own lock would deadlock: refused.
    assert!(matches!(
        t.try_acquire_fast(id, p1),
        Err(ShmError::InvalidArgument { .. })
    ));
    // Only the holder (same node, generation and process) releases.
    assert_eq!(t.release_fast(id, p2), Err(ShmError::NotHolder));
    let same_node_other_process = Caller::new(0, a.generation(), 18).unwrap();
    assert_eq!(
        t.release_fast(id, same_node_other_process),
        Err(ShmError::NotHolder)
    );
    assert_eq!(t.release_fast(id, p1), Ok(false), "nobody waited");
    assert_eq!(t.release_fast(id, p1), Err(ShmError::NotHolder));
    assert_eq!(t.try_acquire_fast(id, p2), Ok(TryLock::Acquired));
    assert_eq!(t.release_fast(id, p2), Ok(false));
    assert!(t.info(id).unwrap().holder.is_none());
}

#[test]
fn user_space_mapping_of_only_the_lock_table_works_the_same() {
    // A process maps just the lock table: offset 0 is slot 0 there.
    let table = HeapRegion::new(64 * 1024);
    let t = LockTable::mapped(table.region()).unwrap();
    assert_eq!(t.count(), 1023);
    let c = Caller::new(2, Generation(3), 1).unwrap();
    // Nothing reserved in a blank table.
    assert_eq!(t.try_acquire_fast(5, c), Err(ShmError::NotReserved));
    // Reserve by writing the reservation word, as the kernel would have.
    let res = 5 * LOCK_SLOT_LEN + 16;
    table.region().atomic_u64(res).unwrap().store(
        (3u64 << 32) | (2 << 8) | 1,
        std::sync::atomic::Ordering::Release,
    );
    assert_eq!(t.try_acquire_fast(5, c), Ok(TryLock::Acquired));
    assert_eq!(t.release_fast(5, c), Ok(false));
    assert!(matches!(
        LockTable::mapped(HeapRegion::new(64).region()),
        Err(ShmError::TooSmall)
    ));
}

#[test]
fn bad_ids_and_unreserved_ids_are_named_errors() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let t = shm.lock_table().unwrap();
    for bad in [0u32, 1024, u32::MAX] {
        assert_eq!(t.try_acquire_fast(bad, a), Err(ShmError::NoSuchLock));
        assert_eq!(t.release_fast(bad, a), Err(ShmError::NoSuchLock));
        assert_eq!(t.info(bad).unwrap_err(), ShmError::NoSuchLock);
        assert_eq!(shm.lock_wait(0, bad, 1), Err(ShmError::NoSuchLock));
        assert_eq!(
            shm.lock_try_acquire(&NoDoorbell, a, &[bad], 0, u64::MAX),
            Err(ShmError::NoSuchLock)
        );
        assert_eq!(
            shm.lock_unreserve(&NoDoorbell, a, &[bad]),
            Err(ShmError::NoSuchLock)
        );
    }
    assert_eq!(t.try_acquire_fast(7, a), Err(ShmError::NotReserved));
    assert_eq!(
        shm.lock_try_acquire(&NoDoorbell, a, &[7], 0, u64::MAX),
        Err(ShmError::NotReserved)
    );
    assert_eq!(
        shm.lock_release(&NoDoorbell, a, &[7]),
        Err(ShmError::NotHolder)
    );
    assert_eq!(shm.lock_wait(99, 7, 1), Err(ShmError::NoSuchNode));
    // Bad callers.
    assert_eq!(Caller::new(64, Generation(1), 0), Err(ShmError::NoSuchNode));
    assert!(matches!(
        Caller::new(1, Generation(0), 0),
        Err(ShmError::InvalidArgument { .. })
    ));
    // A caller whose node is not live (never joined) is refused by the
    // kernel-side calls.
    let ghost = Caller::new(5, Generation(1), 0).unwrap();
    assert_eq!(
        shm.lock_reserve(ghost, &mut [0]),
        Err(ShmError::StaleGeneration)
    );
    let stale = Caller::new(0, Generation(9), 0).unwrap();
    assert_eq!(
        shm.lock_reserve(stale, &mut [0]),
        Err(ShmError::StaleGeneration)
    );
}

#[test]
fn several_locks_at_once_are_all_or_nothing() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let mut ids = [0u32; 5];
    shm.lock_reserve(a, &mut ids).unwrap();
    let t = shm.lock_table().unwrap();

    // b holds id 3; a asks for 5, 3, 1 (any order): gets none.
    assert_eq!(t.try_acquire_fast(3, b), Ok(TryLock::Acquired));
    let (outcome, wake) = t.try_acquire_many_fast(&[5, 3, 1], a).unwrap();
    assert_eq!(
        outcome,
        TryLock::WouldBlock {
            id: 3,
            observed: b.tag()
        }
    );
    assert!(wake.is_empty());
    for id in [1, 5] {
        assert!(t.info(id).unwrap().holder.is_none(), "lock {id} given back");
    }
    assert_eq!(t.release_fast(3, b), Ok(false));
    let (outcome, _) = t.try_acquire_many_fast(&[5, 3, 1], a).unwrap();
    assert_eq!(outcome, TryLock::Acquired);
    for id in [1, 3, 5] {
        assert_eq!(t.info(id).unwrap().holder, Some(a));
    }
    // Releasing several: all must be held by the caller, else none is.
    assert_eq!(t.release_many_fast(&[1, 2], a), Err(ShmError::NotHolder));
    assert_eq!(t.info(1).unwrap().holder, Some(a));
    shm.lock_release(&NoDoorbell, a, &[5, 1, 3]).unwrap();
    assert!((1..=5).all(|id| t.info(id).unwrap().holder.is_none()));

    // Argument checks.
    let dup = t.try_acquire_many_fast(&[1, 2, 1], a);
    assert!(
        matches!(dup, Err(ShmError::InvalidArgument { .. })),
        "{dup:?}"
    );
    assert!(matches!(
        t.try_acquire_many_fast(&[], a),
        Err(ShmError::InvalidArgument { .. })
    ));
    let too_many: Vec<u32> = (1..=MAX_LOCKS_PER_CALL as u32 + 1).collect();
    assert!(matches!(
        t.try_acquire_many_fast(&too_many, a),
        Err(ShmError::InvalidArgument { .. })
    ));
    // An unreserved id in the set: nothing stays taken.
    assert_eq!(
        t.try_acquire_many_fast(&[1, 2, 900], a).unwrap_err(),
        ShmError::NotReserved
    );
    assert!(t.info(1).unwrap().holder.is_none());
    assert_eq!(
        t.try_acquire_many_fast(&[1, 2, 2000], a).unwrap_err(),
        ShmError::NoSuchLock
    );
}

#[test]
fn deadline_gives_timed_out_and_none_is_held() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let mut ids = [0u32; 2];
    shm.lock_reserve(a, &mut ids).unwrap();
    assert_eq!(
        shm.lock_try_acquire(&NoDoorbell, b, &[2], 0, 10),
        Ok(TryLock::Acquired)
    );
    // Before the deadline: would block; at or after it: timed out.
    assert!(matches!(
        shm.lock_try_acquire(&NoDoorbell, a, &[1, 2], 5, 10),
        Ok(TryLock::WouldBlock { id: 2, .. })
    ));
    assert_eq!(
        shm.lock_try_acquire(&NoDoorbell, a, &[1, 2], 10, 10),
        Err(ShmError::TimedOut)
    );
    assert!(shm.lock_info(1).unwrap().holder.is_none());
}

#[test]
fn waiters_are_registered_and_exactly_they_are_rung_on_release() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    let _d = join(&shm, 3);
    let mut id = [0u32];
    shm.lock_reserve(a, &mut id).unwrap();
    let id = id[0];
    let t = shm.lock_table().unwrap();
    let bell = Recorder::default();

    assert_eq!(
        shm.lock_try_acquire(&bell, a, &[id], 0, u64::MAX),
        Ok(TryLock::Acquired)
    );
    // b and c would block: the kernel path registers them as waiters.
    for w in [b, c] {
        assert_eq!(
            shm.lock_try_acquire(&bell, w, &[id], 0, u64::MAX),
            Ok(TryLock::WouldBlock {
                id,
                observed: a.tag() | if w == b { 0 } else { CONTENDED }
            })
        );
    }
    let info = t.info(id).unwrap();
    assert_eq!(info.word, a.tag() | CONTENDED);
    assert_eq!(info.waiters.iter().collect::<Vec<_>>(), vec![1, 2]);

    // The fast release reports that a wake is needed; the wake rings b and c
    // (and not d) on vector LOCK, and clears the bitmap.
    assert_eq!(t.release_fast(id, a), Ok(true));
    assert_eq!(bell.take(vector::LOCK), Vec::<u16>::new());
    let woken = shm.lock_wake(&bell, id).unwrap();
    assert_eq!(woken.iter().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(bell.take(vector::LOCK), vec![1, 2]);
    assert!(t.info(id).unwrap().waiters.is_empty());
    assert_eq!(
        shm.take_pending(1).unwrap() & (1 << vector::LOCK),
        1 << vector::LOCK
    );
    assert_eq!(shm.take_pending(3).unwrap(), 0);

    // The kernel-side release wakes by itself.
    assert_eq!(
        shm.lock_try_acquire(&bell, b, &[id], 0, u64::MAX),
        Ok(TryLock::Acquired)
    );
    assert!(matches!(
        shm.lock_try_acquire(&bell, c, &[id], 0, u64::MAX),
        Ok(TryLock::WouldBlock { .. })
    ));
    shm.lock_release(&bell, b, &[id]).unwrap();
    assert_eq!(bell.take(vector::LOCK), vec![2]);
}

#[test]
fn prepare_wait_retries_when_the_word_changed() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let mut id = [0u32];
    shm.lock_reserve(a, &mut id).unwrap();
    let id = id[0];
    let t = shm.lock_table().unwrap();
    // Observed free: nothing to wait for.
    assert_eq!(t.prepare_wait(1, id, 0), Ok(LockWait::Retry));
    assert_eq!(t.try_acquire_fast(id, a), Ok(TryLock::Acquired));
    // Observed a different holder than the current one: retry.
    assert_eq!(t.prepare_wait(1, id, b.tag()), Ok(LockWait::Retry));
    assert_eq!(t.prepare_wait(1, id, a.tag()), Ok(LockWait::Sleep));
    // Observed with or without the contended bit: same holder, sleep.
    assert_eq!(
        t.prepare_wait(2, id, a.tag() | CONTENDED),
        Ok(LockWait::Sleep)
    );
    assert_eq!(t.release_fast(id, a), Ok(true));
    assert_eq!(t.prepare_wait(1, id, a.tag()), Ok(LockWait::Retry));
    assert_eq!(t.try_acquire_fast(id, b), Ok(TryLock::Acquired));
    assert_eq!(t.release_fast(id, b), Ok(false));
}

#[test]
fn unreserve_of_a_held_lock_is_busy_and_waiters_of_unreserved_ids_learn_it() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let mut ids = [0u32; 2];
    shm.lock_reserve(a, &mut ids).unwrap();
    let t = shm.lock_table().unwrap();
    assert_eq!(t.try_acquire_fast(2, b), Ok(TryLock::Acquired));
    assert_eq!(
        shm.lock_unreserve(&NoDoorbell, a, &[1, 2]),
        Err(ShmError::Busy)
    );
    // Nothing changed: 1 is free and reserved, 2 held by b, both reserved.
    assert!(t.info(1).unwrap().holder.is_none());
    assert!(t.info(1).unwrap().reserved_by.is_some());
    assert_eq!(t.release_fast(2, b), Ok(false));
    shm.lock_unreserve(&NoDoorbell, a, &[1, 2]).unwrap();
    assert_eq!(t.try_acquire_fast(2, b), Err(ShmError::NotReserved));
    assert!(t.info(2).unwrap().is_free());
}

#[test]
fn recovery_frees_a_dead_nodes_locks_and_reservations_and_wakes_waiters() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    let bell = Recorder::default();
    let mut a_ids = [0u32; 3];
    shm.lock_reserve(a, &mut a_ids).unwrap();
    let mut b_ids = [0u32; 2];
    shm.lock_reserve(b, &mut b_ids).unwrap();
    let t = shm.lock_table().unwrap();
    // b (a process on it) holds one of a's locks and one of its own; c waits.
    let b_proc = Caller::new(1, b.generation(), 33).unwrap();
    let (o, _) = t
        .try_acquire_many_fast(&[a_ids[0], b_ids[1]], b_proc)
        .unwrap();
    assert_eq!(o, TryLock::Acquired);
    assert!(matches!(
        shm.lock_try_acquire(&bell, c, &[b_ids[1]], 0, u64::MAX),
        Ok(TryLock::WouldBlock { .. })
    ));
    // A live incarnation is not recovered.
    assert!(matches!(
        shm.recover_ipc(&bell, a, 1, b.generation()),
        Err(ShmError::InvalidArgument { .. })
    ));
    // b dies (here: leaves without cleaning up); a recovers it.
    shm.leave(1, b.generation()).unwrap();
    let free_before = shm.locks_free().unwrap();
    let rep = shm.recover_ipc(&bell, a, 1, b.generation()).unwrap();
    assert_eq!(rep.locks.locks_freed, 2);
    assert_eq!(rep.locks.reservations_freed, 2);
    assert_eq!(shm.locks_free().unwrap(), free_before + 2);
    assert_eq!(bell.take(vector::LOCK), vec![2], "the waiter is woken");
    // a's own reservations survive; the lock b held is free again.
    assert!(t.info(a_ids[0]).unwrap().reserved_by.is_some());
    assert_eq!(t.try_acquire_fast(a_ids[0], c), Ok(TryLock::Acquired));
    assert_eq!(t.try_acquire_fast(b_ids[1], c), Err(ShmError::NotReserved));
    // Idempotent.
    let again = shm.recover_ipc(&bell, a, 1, b.generation()).unwrap();
    assert_eq!(again.locks.locks_freed + again.locks.reservations_freed, 0);
    // b restarts with a new generation: its old tag releases nothing.
    let b2 = join(&shm, 1);
    assert_ne!(b2.generation(), b.generation());
    assert_eq!(t.release_fast(a_ids[0], b_proc), Err(ShmError::NotHolder));
}

#[test]
fn a_restarted_node_is_recovered_by_generation_only() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b1 = join(&shm, 1);
    let mut id = [0u32; 2];
    shm.lock_reserve(a, &mut id).unwrap();
    let t = shm.lock_table().unwrap();
    assert_eq!(t.try_acquire_fast(id[0], b1), Ok(TryLock::Acquired));
    // b restarts before anyone recovered its old incarnation.
    let b2 = join(&shm, 1);
    assert_eq!(t.try_acquire_fast(id[1], b2), Ok(TryLock::Acquired));
    let rep = shm.recover_ipc(&NoDoorbell, a, 1, b1.generation()).unwrap();
    assert_eq!(rep.locks.locks_freed, 1);
    assert!(t.info(id[0]).unwrap().holder.is_none());
    assert_eq!(
        t.info(id[1]).unwrap().holder,
        Some(b2),
        "new incarnation keeps its lock"
    );
}

#[test]
fn release_owner_frees_one_process_locks_only() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let mut ids = [0u32; 3];
    shm.lock_reserve(a, &mut ids).unwrap();
    let t = shm.lock_table().unwrap();
    let p = Caller::new(0, a.generation(), 5).unwrap();
    let q = Caller::new(0, a.generation(), 6).unwrap();
    t.try_acquire_many_fast(&ids[..2], p).unwrap();
    t.try_acquire_fast(ids[2], q).unwrap();
    assert_eq!(shm.lock_release_owner(&NoDoorbell, p), Ok(2));
    assert!(t.info(ids[0]).unwrap().holder.is_none());
    assert_eq!(t.info(ids[2]).unwrap().holder, Some(q));
}

#[test]
fn snapshot_lists_locks_in_use() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &params());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let mut ids = [0u32; 3];
    shm.lock_reserve(a, &mut ids).unwrap();
    shm.lock_try_acquire(&NoDoorbell, a, &[2], 0, u64::MAX)
        .unwrap();
    let _ = shm
        .lock_try_acquire(&NoDoorbell, b, &[2], 0, u64::MAX)
        .unwrap();
    let snap = shm.snapshot();
    let listed: Vec<u32> = snap.locks.iter().map(|l| l.id).collect();
    assert_eq!(listed, vec![1, 2, 3]);
    assert_eq!(snap.locks.count, 1023);
    let text = snap.to_string();
    assert!(text.contains("locks (1023 ids, 3 in use)"), "{text}");
    assert!(text.contains("0.1/0+"), "holder and contended mark: {text}");
    assert!(text.contains("{1}"), "waiters: {text}");
    let json = serde_json::to_value(snap).unwrap();
    assert_eq!(json["locks"]["locks"].as_array().unwrap().len(), 3);
    assert_eq!(json["locks"]["locks"][1]["holder"]["node"], 0);
}

#[test]
fn a_region_too_small_for_slots_refuses_politely() {
    // A lock table view over a region that ends early.
    let mem = HeapRegion::new(SIZE);
    let region: Region<'_> = mem.region();
    let area = shm_ext::format::Area {
        offset: (SIZE - 4096) as u64,
        len: 8192,
    };
    assert_eq!(
        LockTable::new(region, area).unwrap_err(),
        ShmError::OutOfBounds
    );
}
