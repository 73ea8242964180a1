//! Node table: join, heartbeat, leave, generations, reads, doorbells, reports.
#![cfg(feature = "std")]

mod common;

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use common::{SIZE, attach, facts};
use shm_ext::format::{NODE_ENTRY_LEN, entry};
use shm_ext::host::HeapRegion;
use shm_ext::{
    Doorbell, FreeSpace, Generation, NoDoorbell, NodeFacts, NodeState, ShmError, Snapshot,
};

#[test]
fn join_makes_a_node_live_with_its_facts() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let before = shm.node(4).unwrap();
    assert_eq!(before.state, NodeState::Unused);
    assert_eq!(before.generation, Generation(0));

    let g = shm.join(4, &facts("ping")).unwrap();
    assert_eq!(g, Generation(1));
    let n = shm.node(4).unwrap();
    assert_eq!(n.id, 4);
    assert_eq!(n.state, NodeState::Live);
    assert_eq!(n.generation, g);
    assert_eq!(n.heartbeat, 0);
    assert_eq!(n.doorbell_peer, Some(7));
    assert_eq!(n.memory_mib, 256);
    assert_eq!(n.app_count, 1);
    assert_eq!(n.label.as_str(), "ping");
    assert!(shm.live_nodes().contains(4));
    assert_eq!(shm.live_nodes().len(), 1);
}

#[test]
fn heartbeat_counts_and_leave_ends_it() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let g = shm.join(0, &facts("a")).unwrap();
    for i in 1..=5 {
        assert_eq!(shm.heartbeat(0, g).unwrap(), i);
    }
    assert_eq!(shm.node(0).unwrap().heartbeat, 5);
    shm.leave(0, g).unwrap();
    assert_eq!(shm.node(0).unwrap().state, NodeState::Left);
    assert!(shm.live_nodes().is_empty());
    assert_eq!(shm.heartbeat(0, g).unwrap_err(), ShmError::NotLive);
    assert_eq!(shm.leave(0, g).unwrap_err(), ShmError::NotLive);
}

#[test]
fn rejoin_takes_a_higher_generation_and_fences_the_old_one() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let g1 = shm.join(2, &facts("first")).unwrap();
    shm.heartbeat(2, g1).unwrap();
    // The node reboots and joins again without having left.
    let g2 = shm.join(2, &facts("second")).unwrap();
    assert!(g2 > g1);
    assert_eq!(shm.heartbeat(2, g1).unwrap_err(), ShmError::StaleGeneration);
    assert_eq!(shm.leave(2, g1).unwrap_err(), ShmError::StaleGeneration);
    assert_eq!(shm.heartbeat(2, g2).unwrap(), 1, "heartbeat resets on join");
    let n = shm.node(2).unwrap();
    assert_eq!((n.generation, n.label.as_str()), (g2, "second"));
    // After leaving, joining again goes on counting.
    shm.leave(2, g2).unwrap();
    assert_eq!(shm.join(2, &facts("third")).unwrap(), Generation(3));
}

#[test]
fn a_dead_node_must_rejoin() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let g = shm.join(1, &facts("a")).unwrap();
    // Declared dead (as an observer would: CAS on the status word).
    let status = mem.region().atomic_u64(4096 + NODE_ENTRY_LEN).unwrap();
    status.store(
        u64::from(g.0) << 32 | NodeState::Dead as u64,
        Ordering::SeqCst,
    );
    assert_eq!(shm.heartbeat(1, g).unwrap_err(), ShmError::NodeDead);
    assert_eq!(shm.leave(1, g).unwrap_err(), ShmError::NodeDead);
    let g2 = shm.join(1, &facts("a")).unwrap();
    assert_eq!(g2, g.next());
    assert!(shm.heartbeat(1, g2).is_ok());
}

#[test]
fn generation_wraps_skipping_zero() {
    assert_eq!(Generation(u32::MAX).next(), Generation(1));
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let status = mem.region().atomic_u64(4096).unwrap();
    status.store(
        u64::from(u32::MAX) << 32 | NodeState::Left as u64,
        Ordering::SeqCst,
    );
    assert_eq!(shm.join(0, &facts("w")).unwrap(), Generation(1));
}

