//! The on-disk page store: format and reopen, stamps, removal, a full
//! device, refused devices by name, corrupt entries and copies, I/O errors,
//! and random operation sequences checked against a model across reopens,
//! crashes that cut writes off at any point, and power losses that drop
//! any unflushed writes.
#![cfg(feature = "std")]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use proptest::prelude::*;
use shm_ext::dsm::store::{ENTRY_LEN, Geometry, MIN_DEVICE_BLOCKS, entry_checksum, superblock};
use shm_ext::dsm::{
    BLOCK_BYTES, BlockDevice, DATA_SPACE_START, Disk, DiskError, GlobalAddr, META_KEYS, PAGE_SIZE,
    PageBuf, PageStore, Stamp, StoreRefused,
};

/// Faults to inject into a [`VecDevice`], shared with the test so they can
/// be switched on while a store owns the device.
#[derive(Debug, Default)]
struct Faults {
    /// Writes that still succeed (`None`: all); at 0 every write and flush
    /// fails, as if the machine stopped there (what was written stays).
    writes_left: Cell<Option<u64>>,
    /// Every read fails.
    fail_reads: Cell<bool>,
    /// Writes past the budget still reach the medium (only their
    /// completion is lost): the caller cannot know they happened.
    writes_land: Cell<bool>,
}

/// One block's bytes.
type Block = [u8; BLOCK_BYTES];

/// A device in a `Vec`. Writes since the last flush are logged, so a
/// power loss can drop any of them ([`VecDevice::power_loss`]).
#[derive(Debug)]
struct VecDevice {
    blocks: Vec<Block>,
    /// Writes since the last flush: block, bytes before, bytes after.
    unflushed: Vec<(usize, Box<Block>, Box<Block>)>,
    faults: Rc<Faults>,
    writes: u64,
    flushes: u64,
}

impl VecDevice {
    fn new(blocks: u64) -> Self {
        Self {
            blocks: vec![[0; BLOCK_BYTES]; blocks as usize],
            unflushed: Vec::new(),
            faults: Rc::default(),
            writes: 0,
            flushes: 0,
        }
    }

    /// The device's bytes, as a fresh device without faults (a reboot).
    fn reboot(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            ..Self::new(0)
        }
    }

    /// The device after a power loss: what was flushed, plus the writes
    /// since then that `keep` picks (by their index and block), in order;
    /// the others never reached the medium (the device may reorder writes
    /// between flushes).
    fn power_loss(&self, mut keep: impl FnMut(usize, usize) -> bool) -> Self {
        let mut blocks = self.blocks.clone();
        for (n, before, _) in self.unflushed.iter().rev() {
            blocks[*n] = **before;
        }
        for (i, (n, _, after)) in self.unflushed.iter().enumerate() {
            if keep(i, *n) {
                blocks[*n] = **after;
            }
        }
        Self {
            blocks,
            ..Self::new(0)
        }
    }
}

impl BlockDevice for VecDevice {
    fn blocks(&self) -> u64 {
        self.blocks.len() as u64
    }
    fn read_block(&mut self, n: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), DiskError> {
        if self.faults.fail_reads.get() {
            return Err(DiskError::Io);
        }
        let b = self.blocks.get(n as usize).ok_or(DiskError::OutOfRange)?;
        buf.copy_from_slice(b);
        Ok(())
    }
    fn write_block(&mut self, n: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), DiskError> {
        let fail = match self.faults.writes_left.get() {
            Some(0) if self.faults.writes_land.get() => true,
            Some(0) => return Err(DiskError::Io),
            Some(k) => {
                self.faults.writes_left.set(Some(k - 1));
                false
            }
            None => false,
        };
        let b = self
            .blocks
            .get_mut(n as usize)
            .ok_or(DiskError::OutOfRange)?;
        let before = Box::new(*b);
        b.copy_from_slice(buf);
        self.unflushed.push((n as usize, before, Box::new(*buf)));
        self.writes += 1;
        if fail { Err(DiskError::Io) } else { Ok(()) }
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        if self.faults.writes_left.get() == Some(0) {
            return Err(DiskError::Io);
        }
        self.unflushed.clear();
        self.flushes += 1;
        Ok(())
    }
}

fn page(i: u64) -> GlobalAddr {
    GlobalAddr(DATA_SPACE_START + u128::from(i) * PAGE_SIZE)
}

fn stamp(version: u64, seq: u64) -> Stamp {
    Stamp { version, seq }
}

/// A page whose bytes depend on `tag` everywhere.
fn data(tag: u8) -> PageBuf {
    let mut p = PageBuf([0; BLOCK_BYTES]);
    for (i, b) in p.0.iter_mut().enumerate() {
        *b = tag ^ (i as u8).wrapping_mul(31);
    }
    p
}

