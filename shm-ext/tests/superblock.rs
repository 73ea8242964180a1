//! Superblock: initialisation, validation, and refusal of corrupt superblocks.
#![cfg(feature = "std")]

mod common;

use std::sync::Barrier;
use std::sync::atomic::Ordering;

use common::{SIZE, TIMEOUT_NS, attach, params};
use shm_ext::format::{
    FORMAT_VERSION, HEADER_LEN, INIT_BUSY, INIT_READY, MAGIC, Superblock, header_checksum, sb,
};
use shm_ext::host::HeapRegion;
use shm_ext::{InitParams, Shm, ShmError};

#[test]
fn first_attach_initialises_and_later_ones_validate() {
    let mem = HeapRegion::new(SIZE);
    let a = attach(mem.region()).unwrap();
    assert!(a.initialised_here());
    let b = attach(mem.region()).unwrap();
    assert!(!b.initialised_here());
    assert_eq!(a.superblock(), b.superblock());

    let sb = a.superblock();
    assert_eq!(sb.version, FORMAT_VERSION);
    assert_eq!(sb.total_size, SIZE as u64);
    assert_eq!(sb.max_nodes, 32);
    assert_eq!(sb.heartbeat_timeout_ns, TIMEOUT_NS);
    let l = sb.layout;
    assert_eq!((l.node_table.offset, l.node_table.len), (4096, 4096));
    assert_eq!(l.lock_table.offset, l.node_table.end());
    assert_eq!(l.queue_area.offset, l.lock_table.end());
    assert_eq!(l.heap.offset, l.queue_area.end());
    assert_eq!(l.heap.end(), SIZE as u64);

    let bytes = mem.to_bytes();
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(
        u32::from_le_bytes(bytes[sb::INIT..sb::INIT + 4].try_into().unwrap()),
        INIT_READY
    );
}

#[test]
fn the_initialisers_parameters_win() {
    let mem = HeapRegion::new(SIZE);
    attach(mem.region()).unwrap();
    let other = InitParams {
        max_nodes: 8,
        heartbeat_timeout_ns: 5,
        ..InitParams::default()
    };
    let b = Shm::attach(mem.region(), &other, || 0, 0).unwrap();
    assert_eq!(b.max_nodes(), 32);
    assert_eq!(b.heartbeat_timeout_ns(), TIMEOUT_NS);
}

#[test]
fn open_refuses_a_blank_region() {
    let mem = HeapRegion::new(SIZE);
    assert_eq!(
        Shm::open(mem.region()).unwrap_err(),
        ShmError::NotInitialized
    );
}

#[test]
fn too_small_regions_are_refused_and_left_blank() {
    for len in [0, 8, 200, 4096, 64 * 1024] {
        let mem = HeapRegion::new(len);
        assert_eq!(
            attach(mem.region()).unwrap_err(),
            ShmError::TooSmall,
            "len {len}"
        );
        // The failed initialiser hands the init word back.
        if len >= 16 {
            assert_eq!(
                mem.region()
                    .atomic_u32(sb::INIT)
                    .unwrap()
                    .load(Ordering::SeqCst),
                0
            );
        }
    }
    // Smallest that fits the defaults: 4 + 4 + 64 + 256 + 4 KiB.
    let mem = HeapRegion::new(332 * 1024);
    assert!(attach(mem.region()).is_ok());
}

#[test]
fn bad_params_are_refused() {
    let mem = HeapRegion::new(SIZE);
    for p in [
        InitParams {
            max_nodes: 0,
            ..params()
        },
        InitParams {
            max_nodes: 65,
            ..params()
        },
        InitParams {
            heartbeat_timeout_ns: 0,
            ..params()
        },
        InitParams {
            lock_table_len: 0,
            ..params()
        },
    ] {
        assert!(matches!(
            Shm::attach(mem.region(), &p, || 0, 0),
            Err(ShmError::InvalidArgument { .. })
        ));
    }
    assert!(attach(mem.region()).is_ok());
}

#[test]
fn init_word_stuck_at_busy_times_out() {
    let mem = HeapRegion::new(SIZE);
    let init = mem.region().atomic_u32(sb::INIT).unwrap();
    init.store(INIT_BUSY, Ordering::SeqCst);
    // A fake clock that advances 1 ms per poll.
    let mut t = 0u64;
    let clock = || {
        t += 1_000_000;
        t
    };
    let r = Shm::attach(mem.region(), &params(), clock, 50_000_000);
    assert_eq!(r.unwrap_err(), ShmError::NotInitialized);
    assert_eq!(init.load(Ordering::SeqCst), INIT_BUSY);
}

