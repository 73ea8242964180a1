//! Multiboot2: GRUB enters with the boot information (a size, then 8-aligned
//! tags of type, size and payload); we read the command line (tag 1) and the
//! memory map (tag 6), see the Multiboot2 specification, section 3.6.
//!
//! Parsed by hand rather than with the `multiboot2` crate (0.28): its
//! `memory_areas()` asserts on an unexpected entry size, a panic on input we
//! must treat as untrusted, and it would add six crates for two tags. Every
//! size and offset below is checked against the structure's bounds.

use super::{BootInfo, MemoryRegion, Protocol};

/// What GRUB puts in %eax for a multiboot2 kernel.
pub(super) const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// Largest boot information we read; GRUB's is a few KiB even under UEFI
/// (which adds the EFI memory map), so a larger size is garbage or padding.
const MAX_INFO: usize = 64 << 10;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_MMAP: u32 = 6;
/// Size of a tag header (type, size) and of the info's (total_size, reserved).
const HEADER: usize = 8;
/// An mmap entry: base_addr u64, length u64, type u32, reserved u32.
const MMAP_ENTRY_MIN: usize = 20;

/// Copies the command line and memory map out of GRUB's boot information.
///
/// # Safety
/// `paddr` must be the address GRUB passed in %ebx with the multiboot2 magic,
/// readable through the identity map for the size the structure states.
pub(super) unsafe fn read(paddr: u64) -> BootInfo {
    if paddr == 0 || !paddr.is_multiple_of(8) {
        return BootInfo::new(Protocol::Multiboot2);
    }
    // SAFETY: per the caller's contract at least the 8-byte header is readable.
    let total = unsafe { core::ptr::read_volatile(paddr as *const u32) } as usize;
    let len = total.clamp(HEADER, MAX_INFO);
    // SAFETY: the structure states it spans `total` bytes from `paddr`; we
    // view at most that (and at least its header), and nothing writes it
    // while we parse.
    let bytes = unsafe { core::slice::from_raw_parts(paddr as *const u8, len) };
    parse(bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Parses a multiboot2 information structure. Garbage yields less
/// information, never a panic: a tag that does not fit ends the walk.
fn parse(info: &[u8]) -> BootInfo {
    let mut boot = BootInfo::new(Protocol::Multiboot2);
    let Some(total) = u32_at(info, 0) else {
        return boot;
    };
    // The stated size bounds the walk, and so does what we were given.
    let info = &info[..(total as usize).min(info.len())];
    let mut at = HEADER;
    while let (Some(kind), Some(size)) = (u32_at(info, at), u32_at(info, at + 4)) {
        let size = size as usize;
        let Some(body) = at
            .checked_add(size)
            .filter(|_| size >= HEADER)
            .and_then(|end| info.get(at + HEADER..end))
        else {
            break;
        };
        match kind {
            TAG_END => break,
            TAG_CMDLINE => boot.set_cmdline(body),
            TAG_MMAP => read_mmap(&mut boot, body),
            _ => {}
        }
        // Tags start 8-aligned.
        match at
            .checked_add(size)
            .and_then(|n| n.checked_next_multiple_of(8))
        {
            Some(next) => at = next,
            None => break,
        }
    }
    boot
}

/// The memory-map tag's body: entry_size u32, entry_version u32, entries.
fn read_mmap(boot: &mut BootInfo, body: &[u8]) {
    let Some(entry_size) = u32_at(body, 0) else {
        return;
    };
    let entry_size = entry_size as usize;
    // Entries may grow in later versions; a shorter one is garbage.
    let Some(entries) = body.get(HEADER..).filter(|_| entry_size >= MMAP_ENTRY_MIN) else {
        return;
    };
    for entry in entries.chunks_exact(entry_size) {
        if let (Some(start), Some(len), Some(kind)) =
            (u64_at(entry, 0), u64_at(entry, 8), u32_at(entry, 16))
        {
            boot.push_region(MemoryRegion { start, len, kind });
        }
    }
}

crate::kernel_test!(
    fn boot_multiboot2_parses_cmdline_and_mmap() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf);
        w.tag(TAG_CMDLINE, b"node=0 app=hello\0");
        let mut mmap = [0u8; 8 + 2 * 24];
        mmap[0..4].copy_from_slice(&24u32.to_le_bytes());
        put_entry(&mut mmap[8..32], 0, 0x9fc00, 1);
        put_entry(&mut mmap[32..56], 0x10_0000, 0xff0_0000, 1);
        w.tag(TAG_MMAP, &mmap);
        w.tag(TAG_END, &[]);
        let b = parse(w.finish());
        assert_eq!(b.protocol(), Protocol::Multiboot2);
        assert_eq!(b.cmdline(), "node=0 app=hello");
        let mut regions = b.memory_regions();
        assert_eq!(regions.next().map(|r| (r.start, r.len)), Some((0, 0x9fc00)));
        assert_eq!(regions.next().map(|r| r.end()), Some(0x1000_0000));
        assert!(regions.next().is_none());
    }
);

crate::kernel_test!(
    fn boot_multiboot2_garbage_is_refused_without_panic() {
        // Empty, truncated, and lying about sizes in every field we read.
        assert_eq!(parse(&[]).memory_regions().count(), 0);
        assert_eq!(parse(&[0xff; 7]).memory_regions().count(), 0);
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        w.tag(TAG_CMDLINE, b"ok");
        let n = w.finish().len();
        // A tag whose size runs past the end, one smaller than its header,
        // a total size larger than the buffer, and u32::MAX everywhere.
        for (at, value) in [(n + 4, 1000u32), (n + 4, 4), (0, 4096), (n, u32::MAX)] {
            let mut bad = buf;
            bad[n..n + 8].copy_from_slice(&[6, 0, 0, 0, 32, 0, 0, 0]);
            bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
            let b = parse(&bad[..n + 8 + 24]);
            assert!(b.memory_regions().count() <= 1);
        }
        let b = parse(&[0xff; 128]);
        assert_eq!(b.memory_regions().count(), 0);
        // An mmap whose entry size is too small or larger than the tag.
        for entry_size in [0u32, 19, 1 << 31] {
            let mut mmap = [0u8; 8 + 24];
            mmap[0..4].copy_from_slice(&entry_size.to_le_bytes());
            put_entry(&mut mmap[8..], 0x10_0000, 0x1000, 1);
            let mut buf = [0u8; 128];
            let mut w = Writer::new(&mut buf);
            w.tag(TAG_MMAP, &mmap);
            assert_eq!(parse(w.finish()).memory_regions().count(), 0);
        }
    }
);

/// Builds boot information in a buffer as GRUB lays it out, for the tests.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: HEADER }
    }
    fn tag(&mut self, kind: u32, payload: &[u8]) {
        let size = HEADER + payload.len();
        self.buf[self.len..self.len + 4].copy_from_slice(&kind.to_le_bytes());
        self.buf[self.len + 4..self.len + 8].copy_from_slice(&(size as u32).to_le_bytes());
        self.buf[self.len + HEADER..self.len + size].copy_from_slice(payload);
        self.len = (self.len + size).next_multiple_of(8);
    }
    fn finish(self) -> &'a [u8] {
        self.buf[0..4].copy_from_slice(&(self.len as u32).to_le_bytes());
        &self.buf[..self.len]
    }
}

fn put_entry(out: &mut [u8], start: u64, len: u64, kind: u32) {
    out[0..8].copy_from_slice(&start.to_le_bytes());
    out[8..16].copy_from_slice(&len.to_le_bytes());
    out[16..20].copy_from_slice(&kind.to_le_bytes());
}
