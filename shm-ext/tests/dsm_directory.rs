//! The DSM directory: many ranges grow the tree past one level and shrink
//! it back; lookups find exactly the allocated ranges; corrupt pages
//! (bad checksum, loops, bad children) are refused with a named error.
#![cfg(feature = "std")]

mod dsm_support;

use dsm_support::{MemStore, Rng};
use shm_ext::NodeSet;
use shm_ext::dsm::directory::{self, DIRECTORY_ENTRIES, DirEntry, DirectoryPage};
use shm_ext::dsm::{
    AddressGenerator, DATA_SPACE_START, DsmError, GlobalAddr, GlobalRange, PAGE_SIZE,
    ROOT_DIRECTORY, Space,
};

/// `n` ranges of 1..=4 pages with 0..=2 page gaps between them, shuffled.
fn ranges(n: usize, rng: &mut Rng) -> Vec<GlobalRange> {
    let mut g = AddressGenerator::new(5, Space::Data).unwrap();
    let mut v: Vec<GlobalRange> = (0..n)
        .map(|_| {
            let gap = rng.below(3) as u128;
            if gap > 0 {
                g.allocate(gap * PAGE_SIZE).unwrap();
            }
            g.allocate((1 + rng.below(4) as u128) * PAGE_SIZE).unwrap()
        })
        .collect();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

fn check_exactly(store: &mut MemStore, live: &[GlobalRange]) {
    let mut sorted = live.to_vec();
    sorted.sort();
    let got: Vec<GlobalRange> = directory::ranges(store)
        .unwrap()
        .iter()
        .map(|e| e.range().unwrap())
        .collect();
    assert_eq!(got, sorted);
    for r in &sorted {
        for a in [
            r.start(),
            r.last(),
            GlobalAddr(r.start().0 + (r.last().0 - r.start().0) / 2),
        ] {
            let e = directory::lookup(store, a).unwrap();
            assert_eq!(e.range().unwrap(), *r);
            assert_eq!(e.responsible, 3);
        }
    }
    // The page after each range is allocated only if the next range starts there.
    for w in sorted.windows(2) {
        let after = GlobalAddr(w[0].last().0 + 1);
        if after != w[1].start() {
            assert_eq!(directory::lookup(store, after), Err(DsmError::NotAllocated));
        }
    }
}

#[test]
fn many_ranges_grow_the_tree_and_removal_shrinks_it() {
    let mut rng = Rng::new(42);
    let mut store = MemStore::new(2);
    directory::format_root(&mut store).unwrap();
    assert_eq!(directory::depth(&mut store).unwrap(), 1);
    let all = ranges(4000, &mut rng);
    for r in &all {
        directory::insert(&mut store, *r, 3).unwrap();
    }
    let depth = directory::depth(&mut store).unwrap();
    assert!(
        depth >= 3,
        "4000 ranges in 62-entry pages need 3 levels, got {depth}"
    );
    check_exactly(&mut store, &all);
    // Overlaps are refused: the same range, one inside, one straddling.
    let r = all[17];
    assert_eq!(directory::insert(&mut store, r, 3), Err(DsmError::Overlap));
    let straddle = GlobalRange::new(GlobalAddr(r.start().0 - PAGE_SIZE), 2 * PAGE_SIZE).unwrap();
    assert_eq!(
        directory::insert(&mut store, straddle, 3),
        Err(DsmError::Overlap)
    );
    // Removing only part of a range is refused.
    if r.pages() > 1 {
        let part = GlobalRange::new(r.start(), PAGE_SIZE).unwrap();
        assert_eq!(
            directory::remove(&mut store, part),
            Err(DsmError::NotAllocated)
        );
    }
    // Remove a random half, then the rest.
    let (gone, kept) = all.split_at(all.len() / 2);
    for r in gone {
        assert_eq!(
            directory::remove(&mut store, *r).unwrap().range().unwrap(),
            *r
        );
        assert_eq!(
            directory::lookup(&mut store, r.start()),
            Err(DsmError::NotAllocated)
        );
    }
    check_exactly(&mut store, kept);
    for r in kept {
        directory::remove(&mut store, *r).unwrap();
    }
    check_exactly(&mut store, &[]);
    assert_eq!(directory::depth(&mut store).unwrap(), 1);
    assert_eq!(store.pages.len(), 1, "only the root is left");
    // Removing again: nothing there.
    assert_eq!(
        directory::remove(&mut store, all[0]),
        Err(DsmError::NotAllocated)
    );
}

#[test]
fn interleaved_inserts_and_removes_match_a_model() {
    for seed in 0..2 {
        let mut rng = Rng::new(seed);
        let mut store = MemStore::new(1);
        directory::format_root(&mut store).unwrap();
        let pool = ranges(1500, &mut rng);
        let mut live: Vec<GlobalRange> = Vec::new();
        for step in 0..3000 {
            if live.is_empty() || rng.below(3) != 0 {
                let r = pool[rng.below(pool.len())];
                let res = directory::insert(&mut store, r, 3);
                if live.contains(&r) {
                    assert_eq!(res, Err(DsmError::Overlap));
                } else {
                    res.unwrap();
                    live.push(r);
                }
            } else {
                let r = live.swap_remove(rng.below(live.len()));
                directory::remove(&mut store, r).unwrap();
            }
            if step % 1000 == 999 {
                check_exactly(&mut store, &live);
            }
        }
        check_exactly(&mut store, &live);
    }
}

fn root_leaf(entries: Vec<DirEntry>) -> DirectoryPage {
    DirectoryPage {
        entries,
        ..DirectoryPage::empty_root()
    }
}

fn leaf_entry(first: u128, pages: u128) -> DirEntry {
    DirEntry {
        first: GlobalAddr(first),
        last: GlobalAddr(first + pages * PAGE_SIZE - 1),
        child: GlobalAddr(0),
        responsible: 1,
        replicas: Default::default(),
    }
}

/// The nodes a range's copies were placed on come back from the
/// directory with it, across splits of the tree.
#[test]
fn placed_replicas_are_kept_in_the_directory() {
    let mut store = MemStore::new(0);
    directory::format_root(&mut store).unwrap();
    let mut rng = Rng::new(21);
    let all = ranges(3 * DIRECTORY_ENTRIES, &mut rng);
    for (i, &r) in all.iter().enumerate() {
        directory::insert_placed(&mut store, r, 1, NodeSet(i as u64 % 7)).unwrap();
    }
    assert!(directory::depth(&mut store).unwrap() > 0);
    for (i, &r) in all.iter().enumerate() {
        let found = directory::resolve(&mut store, r.last()).unwrap();
        assert_eq!(found, (r, 1, NodeSet(i as u64 % 7)));
    }
}

fn refused(store: &mut MemStore) -> &'static str {
    match directory::lookup(store, GlobalAddr(DATA_SPACE_START)) {
        Err(DsmError::CorruptDirectory { what }) => what,
        other => panic!("corrupt directory followed: {other:?}"),
    }
}