#[test]
fn waiter_sees_a_slow_initialiser_finish() {
    let mem = HeapRegion::new(SIZE);
    let region = mem.region();
    let init = region.atomic_u32(sb::INIT).unwrap();
    init.store(INIT_BUSY, Ordering::SeqCst);
    let done = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let start = std::time::Instant::now();
            Shm::attach(
                region,
                &params(),
                || start.elapsed().as_nanos() as u64,
                10_000_000_000,
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Play the initialiser by hand: write the header, then release.
        let sb = Superblock::plan(SIZE, &params()).unwrap();
        let h = sb.encode();
        region.write_bytes(0, &h[..sb::INIT]).unwrap();
        region
            .write_bytes(sb::INIT + 4, &h[sb::INIT + 4..])
            .unwrap();
        init.store(INIT_READY, Ordering::Release);
        waiter.join().unwrap()
    });
    let shm = done.unwrap();
    assert!(!shm.initialised_here());
}

#[test]
fn unknown_init_word_is_corrupt() {
    let mem = HeapRegion::new(SIZE);
    mem.region()
        .atomic_u32(sb::INIT)
        .unwrap()
        .store(7, Ordering::SeqCst);
    assert!(matches!(
        attach(mem.region()),
        Err(ShmError::Corrupt { .. })
    ));
    assert!(matches!(
        Shm::open(mem.region()),
        Err(ShmError::Corrupt { .. })
    ));
}

#[test]
fn threads_racing_to_attach_initialise_exactly_once() {
    for _ in 0..20 {
        let mem = HeapRegion::new(SIZE);
        let region = mem.region();
        let n = 6;
        let barrier = Barrier::new(n);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let start = std::time::Instant::now();
                        Shm::attach(
                            region,
                            &params(),
                            || start.elapsed().as_nanos() as u64,
                            10_000_000_000,
                        )
                        .map(|s| (s.initialised_here(), *s.superblock()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(ok.iter().filter(|(init, _)| *init).count(), 1);
        assert!(ok.iter().all(|(_, sb)| *sb == ok[0].1));
    }
}

#[test]
fn format_resets_a_used_region() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region()).unwrap();
    shm.join(3, &common::facts("x")).unwrap();
    let again = Shm::format(mem.region(), &params()).unwrap();
    assert!(again.initialised_here());
    assert!(again.live_nodes().is_empty());
}

/// Every byte of every checksummed field of the header, changed on the
/// device, makes validation fail with a named error.
#[test]
fn corruption_of_each_superblock_field_is_detected() {
    let fields: &[(&str, usize, usize)] = &[
        ("magic", sb::MAGIC, 8),
        ("version", sb::VERSION, 4),
        ("total size", sb::TOTAL_SIZE, 8),
        ("superblock length", sb::SUPERBLOCK_LEN, 4),
        ("max nodes", sb::MAX_NODES, 4),
        ("node entry size", sb::NODE_ENTRY_LEN, 4),
        ("flags", sb::FLAGS, 4),
        ("heartbeat timeout", sb::HEARTBEAT_TIMEOUT_NS, 8),
        ("node table", sb::NODE_TABLE, 16),
        ("lock table", sb::LOCK_TABLE, 16),
        ("queue area", sb::QUEUE_AREA, 16),
        ("heap", sb::HEAP, 16),
        ("reserved", sb::RESERVED, sb::CHECKSUM - sb::RESERVED),
        ("checksum", sb::CHECKSUM, 8),
    ];
    let mem = HeapRegion::new(SIZE);
    attach(mem.region()).unwrap();
    let region = mem.region();
    let mut header = [0u8; HEADER_LEN];
    region.read_bytes(0, &mut header).unwrap();
    for &(name, off, len) in fields {
        for (i, &orig) in header.iter().enumerate().skip(off).take(len) {
            for flip in [0x01u8, 0x80, 0xff] {
                // Corrupt one byte on the device, check, then repair it.
                region.write_bytes(i, &[orig ^ flip]).unwrap();
                let err = Shm::open(region).expect_err(name);
                let expected = match name {
                    "magic" => ShmError::BadMagic,
                    "version" => {
                        let mut v = [0u8; 4];
                        region.read_bytes(sb::VERSION, &mut v).unwrap();
                        ShmError::UnsupportedVersion {
                            found: u32::from_le_bytes(v),
                        }
                    }
                    _ => ShmError::Corrupt {
                        what: "superblock checksum",
                    },
                };
                assert_eq!(err, expected, "{name} byte {i} ^ {flip:#x}");
                // attach must refuse too, never re-initialise over it.
                assert_eq!(attach(region).unwrap_err(), expected);
                region.write_bytes(i, &[orig]).unwrap();
            }
        }
    }
    assert!(Shm::open(region).is_ok());
}

