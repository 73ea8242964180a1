//! The DSM protocol engine on simulated clusters: coherence under random
//! schedules, migration without directory changes, and hostile inputs.
#![cfg(feature = "std")]

mod dsm_support;

use dsm_support::{MemStore, Op, Rng, Sim};
use shm_ext::dsm::addr::DIRECTORY_SLICE;
use shm_ext::dsm::{
    Access, Action, AddressGenerator, DsmError, Engine, Event, GlobalAddr, GlobalRange, Kind,
    Message, NO_NODE, PAGE_SIZE, PageBuf, Rights, Space, directory,
};

fn range(node: u16, pages: u128) -> GlobalRange {
    AddressGenerator::new(node, Space::Data)
        .unwrap()
        .allocate(pages * PAGE_SIZE)
        .unwrap()
}

/// 4 to 8 nodes, two ranges with different responsible nodes and one
/// directory page, random ops and random delivery order, over many seeds:
/// every completed read returns the model's value (the latest completed
/// write in the one global order of completions), and after every step at
/// most one node may write a page, and every reader holds the model bytes.
#[test]
fn random_schedules_stay_sequentially_consistent() {
    for seed in 0..160u64 {
        let nodes = 4 + (seed % 5) as u16;
        let a = range(0, 3);
        let b = range(nodes - 1, 2);
        let dir_page = GlobalAddr(DIRECTORY_SLICE); // node 1's directory slice
        let mut sim = Sim::new(nodes, &[(a, 0), (b, nodes - 1)], &[dir_page]);
        let mut rng = Rng::new(seed);
        let writes = [10, 50, 90][(seed % 3) as usize];
        for _ in 0..1200 {
            sim.step(&mut rng, writes);
        }
        sim.settle(&mut rng);
        assert!(
            sim.completed > 200,
            "seed {seed}: only {} ops completed",
            sim.completed
        );
    }
}

/// Everyone hammers one page: the responsible node's queue serialises
/// transactions that cross each other's invalidations.
#[test]
fn contention_on_one_page_settles() {
    for seed in 0..40u64 {
        let nodes = 8;
        let a = range(3, 1);
        let mut sim = Sim::new(nodes, &[(a, 3)], &[]);
        let mut rng = Rng::new(1000 + seed);
        for _ in 0..2000 {
            sim.step(&mut rng, 40);
        }
        sim.settle(&mut rng);
    }
}

/// Runs the network of `sim` until quiet, in a random order.
fn run(sim: &mut Sim, seed: u64) {
    sim.settle(&mut Rng::new(seed));
}