fn reopen(s: PageStore<VecDevice>) -> (PageStore<VecDevice>, shm_ext::dsm::OpenReport) {
    PageStore::open(s.into_device().reboot()).expect("reopen")
}

fn refusal(dev: VecDevice) -> StoreRefused {
    match PageStore::open(dev) {
        Ok(_) => panic!("opened"),
        Err((_, why)) => why,
    }
}

fn loaded(s: &mut PageStore<VecDevice>, p: GlobalAddr) -> Option<(Stamp, u8)> {
    let (st, buf) = s.load(p).expect("load")?;
    let tag = buf.0[0];
    assert_eq!(buf.0, data(tag).0, "bytes of {p}");
    Some((st, tag))
}

#[test]
fn geometry_fills_the_device() {
    for blocks in MIN_DEVICE_BLOCKS..2000 {
        let g = Geometry::for_device(blocks).unwrap();
        assert_eq!(g.table_start, 2);
        assert_eq!(g.table_blocks, g.data_blocks.div_ceil(64));
        assert_eq!(g.data_start, 2 + g.table_blocks);
        assert!(g.data_start + g.data_blocks <= blocks, "{blocks}");
        // One more data block would not fit.
        let d = g.data_blocks + 1;
        assert!(2 + d.div_ceil(64) + d > blocks, "{blocks}");
    }
    assert_eq!(Geometry::for_device(MIN_DEVICE_BLOCKS - 1), None);
    let tiny = VecDevice::new(MIN_DEVICE_BLOCKS - 1);
    assert_eq!(PageStore::format(tiny, 0).unwrap_err(), DiskError::Full);
}

#[test]
fn format_and_open_round_trip_pages_and_meta() {
    let mut s = PageStore::format(VecDevice::new(300), 7).unwrap();
    assert_eq!(s.node(), 7);
    assert_eq!(s.capacity(), s.geometry().data_blocks - 1);
    assert_eq!(s.free_pages(), s.capacity());
    assert_eq!(s.meta(0), None);
    for i in 0..20 {
        s.save(page(i), stamp(i, 1), &data(i as u8)).unwrap();
    }
    s.set_meta(0, 0xdead_beef_u128 << 64).unwrap();
    s.set_meta(15, 1).unwrap();
    s.set_meta(3, 0).unwrap();
    assert_eq!(s.set_meta(META_KEYS, 1), Err(DiskError::OutOfRange));
    assert_eq!(s.meta(META_KEYS), None);
    s.sync().unwrap();
    assert!(s.writes() > 0 && s.flushes() > 0);

    let (mut s, report) = reopen(s);
    assert_eq!(report.pages, 20);
    assert_eq!(report.bad_entries, 0);
    assert_eq!(report.superseded, 0);
    assert_eq!(report.superblocks, 2);
    assert_eq!(s.node(), 7);
    assert_eq!(s.meta(0), Some(0xdead_beef_u128 << 64));
    assert_eq!(s.meta(15), Some(1));
    assert_eq!(s.meta(3), Some(0));
    assert_eq!(s.meta(1), None);
    assert_eq!(s.free_pages(), s.capacity() - 20);
    let expect: Vec<_> = (0..20).map(|i| (page(i), stamp(i, 1))).collect();
    assert_eq!(s.pages(), expect);
    let firsts: Vec<_> = expect.iter().map(|&(a, _)| a).collect();
    assert_eq!(s.pages_after(None, 5), firsts[..5]);
    assert_eq!(s.pages_after(Some(page(4)), 100), firsts[5..]);
    assert_eq!(s.pages_after(Some(page(19)), 100), []);
    for i in 0..20 {
        assert_eq!(s.stamp(page(i)), Some(stamp(i, 1)));
        assert_eq!(loaded(&mut s, page(i)), Some((stamp(i, 1), i as u8)));
    }
    assert_eq!(s.load(page(99)).unwrap().map(|(s, _)| s), None);
    assert!(s.reads() > 0);
}

#[test]
fn a_save_costs_two_writes_and_no_reads() {
    let mut s = PageStore::format(VecDevice::new(100), 0).unwrap();
    let (r, w) = (s.reads(), s.writes());
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    s.save(page(1), stamp(1, 1), &data(2)).unwrap();
    assert_eq!((s.reads() - r, s.writes() - w), (0, 4));
    assert_eq!(s.device().writes, s.writes());
}

