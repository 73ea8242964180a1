//! Property tests: random and mutated bytes never make the parsers (or the
//! operations on top of them) panic; they validate or give a named error.
#![cfg(feature = "std")]

mod common;

use common::{facts, params};
use proptest::prelude::*;
use shm_ext::format::{
    HEADER_LEN, MAX_NODES, NODE_ENTRY_LEN, NodeInfo, SUPERBLOCK_LEN, Superblock, header_checksum,
    sb,
};
use shm_ext::host::HeapRegion;
use shm_ext::{Generation, InitParams, LivenessMonitor, Shm, ShmError, Snapshot};

/// Region size for whole-image properties (small to keep cases fast).
const IMG: usize = 512 * 1024;

fn header_from(v: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(v);
    h
}

/// What every superblock that validates must satisfy.
fn check_invariants(s: &Superblock, region_len: usize) {
    assert!(s.total_size <= region_len as u64);
    assert!((1..=MAX_NODES as u16).contains(&s.max_nodes));
    assert!(s.heartbeat_timeout_ns > 0);
    let areas = s.layout.areas();
    for (i, a) in areas.iter().enumerate() {
        assert!(a.len > 0 && a.offset % 4096 == 0 && a.len % 4096 == 0);
        assert!(a.offset.checked_add(a.len).unwrap() <= s.total_size);
        for b in &areas[i + 1..] {
            assert!(a.end() <= b.offset || b.end() <= a.offset, "{a:?} {b:?}");
        }
    }
    assert!(s.layout.node_table.len >= u64::from(s.max_nodes) * NODE_ENTRY_LEN as u64);
}

fn is_named(e: &ShmError) -> bool {
    (1..=15).contains(&e.code()) && !e.to_string().is_empty()
}

fn valid_header() -> [u8; HEADER_LEN] {
    Superblock::plan(IMG, &params()).unwrap().encode()
}

/// A formatted image with one node joined, as bytes.
fn valid_image() -> Vec<u8> {
    let mem = HeapRegion::new(IMG);
    let shm = Shm::attach(mem.region(), &params(), || 0, 0).unwrap();
    let g = shm.join(1, &facts("node one")).unwrap();
    shm.heartbeat(1, g).unwrap();
    shm.join(5, &facts("node five")).unwrap();
    mem.to_bytes()
}

