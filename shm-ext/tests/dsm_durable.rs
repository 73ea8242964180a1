//! The DSM's disks on simulated clusters: paging under a RAM budget,
//! sync and whole-cluster restart, the loss of a node and its disk,
//! reformatted disks, and the migration controller with and without groups.
#![cfg(feature = "std")]

mod dsm_support;

use dsm_support::{Op, Rng, Sim};
use shm_ext::dsm::{AddressGenerator, Engine, GlobalRange, MemDisk, PAGE_SIZE, Policy, Space};
use shm_ext::{FreeSpace, NodeSet};

fn range(node: u16, pages: u128) -> GlobalRange {
    AddressGenerator::new(node, Space::Data)
        .unwrap()
        .allocate(pages * PAGE_SIZE)
        .unwrap()
}

/// Random ops until `steps` are done, then quiet.
fn churn(sim: &mut Sim, rng: &mut Rng, steps: usize, writes: u64) {
    for _ in 0..steps {
        sim.step(rng, writes);
    }
    sim.settle(rng);
}

/// Syncs every range from `node` and runs the network until it reports.
fn sync_all(sim: &mut Sim, rng: &mut Rng, node: u16) {
    for (r, _) in sim.ranges.clone() {
        let id = sim.sync(node, r);
        sim.settle(rng);
        let done = sim
            .synced
            .iter()
            .find(|(n, i, _)| *n == node && *i == id)
            .unwrap_or_else(|| panic!("sync {id} of {r:?} never finished"));
        done.2.unwrap();
    }
}

/// Reads every word the model knows from random live nodes and compares.
fn read_everything(sim: &mut Sim, rng: &mut Rng) {
    for page in sim.pages.clone() {
        for word in 0..4 {
            let node = sim.idle_live(rng).expect("a live node");
            sim.start(
                node,
                Op {
                    page,
                    word,
                    write: None,
                },
            );
            sim.settle(rng);
        }
    }
}

/// Pages a node holds in RAM never exceed its budget for long, and pages
/// that went to disk come back with the model's bytes (the read check is
/// in `Sim`), under random schedules on 4 to 6 nodes.
#[test]
fn paging_under_a_tiny_ram_budget_stays_coherent() {
    for seed in 0..200u64 {
        if std::env::var_os("DSM_TRACE").is_some() {
            eprintln!("seed {seed}");
        }
        let nodes = 4 + (seed % 3) as u16;
        let a = range(0, 6);
        let b = range(nodes - 1, 5);
        let mut sim = Sim::new(nodes, &[(a, 0), (b, nodes - 1)], &[]).with_disks(2, 2);
        let mut rng = Rng::new(7000 + seed);
        churn(&mut sim, &mut rng, 800, [20, 60][(seed % 2) as usize]);
        let outs: u64 = sim.engines.iter().map(|e| e.stats().page_outs).sum();
        let ins: u64 = sim.engines.iter().map(|e| e.stats().page_ins).sum();
        assert!(
            outs > 0 && ins > 0,
            "seed {seed}: {outs} page-outs, {ins} page-ins"
        );
        for e in &sim.engines {
            assert!(
                e.cache().len() <= 2,
                "seed {seed}: node {} keeps {} pages",
                e.node(),
                e.cache().len()
            );
        }
        read_everything(&mut sim, &mut rng);
    }
}

/// Writes, a sync, every node restarted from its disk: every word reads
/// back as written.
#[test]
fn a_synced_cluster_restarts_from_its_disks() {
    for seed in 0..30u64 {
        let nodes = 3 + (seed % 3) as u16;
        let a = range(1, 4);
        let b = range(nodes - 1, 3);
        let mut sim = Sim::new(nodes, &[(a, 1), (b, nodes - 1)], &[]).with_disks(2, 64);
        let mut rng = Rng::new(9000 + seed);
        churn(&mut sim, &mut rng, 400, 70);
        sync_all(&mut sim, &mut rng, (seed % u64::from(nodes)) as u16);
        sim.restart(&[]);
        read_everything(&mut sim, &mut rng);
        // And the cluster goes on working after the restart.
        churn(&mut sim, &mut rng, 300, 50);
    }
}

/// After a sync one node and its disk are gone: the others read every
/// page, and once the copies are restored every page sits on `copies`
/// live disks.
#[test]
fn losing_a_node_and_its_disk_after_a_sync_loses_no_page() {
    for seed in 0..30u64 {
        let nodes = 3 + (seed % 3) as u16;
        let lost = (seed % u64::from(nodes)) as u16;
        let a = range(0, 4);
        let b = range(1, 3);
        let c = range(nodes - 1, 3);
        let mut sim = Sim::new(nodes, &[(a, 0), (b, 1), (c, nodes - 1)], &[]).with_disks(2, 64);
        let mut rng = Rng::new(11_000 + seed);
        churn(&mut sim, &mut rng, 400, 70);
        sync_all(&mut sim, &mut rng, (lost + 1) % nodes);
        sim.restart(&[lost]);
        read_everything(&mut sim, &mut rng);
        sim.rereplicate();
        sim.settle(&mut rng);
        for page in sim.pages.clone() {
            let copies = sim
                .engines
                .iter()
                .zip(&sim.lost)
                .filter(|(e, l)| !**l && e.disk().is_some_and(|d| d.stamp(page).is_some()))
                .count();
            assert!(copies >= 2, "seed {seed}: {page} on {copies} disks");
        }
    }
}

