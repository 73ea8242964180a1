//! The boot path: the PVH trampoline hands us `hvm_start_info`; we copy what
//! we need out of it (command line, memory map) before the memory it sits in
//! is handed to the frame allocator.

use core::fmt;

// The PVH note and the 32-to-64-bit trampoline (see bootloader/README.md).
core::arch::global_asm!(
    include_str!("../../../bootloader/pvh_entry.S"),
    options(att_syntax)
);

/// `hvm_start_info.magic`, per Xen's public/arch-x86/hvm/start_info.h.
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Memory-map entry type for usable RAM (E820 numbering).
const E820_RAM: u32 = 1;
/// Most regions we keep; QEMU hands out fewer than ten.
const MAX_REGIONS: usize = 64;
/// Longest command line we keep; the rest is cut off (and said so).
const MAX_CMDLINE: usize = 1024;

/// `struct hvm_start_info` (version 1), as laid out by the PVH ABI.
#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

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
}

/// What the kernel keeps from the boot protocol.
pub struct BootInfo {
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
}

impl BootInfo {
    /// The firmware's memory map.
    pub fn memory_regions(&self) -> impl Iterator<Item = &MemoryRegion> + Clone {
        self.regions[..self.region_count].iter()
    }
    /// The kernel command line (`-append`), empty when absent or not UTF-8.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}

impl fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootInfo")
            .field("regions", &&self.regions[..self.region_count])
            .field("cmdline", &self.cmdline())
            .finish()
    }
}

static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// Called by the trampoline, on the boot stack, with `hvm_start_info`'s address.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(start_info: u32) -> ! {
    let info = BOOT_INFO.call_once(|| {
        // SAFETY: the PVH ABI passes the physical address of hvm_start_info,
        // and the trampoline identity-maps the first 4 GiB, where it lies.
        unsafe { read_start_info(start_info as u64) }
    });
    crate::kernel_main(info)
}

/// Copies the command line and memory map out of firmware memory.
///
/// # Safety
/// `paddr` must be the PVH start-info address, readable through the identity map.
unsafe fn read_start_info(paddr: u64) -> BootInfo {
    let mut boot = BootInfo {
        regions: [MemoryRegion::default(); MAX_REGIONS],
        region_count: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
    };
    // SAFETY: per the caller's contract the structure is mapped and readable.
    let start = unsafe { core::ptr::read_volatile(paddr as *const HvmStartInfo) };
    if start.magic != HVM_START_MAGIC {
        // Nothing to trust: boot with an empty map; memory init reports it.
        return boot;
    }
    if start.cmdline_paddr != 0 {
        for i in 0..MAX_CMDLINE {
            // SAFETY: the command line is a NUL-terminated string in mapped
            // low memory; we stop at the NUL or at our buffer's end.
            let byte =
                unsafe { core::ptr::read_volatile((start.cmdline_paddr + i as u64) as *const u8) };
            if byte == 0 {
                break;
            }
            boot.cmdline[i] = byte;
            boot.cmdline_len = i + 1;
        }
    }
    // Version 0 of the structure has no memory map.
    if start.version >= 1 && start.memmap_paddr != 0 {
        let count = (start.memmap_entries as usize).min(MAX_REGIONS);
        for i in 0..count {
            let at = start.memmap_paddr + (i * size_of::<HvmMemmapEntry>()) as u64;
            // SAFETY: `memmap_entries` entries follow `memmap_paddr`; we read at most that many.
            let e = unsafe { core::ptr::read_volatile(at as *const HvmMemmapEntry) };
            boot.regions[i] = MemoryRegion {
                start: e.addr,
                len: e.size,
                kind: e.kind,
            };
        }
        boot.region_count = count;
    }
    boot
}