/// Exercises everything a node does with a region; must never panic.
fn exercise(img: &[u8]) {
    let mem = HeapRegion::from_bytes(img);
    match Shm::open(mem.region()) {
        Ok(shm) => {
            check_invariants(shm.superblock(), img.len());
            for id in 0..shm.max_nodes() + 2 {
                if let Err(e) = shm.node(id) {
                    assert!(is_named(&e));
                }
                let _ = shm.heartbeat(id, Generation(1));
            }
            let _ = shm.live_nodes();
            let snap = shm.snapshot();
            let _ = snap.to_string();
            let _ = serde_json::to_string(&snap).unwrap();
            let mut mon = LivenessMonitor::new(Some(0));
            mon.observe(&shm, 0);
            mon.observe(&shm, u64::MAX);
            let _ = shm.join(0, &facts("me"));
            let _ = shm.join_free(&facts("free"));
        }
        Err(e) => {
            assert!(is_named(&e));
            assert_eq!(Snapshot::read(mem.region()).unwrap_err(), e);
        }
    }
    // attach either validates, refuses, or (on a blank word) initialises.
    let _ = Shm::attach(mem.region(), &params(), || 1, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), HEADER_LEN), len in 0usize..(1 << 24)) {
        let h = header_from(&bytes);
        match Superblock::parse(&h, len) {
            Ok(s) => check_invariants(&s, len),
            Err(e) => prop_assert!(is_named(&e)),
        }
    }

    /// Random headers that carry the right magic, version and checksum reach
    /// the structural checks.
    #[test]
    fn random_checksummed_headers_never_panic(
        bytes in prop::collection::vec(any::<u8>(), HEADER_LEN),
        small in prop::collection::vec((0usize..HEADER_LEN / 8, 0u64..(1 << 21)), 0..24),
        len in 0usize..(1 << 22),
    ) {
        let mut h = header_from(&bytes);
        // Plausible values in some u64 slots make acceptance reachable.
        for (slot, v) in small {
            h[slot * 8..slot * 8 + 8].copy_from_slice(&(v & !0xfff).to_le_bytes());
        }
        h[..8].copy_from_slice(b"SHMOS\0v1");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        let sum = header_checksum(&h);
        h[sb::CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        match Superblock::parse(&h, len) {
            Ok(s) => check_invariants(&s, len),
            Err(e) => prop_assert!(is_named(&e)),
        }
    }

    /// Any change to a valid header outside the init word is refused.
    #[test]
    fn mutated_headers_are_refused(muts in prop::collection::vec((0usize..HEADER_LEN, any::<u8>()), 1..8)) {
        let good = valid_header();
        let mut h = good;
        for (i, b) in muts {
            h[i] = b;
        }
        let changed = (0..HEADER_LEN).any(|i| !(sb::INIT..sb::INIT + 4).contains(&i) && h[i] != good[i]);
        match Superblock::parse(&h, IMG) {
            Ok(s) => {
                prop_assert!(!changed, "accepted a changed header");
                check_invariants(&s, IMG);
            }
            Err(e) => prop_assert!(is_named(&e)),
        }
    }

    /// Mutations with the checksum fixed up (a buggy writer) still never
    /// yield an inconsistent layout.
    #[test]
    fn mutated_rechecksummed_headers_validate_or_refuse(
        muts in prop::collection::vec((12usize..sb::CHECKSUM, any::<u8>()), 1..6),
        len in (SUPERBLOCK_LEN as usize)..(4 * IMG),
    ) {
        let mut h = valid_header();
        for (i, b) in muts {
            h[i] = b;
        }
        let sum = header_checksum(&h);
        h[sb::CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        match Superblock::parse(&h, len) {
            Ok(s) => check_invariants(&s, len),
            Err(e) => prop_assert!(is_named(&e)),
        }
    }

    #[test]
    fn random_node_entries_never_panic(bytes in prop::collection::vec(any::<u8>(), NODE_ENTRY_LEN), id in any::<u16>()) {
        let mut e = [0u8; NODE_ENTRY_LEN];
        e.copy_from_slice(&bytes);
        match NodeInfo::parse(id, &e) {
            Ok(n) => {
                prop_assert_eq!(n.id, id);
                prop_assert!(n.label.as_str().len() <= 48);
            }
            Err(e) => {
                let corrupt = matches!(e, ShmError::Corrupt { .. });
                prop_assert!(corrupt, "{e:?}");
            }
        }
    }

    #[test]
    fn planned_layouts_round_trip(
        len in 0usize..(1 << 26),
        max_nodes in 0u16..80,
        timeout in 0u64..u64::MAX,
        lock in 0u64..(1 << 24),
        queue in 0u64..(1 << 24),
    ) {
        let p = InitParams { max_nodes, heartbeat_timeout_ns: timeout, lock_table_len: lock, queue_area_len: queue };
        match Superblock::plan(len, &p) {
            Ok(s) => {
                check_invariants(&s, len);
                prop_assert_eq!(Superblock::parse(&s.encode(), len), Ok(s));
            }
            Err(e) => prop_assert!(is_named(&e)),
        }
    }
}

proptest! {
    // Whole images cost more per case.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random mutations of the superblock and node table of a valid image.
    #[test]
    fn mutated_images_never_panic(
        muts in prop::collection::vec((0usize..(2 * SUPERBLOCK_LEN as usize), any::<u8>()), 1..32),
        fix_checksum in any::<bool>(),
    ) {
        let mut img = valid_image();
        for (i, b) in muts {
            img[i] = b;
        }
        if fix_checksum {
            let mut h = header_from(&img[..HEADER_LEN]);
            let sum = header_checksum(&h);
            h[sb::CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
            img[..HEADER_LEN].copy_from_slice(&h);
        }
        exercise(&img);
    }

    /// Node tables full of random bytes behind a valid superblock.
    #[test]
    fn random_node_tables_never_panic(table in prop::collection::vec(any::<u8>(), 4096)) {
        let mut img = valid_image();
        img[4096..8192].copy_from_slice(&table);
        exercise(&img);
    }

    /// Random bytes of random length as a whole region.
    #[test]
    fn random_regions_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..9000), ready in any::<bool>()) {
        if ready && bytes.len() >= 16 {
            bytes[12..16].copy_from_slice(&2u32.to_le_bytes());
        }
        exercise(&bytes);
    }
}
