//! DSM reports (shm_ext::dsm::report): gathered from engines, encoded,
//! decoded back to the same report; damaged ones refused by name, never a
//! panic; written to and read from report regions; the report pool shared
//! by the nodes, a region each.
#![cfg(feature = "std")]

mod dsm_support;
mod pool_common;

use dsm_support::{Rng, Sim};
use proptest::prelude::*;
use shm_ext::dsm::addr::DIRECTORY_SLICE;
use shm_ext::dsm::report::{
    self, DirectoryCopy, HEADER_LEN, MAX_REPORT_LEN, NodeReport, PAGE_RECORD_LEN, PageRecord,
    RANGE_LEN, REGION_BYTES, REGION_HEADER_LEN, REPORT_POOL, field, report_checksum,
};
use shm_ext::dsm::{
    Access, AddressGenerator, DATA_SPACE_START, DirEntry, DirectoryPage, Engine, Event, GlobalAddr,
    GlobalRange, PAGE_SIZE, ROOT_DIRECTORY, Rights, Space,
};
use shm_ext::host::HeapRegion;
use shm_ext::{NodeSet, ShmError};

fn range(node: u16, pages: u128) -> GlobalRange {
    AddressGenerator::new(node, Space::Data)
        .unwrap()
        .allocate(pages * PAGE_SIZE)
        .unwrap()
}

fn fault(e: &mut Engine, addr: GlobalAddr, access: Access) {
    let mut out = Vec::new();
    e.handle(Event::Fault { addr, access }, &mut out).unwrap();
}

/// Node 0 of 2, responsible for one 4-page range of which it touched two
/// pages, holding the root directory page (naming the range) and the
/// directory lock page (no directory page: left out of reports).
fn engine_with_directory() -> (Engine, GlobalRange) {
    let mut e = Engine::new(0, 2).unwrap();
    let r = range(0, 4);
    e.create_range(r).unwrap();
    fault(&mut e, r.start(), Access::Write);
    fault(&mut e, r.page(2).unwrap(), Access::Read);
    fault(&mut e, ROOT_DIRECTORY, Access::Write);
    let mut root = DirectoryPage::empty_root();
    root.entries.push(DirEntry {
        first: r.start(),
        last: r.last(),
        child: GlobalAddr(0),
        responsible: 0,
        replicas: Default::default(),
    });
    e.page_mut(ROOT_DIRECTORY)
        .unwrap()
        .0
        .copy_from_slice(&root.encode().0);
    let lock = GlobalAddr(DIRECTORY_SLICE - PAGE_SIZE);
    fault(&mut e, lock, Access::Write);
    e.page_mut(lock).unwrap().0[0] = 1;
    (e, r)
}

