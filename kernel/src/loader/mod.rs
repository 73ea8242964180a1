//! The ELF loader: validates an app image and maps it into an address space.
//!
//! An image is untrusted input (it may be anything the build or a later
//! loading path hands us), so every header field is checked before it is
//! used, with checked arithmetic, and before `xmas-elf` is asked for anything
//! that it would index without checking (its program-header accessor slices
//! the input blindly, and its readers assert alignment). Accepted: a static,
//! little-endian ELF64 executable for x86_64 whose PT_LOAD segments lie in
//! the image part of user space ([`IMAGE_BASE`]..[`IMAGE_END`]), never share
//! a page, are not both writable and executable (W^X), and whose entry point
//! lies in an executable segment. Interpreters, dynamic sections and TLS are
//! refused: apps are static and single-threaded.

use crate::memory::paging::MapError;
use crate::memory::space::{self, AddressSpace};
use alloc::vec::Vec;
use core::fmt;
use x86_64::structures::paging::PageTableFlags as Flags;
use xmas_elf::ElfFile;
use xmas_elf::header::{self, Class, Data, Machine, OsAbi, Version};
use xmas_elf::program::{ProgramHeader, Type};

/// Lowest address a segment may start at.
pub const IMAGE_BASE: u64 = space::USER_BASE;
/// Segments end below the mapping window.
pub const IMAGE_END: u64 = space::MAP_BASE;
/// Most PT_LOAD segments an image may have.
const MAX_LOAD_SEGMENTS: usize = 8;
/// Most program headers an image may have.
const MAX_PROGRAM_HEADERS: u16 = 32;
/// Most memory an image may occupy.
const MAX_IMAGE_BYTES: u64 = 64 << 20;
const PAGE: u64 = 4096;
const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// Shorter than its headers say.
    Truncated,
    /// The image does not start 8-byte aligned in memory.
    Misaligned,
    /// No ELF magic.
    NotElf,
    /// Not what apps are: a header field has the wrong value.
    Unsupported(&'static str),
    /// A field is out of range or inconsistent.
    Malformed(&'static str),
    /// Mapping the image failed.
    Map(MapError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Truncated => f.write_str("truncated ELF image"),
            LoadError::Misaligned => f.write_str("ELF image not 8-byte aligned in memory"),
            LoadError::NotElf => f.write_str("not an ELF image"),
            LoadError::Unsupported(what) => write!(f, "unsupported ELF image: {what}"),
            LoadError::Malformed(what) => write!(f, "malformed ELF image: {what}"),
            LoadError::Map(e) => write!(f, "cannot map the image: {e:?}"),
        }
    }
}

/// One PT_LOAD segment, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of its first byte.
    pub vaddr: u64,
    /// Bytes in memory (the tail past `file_len` is zero).
    pub mem_len: u64,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Bytes taken from the file.
    pub file_len: u64,
    /// Mapped writable.
    pub writable: bool,
    /// Mapped executable.
    pub executable: bool,
}

impl Segment {
    /// First page and end of the last page it touches.
    fn pages(&self) -> (u64, u64) {
        (
            self.vaddr & !(PAGE - 1),
            (self.vaddr + self.mem_len).next_multiple_of(PAGE),
        )
    }
}

/// A checked image: its entry point and segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Where execution starts.
    pub entry: u64,
    /// The PT_LOAD segments, in file order.
    pub segments: Vec<Segment>,
}