#[test]
fn a_page_migrates_while_its_directory_entry_stays_byte_identical() {
    let mut store = MemStore::new(0);
    directory::format_root(&mut store).unwrap();
    let r = range(0, 2);
    directory::insert(&mut store, r, 0).unwrap();
    let before = store.pages.clone();

    let mut sim = Sim::new(3, &[(r, 0)], &[]);
    let page = r.start();
    sim.start(
        1,
        Op {
            page,
            word: 0,
            write: Some(11),
        },
    );
    run(&mut sim, 1);
    assert_eq!(sim.engines[0].page_state(page).unwrap().owner, Some(1));
    sim.start(
        2,
        Op {
            page,
            word: 1,
            write: Some(22),
        },
    );
    run(&mut sim, 2);
    sim.start(
        1,
        Op {
            page,
            word: 0,
            write: None,
        },
    );
    run(&mut sim, 3);
    let st = sim.engines[0].page_state(page).unwrap();
    assert_eq!(st.owner, Some(2));
    assert!(st.copyset.contains(1) && st.copyset.len() == 1);
    assert_eq!(st.version, 2);
    // Node 1 holds the page read-only with both writes, node 2 downgraded.
    let p = sim.engines[1].page(page).unwrap();
    assert_eq!(
        &p.0[..16],
        &[11, 0, 0, 0, 0, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(sim.engines[2].cache().rights(page), Rights::Read);
    // Ownership moved twice; the directory was never touched.
    assert_eq!(store.pages, before);
    let (found, resp, _) = directory::resolve(&mut store, page).unwrap();
    assert_eq!((found, resp), (r, 0));
}

#[test]
fn the_responsible_node_as_owner_and_requester() {
    let r = range(0, 1);
    let mut sim = Sim::new(2, &[(r, 0)], &[]);
    let page = r.start();
    // Node 0 is responsible, first toucher (owner) and writer: no messages.
    sim.start(
        0,
        Op {
            page,
            word: 0,
            write: Some(5),
        },
    );
    assert!(sim.net.is_empty() && sim.blocked[0].is_none());
    sim.start(
        1,
        Op {
            page,
            word: 0,
            write: None,
        },
    );
    run(&mut sim, 4);
    // Node 0 upgrades its read copy back to write: invalidates node 1.
    sim.start(
        0,
        Op {
            page,
            word: 0,
            write: Some(6),
        },
    );
    run(&mut sim, 5);
    assert_eq!(sim.engines[1].cache().rights(page), Rights::None);
    assert_eq!(sim.engines[0].page_state(page).unwrap().copyset.len(), 0);
}

fn actions(e: &mut Engine, ev: Event) -> (Result<(), DsmError>, Vec<Action>) {
    let mut out = Vec::new();
    let r = e.handle(ev, &mut out);
    (r, out)
}

#[test]
fn hostile_ranges_get_named_errors() {
    let mut e = Engine::new(1, 4).unwrap();
    // A fault on an address no known range holds.
    let nowhere = GlobalAddr(1 << 100);
    let (r, out) = actions(
        &mut e,
        Event::Fault {
            addr: nowhere,
            access: Access::Read,
        },
    );
    assert_eq!(r, Err(DsmError::NotAllocated));
    assert!(out.is_empty());
    // Unaligned and empty ranges.
    assert_eq!(
        GlobalRange::new(GlobalAddr((1 << 64) + 1), PAGE_SIZE),
        Err(DsmError::Unaligned)
    );
    assert_eq!(
        GlobalRange::new(GlobalAddr(1 << 64), 100),
        Err(DsmError::Unaligned)
    );
    assert_eq!(
        GlobalRange::new(GlobalAddr(1 << 64), 0),
        Err(DsmError::Unaligned)
    );
    assert_eq!(
        AddressGenerator::new(0, Space::Data)
            .unwrap()
            .allocate(4095),
        Err(DsmError::Unaligned)
    );
    // A range owned by nobody cannot be mapped.
    let r = range(2, 1);
    assert_eq!(e.map_range(r, NO_NODE), Err(DsmError::Unowned));
    // A node outside the cluster may be a lost one (its ranges pass to the
    // next live node); past the largest cluster it is no node at all.
    assert_eq!(e.map_range(r, 9), Ok(()));
    assert_eq!(e.map_range(r, 64), Err(DsmError::NoSuchNode));
    let mut store = MemStore::new(0);
    directory::format_root(&mut store).unwrap();
    directory::insert(&mut store, r, NO_NODE).unwrap();
    assert_eq!(
        directory::resolve(&mut store, r.start()),
        Err(DsmError::Unowned)
    );
    assert_eq!(
        directory::resolve(&mut store, GlobalAddr(r.last().0 + 1)),
        Err(DsmError::NotAllocated)
    );
    // Data ranges may not sit in the directory space.
    let low = GlobalRange::new(GlobalAddr(PAGE_SIZE), PAGE_SIZE).unwrap();
    assert_eq!(e.create_range(low), Err(DsmError::OutOfRange));
    assert_eq!(
        directory::insert(&mut store, low, 0),
        Err(DsmError::OutOfRange)
    );
    // A message from outside the cluster.
    let msg = Message::new(Kind::ReadRequest, 1, 1, r.start());
    let (res, _) = actions(&mut e, Event::Message { from: 7, msg });
    assert_eq!(res, Err(DsmError::NoSuchNode));
}

#[test]
fn requests_for_freed_or_unknown_pages_are_refused() {
    let r = range(0, 2);
    let mut sim = Sim::new(3, &[(r, 0)], &[]);
    let page = r.start();
    sim.start(
        1,
        Op {
            page,
            word: 0,
            write: Some(1),
        },
    );
    sim.start(
        2,
        Op {
            page,
            word: 0,
            write: None,
        },
    );
    run(&mut sim, 7);
    // Busy while a transaction runs, then freed: every copy dropped.
    let mut out = Vec::new();
    let mut e1_out = Vec::new();
    sim.engines[1]
        .handle(
            Event::Fault {
                addr: r.page(1).unwrap(),
                access: Access::Write,
            },
            &mut e1_out,
        )
        .unwrap();
    let Action::Send { to: 0, msg } = e1_out.remove(0) else {
        panic!("request expected")
    };
    sim.engines[0]
        .handle(Event::Message { from: 1, msg }, &mut out)
        .unwrap();
    let mut busy = Vec::new();
    assert_eq!(sim.engines[0].free_range(r, &mut busy), Err(DsmError::Busy));
    // Finish that transaction by hand: the WriteCopy goes to node 1.
    for a in out.drain(..) {
        if let Action::Send { to, msg } = a {
            assert_eq!(to, 1);
            let mut o = Vec::new();
            sim.engines[1]
                .handle(Event::Message { from: 0, msg }, &mut o)
                .unwrap();
            for a in o {
                if let Action::Send { to: 0, msg } = a {
                    sim.engines[0]
                        .handle(Event::Message { from: 1, msg }, &mut Vec::new())
                        .unwrap();
                }
            }
        }
    }
    let mut drops = Vec::new();
    sim.engines[0].free_range(r, &mut drops).unwrap();
    for a in drops {
        if let Action::Send { to, msg } = a {
            sim.engines[usize::from(to)]
                .handle(Event::Message { from: 0, msg }, &mut Vec::new())
                .unwrap();
        }
    }
    for e in &sim.engines {
        assert!(e.cache().is_empty(), "node {} kept a freed page", e.node());
    }
    // A later fault is refused with a Nack: NotAllocated.
    let mut o = Vec::new();
    sim.engines[2]
        .handle(
            Event::Fault {
                addr: page,
                access: Access::Read,
            },
            &mut o,
        )
        .unwrap();
    let Action::Send { to: 0, msg } = o.remove(0) else {
        panic!()
    };
    let mut o = Vec::new();
    sim.engines[0]
        .handle(Event::Message { from: 2, msg }, &mut o)
        .unwrap();
    let Action::Send { to: 2, msg } = o.remove(0) else {
        panic!()
    };
    assert_eq!(msg.kind, Kind::Nack);
    let mut o = Vec::new();
    sim.engines[2]
        .handle(Event::Message { from: 0, msg }, &mut o)
        .unwrap();
    assert!(matches!(
        o[..],
        [Action::Resume {
            result: Err(DsmError::NotAllocated),
            ..
        }]
    ));
    assert_eq!(
        sim.engines[0].free_range(r, &mut Vec::new()),
        Err(DsmError::NotAllocated)
    );
}

#[test]
fn forged_and_stale_messages_are_refused_without_harm() {
    let r = range(0, 1);
    let mut sim = Sim::new(3, &[(r, 0)], &[]);
    let page = r.start();
    sim.start(
        1,
        Op {
            page,
            word: 0,
            write: Some(9),
        },
    );
    run(&mut sim, 8);
    let forged = |kind| {
        let mut m = Message::new(kind, 2, 77, page);
        if kind == Kind::WriteCopy || kind == Kind::ReadCopy {
            m.data = Some(PageBuf::zeroed());
        }
        m
    };
    // Node 2 is not responsible: it cannot order node 1 around.
    for kind in [
        Kind::ForwardWrite,
        Kind::ForwardRead,
        Kind::Invalidate,
        Kind::Drop,
    ] {
        let (res, out) = actions(
            &mut sim.engines[1],
            Event::Message {
                from: 2,
                msg: forged(kind),
            },
        );
        assert!(
            matches!(res, Err(DsmError::Unexpected { .. })),
            "{kind:?}: {res:?}"
        );
        assert!(out.is_empty());
    }
    // Answers to transactions that do not exist.
    for kind in [
        Kind::InvalidateAck,
        Kind::Confirm,
        Kind::WriteCopy,
        Kind::ReadCopy,
        Kind::Nack,
    ] {
        let mut m = forged(kind);
        if kind == Kind::Nack {
            m.reason = DsmError::NotAllocated.code();
        }
        let to = if matches!(kind, Kind::InvalidateAck | Kind::Confirm) {
            0
        } else {
            1
        };
        let (res, _) = actions(&mut sim.engines[to], Event::Message { from: 2, msg: m });
        assert!(
            matches!(res, Err(DsmError::Unexpected { .. })),
            "{kind:?}: {res:?}"
        );
    }
    // A request on behalf of someone else.
    let (res, _) = actions(
        &mut sim.engines[0],
        Event::Message {
            from: 2,
            msg: Message::new(Kind::WriteRequest, 1, 5, page),
        },
    );
    assert!(matches!(res, Err(DsmError::Unexpected { .. })));
    // Nothing changed: node 1 still owns and writes the page.
    assert_eq!(sim.engines[1].cache().rights(page), Rights::Write);
    sim.start(
        2,
        Op {
            page,
            word: 0,
            write: None,
        },
    );
    run(&mut sim, 9);
    assert_eq!(sim.engines[0].page_state(page).unwrap().owner, Some(1));
}

#[test]
fn evicting_a_read_copy_keeps_coherence() {
    let r = range(1, 1);
    let mut sim = Sim::new(3, &[(r, 1)], &[]);
    let page = r.start();
    sim.start(
        0,
        Op {
            page,
            word: 2,
            write: Some(3),
        },
    );
    sim.start(
        2,
        Op {
            page,
            word: 2,
            write: None,
        },
    );
    run(&mut sim, 10);
    assert!(matches!(sim.evict(2, page)[..], [Action::Unmap { .. }]));
    // The owner keeps its page when asked to evict.
    assert!(sim.evict(0, page).is_empty());
    // A write now invalidates node 2, which no longer has a copy: it acks.
    sim.start(
        1,
        Op {
            page,
            word: 2,
            write: Some(4),
        },
    );
    run(&mut sim, 11);
    sim.start(
        2,
        Op {
            page,
            word: 2,
            write: None,
        },
    );
    run(&mut sim, 12);
}
