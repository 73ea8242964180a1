//! The boot path. Two protocols enter the same trampoline: PVH (QEMU's
//! `-kernel`, see [`pvh`]) and multiboot2 (GRUB, in appliance images, see
//! [`multiboot2`]). Each parser copies what the kernel needs (command line,
//! memory map) into one [`BootInfo`] before the memory the boot structures
//! sit in is handed to the frame allocator.

use core::fmt;

mod multiboot2;
mod pvh;

// The PVH note and the 32-to-64-bit trampoline (see bootloader/README.md).
core::arch::global_asm!(
    include_str!("../../../bootloader/pvh_entry.S"),
    options(att_syntax)
);
// The multiboot2 header and entry, which jumps into the trampoline above.
core::arch::global_asm!(
    include_str!("../../../bootloader/multiboot2.S"),
    options(att_syntax)
);

/// Memory-map entry type for usable RAM (E820 numbering, which multiboot2 shares).
const E820_RAM: u32 = 1;
/// Most regions we keep; QEMU hands out fewer than ten, GRUB under UEFI a few dozen.
const MAX_REGIONS: usize = 64;
/// Longest command line we keep; the rest is cut off (and said so).
const MAX_CMDLINE: usize = 1024;

/// One physical memory region from the firmware's map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// E820 type: 1 is usable RAM.
    pub kind: u32,
}

impl MemoryRegion {
    /// Whether the kernel may use this region as RAM.
    pub fn is_usable(&self) -> bool {
        self.kind == E820_RAM
    }
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
    fn overlaps(&self, other: &MemoryRegion) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

/// Which boot protocol started the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// QEMU's `-kernel` (PVH start info).
    Pvh,
    /// GRUB (multiboot2 information).
    Multiboot2,
    /// The trampoline passed a protocol word nobody knows: no map, no command line.
    Unknown,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pvh => "pvh",
            Protocol::Multiboot2 => "multiboot2",
            Protocol::Unknown => "unknown",
        })
    }
}

/// What the kernel keeps from the boot protocol.
pub struct BootInfo {
    protocol: Protocol,
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    /// Regions that did not fit or contradicted earlier ones.
    regions_dropped: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
}

impl BootInfo {
    /// Nothing known yet.
    fn new(protocol: Protocol) -> Self {
        BootInfo {
            protocol,
            regions: [MemoryRegion::default(); MAX_REGIONS],
            region_count: 0,
            regions_dropped: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
        }
    }

    /// The boot protocol that filled this in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
    /// The firmware's memory map.
    pub fn memory_regions(&self) -> impl Iterator<Item = &MemoryRegion> + Clone {
        self.regions[..self.region_count].iter()
    }
    /// Memory-map entries left out (no room, or usable RAM overlapping RAM already listed).
    pub fn regions_dropped(&self) -> usize {
        self.regions_dropped
    }
    /// The kernel command line (`-append`), empty when absent or not UTF-8.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Keeps `bytes` up to the first NUL as the command line, cut to our buffer.
    fn set_cmdline(&mut self, bytes: &[u8]) {
        let len = bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(bytes.len())
            .min(MAX_CMDLINE);
        self.cmdline[..len].copy_from_slice(&bytes[..len]);
        self.cmdline_len = len;
    }

    /// Adds a region from the firmware's map. Empty regions are skipped, a
    /// region continuing the previous one with the same type extends it (UEFI
    /// maps are fragmented), and usable RAM overlapping usable RAM already
    /// listed is dropped: the frame allocator and the direct map trust that
    /// usable regions are disjoint.
    fn push_region(&mut self, region: MemoryRegion) {
        if region.len == 0 {
            return;
        }
        let region = MemoryRegion {
            len: region.end() - region.start, // saturated at 2^64
            ..region
        };
        if let Some(last) = self.regions[..self.region_count].last_mut()
            && last.kind == region.kind
            && last.end() == region.start
        {
            last.len = region.end() - last.start;
            return;
        }
        let clash = region.is_usable()
            && self
                .memory_regions()
                .any(|r| r.is_usable() && r.overlaps(&region));
        if clash || self.region_count == MAX_REGIONS {
            self.regions_dropped += 1;
            return;
        }
        self.regions[self.region_count] = region;
        self.region_count += 1;
    }
}

impl fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootInfo")
            .field("protocol", &self.protocol)
            .field("regions", &&self.regions[..self.region_count])
            .field("regions_dropped", &self.regions_dropped)
            .field("cmdline", &self.cmdline())
            .finish()
    }
}

static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// Called by the trampoline, on the boot stack, with the boot information's
/// physical address and the protocol word (0 for PVH, the multiboot2
/// bootloader magic for GRUB).
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(info: u32, protocol: u32) -> ! {
    let info = BOOT_INFO.call_once(|| match protocol {
        // SAFETY: the PVH entry passes the physical address of hvm_start_info,
        // and the trampoline identity-maps the first 4 GiB, where it lies.
        0 => unsafe { pvh::read(info as u64) },
        // SAFETY: GRUB passed this magic in %eax, so %ebx held the physical
        // address of the multiboot2 information, below 4 GiB and identity-mapped.
        multiboot2::BOOTLOADER_MAGIC => unsafe { multiboot2::read(info as u64) },
        // Nothing to trust: boot with an empty map; memory init reports it.
        _ => BootInfo::new(Protocol::Unknown),
    });
    crate::kernel_main(info)
}

crate::kernel_test!(
    fn boot_regions_merge_drop_overlaps_and_cap() {
        let ram = |start, len| MemoryRegion {
            start,
            len,
            kind: E820_RAM,
        };
        let mut b = BootInfo::new(Protocol::Unknown);
        b.push_region(ram(0x1000, 0x1000));
        b.push_region(ram(0x2000, 0x1000)); // continues the first: merged
        b.push_region(ram(0x2800, 0x1000)); // overlaps usable RAM: dropped
        // Reserved, overlapping: kept (only usable RAM must be disjoint).
        b.push_region(MemoryRegion {
            start: 0x2800,
            len: 0x100,
            kind: 2,
        });
        b.push_region(ram(0x9000, 0)); // empty: skipped
        b.push_region(ram(u64::MAX - 5, 100)); // saturates, does not wrap
        let got: [MemoryRegion; 3] = core::array::from_fn(|i| b.regions[i]);
        assert_eq!(b.region_count, 3);
        assert_eq!(got[0], ram(0x1000, 0x2000));
        assert_eq!(got[1].kind, 2);
        assert_eq!(got[2].end(), u64::MAX);
        assert_eq!(b.regions_dropped(), 1);
        for i in 0..2 * MAX_REGIONS as u64 {
            b.push_region(ram(0x1_0000_0000 + i * 0x2000, 0x1000));
        }
        assert_eq!(b.region_count, MAX_REGIONS);
        assert_eq!(b.regions_dropped(), 1 + 2 * MAX_REGIONS - (MAX_REGIONS - 3));
    }
);

crate::kernel_test!(
    fn boot_cmdline_stops_at_nul_and_is_capped() {
        let mut b = BootInfo::new(Protocol::Unknown);
        b.set_cmdline(b"app=hello\0junk");
        assert_eq!(b.cmdline(), "app=hello");
        b.set_cmdline(&[b'x'; MAX_CMDLINE + 10]);
        assert_eq!(b.cmdline().len(), MAX_CMDLINE);
    }
);