/// Checks every field of `elf` that loading relies on.
pub fn validate(elf: &[u8]) -> Result<Image, LoadError> {
    if elf.len() < EHDR_SIZE as usize {
        return Err(LoadError::Truncated);
    }
    if !(elf.as_ptr() as usize).is_multiple_of(8) {
        return Err(LoadError::Misaligned);
    }
    if elf[..4] != header::MAGIC {
        return Err(LoadError::NotElf);
    }
    if elf[4] != 2 {
        return Err(LoadError::Unsupported("not 64-bit"));
    }
    // Length, magic and class are checked, so parsing the header cannot fail.
    let file = ElfFile::new(elf).map_err(|_| LoadError::Truncated)?;
    let (pt1, pt2) = (file.header.pt1, file.header.pt2);
    if pt1.class() != Class::SixtyFour {
        return Err(LoadError::Unsupported("not 64-bit"));
    }
    if pt1.data() != Data::LittleEndian {
        return Err(LoadError::Unsupported("not little-endian"));
    }
    if pt1.version() != Version::Current || pt2.version() != 1 {
        return Err(LoadError::Unsupported("ELF version"));
    }
    if !matches!(pt1.os_abi(), OsAbi::SystemV | OsAbi::Linux) {
        return Err(LoadError::Unsupported("OS ABI"));
    }
    if pt2.type_().as_type() != header::Type::Executable {
        return Err(LoadError::Unsupported("not an executable (ET_EXEC)"));
    }
    if pt2.machine().as_machine() != Machine::X86_64 {
        return Err(LoadError::Unsupported("not x86_64"));
    }
    if pt2.header_size() != EHDR_SIZE {
        return Err(LoadError::Malformed("ELF header size"));
    }
    let (ph_off, ph_size, ph_count) = (pt2.ph_offset(), pt2.ph_entry_size(), pt2.ph_count());
    if ph_count == 0 {
        return Err(LoadError::Malformed("no program headers"));
    }
    if ph_count > MAX_PROGRAM_HEADERS {
        return Err(LoadError::Unsupported("too many program headers"));
    }
    if ph_size != PHDR_SIZE {
        return Err(LoadError::Malformed("program header size"));
    }
    if !ph_off.is_multiple_of(8) || ph_off < EHDR_SIZE as u64 {
        return Err(LoadError::Malformed("program header offset"));
    }
    let table_end = (ph_count as u64)
        .checked_mul(ph_size as u64)
        .and_then(|n| n.checked_add(ph_off))
        .ok_or(LoadError::Malformed("program header table"))?;
    if table_end > elf.len() as u64 {
        return Err(LoadError::Truncated);
    }

    let mut segments: Vec<Segment> = Vec::new();
    let mut total = 0u64;
    for i in 0..ph_count {
        // The table is inside the image and aligned: this cannot fail or panic.
        let ph = file
            .program_header(i)
            .map_err(|_| LoadError::Malformed("program header"))?;
        let ProgramHeader::Ph64(ph) = ph else {
            return Err(LoadError::Unsupported("32-bit program header"));
        };
        match ph.get_type() {
            Ok(Type::Load) => {}
            Ok(Type::Interp | Type::Dynamic) => {
                return Err(LoadError::Unsupported("dynamically linked"));
            }
            Ok(Type::Tls) => return Err(LoadError::Unsupported("thread-local storage")),
            // Notes, PT_PHDR, GNU_STACK, RELRO and the like need nothing.
            _ => continue,
        }
        let seg = Segment {
            vaddr: ph.virtual_addr,
            mem_len: ph.mem_size,
            offset: ph.offset,
            file_len: ph.file_size,
            writable: ph.flags.is_write(),
            executable: ph.flags.is_execute(),
        };
        if seg.writable && seg.executable {
            return Err(LoadError::Unsupported(
                "writable and executable segment (W^X)",
            ));
        }
        if seg.file_len > seg.mem_len {
            return Err(LoadError::Malformed(
                "segment file size exceeds memory size",
            ));
        }
        let file_end = seg
            .offset
            .checked_add(seg.file_len)
            .ok_or(LoadError::Malformed("segment file range"))?;
        if file_end > elf.len() as u64 {
            return Err(LoadError::Truncated);
        }
        let mem_end = seg
            .vaddr
            .checked_add(seg.mem_len)
            .ok_or(LoadError::Malformed("segment address range"))?;
        if seg.mem_len == 0 {
            continue; // nothing to map
        }
        if seg.vaddr < IMAGE_BASE || mem_end > IMAGE_END {
            return Err(LoadError::Malformed("segment outside the image area"));
        }
        if ph.align > 1 && !ph.align.is_power_of_two() {
            return Err(LoadError::Malformed("segment alignment"));
        }
        let (first, end) = seg.pages();
        if segments.iter().any(|o| {
            let (of, oe) = o.pages();
            first < oe && of < end
        }) {
            return Err(LoadError::Malformed("segments share a page"));
        }
        total += end - first;
        if total > MAX_IMAGE_BYTES {
            return Err(LoadError::Unsupported("image too large"));
        }
        if segments.len() == MAX_LOAD_SEGMENTS {
            return Err(LoadError::Unsupported("too many segments"));
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(LoadError::Malformed("no loadable segment"));
    }
    let entry = pt2.entry_point();
    if !segments
        .iter()
        .any(|s| s.executable && (s.vaddr..s.vaddr + s.mem_len).contains(&entry))
    {
        return Err(LoadError::Malformed("entry point outside executable code"));
    }
    Ok(Image { entry, segments })
}

/// Validates `elf` and maps its segments into `space` with their
/// permissions (zeroing what the file does not cover); returns the entry.
pub fn load(elf: &[u8], space: &mut AddressSpace) -> Result<u64, LoadError> {
    let image = validate(elf)?;
    for seg in image.segments.iter() {
        let (first, end) = seg.pages();
        let mut flags = Flags::empty();
        if seg.writable {
            flags |= Flags::WRITABLE;
        }
        if !seg.executable {
            flags |= Flags::NO_EXECUTE;
        }
        // Fresh frames are zeroed: that is the bss and the page slack.
        space
            .map_anonymous(first, end - first, flags)
            .map_err(LoadError::Map)?;
        let bytes = &elf[seg.offset as usize..(seg.offset + seg.file_len) as usize];
        space.fill(seg.vaddr, bytes).map_err(LoadError::Map)?;
    }
    Ok(image.entry)
}

/// A minimal valid image for the tests: one R+X segment with `ret` at the
/// entry, built by hand so the tests do not depend on the embedded apps.
fn test_image() -> alloc::vec::Vec<u64> {
    let mut bytes = [0u8; 0x1008];
    let h = &mut bytes[..64];
    h[..4].copy_from_slice(&header::MAGIC);
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1; // version
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&(IMAGE_BASE).to_le_bytes()); // entry
    h[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    h[52..54].copy_from_slice(&EHDR_SIZE.to_le_bytes());
    h[54..56].copy_from_slice(&PHDR_SIZE.to_le_bytes());
    h[56..58].copy_from_slice(&1u16.to_le_bytes());
    let p = &mut bytes[64..120];
    p[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    p[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    p[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
    p[16..24].copy_from_slice(&IMAGE_BASE.to_le_bytes());
    p[32..40].copy_from_slice(&8u64.to_le_bytes()); // filesz
    p[40..48].copy_from_slice(&0x2000u64.to_le_bytes()); // memsz
    p[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    bytes[0x1000] = 0xc3; // ret
    // Stored as u64s so the bytes are 8-byte aligned.
    bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8; the
    // slice covers exactly the words' memory.
    unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above, and any byte pattern is a valid u64.
    unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

crate::kernel_test!(
    fn loader_accepts_a_minimal_image_and_every_embedded_app() {
        let words = test_image();
        let image = validate(as_bytes(&words)).expect("the minimal image is valid");
        assert_eq!(image.entry, IMAGE_BASE);
        assert_eq!(image.segments.len(), 1);
        for app in crate::apps::EMBEDDED {
            let image = validate(app.elf).unwrap_or_else(|e| panic!("app {}: {e}", app.name));
            assert!(image.segments.iter().all(|s| !(s.writable && s.executable)));
        }
    }
);

crate::kernel_test!(
    fn loader_refuses_truncated_and_garbage_images() {
        let words = test_image();
        let good = as_bytes(&words);
        // Every prefix short of the segment's bytes is refused, never a panic.
        for len in [0, 1, 4, 16, 63, 64, 100, 119, 0x1000, 0x1007] {
            assert!(validate(&good[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut garbage = alloc::vec![0x5a5a_5a5a_5a5a_5a5au64; 512];
        assert_eq!(validate(as_bytes(&garbage)), Err(LoadError::NotElf));
        // ELF magic on noise: refused by field checks.
        as_bytes_mut(&mut garbage)[..4].copy_from_slice(&header::MAGIC);
        assert!(validate(as_bytes(&garbage)).is_err());
        // A misaligned view of a good image.
        let mut shifted = alloc::vec![0u64; words.len() + 1];
        as_bytes_mut(&mut shifted)[1..1 + good.len()].copy_from_slice(good);
        assert_eq!(
            validate(&as_bytes(&shifted)[1..1 + good.len()]),
            Err(LoadError::Misaligned)
        );
        // Pseudo-random corruption of header bytes must never panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut w = words.clone();
            let b = as_bytes_mut(&mut w);
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b[(seed % 120) as usize] = (seed >> 32) as u8;
            }
            let _ = validate(b);
        }
    }
);

crate::kernel_test!(
    fn loader_refuses_each_bad_field() {
        let words = test_image();
        // (byte offset, new bytes, what must be refused)
        let cases: &[(usize, &[u8])] = &[
            (4, &[1]),                                          // 32-bit class
            (5, &[2]),                                          // big-endian
            (6, &[2]),                                          // ELF version
            (16, &3u16.to_le_bytes()),                          // ET_DYN
            (18, &3u16.to_le_bytes()),                          // i386
            (24, &0x10_0000u64.to_le_bytes()),                  // entry in the kernel
            (24, &(IMAGE_BASE + 0x2000).to_le_bytes()),         // entry past the segment
            (32, &0xfff8u64.to_le_bytes()),                     // phoff past the end
            (32, &60u64.to_le_bytes()),                         // phoff misaligned
            (54, &32u16.to_le_bytes()),                         // phentsize
            (56, &0u16.to_le_bytes()),                          // no program headers
            (56, &0xffffu16.to_le_bytes()),                     // too many
            (64 + 4, &7u32.to_le_bytes()),                      // W+X
            (64, &3u32.to_le_bytes()),                          // PT_INTERP
            (64, &7u32.to_le_bytes()),                          // PT_TLS
            (64 + 8, &0x1001u64.to_le_bytes()),                 // offset+filesz past the end
            (64 + 8, &u64::MAX.to_le_bytes()),                  // offset overflows
            (64 + 16, &0x10_0000u64.to_le_bytes()),             // vaddr in the kernel
            (64 + 16, &0xffff_8000_0000_0000u64.to_le_bytes()), // vaddr in the upper half
            (64 + 16, &(u64::MAX - 0xfff).to_le_bytes()),       // vaddr + memsz overflows
            (64 + 32, &0x3000u64.to_le_bytes()),                // filesz > memsz
            (64 + 40, &(1u64 << 40).to_le_bytes()),             // huge memsz
            (64 + 48, &3u64.to_le_bytes()),                     // alignment not a power of two
        ];
        for (at, bytes) in cases {
            let mut w = words.clone();
            as_bytes_mut(&mut w)[*at..*at + bytes.len()].copy_from_slice(bytes);
            assert!(
                validate(as_bytes(&w)).is_err(),
                "bytes {bytes:x?} at {at:#x} were accepted"
            );
        }
    }
);

crate::kernel_test!(
    fn loader_maps_segments_with_their_permissions() {
        let words = test_image();
        let mut space = AddressSpace::new().unwrap();
        let entry = load(as_bytes(&words), &mut space).expect("loads");
        assert_eq!(entry, IMAGE_BASE);
        let (phys, flags) = space.translate(IMAGE_BASE).unwrap();
        assert!(flags.contains(Flags::USER_ACCESSIBLE) && !flags.contains(Flags::WRITABLE));
        assert!(!flags.contains(Flags::NO_EXECUTE), "code is executable");
        // SAFETY: the frame belongs to the space we hold; a plain read.
        let first = unsafe { *(crate::memory::phys_to_virt(phys) as *const [u8; 9]) };
        assert_eq!(
            first,
            [0xc3, 0, 0, 0, 0, 0, 0, 0, 0],
            "file bytes, then zeros"
        );
        assert!(
            space.translate(IMAGE_BASE + 0x1000).is_some(),
            "bss page mapped"
        );
        assert!(space.translate(IMAGE_BASE + 0x2000).is_none());
    }
);
