//! Signals and the cluster barrier in one process.
#![cfg(feature = "std")]

mod locks_support;

use locks_support::{Recorder, attach, join};
use shm_ext::format::entry;
use shm_ext::host::HeapRegion;
use shm_ext::platform::vector;
use shm_ext::{BarrierTicket, InitParams, NoDoorbell, NodeSet, ShmError};

const SIZE: usize = 1 << 20;

#[test]
fn a_signal_sets_its_bit_and_rings_the_node() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    let _a = join(&shm, 0);
    let _b = join(&shm, 1);
    let bell = Recorder::default();
    shm.signal(&bell, 1, 0).unwrap();
    shm.signal(&bell, 1, 63).unwrap();
    shm.signal(&bell, 1, 63).unwrap(); // signals do not count
    assert_eq!(bell.take(vector::SIGNAL), vec![1, 1, 1]);
    assert_ne!(shm.take_pending(1).unwrap() & (1 << vector::SIGNAL), 0);
    assert_eq!(shm.pending_signals(1).unwrap(), 1 | 1 << 63);
    assert_eq!(shm.pending_signals(0).unwrap(), 0);
    assert_eq!(shm.take_signals(1).unwrap(), 1 | 1 << 63);
    assert_eq!(shm.take_signals(1).unwrap(), 0);
}

#[test]
fn signal_all_reaches_every_live_node_including_the_caller() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    for n in [0, 3, 4, 9] {
        join(&shm, n);
    }
    let g4 = shm.node(4).unwrap().generation;
    shm.leave(4, g4).unwrap();
    let bell = Recorder::default();
    let raised = shm.signal_all(&bell, 5).unwrap();
    assert_eq!(raised.iter().collect::<Vec<_>>(), vec![0, 3, 9]);
    assert_eq!(bell.take(vector::SIGNAL), vec![0, 3, 9]);
    for n in [0, 3, 9] {
        assert_eq!(shm.take_signals(n).unwrap(), 1 << 5);
    }
    assert_eq!(shm.take_signals(4).unwrap(), 0);
    // An explicit set skips nodes that are not live.
    let raised = shm.signal_set(&bell, NodeSet(0b11_1111), 7).unwrap();
    assert_eq!(raised.iter().collect::<Vec<_>>(), vec![0, 3]);
}

#[test]
fn signal_errors_are_named() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    join(&shm, 0);
    assert!(matches!(
        shm.signal(&NoDoorbell, 0, 64),
        Err(ShmError::InvalidArgument { .. })
    ));
    assert!(matches!(
        shm.signal_all(&NoDoorbell, 200),
        Err(ShmError::InvalidArgument { .. })
    ));
    assert_eq!(shm.signal(&NoDoorbell, 2, 1), Err(ShmError::NotLive));
    assert_eq!(shm.signal(&NoDoorbell, 32, 1), Err(ShmError::NoSuchNode));
    assert_eq!(shm.take_signals(32), Err(ShmError::NoSuchNode));
}

#[test]
fn a_restarted_node_starts_without_old_signals() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    join(&shm, 0);
    shm.signal(&NoDoorbell, 0, 9).unwrap();
    join(&shm, 0);
    assert_eq!(shm.take_signals(0).unwrap(), 0);
    // The signal word lives in the node entry's formerly reserved bytes.
    let off = shm.superblock().layout.node_table.offset as usize + entry::SIGNALS;
    shm.signal(&NoDoorbell, 0, 2).unwrap();
    assert_eq!(
        shm.region()
            .atomic_u64(off)
            .unwrap()
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[test]
fn the_barrier_releases_when_the_last_live_node_arrives() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    let bell = Recorder::default();
    assert_eq!(shm.barrier_epoch().unwrap(), 0);
    for round in 1..=3u32 {
        let ta = shm.barrier_arrive(&bell, 0, a.generation()).unwrap();
        assert_eq!(ta, BarrierTicket(round));
        // Arriving twice is harmless.
        assert_eq!(shm.barrier_arrive(&bell, 0, a.generation()).unwrap(), ta);
        let tb = shm.barrier_arrive(&bell, 1, b.generation()).unwrap();
        assert!(!shm.barrier_poll(&bell, ta).unwrap());
        assert!(bell.take(vector::BARRIER).is_empty());
        let tc = shm.barrier_arrive(&bell, 2, c.generation()).unwrap();
        assert_eq!(ta, tb);
        assert_eq!(tb, tc);
        // The last arriver released it and rang every live node.
        assert_eq!(bell.take(vector::BARRIER), vec![0, 1, 2]);
        for t in [ta, tb, tc] {
            assert!(shm.barrier_poll(&bell, t).unwrap());
        }
        assert_eq!(shm.barrier_epoch().unwrap(), round);
    }
    // A stale (earlier) ticket reads released.
    assert!(shm.barrier_poll(&bell, BarrierTicket(1)).unwrap());
    // Callers must be live at their generation.
    assert_eq!(
        shm.barrier_arrive(&bell, 5, shm_ext::Generation(1)),
        Err(ShmError::StaleGeneration)
    );
    assert_eq!(
        shm.barrier_arrive(&bell, 0, shm_ext::Generation(9)),
        Err(ShmError::StaleGeneration)
    );
}

#[test]
fn a_node_dying_at_the_barrier_does_not_hold_the_others() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    let bell = Recorder::default();
    let ta = shm.barrier_arrive(&bell, 0, a.generation()).unwrap();
    let _ = shm.barrier_arrive(&bell, 1, b.generation()).unwrap();
    assert!(!shm.barrier_poll(&bell, ta).unwrap());
    // c dies before arriving; once it is not live, recovery releases the
    // barrier (a poll would too).
    shm.leave(2, c.generation()).unwrap();
    let rep = shm.recover_ipc(&bell, a, 2, c.generation()).unwrap();
    assert!(rep.barrier_released);
    assert_eq!(bell.take(vector::BARRIER), vec![0, 1]);
    assert!(shm.barrier_poll(&bell, ta).unwrap());

    // Next round: c is gone, a poll releases it once a and b arrived.
    let ta = shm.barrier_arrive(&bell, 0, a.generation()).unwrap();
    join(&shm, 3);
    let _ = shm.barrier_arrive(&bell, 1, b.generation()).unwrap();
    // The new node 3 must arrive too.
    assert!(!shm.barrier_poll(&bell, ta).unwrap());
    let g3 = shm.node(3).unwrap().generation;
    let t3 = shm.barrier_arrive(&bell, 3, g3).unwrap();
    assert_eq!(t3, ta);
    assert!(shm.barrier_poll(&bell, ta).unwrap());
}