#[test]
fn newest_stamp_wins_and_older_saves_are_ignored() {
    let mut s = PageStore::format(VecDevice::new(100), 1).unwrap();
    s.save(page(1), stamp(2, 0), &data(1)).unwrap();
    s.save(page(1), stamp(2, 5), &data(2)).unwrap();
    s.save(page(1), stamp(1, 9), &data(3)).unwrap(); // older: ignored
    s.save(page(1), stamp(2, 4), &data(4)).unwrap(); // older: ignored
    assert_eq!(s.stamp(page(1)), Some(stamp(2, 5)));
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(2, 5), 2)));
    // No sync: the older copy is still on disk, and loses on reopen.
    let (mut s, report) = reopen(s);
    assert_eq!(report.pages, 1);
    assert_eq!(report.superseded, 1);
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(2, 5), 2)));
    s.save(page(1), stamp(1, 0), &data(5)).unwrap();
    // An equal stamp replaces (as MemDisk does); the serial orders them.
    s.save(page(1), stamp(2, 5), &data(6)).unwrap();
    s.sync().unwrap();
    let (mut s, report) = reopen(s);
    assert_eq!(report.superseded, 0, "sync cleared the held copies");
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(2, 5), 6)));
}

#[test]
fn remove_survives_reopen_even_with_held_copies() {
    let mut s = PageStore::format(VecDevice::new(100), 1).unwrap();
    for i in 0..5 {
        s.save(page(i), stamp(1, 0), &data(i as u8)).unwrap();
    }
    s.sync().unwrap();
    // Page 2 gets held copies, then is removed without a sync.
    s.save(page(2), stamp(1, 1), &data(20)).unwrap();
    s.save(page(2), stamp(1, 2), &data(21)).unwrap();
    s.remove(page(2)).unwrap();
    s.remove(page(3)).unwrap();
    s.remove(page(42)).unwrap(); // never stored: fine
    assert_eq!(s.stamp(page(2)), None);
    assert_eq!(s.load(page(2)).unwrap().map(|(s, _)| s), None);
    assert_eq!(s.free_pages(), s.capacity() - 3);
    let (mut s, report) = reopen(s);
    assert_eq!(report.pages, 3);
    assert_eq!(report.superseded, 0);
    let pages: Vec<_> = s.pages().into_iter().map(|(a, _)| a).collect();
    assert_eq!(pages, vec![page(0), page(1), page(4)]);
    assert_eq!(loaded(&mut s, page(4)), Some((stamp(1, 0), 4)));
}

#[test]
fn full_device_refuses_new_pages_but_rewrites_old_ones() {
    let mut s = PageStore::format(VecDevice::new(MIN_DEVICE_BLOCKS + 3), 0).unwrap();
    let cap = s.capacity();
    assert_eq!(cap, 4);
    for i in 0..cap {
        s.save(page(i), stamp(1, 0), &data(i as u8)).unwrap();
    }
    assert_eq!(s.free_pages(), 0);
    assert_eq!(
        s.save(page(cap), stamp(1, 0), &data(9)),
        Err(DiskError::Full)
    );
    // Rewrites go out of place through the spare block, flushing to
    // recycle held blocks, however many there are.
    for round in 1..20u64 {
        for i in 0..cap {
            s.save(page(i), stamp(1, round), &data((i + round) as u8))
                .unwrap();
        }
    }
    assert_eq!(
        s.save(page(cap), stamp(1, 0), &data(9)),
        Err(DiskError::Full)
    );
    s.remove(page(0)).unwrap();
    s.save(page(cap), stamp(1, 0), &data(9)).unwrap();
    let (mut s, _) = reopen(s);
    assert_eq!(s.free_pages(), 0);
    assert_eq!(loaded(&mut s, page(cap)), Some((stamp(1, 0), 9)));
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 19), 20)));
}

#[test]
fn unaligned_page_addresses_are_refused() {
    let mut s = PageStore::format(VecDevice::new(100), 0).unwrap();
    let odd = GlobalAddr(page(1).0 + 8);
    assert_eq!(
        s.save(odd, stamp(1, 0), &data(0)),
        Err(DiskError::OutOfRange)
    );
}

#[test]
fn crash_between_data_and_table_write_keeps_the_old_copy() {
    let mut s = PageStore::format(VecDevice::new(100), 0).unwrap();
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    s.sync().unwrap();
    let dev = s.into_device();
    dev.faults.writes_left.set(Some(1)); // the data write lands, the table write not
    let (mut s, _) = PageStore::open(dev).unwrap();
    assert_eq!(s.save(page(1), stamp(1, 1), &data(2)), Err(DiskError::Io));
    let (mut s, report) = PageStore::open(s.into_device().reboot()).unwrap();
    assert_eq!(report.pages, 1);
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 0), 1)));
    // The store still works after the crash.
    s.save(page(1), stamp(1, 1), &data(2)).unwrap();
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 1), 2)));
}