/// A node whose disk was found damaged and reformatted fetches the pages
/// it is responsible for from the other holders.
#[test]
fn a_reformatted_disk_is_refilled_from_the_replicas() {
    let a = range(2, 4);
    let mut sim = Sim::new(3, &[(a, 2)], &[]).with_disks(2, 64);
    let mut rng = Rng::new(5);
    for i in 0..4 {
        let node = (i % 3) as u16;
        sim.start(
            node,
            Op {
                page: a.page(i).unwrap(),
                word: 1,
                write: Some(100 + i as u64),
            },
        );
        sim.settle(&mut rng);
    }
    sync_all(&mut sim, &mut rng, 0);
    sim.restart(&[]);
    // Node 2's disk is replaced by an empty one, marked incomplete.
    sim.engines[2].set_disk(Box::new(MemDisk::new(u64::MAX)), false);
    read_everything(&mut sim, &mut rng);
    sim.rereplicate();
    sim.settle(&mut rng);
    let d = sim.engines[2].disk().unwrap();
    assert_eq!(d.pages().len(), 4, "node 2's disk holds its range again");
}

/// What node `n` publishes: `disk` free disk pages, `ram` free RAM pages.
fn publish(e: &mut Engine, n: u16, disk: u32, ram: u32) {
    e.set_published(
        n,
        FreeSpace {
            ram_pages: ram,
            disk_pages: disk,
        },
    );
}

fn set(nodes: &[u16]) -> NodeSet {
    let mut s = NodeSet::default();
    for &n in nodes {
        s.insert(n);
    }
    s
}

/// The policy controller places a new range's copies from what the nodes
/// publish: a node whose free disk cannot take the range is passed over,
/// then the creator's group comes first, then the most free disk.
#[test]
fn the_policy_controller_places_copies_on_disks_with_room() {
    let engine = |groups: Vec<u16>, copies: u16| {
        let mut e = Engine::new(0, 4).unwrap();
        e.set_policy(Policy {
            copies,
            groups,
            ..Policy::default()
        });
        publish(&mut e, 1, 5, 100);
        publish(&mut e, 2, 1000, 100);
        publish(&mut e, 3, 4000, 100);
        e
    };
    // Node 1 (next in ring order) has room for 5 pages only.
    assert_eq!(engine(vec![], 2).choose_replicas(6), set(&[3]));
    assert_eq!(engine(vec![], 3).choose_replicas(6), set(&[2, 3]));
    assert_eq!(engine(vec![], 2).choose_replicas(4), set(&[3]));
    // The creator's group first among the nodes with room...
    assert_eq!(engine(vec![0, 1, 0, 1], 2).choose_replicas(6), set(&[2]));
    // ...but not a group member without room.
    assert_eq!(engine(vec![0, 0, 1, 1], 2).choose_replicas(6), set(&[3]));
    // A node that published nothing is the last resort.
    let mut e = Engine::new(0, 3).unwrap();
    publish(&mut e, 1, 50, 0);
    assert_eq!(e.choose_replicas(8), set(&[1]));
    assert_eq!(Engine::new(0, 3).unwrap().choose_replicas(8), set(&[1]));
    // One copy: the responsible node's disk alone.
    assert_eq!(engine(vec![], 1).choose_replicas(6), NodeSet::default());
}

/// A range placed on node 2's disk (not node 1's, next in ring order)
/// has its write-backs there; when node 0 and its disk are lost, node 2's
/// copies serve every page, and restoring copies fills a live disk.
#[test]
fn copies_go_to_the_placed_disk_and_survive_the_responsible_node() {
    for seed in 0..20u64 {
        let a = range(0, 5);
        let mut sim = Sim::new(4, &[(a, 0)], &[]).with_disks(2, 64);
        sim.place(a, set(&[2]));
        let mut rng = Rng::new(13_000 + seed);
        for (i, page) in sim.pages.clone().into_iter().enumerate() {
            let op = Op {
                page,
                word: 2,
                write: Some(500 + i as u64),
            };
            sim.start((i % 4) as u16, op);
            sim.settle(&mut rng);
        }
        churn(&mut sim, &mut rng, 300, 80);
        sync_all(&mut sim, &mut rng, (seed % 4) as u16);
        for page in sim.pages.clone() {
            let on = |n: usize| sim.engines[n].disk().unwrap().stamp(page).is_some();
            assert!(on(0) && on(2), "seed {seed}: {page} not on disks 0 and 2");
            assert!(!on(1) && !on(3), "seed {seed}: {page} on a disk not chosen");
        }
        sim.restart(&[0]);
        read_everything(&mut sim, &mut rng);
        sim.rereplicate();
        sim.settle(&mut rng);
        for page in sim.pages.clone() {
            let copies = (1..4)
                .filter(|&n| sim.engines[n].disk().unwrap().stamp(page).is_some())
                .count();
            assert!(copies >= 2, "seed {seed}: {page} on {copies} live disks");
        }
    }
}