#[test]
fn corrupt_directory_pages_are_refused() {
    let base = DATA_SPACE_START;
    let mut store = MemStore::new(0);
    // Never formatted: a blank root.
    assert_eq!(refused(&mut store), "magic");
    // A flipped byte.
    let mut img = root_leaf(vec![leaf_entry(base, 1)]).encode();
    img.0[200] ^= 1;
    store.pages.insert(ROOT_DIRECTORY, Box::new(img));
    assert_eq!(refused(&mut store), "checksum");

    let put = |page: DirectoryPage, store: &mut MemStore| {
        store.pages.insert(page.addr, Box::new(page.encode()));
    };
    // Overlapping and unsorted entries, checksums fine.
    put(
        root_leaf(vec![leaf_entry(base, 2), leaf_entry(base + PAGE_SIZE, 1)]),
        &mut store,
    );
    assert_eq!(refused(&mut store), "entries unsorted or overlapping");
    put(
        root_leaf(vec![leaf_entry(base + PAGE_SIZE, 1), leaf_entry(base, 1)]),
        &mut store,
    );
    assert_eq!(refused(&mut store), "entries unsorted or overlapping");
    // Too many entries claimed.
    let mut img = root_leaf(vec![leaf_entry(base, 1)]).encode();
    img.0[14..16].copy_from_slice(&(DIRECTORY_ENTRIES as u16 + 1).to_le_bytes());
    let sum = directory::directory_checksum(&img.0);
    img.0[120..128].copy_from_slice(&sum.to_le_bytes());
    store.pages.insert(ROOT_DIRECTORY, Box::new(img));
    assert_eq!(refused(&mut store), "entry count");

    // Interior roots whose child is itself, out of range, or the root.
    let whole = |child: u128| DirectoryPage {
        level: 1,
        entries: vec![DirEntry {
            first: GlobalAddr(base),
            last: GlobalAddr(u128::MAX),
            child: GlobalAddr(child),
            responsible: 0,
            replicas: Default::default(),
        }],
        ..DirectoryPage::empty_root()
    };
    let mut placed = whole(PAGE_SIZE);
    placed.entries[0].replicas = NodeSet(0b100);
    put(placed, &mut store);
    assert_eq!(refused(&mut store), "replicas in an interior entry");
    for (child, what) in [
        (0, "child address out of range or looping"),
        (DATA_SPACE_START, "child address out of range or looping"),
        (PAGE_SIZE + 1, "child address out of range or looping"),
    ] {
        put(whole(child), &mut store);
        assert_eq!(refused(&mut store), what);
    }
    // A loop through two pages: the child names the root's span but
    // claims the same level as the root, pointing back down to itself.
    let child = GlobalAddr(PAGE_SIZE);
    put(whole(child.0), &mut store);
    let mut looped = whole(child.0);
    looped.addr = child;
    looped.entries[0].child = GlobalAddr(2 * PAGE_SIZE);
    put(looped.clone(), &mut store);
    assert_eq!(
        refused(&mut store),
        "child level is not one below its parent"
    );
    // A child whose span disagrees with its parent entry.
    let mut wrong = root_leaf(vec![leaf_entry(base, 1)]);
    wrong.addr = child;
    wrong.first = GlobalAddr(base + PAGE_SIZE);
    put(wrong, &mut store);
    assert_eq!(refused(&mut store), "entry outside the page's span");
    // A page stored under another address than the one it claims.
    let mut moved = root_leaf(vec![leaf_entry(base, 1)]);
    moved.addr = GlobalAddr(3 * PAGE_SIZE);
    store.pages.insert(child, Box::new(moved.encode()));
    assert_eq!(refused(&mut store), "page address");
    // An empty non-root leaf.
    let mut empty = root_leaf(vec![]);
    empty.addr = child;
    put(empty, &mut store);
    assert_eq!(refused(&mut store), "empty page other than the root");
    // Inserts and removes refuse the same way; nothing is written.
    let before = store.pages.clone();
    let r = GlobalRange::new(GlobalAddr(base), PAGE_SIZE).unwrap();
    assert!(matches!(
        directory::insert(&mut store, r, 1),
        Err(DsmError::CorruptDirectory { .. })
    ));
    assert!(matches!(
        directory::remove(&mut store, r),
        Err(DsmError::CorruptDirectory { .. })
    ));
    assert_eq!(store.pages, before);
}