#[test]
fn an_entry_without_its_data_falls_back_to_the_older_copy() {
    // As if the device reordered writes: the new table entry reached the
    // disk, the new data did not.
    let mut s = PageStore::format(VecDevice::new(100), 0).unwrap();
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    s.sync().unwrap();
    s.save(page(1), stamp(1, 1), &data(2)).unwrap();
    let g = s.geometry();
    let mut dev = s.into_device().reboot();
    let newest = dev.blocks[g.data_start as usize..]
        .iter()
        .position(|b| b[..] == data(2).0[..])
        .unwrap();
    dev.blocks[g.data_start as usize + newest] = [0; BLOCK_BYTES];
    let (mut s, report) = PageStore::open(dev).unwrap();
    assert_eq!(report.bad_copies, 1);
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 0), 1)));
}

#[test]
fn a_crash_in_a_remove_keeps_the_current_copy() {
    // Page 0's held older copy and its current copy have their entries in
    // different table blocks; a remove that gets one table write done must
    // not leave the older copy as the only one.
    let mut s = PageStore::format(VecDevice::new(200), 0).unwrap();
    for i in 0..64 {
        s.save(page(i), stamp(1, 0), &data(i as u8)).unwrap();
    }
    s.sync().unwrap();
    s.save(page(0), stamp(1, 1), &data(100)).unwrap();
    for budget in 0..3 {
        let dev = s.device().reboot();
        dev.faults.writes_left.set(Some(budget));
        let (mut c, report) = PageStore::open(dev).unwrap();
        assert_eq!(report.superseded, 1);
        let r = c.remove(page(0));
        let (mut c, _) = PageStore::open(c.into_device().reboot()).unwrap();
        match budget {
            0 | 1 => {
                assert_eq!(r, Err(DiskError::Io));
                assert_eq!(loaded(&mut c, page(0)), Some((stamp(1, 1), 100)));
            }
            _ => {
                assert_eq!(r, Ok(()));
                assert_eq!(c.stamp(page(0)), None);
            }
        }
        assert_eq!(c.pages().len(), 63 + usize::from(budget < 2));
    }
}

#[test]
fn held_copies_are_released_only_after_their_replacements_are_flushed() {
    // A full device: rewriting page 1 needs page 0's held block, so the
    // store releases it; a power loss during that release (the device
    // kept the table write, not the unflushed data of page 0's new copy)
    // must not lose page 0.
    let mut s = PageStore::format(VecDevice::new(MIN_DEVICE_BLOCKS + 3), 0).unwrap();
    for i in 0..4 {
        s.save(page(i), stamp(1, 0), &data(i as u8)).unwrap();
    }
    s.sync().unwrap();
    s.save(page(0), stamp(1, 1), &data(10)).unwrap();
    s.device().faults.writes_left.set(Some(1));
    assert_eq!(s.save(page(1), stamp(1, 1), &data(11)), Err(DiskError::Io));
    let table = s.geometry().table_start as usize;
    let dev = s.into_device().power_loss(|_, n| n == table);
    let (mut s, _) = PageStore::open(dev).unwrap();
    assert_eq!(loaded(&mut s, page(0)), Some((stamp(1, 1), 10)));
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 0), 1)));
}

#[test]
fn cleared_entries_are_flushed_before_sync_returns() {
    // Page 0's older copy is held in table block 0, its newer one sits in
    // table block 1. After a sync, a remove, and a power loss that keeps
    // only the remove's write, the older copy must not come back.
    let mut s = PageStore::format(VecDevice::new(200), 0).unwrap();
    for i in 1..64 {
        s.save(page(i), stamp(1, 0), &data(i as u8)).unwrap();
    }
    s.save(page(0), stamp(1, 0), &data(0)).unwrap();
    s.save(page(0), stamp(1, 1), &data(100)).unwrap();
    s.sync().unwrap();
    s.remove(page(0)).unwrap();
    let second_table = s.geometry().table_start as usize + 1;
    let dev = s.into_device().power_loss(|_, n| n == second_table);
    let (s, report) = PageStore::open(dev).unwrap();
    assert_eq!((report.pages, report.superseded), (63, 0));
    assert_eq!(s.stamp(page(0)), None);
}

#[test]
fn zeroed_device_is_not_formatted() {
    assert_eq!(refusal(VecDevice::new(64)), StoreRefused::NotFormatted);
    assert_eq!(refusal(VecDevice::new(0)), StoreRefused::NotFormatted);
}

#[test]
fn garbage_devices_are_refused_by_name() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut dev = VecDevice::new(64);
    for b in dev.blocks.iter_mut().flat_map(|b| b.iter_mut()) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (dev, why) = PageStore::open(dev).unwrap_err();
    assert_eq!(why, StoreRefused::BadMagic);
    assert!(why.to_string().contains("magic"));
    // The device came back: it can be formatted.
    let s = PageStore::format(dev, 3).unwrap();
    let (s, _) = reopen(s);
    assert_eq!(s.node(), 3);
}