/// Headers with a valid checksum but inconsistent fields (a buggy writer)
/// are refused by the structural checks.
#[test]
fn inconsistent_but_checksummed_superblocks_are_refused() {
    let good = Superblock::plan(SIZE, &params()).unwrap();
    let put = |h: &mut [u8; HEADER_LEN], off: usize, v: &[u8]| {
        h[off..off + v.len()].copy_from_slice(v);
        let sum = header_checksum(h);
        h[sb::CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
    };
    let nt = good.layout.node_table;
    let heap = good.layout.heap;
    type Edit = Box<dyn Fn(&mut [u8; HEADER_LEN])>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "superblock length",
            Box::new(move |h| put(h, sb::SUPERBLOCK_LEN, &8192u32.to_le_bytes())),
        ),
        (
            "node entry size",
            Box::new(move |h| put(h, sb::NODE_ENTRY_LEN, &64u32.to_le_bytes())),
        ),
        (
            "superblock flags",
            Box::new(move |h| put(h, sb::FLAGS, &1u32.to_le_bytes())),
        ),
        (
            "max nodes",
            Box::new(move |h| put(h, sb::MAX_NODES, &0u32.to_le_bytes())),
        ),
        (
            "max nodes",
            Box::new(move |h| put(h, sb::MAX_NODES, &65u32.to_le_bytes())),
        ),
        (
            "heartbeat timeout",
            Box::new(move |h| put(h, sb::HEARTBEAT_TIMEOUT_NS, &0u64.to_le_bytes())),
        ),
        (
            "total size",
            Box::new(move |h| put(h, sb::TOTAL_SIZE, &(SIZE as u64 - 1).to_le_bytes())),
        ),
        (
            "node table area",
            Box::new(move |h| put(h, sb::NODE_TABLE, &(nt.offset + 8).to_le_bytes())),
        ),
        (
            "node table area",
            Box::new(move |h| put(h, sb::NODE_TABLE + 8, &0u64.to_le_bytes())),
        ),
        (
            "node table area",
            Box::new(move |h| put(h, sb::NODE_TABLE, &u64::MAX.to_le_bytes())),
        ),
        (
            "node table too short for max nodes",
            Box::new(move |h| put(h, sb::MAX_NODES, &64u32.to_le_bytes())),
        ),
        (
            "heap area",
            Box::new(move |h| put(h, sb::HEAP + 8, &(heap.len + 4096).to_le_bytes())),
        ),
        (
            "areas overlap",
            Box::new(move |h| put(h, sb::LOCK_TABLE, &nt.offset.to_le_bytes())),
        ),
        (
            "areas overlap",
            Box::new(move |h| put(h, sb::HEAP, &0u64.to_le_bytes())),
        ),
    ];
    for (what, edit) in cases {
        let mut h = good.encode();
        edit(&mut h);
        assert_eq!(
            Superblock::parse(&h, SIZE),
            Err(ShmError::Corrupt { what }),
            "{what}"
        );
    }
    // A formatted size larger than this node's mapping.
    let h = good.encode();
    assert_eq!(Superblock::parse(&h, SIZE - 4096), Err(ShmError::TooSmall));
    // And on a device: a shorter mapping of a formatted image.
    let mem = HeapRegion::new(SIZE);
    attach(mem.region()).unwrap();
    let img = mem.to_bytes();
    let short = HeapRegion::from_bytes(&img[..SIZE / 2]);
    assert_eq!(Shm::open(short.region()).unwrap_err(), ShmError::TooSmall);
}

#[test]
fn error_codes_are_distinct_and_displayed() {
    let all = [
        ShmError::OutOfBounds,
        ShmError::Misaligned,
        ShmError::BadMagic,
        ShmError::UnsupportedVersion { found: 9 },
        ShmError::Corrupt { what: "x" },
        ShmError::NotInitialized,
        ShmError::TooSmall,
        ShmError::InvalidArgument { what: "y" },
        ShmError::NoSuchNode,
        ShmError::NodeTableFull,
        ShmError::StaleGeneration,
        ShmError::NodeDead,
        ShmError::NotLive,
        ShmError::NoDoorbell,
        ShmError::Busy,
    ];
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.code() as usize, i + 1);
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(
        ShmError::UnsupportedVersion { found: 9 }.to_string(),
        "unsupported shared memory format version 9"
    );
}

#[test]
fn region_accessors_check_bounds_and_alignment() {
    let mem = HeapRegion::new(64);
    let r = mem.region();
    assert_eq!(r.len(), 64);
    assert!(r.atomic_u64(56).is_ok());
    assert_eq!(r.atomic_u64(52).unwrap_err(), ShmError::Misaligned);
    assert_eq!(r.atomic_u64(60).unwrap_err(), ShmError::OutOfBounds);
    assert_eq!(r.atomic_u64(64).unwrap_err(), ShmError::OutOfBounds);
    assert_eq!(r.atomic_u64(usize::MAX).unwrap_err(), ShmError::OutOfBounds);
    assert_eq!(r.atomic_u32(58).unwrap_err(), ShmError::Misaligned);
    assert!(r.atomic_u32(60).is_ok());
    let mut buf = [0u8; 8];
    assert!(r.read_bytes(56, &mut buf).is_ok());
    assert_eq!(
        r.read_bytes(57, &mut buf).unwrap_err(),
        ShmError::OutOfBounds
    );
    assert_eq!(
        r.write_bytes(usize::MAX, &buf).unwrap_err(),
        ShmError::OutOfBounds
    );
    r.write_bytes(3, b"abc").unwrap();
    r.read_bytes(3, &mut buf[..3]).unwrap();
    assert_eq!(&buf[..3], b"abc");
}
