//! Liveness monitor with a fake clock.
#![cfg(feature = "std")]

mod common;

use std::sync::atomic::Ordering;

use common::{SIZE, TIMEOUT_NS, attach, facts};
use shm_ext::host::HeapRegion;
use shm_ext::{EventKind, Generation, LivenessEvent, LivenessMonitor, NodeState, ShmError};

const MS: u64 = 1_000_000;

fn ev(node: u16, g: Generation, kind: EventKind) -> LivenessEvent {
    LivenessEvent {
        node,
        generation: g,
        kind,
    }
}

const DIED_HERE: EventKind = EventKind::Died {
    declared_here: true,
};
const DIED_ELSEWHERE: EventKind = EventKind::Died {
    declared_here: false,
};

#[test]
fn silent_node_is_declared_dead_after_the_timeout_and_beating_one_is_not() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let quiet = shm.join(1, &facts("quiet")).unwrap();
    let busy = shm.join(2, &facts("busy")).unwrap();
    let mut mon = LivenessMonitor::new(None);

    let first = mon.observe(&shm, 0);
    assert_eq!(
        first.as_slice(),
        &[
            ev(1, quiet, EventKind::Joined),
            ev(2, busy, EventKind::Joined)
        ]
    );

    // Node 2 beats every 10 ms; node 1 never does. Until the timeout has
    // passed, nobody is declared dead.
    let mut t = 0;
    while t < TIMEOUT_NS {
        t += 10 * MS;
        shm.heartbeat(2, busy).unwrap();
        let evs = mon.observe(&shm, t);
        assert!(evs.is_empty(), "at {t}: {:?}", evs.as_slice());
    }
    t += 10 * MS;
    shm.heartbeat(2, busy).unwrap();
    let evs = mon.observe(&shm, t);
    assert_eq!(evs.as_slice(), &[ev(1, quiet, DIED_HERE)]);
    assert_eq!(shm.node(1).unwrap().state, NodeState::Dead);
    assert_eq!(shm.heartbeat(1, quiet).unwrap_err(), ShmError::NodeDead);

    // Keep going for many timeouts: the beating node stays live.
    for _ in 0..50 {
        t += 30 * MS;
        shm.heartbeat(2, busy).unwrap();
        assert!(mon.observe(&shm, t).is_empty());
    }
    assert_eq!(shm.live_nodes().iter().collect::<Vec<_>>(), vec![2]);
}

#[test]
fn exactly_at_the_timeout_is_still_alive() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    shm.join(0, &facts("a")).unwrap();
    let mut mon = LivenessMonitor::new(None);
    mon.observe(&shm, 1000);
    assert!(mon.observe(&shm, 1000 + TIMEOUT_NS).is_empty());
    assert_eq!(mon.observe(&shm, 1001 + TIMEOUT_NS).len(), 1);
}

#[test]
fn leave_rejoin_and_deaths_seen_elsewhere_are_reported() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let mut mon = LivenessMonitor::new(None);
    assert!(mon.observe(&shm, 0).is_empty());

    let g1 = shm.join(3, &facts("a")).unwrap();
    assert_eq!(
        mon.observe(&shm, 1).as_slice(),
        &[ev(3, g1, EventKind::Joined)]
    );
    shm.leave(3, g1).unwrap();
    assert_eq!(
        mon.observe(&shm, 2).as_slice(),
        &[ev(3, g1, EventKind::Left)]
    );
    assert!(mon.observe(&shm, 3).is_empty());

    // A restart between two observations: the old incarnation died, the
    // new one joined.
    let g2 = shm.join(3, &facts("a")).unwrap();
    assert_eq!(
        mon.observe(&shm, 4).as_slice(),
        &[ev(3, g2, EventKind::Joined)]
    );
    let g3 = shm.join(3, &facts("a")).unwrap();
    assert_eq!(
        mon.observe(&shm, 5).as_slice(),
        &[ev(3, g2, DIED_ELSEWHERE), ev(3, g3, EventKind::Joined)]
    );

    // Another observer declares it dead; this one hears about it.
    let mut other = LivenessMonitor::new(None);
    other.observe(&shm, 1_000_000);
    assert_eq!(
        other.observe(&shm, 2_000_000 + TIMEOUT_NS).as_slice(),
        &[ev(3, g3, DIED_HERE)]
    );
    assert_eq!(
        mon.observe(&shm, 6).as_slice(),
        &[ev(3, g3, DIED_ELSEWHERE)]
    );
}

#[test]
fn two_observers_declare_a_death_only_once() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let g = shm.join(0, &facts("a")).unwrap();
    let mut a = LivenessMonitor::new(Some(1));
    let mut b = LivenessMonitor::new(Some(2));
    a.observe(&shm, 0);
    // Clocks of different nodes have nothing in common.
    b.observe(&shm, 987_654_321);
    let ea = a.observe(&shm, TIMEOUT_NS + 1);
    let eb = b.observe(&shm, 987_654_321 + TIMEOUT_NS + 1);
    assert_eq!(ea.as_slice(), &[ev(0, g, DIED_HERE)]);
    assert_eq!(eb.as_slice(), &[ev(0, g, DIED_ELSEWHERE)]);
}

#[test]
fn a_node_never_declares_itself_dead() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    shm.join(4, &facts("me")).unwrap();
    let mut mon = LivenessMonitor::new(Some(4));
    mon.observe(&shm, 0);
    assert!(mon.observe(&shm, 10 * TIMEOUT_NS).is_empty());
    assert_eq!(shm.node(4).unwrap().state, NodeState::Live);
}

#[test]
fn a_rejoin_after_the_observer_last_looked_is_not_declared_dead() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    shm.join(0, &facts("a")).unwrap();
    let mut mon = LivenessMonitor::new(None);
    mon.observe(&shm, 0);
    // The node restarts just before the verdict: its status word changed,
    // so the timeout starts afresh instead of hitting the new incarnation.
    let g2 = shm.join(0, &facts("a")).unwrap();
    let evs = mon.observe(&shm, TIMEOUT_NS + 1);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs.as_slice()[1], ev(0, g2, EventKind::Joined));
    assert_eq!(shm.node(0).unwrap().state, NodeState::Live);
}

#[test]
fn an_entry_stuck_joining_is_declared_dead_without_events() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    // A node that crashed halfway through its join.
    let status = mem.region().atomic_u64(4096).unwrap();
    status.store(1 << 32 | NodeState::Joining as u64, Ordering::SeqCst);
    let info = shm.node(0).unwrap();
    assert_eq!((info.state, info.doorbell_peer), (NodeState::Joining, None));
    let mut mon = LivenessMonitor::new(None);
    assert!(mon.observe(&shm, 0).is_empty());
    assert!(mon.observe(&shm, TIMEOUT_NS + 1).is_empty());
    assert_eq!(shm.node(0).unwrap().state, NodeState::Dead);
    // Its id can be joined again with a newer generation.
    assert_eq!(shm.join(0, &facts("b")).unwrap(), Generation(2));
}

#[test]
fn a_clock_going_backwards_does_not_kill() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    shm.join(0, &facts("a")).unwrap();
    let mut mon = LivenessMonitor::new(None);
    mon.observe(&shm, u64::MAX - 5);
    assert!(mon.observe(&shm, 0).is_empty());
    assert_eq!(shm.live_nodes().len(), 1);
}