#[test]
fn superblock_damage_is_refused_by_name() {
    let good = PageStore::format(VecDevice::new(64), 0)
        .unwrap()
        .into_device();
    let edit = |f: &dyn Fn(&mut [u8; BLOCK_BYTES])| {
        let mut d = good.reboot();
        f(&mut d.blocks[0]);
        f(&mut d.blocks[1]);
        refusal(d)
    };
    assert_eq!(edit(&|b| b[100] ^= 1), StoreRefused::BadChecksum);
    assert_eq!(
        edit(&|b| b[superblock::VERSION] = 9),
        StoreRefused::UnsupportedVersion { found: 9 }
    );
    assert_eq!(edit(&|b| b[0] = b'X'), StoreRefused::BadMagic);
    // A good checksum over bad fields.
    let fix = |b: &mut [u8; BLOCK_BYTES]| {
        let sum = shm_ext::dsm::store::superblock_checksum(b);
        b[superblock::CHECKSUM..superblock::CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    };
    let why = edit(&|b| {
        b[superblock::TABLE_BLOCKS] = 2;
        fix(b)
    });
    assert!(matches!(why, StoreRefused::BadGeometry { .. }), "{why:?}");
    assert!(why.to_string().contains("table size"), "{why}");
    let why = edit(&|b| {
        b[4000] = 1;
        fix(b)
    });
    assert!(matches!(why, StoreRefused::BadGeometry { .. }), "{why:?}");
    // One damaged copy is survivable: the other one is used.
    let mut d = good.reboot();
    d.blocks[1][100] ^= 1;
    let (_, report) = PageStore::open(d).unwrap();
    assert_eq!(report.superblocks, 1);
    let mut d = good.reboot();
    d.blocks[0] = [0; BLOCK_BYTES];
    assert!(PageStore::open(d).is_ok());
}

#[test]
fn truncated_device_is_refused() {
    let mut s = PageStore::format(VecDevice::new(200), 0).unwrap();
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    let mut dev = s.into_device();
    dev.blocks.truncate(150);
    assert_eq!(
        refusal(dev.reboot()),
        StoreRefused::Truncated {
            recorded: 200,
            actual: 150
        }
    );
    dev.blocks.truncate(1);
    assert_eq!(
        refusal(dev.reboot()),
        StoreRefused::Truncated {
            recorded: 200,
            actual: 1
        }
    );
    // A grown device is fine: the store keeps its geometry.
    let mut s = PageStore::format(VecDevice::new(200), 0).unwrap();
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    let mut dev = s.into_device();
    dev.blocks.resize(400, [0; BLOCK_BYTES]);
    let (s, report) = PageStore::open(dev).unwrap();
    assert_eq!((report.pages, s.geometry().blocks), (1, 200));
}

#[test]
fn read_errors_refuse_open_and_fail_load() {
    let mut s = PageStore::format(VecDevice::new(64), 0).unwrap();
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    let faults = s.device().faults.clone();
    faults.fail_reads.set(true);
    assert_eq!(s.load(page(1)).map(|r| r.is_some()), Err(DiskError::Io));
    faults.fail_reads.set(false);
    // A failed read is not a bad copy: the page stays.
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 0), 1)));
    faults.fail_reads.set(true);
    let (dev, why) = PageStore::open(s.into_device()).unwrap_err();
    assert_eq!(why, StoreRefused::Io);
    faults.fail_reads.set(false);
    let (s, report) = PageStore::open(dev).unwrap();
    assert_eq!((report.pages, s.node()), (1, 0));
}

#[test]
fn failed_writes_are_finished_by_the_next_sync() {
    let mut s = PageStore::format(VecDevice::new(64), 0).unwrap();
    for i in 0..3 {
        s.save(page(i), stamp(1, 0), &data(i as u8)).unwrap();
    }
    s.sync().unwrap();
    let faults = s.device().faults.clone();
    let free = s.free_pages();
    // A remove whose table write fails: gone here, its block out of use.
    faults.writes_left.set(Some(0));
    assert_eq!(s.remove(page(0)), Err(DiskError::Io));
    assert_eq!(s.stamp(page(0)), None);
    // A save whose table write fails: not stored.
    faults.writes_left.set(Some(1));
    assert_eq!(s.save(page(5), stamp(1, 0), &data(5)), Err(DiskError::Io));
    assert_eq!(s.stamp(page(5)), None);
    // An overwrite whose data write fails: the old copy stays.
    faults.writes_left.set(Some(0));
    assert_eq!(s.save(page(1), stamp(2, 0), &data(9)), Err(DiskError::Io));
    assert_eq!(s.sync(), Err(DiskError::Io));
    faults.writes_left.set(None);
    assert_eq!(loaded(&mut s, page(1)), Some((stamp(1, 0), 1)));
    s.sync().unwrap();
    assert_eq!(s.free_pages(), free + 1);
    let (mut s, report) = reopen(s);
    assert_eq!(report.pages, 2);
    assert_eq!(s.stamp(page(0)), None);
    assert_eq!(s.stamp(page(5)), None);
    assert_eq!(loaded(&mut s, page(2)), Some((stamp(1, 0), 2)));
}