/// Recomputes a report's checksum after a test changed its bytes.
fn reseal(bytes: &mut [u8]) {
    let sum = report_checksum(bytes);
    bytes[field::CHECKSUM..field::CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
}

fn corrupt_what(r: Result<NodeReport, ShmError>) -> &'static str {
    match r {
        Err(ShmError::Corrupt { what }) => what,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_gathered_report_says_what_the_engine_holds_and_round_trips() {
    let (e, r) = engine_with_directory();
    let report = NodeReport::gather(&e, 3, MAX_REPORT_LEN);
    assert_eq!((report.node, report.generation), (0, 3));
    assert_eq!(report.cached_pages, 4, "two data pages, root, lock page");
    assert_eq!(report.owned_pages, 4);
    let dirty = e.cache().iter().filter(|(_, c)| c.dirty).count();
    assert_eq!(report.dirty_pages as usize, dirty);
    assert_eq!(report.ranges, vec![r]);
    assert_eq!(
        report.directory.len(),
        1,
        "the lock page is no directory page"
    );
    let root = &report.directory[0];
    assert_eq!(root.page.addr, ROOT_DIRECTORY);
    assert_eq!(root.rights, Rights::Write);
    assert!(root.owner && root.dirty);
    assert_eq!(root.page.entries.len(), 1);
    assert_eq!(root.page.entries[0].responsible, 0);
    assert_eq!(root.page.entries[0].first, r.start());
    // Records: the two touched data pages and the directory pages of node
    // 0's slice that it touched (root and lock page), all owned by node 0.
    let pages: Vec<GlobalAddr> = report.pages.iter().map(|p| p.page).collect();
    assert_eq!(
        pages,
        vec![
            ROOT_DIRECTORY,
            GlobalAddr(DIRECTORY_SLICE - PAGE_SIZE),
            r.start(),
            r.page(2).unwrap()
        ]
    );
    assert!(report.pages.iter().all(|p| p.owner == Some(0)));
    assert_eq!(
        (
            report.ranges_omitted,
            report.directory_omitted,
            report.pages_omitted
        ),
        (0, 0, 0)
    );
    let bytes = report.encode().unwrap();
    assert_eq!(bytes.len(), report.encoded_len());
    assert_eq!(NodeReport::decode(&bytes).unwrap(), report);
    // Bytes past the length (the rest of a region) are not the report's.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0xa5; 100]);
    assert_eq!(NodeReport::decode(&longer).unwrap(), report);
}

#[test]
fn a_fresh_root_of_zeros_is_reported_as_the_empty_root() {
    let mut e = Engine::new(0, 1).unwrap();
    fault(&mut e, ROOT_DIRECTORY, Access::Read);
    let report = NodeReport::gather(&e, 1, MAX_REPORT_LEN);
    assert_eq!(report.directory.len(), 1);
    assert_eq!(report.directory[0].page, DirectoryPage::empty_root());
    assert!(!report.is_empty());
    let empty = NodeReport::gather(&Engine::new(1, 2).unwrap(), 1, MAX_REPORT_LEN);
    assert!(empty.is_empty());
    assert_eq!(NodeReport::decode(&empty.encode().unwrap()).unwrap(), empty);
}

#[test]
fn what_does_not_fit_is_counted_as_omitted() {
    let (e, _) = engine_with_directory();
    let cap = HEADER_LEN + RANGE_LEN + PAGE_RECORD_LEN;
    let report = NodeReport::gather(&e, 1, cap);
    assert!(report.encoded_len() <= cap);
    assert_eq!(report.ranges.len(), 1);
    assert_eq!(report.directory.len(), 0);
    assert_eq!(report.directory_omitted, 1);
    assert_eq!(report.pages.len(), 1);
    assert_eq!(report.pages_omitted, 3);
    assert_eq!(report.cached_pages, 4, "counts cover the whole cache");
    let tiny = NodeReport::gather(&e, 1, 10);
    assert_eq!(tiny.encoded_len(), HEADER_LEN);
    assert_eq!(
        (
            tiny.ranges_omitted,
            tiny.directory_omitted,
            tiny.pages_omitted
        ),
        (1, 1, 4)
    );
    assert_eq!(NodeReport::decode(&tiny.encode().unwrap()).unwrap(), tiny);
}

#[test]
fn reports_of_a_simulated_cluster_agree_with_its_engines() {
    for seed in 0..20u64 {
        let nodes = 3 + (seed % 3) as u16;
        let a = range(0, 6);
        let b = range(nodes - 1, 3);
        let mut sim = Sim::new(nodes, &[(a, 0), (b, nodes - 1)], &[]);
        let mut rng = Rng::new(seed);
        for _ in 0..400 {
            sim.step(&mut rng, 40);
        }
        sim.settle(&mut rng);
        for e in &sim.engines {
            let r = NodeReport::gather(e, 1, MAX_REPORT_LEN);
            let states: Vec<_> = e.page_states().collect();
            assert_eq!(r.pages.len(), states.len());
            for (p, (page, s)) in r.pages.iter().zip(states) {
                assert_eq!(
                    (p.page, p.owner, p.copyset, p.version, p.busy),
                    (page, s.owner, s.copyset, s.version, s.busy)
                );
            }
            assert_eq!(r.ranges, e.managed_ranges().collect::<Vec<_>>());
            assert_eq!(r.cached_pages as usize, e.cache().len());
            assert_eq!(NodeReport::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }
}

#[test]
fn same_state_ignores_sequence_and_time_only() {
    let (e, _) = engine_with_directory();
    let a = NodeReport::gather(&e, 1, MAX_REPORT_LEN);
    let mut b = a.clone();
    b.sequence = 9;
    b.time_ns = 12345;
    assert!(a.same_state(&b));
    b.pages[0].owner = Some(1);
    assert!(!a.same_state(&b));
}

/// A report built by hand with every section filled.
fn sample() -> NodeReport {
    let (e, _) = engine_with_directory();
    let mut r = NodeReport::gather(&e, 7, MAX_REPORT_LEN);
    r.sequence = 42;
    r.time_ns = 1_000_000;
    r.pages[2].copyset = NodeSet(0b110);
    r.pages[2].version = 5;
    r.pages[3].busy = true;
    r
}

#[test]
fn damaged_fields_with_good_checksums_are_refused_by_name() {
    let good = sample().encode().unwrap();
    let bad = |f: &dyn Fn(&mut NodeReport)| {
        let mut r = sample();
        f(&mut r);
        corrupt_what(NodeReport::decode(&r.encode().unwrap()))
    };
    assert_eq!(bad(&|r| r.node = 64), "report node");
    assert_eq!(bad(&|r| r.generation = 0), "report generation");
    assert_eq!(bad(&|r| r.owned_pages = 99), "report page counts");
    assert_eq!(
        bad(&|r| r.ranges.push(r.ranges[0])),
        "report ranges unsorted or overlapping"
    );
    assert_eq!(bad(&|r| r.pages[0].owner = Some(70)), "report page owner");
    assert_eq!(bad(&|r| r.pages.swap(0, 1)), "report pages unsorted");
    assert_eq!(
        bad(&|r| r.directory.push(r.directory[0].clone())),
        "report directory copies unsorted"
    );
    assert_eq!(
        bad(&|r| r.directory[0].page.entries[0].first = GlobalAddr(DATA_SPACE_START - PAGE_SIZE)),
        "entry outside the page's span"
    );
    assert_eq!(bad(&|r| r.directory[0].page.level = 17), "level");
    assert_eq!(
        bad(&|r| {
            let mut p = r.directory[0].page.clone();
            p.addr = GlobalAddr(PAGE_SIZE);
            p.entries.clear();
            r.directory.push(DirectoryCopy {
                page: p,
                ..r.directory[0].clone()
            });
        }),
        "empty page other than the root"
    );
    assert_eq!(
        bad(&|r| r.directory[0].rights = Rights::None),
        "report directory copy rights"
    );

    // Byte-level damage, resealed.
    let patch = |at: usize, b: &[u8]| {
        let mut x = good.clone();
        x[at..at + b.len()].copy_from_slice(b);
        reseal(&mut x);
        corrupt_what(NodeReport::decode(&x))
    };
    assert_eq!(patch(field::VERSION, &[2]), "report version");
    assert_eq!(
        patch(field::RESERVED_1, &[1]),
        "reserved report header bytes"
    );
    assert_eq!(patch(100, &[1]), "reserved report header bytes");
    let mut short = good[..good.len() - 40].to_vec();
    let short_len = short.len() as u32;
    short[field::LENGTH..field::LENGTH + 4].copy_from_slice(&short_len.to_le_bytes());
    reseal(&mut short);
    assert_eq!(
        corrupt_what(NodeReport::decode(&short)),
        "report section past its length"
    );
    assert_eq!(
        patch(field::LENGTH, &(2_000_000u32).to_le_bytes()),
        "report length"
    );
    assert_eq!(
        patch(field::PAGES, &(2_000_000u32).to_le_bytes()),
        "report section counts"
    );
    assert_eq!(
        patch(field::PAGES, &(1u32).to_le_bytes()),
        "report length does not match its sections"
    );
    // Range in the directory space; range not whole pages.
    let r0 = HEADER_LEN;
    assert_eq!(
        patch(r0, &0u128.to_le_bytes()),
        "report range outside the data space"
    );
    assert_eq!(patch(r0, &[1]), "report range not whole pages");
    // The last page record's reserved bytes and flags.
    let p3 = good.len() - PAGE_RECORD_LEN;
    assert_eq!(patch(p3 + 20, &[1]), "report page flags");
    assert_eq!(patch(p3 + 18, &[2]), "report page flags");
    assert_eq!(patch(p3, &[1]), "report page not page-aligned");
    // A shorter buffer than the length says.
    assert_eq!(
        corrupt_what(NodeReport::decode(&good[..good.len() - 1])),
        "report longer than its buffer"
    );
    assert_eq!(
        corrupt_what(NodeReport::decode(&good[..HEADER_LEN - 1])),
        "report shorter than its header"
    );
}

#[test]
fn reports_too_large_for_a_region_are_not_encoded() {
    let mut r = sample();
    let p = r.pages[0];
    r.pages = (0..(MAX_REPORT_LEN / PAGE_RECORD_LEN) as u128)
        .map(|i| PageRecord {
            page: GlobalAddr(DATA_SPACE_START + i * PAGE_SIZE),
            ..p
        })
        .collect();
    assert_eq!(r.encode(), Err(ShmError::TooLarge));
}

#[test]
fn regions_are_written_and_read_under_their_sequence_lock() {
    let mem = HeapRegion::new(4 * REGION_BYTES as usize);
    let region = mem.region();
    let at = REGION_BYTES;
    assert_eq!(
        report::read_region(region, at, REGION_BYTES).unwrap_err(),
        ShmError::NotInitialized
    );
    let r = sample();
    let bytes = r.encode().unwrap();
    report::write_region(region, at, REGION_BYTES, &bytes).unwrap();
    assert_eq!(report::read_region(region, at, REGION_BYTES).unwrap(), r);
    let word = region.atomic_u64(at as usize).unwrap();
    let even = word.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(even % 2, 0);
    // A writer in the middle of a rewrite.
    word.store(even + 1, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        report::read_region(region, at, REGION_BYTES).unwrap_err(),
        ShmError::Busy
    );
    // A rewrite over a word left odd ends even, and reads back.
    let mut r2 = r.clone();
    r2.sequence += 1;
    report::write_region(region, at, REGION_BYTES, &r2.encode().unwrap()).unwrap();
    assert_eq!(report::read_region(region, at, REGION_BYTES).unwrap(), r2);
    // Damage in the device is named.
    region
        .write_bytes(at as usize + REGION_HEADER_LEN + HEADER_LEN, &[0xff])
        .unwrap();
    assert_eq!(
        report::read_region(region, at, REGION_BYTES).unwrap_err(),
        ShmError::Corrupt {
            what: "report checksum"
        }
    );
    // Bounds.
    assert_eq!(
        report::write_region(region, at, 256, &bytes).unwrap_err(),
        ShmError::TooLarge
    );
    assert_eq!(
        report::read_region(region, at, 16).unwrap_err(),
        ShmError::TooSmall
    );
    assert_eq!(
        report::read_region(region, 4 * REGION_BYTES - 96, REGION_BYTES).unwrap_err(),
        ShmError::OutOfBounds
    );
    assert!(report::read_region(region, u64::MAX - 10, REGION_BYTES).is_err());
}

#[test]
fn every_node_claims_one_region_of_the_shared_report_pool() {
    let mem = HeapRegion::new(4 << 20);
    let shm = pool_common::attach(mem.region());
    assert_eq!(
        report::read_published(&shm).unwrap_err(),
        ShmError::NoSuchPool
    );
    let pools: Vec<_> = (0..3).map(|n| pool_common::join(&shm, n)).collect();
    // The first to publish creates the pool; the others race it and open it.
    let infos: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = pools
            .iter()
            .map(|p| s.spawn(|| report::claim_region(p, &shm).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, info) in infos.iter().enumerate() {
        assert_eq!(info.owners, NodeSet(1 << n));
        assert_eq!(info.len, REGION_BYTES);
        let mut r = sample();
        r.node = n as u16;
        report::write_region(shm.region(), info.offset, info.len, &r.encode().unwrap()).unwrap();
    }
    let seen = report::read_published(&shm).unwrap();
    assert_eq!(seen.len(), 3);
    let mut nodes: Vec<u16> = seen
        .iter()
        .map(|p| p.report.as_ref().unwrap().node)
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec![0, 1, 2]);
    let snap = shm.snapshot();
    let named: Vec<_> = snap
        .pools
        .pools()
        .iter()
        .filter(|p| p.stat.is_some_and(|s| s.name.as_str() == REPORT_POOL))
        .collect();
    assert_eq!(named.len(), 1, "one report pool");

    // Node 1 claims again (as a new incarnation would): its old region goes.
    let again = report::claim_region(&pools[1], &shm).unwrap();
    let seen = report::read_published(&shm).unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().any(|p| p.region.handle == again.handle));
    assert!(!seen.iter().any(|p| p.region.handle == infos[1].handle));

    // A report in node 0's region that claims to be node 2's is refused.
    let mut liar = sample();
    liar.node = 2;
    report::write_region(
        shm.region(),
        infos[0].offset,
        infos[0].len,
        &liar.encode().unwrap(),
    )
    .unwrap();
    let seen = report::read_published(&shm).unwrap();
    let zero = seen
        .iter()
        .find(|p| p.region.handle == infos[0].handle)
        .unwrap();
    assert_eq!(
        zero.report.as_ref().unwrap_err(),
        &ShmError::Corrupt {
            what: "report names a node that does not own its region"
        }
    );
    assert!(
        seen.iter()
            .any(|p| p.region.handle == again.handle && p.report == Err(ShmError::NotInitialized))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_single_byte_of_damage_is_refused(at in 0usize..4096, x in 1u8..=255) {
        let good = sample().encode().unwrap();
        let at = at % good.len();
        let mut bad = good.clone();
        bad[at] ^= x;
        let r = NodeReport::decode(&bad);
        prop_assert!(matches!(r, Err(ShmError::Corrupt { .. })), "{:?}", r);
    }

    #[test]
    fn truncated_reports_are_refused(cut in 0usize..4096) {
        let good = sample().encode().unwrap();
        let cut = cut % good.len();
        let r = NodeReport::decode(&good[..cut]);
        prop_assert!(matches!(r, Err(ShmError::Corrupt { .. })), "{:?}", r);
    }

    #[test]
    fn random_bytes_never_panic_and_what_decodes_re_encodes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        seal in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if bytes.len() >= HEADER_LEN {
            // Give the decoder's later checks a chance: a plausible header.
            bytes[..8].copy_from_slice(b"SHMDSMR1");
            bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
            let len = bytes.len() as u32;
            bytes[12..16].copy_from_slice(&len.to_le_bytes());
            if seal {
                reseal(&mut bytes);
            }
        }
        match NodeReport::decode(&bytes) {
            Ok(r) => prop_assert_eq!(r.encode().unwrap(), bytes),
            Err(e) => prop_assert!(matches!(e, ShmError::Corrupt { .. }), "{:?}", e),
        }
    }

    #[test]
    fn random_valid_reports_round_trip(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut r = NodeReport::new(rng.below(64) as u16, 1 + rng.below(1000) as u32);
        r.sequence = rng.next();
        r.time_ns = rng.next();
        r.cached_pages = rng.below(10_000) as u32;
        r.owned_pages = rng.below(r.cached_pages as usize + 1) as u32;
        r.dirty_pages = rng.below(r.cached_pages as usize + 1) as u32;
        r.ranges_omitted = rng.next() as u32;
        r.directory_omitted = rng.next() as u32;
        r.pages_omitted = rng.next() as u32;
        let mut at = DATA_SPACE_START + rng.below(1000) as u128 * PAGE_SIZE;
        for _ in 0..rng.below(20) {
            let pages = 1 + rng.below(8) as u128;
            let g = GlobalRange::new(GlobalAddr(at), pages * PAGE_SIZE).unwrap();
            r.ranges.push(g);
            at += (pages + rng.below(3) as u128) * PAGE_SIZE;
        }
        let mut page = rng.below(1000) as u128 * PAGE_SIZE;
        for _ in 0..rng.below(200) {
            let owner = rng.below(65) as u16;
            r.pages.push(PageRecord {
                page: GlobalAddr(page),
                owner: (owner < 64).then_some(owner),
                copyset: NodeSet(rng.next()),
                version: rng.next(),
                busy: rng.below(2) == 1,
            });
            page += (1 + rng.below(4) as u128) * PAGE_SIZE;
        }
        if rng.below(2) == 1 {
            let mut root = DirectoryPage::empty_root();
            let first = DATA_SPACE_START;
            for i in 0..rng.below(63) as u128 {
                root.entries.push(DirEntry {
                    first: GlobalAddr(first + i * 4 * PAGE_SIZE),
                    last: GlobalAddr(first + i * 4 * PAGE_SIZE + 2 * PAGE_SIZE - 1),
                    child: GlobalAddr(0),
                    responsible: rng.below(64) as u16,
                    replicas: NodeSet(rng.next()),
                });
            }
            r.directory.push(DirectoryCopy {
                version: rng.next(),
                rights: if rng.below(2) == 1 { Rights::Read } else { Rights::Write },
                owner: rng.below(2) == 1,
                dirty: rng.below(2) == 1,
                page: root,
            });
        }
        let bytes = r.encode().unwrap();
        prop_assert_eq!(bytes.len(), r.encoded_len());
        prop_assert_eq!(NodeReport::decode(&bytes).unwrap(), r);
    }
}