#[test]
fn ids_and_arguments_are_checked() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    assert_eq!(shm.join(32, &facts("x")).unwrap_err(), ShmError::NoSuchNode);
    assert_eq!(
        shm.join(u16::MAX, &facts("x")).unwrap_err(),
        ShmError::NoSuchNode
    );
    assert_eq!(shm.node(32).unwrap_err(), ShmError::NoSuchNode);
    assert_eq!(
        shm.heartbeat(40, Generation(1)).unwrap_err(),
        ShmError::NoSuchNode
    );
    let long = "x".repeat(49);
    assert!(matches!(
        shm.join(0, &facts(&long)),
        Err(ShmError::InvalidArgument { .. })
    ));
    // The refused join did not touch the entry.
    assert_eq!(shm.node(0).unwrap().state, NodeState::Unused);
    // 48 bytes of multi-byte UTF-8 is fine.
    let label = "é".repeat(24);
    shm.join(0, &facts(&label)).unwrap();
    assert_eq!(shm.node(0).unwrap().label.as_str(), label);
}

#[test]
fn join_free_hands_out_distinct_entries_until_full() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let mut gens = Vec::new();
    for i in 0..32u16 {
        let (id, g) = shm.join_free(&facts("f")).unwrap();
        assert_eq!(id, i);
        gens.push(g);
    }
    assert_eq!(
        shm.join_free(&facts("f")).unwrap_err(),
        ShmError::NodeTableFull
    );
    shm.leave(9, gens[9]).unwrap();
    assert_eq!(shm.join_free(&facts("f")).unwrap(), (9, Generation(2)));
}

#[test]
fn threads_racing_for_free_entries_get_distinct_ones() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let ids: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..4)
                        .map(|_| shm.join_free(&facts("t")).unwrap().0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (0..32).collect::<Vec<_>>());
    assert_eq!(shm.live_nodes().len(), 32);
}

#[test]
fn corrupt_entries_give_named_errors() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let r = mem.region();
    let base = 4096usize;
    let e = |id: usize, off: usize| base + id * NODE_ENTRY_LEN + off;
    // Unknown state.
    r.write_bytes(e(0, entry::STATUS), &9u32.to_le_bytes())
        .unwrap();
    assert_eq!(
        shm.node(0).unwrap_err(),
        ShmError::Corrupt { what: "node state" }
    );
    assert_eq!(
        shm.heartbeat(0, Generation(0)).unwrap_err(),
        ShmError::Corrupt { what: "node state" }
    );
    // Live with generation 0.
    r.write_bytes(e(1, entry::STATUS), &2u32.to_le_bytes())
        .unwrap();
    assert_eq!(
        shm.node(1).unwrap_err(),
        ShmError::Corrupt {
            what: "node generation"
        }
    );
    // A doorbell peer beyond u16.
    shm.join(2, &facts("p")).unwrap();
    r.write_bytes(e(2, entry::DOORBELL_PEER), &70000u32.to_le_bytes())
        .unwrap();
    assert_eq!(
        shm.node(2).unwrap_err(),
        ShmError::Corrupt {
            what: "node doorbell peer"
        }
    );
    // Label length and contents.
    shm.join(3, &facts("p")).unwrap();
    r.write_bytes(e(3, entry::LABEL_LEN), &u32::MAX.to_le_bytes())
        .unwrap();
    assert_eq!(
        shm.node(3).unwrap_err(),
        ShmError::Corrupt {
            what: "node label length"
        }
    );
    r.write_bytes(e(3, entry::LABEL_LEN), &2u32.to_le_bytes())
        .unwrap();
    r.write_bytes(e(3, entry::LABEL), &[0xc3, 0x28]).unwrap();
    assert_eq!(
        shm.node(3).unwrap_err(),
        ShmError::Corrupt { what: "node label" }
    );
    // The corrupt entries are not live; a join repairs them.
    assert_eq!(shm.live_nodes().len(), 2);
    shm.join(0, &facts("fixed")).unwrap();
    assert_eq!(shm.node(0).unwrap().label.as_str(), "fixed");
    // The snapshot reports them without failing as a whole.
    let snap = shm.snapshot();
    assert_eq!(
        snap.nodes.as_slice()[1].error,
        Some(ShmError::Corrupt {
            what: "node generation"
        })
    );
    assert!(snap.to_string().contains("unreadable"));
}

#[derive(Default)]
struct FakeDoorbell(RefCell<Vec<(u16, u16)>>);

impl Doorbell for FakeDoorbell {
    fn ring(&self, peer: u16, vector: u16) {
        self.0.borrow_mut().push((peer, vector));
    }