#[test]
fn a_save_whose_failed_table_write_landed_is_cleared_by_the_next_sync() {
    let mut s = PageStore::format(VecDevice::new(64), 0).unwrap();
    s.save(page(1), stamp(1, 0), &data(1)).unwrap();
    let faults = s.device().faults.clone();
    faults.writes_left.set(Some(1));
    faults.writes_land.set(true);
    assert_eq!(s.save(page(2), stamp(1, 0), &data(2)), Err(DiskError::Io));
    assert_eq!(s.stamp(page(2)), None);
    faults.writes_left.set(None);
    s.sync().unwrap();
    let (s, report) = reopen(s);
    assert_eq!(report.pages, 1);
    assert_eq!(s.stamp(page(2)), None);
}

/// Block index (in the device) and byte offset of data block `b`'s entry.
fn entry_at(g: &Geometry, b: u64) -> (usize, usize) {
    (
        (g.table_start + b / 64) as usize,
        (b % 64) as usize * ENTRY_LEN,
    )
}

#[test]
fn corrupt_entries_and_copies_are_reported_and_the_rest_loads() {
    let mut s = PageStore::format(VecDevice::new(300), 0).unwrap();
    for i in 0..10 {
        s.save(page(i), stamp(1, i), &data(i as u8)).unwrap();
    }
    s.sync().unwrap();
    let g = s.geometry();
    let mut dev = s.into_device().reboot();
    // Entries were allocated in block order: page i in data block i.
    // Entry 3: a flipped bit (bad checksum).
    let (t, o) = entry_at(&g, 3);
    dev.blocks[t][o + 5] ^= 0x10;
    // Entry 4: unaligned page address, with a good checksum.
    let (t, o) = entry_at(&g, 4);
    dev.blocks[t][o] = 8;
    let sum = entry_checksum(4, &dev.blocks[t][o..o + ENTRY_LEN]);
    dev.blocks[t][o + 56..o + 64].copy_from_slice(&sum.to_le_bytes());
    // Entry 5 copied into slot 6 (bound to its slot: bad there).
    let (t5, o5) = entry_at(&g, 5);
    let (t6, o6) = entry_at(&g, 6);
    let e5: Vec<u8> = dev.blocks[t5][o5..o5 + ENTRY_LEN].to_vec();
    dev.blocks[t6][o6..o6 + ENTRY_LEN].copy_from_slice(&e5);
    // An entry in a slot past the data area (the table's last block has
    // slots beyond it).
    assert!(!g.data_blocks.is_multiple_of(64));
    let (t, o) = entry_at(&g, g.data_blocks);
    dev.blocks[t][o..o + ENTRY_LEN].copy_from_slice(&e5);
    let sum = entry_checksum(g.data_blocks, &e5);
    dev.blocks[t][o + 56..o + 64].copy_from_slice(&sum.to_le_bytes());
    // Data block 7: a flipped byte.
    dev.blocks[(g.data_start + 7) as usize][1000] ^= 1;

    let (mut s, report) = PageStore::open(dev).unwrap();
    assert_eq!(report.bad_entries, 4);
    assert_eq!(report.pages, 7);
    assert_eq!(s.stamp(page(3)), None);
    assert_eq!(s.stamp(page(6)), None);
    assert_eq!(
        s.load(page(7)).map(|r| r.is_some()),
        Err(DiskError::BadPage)
    );
    // Forgotten, here and on disk.
    assert_eq!(s.stamp(page(7)), None);
    assert_eq!(s.load(page(7)).map(|r| r.is_some()), Ok(false));
    for i in [0, 1, 2, 5, 8, 9] {
        assert_eq!(loaded(&mut s, page(i)), Some((stamp(1, i), i as u8)));
    }
    // Blocks of ignored entries are free again and get reused.
    let free = s.free_pages();
    s.save(page(3), stamp(2, 0), &data(33)).unwrap();
    assert_eq!(s.free_pages(), free - 1);
    let (mut s, report) = reopen(s);
    assert_eq!(report.pages, 7);
    assert_eq!(loaded(&mut s, page(3)), Some((stamp(2, 0), 33)));
    assert_eq!(s.stamp(page(7)), None);
}