/// The migration controller does not move a page to a node that
/// published a full DSM RAM budget.
#[test]
fn a_page_does_not_migrate_to_a_node_without_free_ram() {
    assert_eq!(owner_after_reads(vec![], &[1], 4, &[]), Some(1));
    assert_eq!(owner_after_reads(vec![], &[1], 4, &[1]), Some(0));
}

/// Reads from one node that keep coming back (its copy evicted each
/// time) move the page's ownership to it.
#[test]
fn a_page_used_only_by_one_node_migrates_to_it() {
    let a = range(0, 1);
    let page = a.start();
    let mut sim = Sim::new(3, &[(a, 0)], &[]);
    let mut rng = Rng::new(1);
    sim.start(
        2,
        Op {
            page,
            word: 0,
            write: Some(7),
        },
    );
    sim.settle(&mut rng);
    assert_eq!(sim.engines[0].page_state(page).unwrap().owner, Some(2));
    for _ in 0..3 {
        sim.start(
            1,
            Op {
                page,
                word: 0,
                write: None,
            },
        );
        sim.settle(&mut rng);
        sim.evict(1, page);
    }
    sim.start(
        1,
        Op {
            page,
            word: 0,
            write: None,
        },
    );
    sim.settle(&mut rng);
    assert_eq!(sim.engines[0].page_state(page).unwrap().owner, Some(1));
    assert!(sim.engines[0].stats().migrations >= 1);
}

/// Runs `reads` rounds of reads by `readers` in turn (each evicting its
/// copy afterwards) on a page node 0 wrote, with nodes `full` publishing
/// no free DSM RAM; returns the final owner.
fn owner_after_reads(
    groups: Vec<u16>,
    readers: &[u16],
    rounds: usize,
    full: &[u16],
) -> Option<u16> {
    let a = range(3, 1);
    let page = a.start();
    let mut sim = Sim::new(4, &[(a, 3)], &[]);
    for e in &mut sim.engines {
        e.set_policy(Policy {
            groups: groups.clone(),
            ..Policy::default()
        });
        for n in 0..4 {
            let ram = if full.contains(&n) { 0 } else { 64 };
            publish(e, n, 1000, ram);
        }
    }
    let mut rng = Rng::new(3);
    sim.start(
        0,
        Op {
            page,
            word: 0,
            write: Some(9),
        },
    );
    sim.settle(&mut rng);
    for _ in 0..rounds {
        for &r in readers {
            sim.start(
                r,
                Op {
                    page,
                    word: 0,
                    write: None,
                },
            );
            sim.settle(&mut rng);
            sim.evict(r, page);
        }
    }
    sim.engines[3].page_state(page).unwrap().owner
}

/// Groups {0} and {1, 2, 3}: nodes 1 and 2 taking turns are one group's
/// demand, so the page moves into their group; without groups neither
/// node alone asks often enough in a row, and the page stays put.
#[test]
fn with_groups_pages_migrate_toward_the_group_that_uses_them() {
    let grouped = owner_after_reads(vec![0, 1, 1, 1], &[1, 2], 3, &[]);
    assert!(
        matches!(grouped, Some(1) | Some(2)),
        "owner {grouped:?}, not in group {{1, 2, 3}}"
    );
    let ungrouped = owner_after_reads(Vec::new(), &[1, 2], 3, &[]);
    assert_eq!(ungrouped, Some(0));
    // Once in the group, turns within the group do not move it out again.
    let stays = owner_after_reads(vec![0, 1, 1, 1], &[1, 2, 3], 4, &[]);
    assert!(matches!(stays, Some(1..=3)));
}

/// A fault whose responsible node has no disk still works, and a sync
/// reports the missing disk by name.
#[test]
fn a_sync_without_disks_names_the_missing_disk() {
    let a = range(0, 2);
    let mut sim = Sim::new(2, &[(a, 0)], &[]);
    let mut rng = Rng::new(2);
    sim.start(
        1,
        Op {
            page: a.start(),
            word: 0,
            write: Some(1),
        },
    );
    sim.settle(&mut rng);
    let id = sim.sync(0, a);
    sim.settle(&mut rng);
    let (_, _, r) = sim.synced.iter().find(|s| s.1 == id).unwrap();
    assert_eq!(*r, Err(shm_ext::dsm::DsmError::NoDisk));
}