    fn local_peer(&self) -> Option<u16> {
        Some(0)
    }
}

#[test]
fn ring_uses_the_nodes_doorbell_peer() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let db = FakeDoorbell::default();
    shm.join(5, &facts("a")).unwrap();
    shm.ring(&db, 5, 3).unwrap();
    assert_eq!(*db.0.borrow(), vec![(7, 3)]);
    assert_eq!(shm.ring(&db, 6, 0).unwrap_err(), ShmError::NotLive);
    let plain = NodeFacts {
        doorbell_peer: None,
        ..facts("plain")
    };
    shm.join(6, &plain).unwrap();
    // A node without a doorbell peer is rung by its pending bits alone.
    assert_eq!(shm.ring(&db, 6, 2), Ok(()));
    assert_eq!(shm.take_pending(6), Ok(1 << 2));
    assert_eq!(shm.take_pending(6), Ok(0), "taking clears");
    assert!(matches!(
        shm.ring(&db, 6, 32),
        Err(ShmError::InvalidArgument { .. })
    ));
    assert_eq!(shm.ring(&NoDoorbell, 5, 0), Ok(()));
}

#[test]
fn snapshot_reads_displays_and_serialises() {
    let mem = HeapRegion::new(SIZE);
    assert_eq!(
        Snapshot::read(mem.region()).unwrap_err(),
        ShmError::NotInitialized
    );
    let shm = attach(mem.region()).unwrap();
    let g = shm.join(0, &facts("ping")).unwrap();
    shm.heartbeat(0, g).unwrap();
    shm.join(3, &facts("pong")).unwrap();
    let snap = Snapshot::read(mem.region()).unwrap();
    assert_eq!(snap.nodes.as_slice().len(), 32);
    assert_eq!(snap.nodes.as_slice()[0].info.unwrap().heartbeat, 1);

    let text = snap.to_string();
    assert!(text.contains("format v1"), "{text}");
    assert!(text.contains("node table"), "{text}");
    assert!(text.contains("ping") && text.contains("pong"), "{text}");
    assert!(text.contains("30 entries unused"), "{text}");

    let json = serde_json::to_value(snap).unwrap();
    assert_eq!(json["superblock"]["max_nodes"], 32);
    assert_eq!(json["superblock"]["layout"]["node_table"]["offset"], 4096);
    assert_eq!(json["nodes"][3]["info"]["label"], "pong");
    assert_eq!(json["nodes"][3]["info"]["state"], "Live");
    assert_eq!(json["nodes"].as_array().unwrap().len(), 32);
}

#[test]
fn progress_is_per_generation_and_reset_by_rejoin() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let g1 = shm.join(2, &facts("a")).unwrap();
    assert_eq!(shm.progress(2), Ok(0));
    shm.set_progress(2, g1, 7).unwrap();
    assert_eq!(shm.progress(2), Ok(7));
    shm.ring(&NoDoorbell, 2, 1).unwrap();
    let g2 = shm.join(2, &facts("a")).unwrap();
    assert_eq!(shm.progress(2), Ok(0), "a new incarnation starts from zero");
    assert_eq!(shm.take_pending(2), Ok(0), "and with no doorbell pending");
    assert_eq!(
        shm.set_progress(2, g1, 9).unwrap_err(),
        ShmError::StaleGeneration
    );
    shm.set_progress(2, g2, 1).unwrap();
}

#[test]
fn free_space_is_published_per_generation_and_reset_by_rejoin() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    let g1 = shm.join(1, &facts("a")).unwrap();
    assert_eq!(shm.free_space(1), Ok(FreeSpace::default()));
    let free = FreeSpace {
        ram_pages: 300,
        disk_pages: 65_000,
    };
    shm.publish_free(1, g1, free).unwrap();
    assert_eq!(shm.free_space(1), Ok(free));
    assert_eq!(shm.node(1).unwrap().dsm_free, free, "in the node's info");
    let g2 = shm.join(1, &facts("a")).unwrap();
    assert_eq!(
        shm.free_space(1),
        Ok(FreeSpace::default()),
        "zeroed at join"
    );
    assert_eq!(
        shm.publish_free(1, g1, free).unwrap_err(),
        ShmError::StaleGeneration
    );
    shm.publish_free(1, g2, free).unwrap();
    assert!(shm.free_space(99).is_err(), "no such node entry");
}