#[test]
fn meta_survives_a_torn_superblock_write() {
    let mut s = PageStore::format(VecDevice::new(64), 0).unwrap();
    s.set_meta(2, 42).unwrap();
    s.set_meta(2, 43).unwrap();
    let dev = s.into_device();
    dev.faults.writes_left.set(Some(0));
    let (mut s, _) = PageStore::open(dev).unwrap();
    assert_eq!(s.set_meta(2, 44), Err(DiskError::Io));
    assert_eq!(s.meta(2), Some(43));
    let (s, _) = PageStore::open(s.into_device().reboot()).unwrap();
    assert_eq!(s.meta(2), Some(43));
    // The copy being written is torn: the other one holds.
    let mut dev = s.into_device();
    let (mut s, _) = PageStore::open(dev.reboot()).unwrap();
    s.set_meta(2, 44).unwrap();
    let torn = s.into_device();
    let copy = (0..2).find(|&c| torn.blocks[c] != dev.blocks[c]).unwrap();
    dev.blocks[copy][..512].copy_from_slice(&torn.blocks[copy][..512]);
    dev.blocks[copy][superblock::META + 40] ^= 0xff; // half-written
    let (s, report) = PageStore::open(dev).unwrap();
    assert_eq!(report.superblocks, 1);
    assert_eq!(s.meta(2), Some(43));
}

/// One step of the random tests.
#[derive(Clone, Debug)]
enum Op {
    Save {
        page: u64,
        version: u64,
        seq: u64,
        tag: u8,
    },
    Remove {
        page: u64,
    },
    Sync,
    Reopen,
    Meta {
        key: usize,
        value: u128,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..10, 0u64..3, 0u64..3, any::<u8>())
            .prop_map(|(page, version, seq, tag)| Op::Save { page, version, seq, tag }),
        2 => (0u64..10).prop_map(|page| Op::Remove { page }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => (0usize..META_KEYS, any::<u128>()).prop_map(|(key, value)| Op::Meta { key, value }),
    ]
}

/// What the store should hold.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    pages: BTreeMap<GlobalAddr, (Stamp, u8)>,
    meta: BTreeMap<usize, u128>,
}

impl Model {
    /// Applies `op`; the result the store must give.
    fn apply(&mut self, op: &Op, capacity: u64) -> Result<(), DiskError> {
        match *op {
            Op::Save {
                page: p,
                version,
                seq,
                tag,
            } => {
                let st = stamp(version, seq);
                match self.pages.get(&page(p)) {
                    Some((old, _)) if *old > st => return Ok(()),
                    None if self.pages.len() as u64 >= capacity => return Err(DiskError::Full),
                    _ => {}
                }
                self.pages.insert(page(p), (st, tag));
            }
            Op::Remove { page: p } => {
                self.pages.remove(&page(p));
            }
            Op::Meta { key, value } => {
                self.meta.insert(key, value);
            }
            Op::Sync | Op::Reopen => {}
        }
        Ok(())
    }
}

fn run(s: &mut PageStore<VecDevice>, op: &Op) -> Result<(), DiskError> {
    match *op {
        Op::Save {
            page: p,
            version,
            seq,
            tag,
        } => s.save(page(p), stamp(version, seq), &data(tag)),
        Op::Remove { page: p } => s.remove(page(p)),
        Op::Sync => s.sync(),
        Op::Meta { key, value } => s.set_meta(key, value),
        Op::Reopen => Ok(()),
    }
}

/// The store's contents, every page loaded and checked.
fn contents(s: &mut PageStore<VecDevice>) -> Model {
    let mut m = Model::default();
    for (a, st) in s.pages() {
        let (lst, tag) = loaded(s, a).expect("listed page loads");
        assert_eq!(lst, st);
        m.pages.insert(a, (st, tag));
    }
    for k in 0..META_KEYS {
        if let Some(v) = s.meta(k) {
            m.meta.insert(k, v);
        }
    }
    m
}

