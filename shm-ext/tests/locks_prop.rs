//! Property tests: random bytes in the lock table (and a barrier word)
//! never make lock, barrier or report operations panic; each gives Ok or a
//! named error.
#![cfg(feature = "std")]

mod locks_support;

use locks_support::{attach, is_named, join};
use proptest::prelude::*;
use shm_ext::host::HeapRegion;
use shm_ext::lock::LOCK_SLOT_LEN;
use shm_ext::{BarrierTicket, Caller, Generation, InitParams, LockTable, NoDoorbell, ShmError};

const SIZE: usize = 512 * 1024;

fn ok_or_named<T>(r: Result<T, ShmError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(is_named(&e), "{e:?}");
            None
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(usize),
    Unreserve(Vec<u32>),
    Acquire(Vec<u32>),
    Release(Vec<u32>),
    Wait(u32, u64),
    Wake(u32),
    Info(u32),
    Recover(u16, u32),
    ReleaseOwner,
    Arrive,
    Poll(u32),
}

fn id() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..20, Just(1023), Just(1024), any::<u32>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..40).prop_map(Op::Reserve),
        prop::collection::vec(id(), 0..4).prop_map(Op::Unreserve),
        prop::collection::vec(id(), 0..5).prop_map(Op::Acquire),
        prop::collection::vec(id(), 0..5).prop_map(Op::Release),
        (id(), any::<u64>()).prop_map(|(i, w)| Op::Wait(i, w)),
        id().prop_map(Op::Wake),
        id().prop_map(Op::Info),
        (0u16..40, 0u32..4).prop_map(|(n, g)| Op::Recover(n, g)),
        Just(Op::ReleaseOwner),
        Just(Op::Arrive),
        any::<u32>().prop_map(Op::Poll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random slot contents (words, waiters, reservations, the barrier word)
    /// at the start of the table, then random operations.
    #[test]
    fn random_lock_tables_never_panic(
        junk in prop::collection::vec(any::<u8>(), 0..(24 * LOCK_SLOT_LEN)),
        sparse in prop::collection::vec((0usize..65536 / 8, any::<u64>()), 0..16),
        ops in prop::collection::vec(op(), 1..24),
    ) {
        let mem = HeapRegion::new(SIZE);
        let shm = attach(mem.region(), &InitParams::default());
        let a = join(&shm, 0);
        let b = join(&shm, 1);
        let base = shm.superblock().layout.lock_table.offset as usize;
        shm.region().write_bytes(base, &junk).unwrap();
        for (w, v) in sparse {
            shm.region().write_bytes(base + 8 * w, &v.to_le_bytes()).unwrap();
        }
        let t = shm.lock_table().unwrap();
        for (i, op) in ops.into_iter().enumerate() {
            let me = if i % 2 == 0 { a } else { b };
            match op {
                Op::Reserve(n) => {
                    let mut out = vec![0u32; n];
                    ok_or_named(shm.lock_reserve(me, &mut out));
                }
                Op::Unreserve(ids) => { ok_or_named(shm.lock_unreserve(&NoDoorbell, me, &ids)); }
                Op::Acquire(ids) => {
                    ok_or_named(shm.lock_try_acquire(&NoDoorbell, me, &ids, 5, 10));
                    ok_or_named(t.try_acquire_many_fast(&ids, me));
                }
                Op::Release(ids) => {
                    ok_or_named(shm.lock_release(&NoDoorbell, me, &ids));
                    if let Some(&id) = ids.first() {
                        ok_or_named(t.release_fast(id, me));
                    }
                }
                Op::Wait(id, w) => { ok_or_named(shm.lock_wait(me.node(), id, w)); }
                Op::Wake(id) => { ok_or_named(shm.lock_wake(&NoDoorbell, id)); }
                Op::Info(id) => { ok_or_named(shm.lock_info(id)); }
                Op::Recover(n, g) => {
                    ok_or_named(shm.recover_ipc(&NoDoorbell, me, n, Generation(g)));
                }
                Op::ReleaseOwner => { ok_or_named(shm.lock_release_owner(&NoDoorbell, me)); }
                Op::Arrive => {
                    ok_or_named(shm.barrier_arrive(&NoDoorbell, me.node(), me.generation()));
                }
                Op::Poll(e) => { ok_or_named(shm.barrier_poll(&NoDoorbell, BarrierTicket(e))); }
            }
        }
        ok_or_named(shm.locks_free());
        let snap = shm.snapshot();
        let _ = snap.to_string();
        let _ = serde_json::to_string(&snap).unwrap();
    }

    /// A user-space mapping holding only random bytes: the fast path
    /// validates ids and never panics, whatever the words hold.
    #[test]
    fn fast_path_on_random_mappings_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..(8 * LOCK_SLOT_LEN)),
        ids in prop::collection::vec(id(), 1..6),
        node in 0u16..64,
        generation in 1u32..4,
        process in any::<u16>(),
        observed in any::<u64>(),
    ) {
        let mem = HeapRegion::from_bytes(&bytes);
        let Some(t) = ok_or_named(LockTable::mapped(mem.region())) else {
            return Ok(());
        };
        let me = Caller::new(node, Generation(generation), process).unwrap();
        for &id in &ids {
            ok_or_named(t.try_acquire_fast(id, me));
            ok_or_named(t.release_fast(id, me));
            ok_or_named(t.prepare_wait(node, id, observed));
            ok_or_named(t.take_waiters(id));
            ok_or_named(t.info(id));
        }
        ok_or_named(t.try_acquire_many_fast(&ids, me));
        ok_or_named(t.release_many_fast(&ids, me));
    }
}