/// The store's contents after a power loss: a copy that fails its
/// checksum (its entry reached the disk, its data did not) is absent.
fn contents_lossy(s: &mut PageStore<VecDevice>) -> Model {
    let mut m = Model::default();
    for (a, st) in s.pages() {
        match s.load(a) {
            Ok(Some((lst, buf))) => {
                assert_eq!(lst, st);
                assert_eq!(buf.0, data(buf.0[0]).0, "bytes of {a}");
                m.pages.insert(a, (st, buf.0[0]));
            }
            Err(DiskError::BadPage) => {}
            other => panic!("{a}: {:?}", other.map(|r| r.map(|(s, _)| s))),
        }
    }
    for k in 0..META_KEYS {
        if let Some(v) = s.meta(k) {
            m.meta.insert(k, v);
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_match_a_model(
        blocks in prop_oneof![MIN_DEVICE_BLOCKS..16, 66u64..140],
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut s = PageStore::format(VecDevice::new(blocks), 1).unwrap();
        let cap = s.capacity();
        let mut model = Model::default();
        for op in &ops {
            if let Op::Reopen = op {
                let (r, report) = reopen(s);
                s = r;
                prop_assert_eq!(report.bad_entries + report.bad_copies, 0);
            } else {
                let want = model.apply(op, cap);
                prop_assert_eq!(run(&mut s, op), want, "{:?}", op);
            }
            prop_assert_eq!(s.free_pages(), cap - model.pages.len() as u64);
            prop_assert_eq!(&contents(&mut s), &model);
        }
        let (mut s, _) = reopen(s);
        prop_assert_eq!(&contents(&mut s), &model);
    }

    /// A crash (every write from some point on lost) during any operation
    /// leaves every page and meta value as it was before or after it.
    #[test]
    fn a_crash_anywhere_leaves_old_or_new(
        blocks in prop_oneof![MIN_DEVICE_BLOCKS..16, 66u64..140],
        ops in prop::collection::vec(op(), 1..120),
        last in op(),
        budget in 0u64..8,
    ) {
        let mut s = PageStore::format(VecDevice::new(blocks), 1).unwrap();
        let cap = s.capacity();
        let mut model = Model::default();
        for op in &ops {
            if let Op::Reopen = op {
                s = reopen(s).0;
            } else {
                let _ = run(&mut s, op);
                let _ = model.apply(op, cap);
            }
        }
        let before = model.clone();
        let mut after = model;
        let _ = after.apply(&last, cap);
        let dev = s.into_device();
        dev.faults.writes_left.set(Some(budget));
        let (mut s, _) = PageStore::open(dev).unwrap();
        let _ = run(&mut s, &last);
        let (mut s, report) = PageStore::open(s.into_device().reboot()).unwrap();
        prop_assert_eq!(report.bad_entries, 0);
        let got = contents(&mut s);
        let keys: std::collections::BTreeSet<_> =
            before.pages.keys().chain(after.pages.keys()).chain(got.pages.keys()).collect();
        for k in keys {
            let g = got.pages.get(k);
            prop_assert!(g == before.pages.get(k) || g == after.pages.get(k),
                "{}: got {:?}, before {:?}, after {:?}", k, g, before.pages.get(k), after.pages.get(k));
        }
        prop_assert!(got.meta == before.meta || got.meta == after.meta);
        // And it goes on working.
        let mut next = got.clone();
        let op = Op::Save { page: 0, version: 9, seq: 9, tag: 7 };
        prop_assert_eq!(run(&mut s, &op), next.apply(&op, cap));
        let (mut s, _) = reopen(s);
        prop_assert_eq!(contents(&mut s), next);
    }

    /// A power loss that drops any of the writes since the last flush
    /// leaves every page in a state it had since the last sync (at that
    /// sync or after), and the meta values as one superblock write left
    /// them; nothing synced is lost.
    #[test]
    fn a_power_loss_leaves_states_since_the_last_sync(
        blocks in prop_oneof![MIN_DEVICE_BLOCKS..16, 66u64..140],
        ops in prop::collection::vec(op(), 1..200),
        keep in prop::collection::vec(any::<bool>(), 1..64),
        last in op(),
        budget in prop::option::of(0u64..6),
    ) {
        let mut s = PageStore::format(VecDevice::new(blocks), 1).unwrap();
        let cap = s.capacity();
        let mut model = Model::default();
        // The model at the last sync and every state since.
        let mut since_sync = vec![model.clone()];
        for op in &ops {
            match op {
                Op::Reopen => s = reopen(s).0,
                _ => {
                    prop_assert_eq!(run(&mut s, op), model.apply(op, cap), "{:?}", op);
                }
            }
            // A clean reopen is no sync: copies held since the last sync
            // are still on disk and may be fallen back to.
            if matches!(op, Op::Sync) {
                since_sync.clear();
            }
            since_sync.push(model.clone());
        }
        // The last operation may be cut short by the power loss itself.
        let mut after = model.clone();
        if let Some(budget) = budget {
            s.device().faults.writes_left.set(Some(budget));
            let _ = run(&mut s, &last);
            let _ = after.apply(&last, cap);
            since_sync.push(after);
        }
        let dev = s.into_device().power_loss(|i, _| keep[i % keep.len()]);
        let (mut s, report) = PageStore::open(dev).unwrap();
        prop_assert_eq!(report.bad_entries, 0);
        let got = contents_lossy(&mut s);
        let keys: std::collections::BTreeSet<_> = since_sync
            .iter()
            .flat_map(|m| m.pages.keys())
            .chain(got.pages.keys())
            .collect();
        for k in keys {
            let g = got.pages.get(k);
            prop_assert!(since_sync.iter().any(|m| m.pages.get(k) == g),
                "{}: got {:?}, states since the last sync {:?}",
                k, g, since_sync.iter().map(|m| m.pages.get(k)).collect::<Vec<_>>());
        }
        prop_assert!(since_sync.iter().any(|m| m.meta == got.meta), "meta {:?}", got.meta);
    }
}
