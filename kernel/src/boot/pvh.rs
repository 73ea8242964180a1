//! PVH: QEMU's `-kernel` enters with `hvm_start_info` (Xen's
//! public/arch-x86/hvm/start_info.h), which holds the command line and the
//! memory map by physical address.

use super::{BootInfo, MAX_CMDLINE, MemoryRegion, Protocol};

/// `hvm_start_info.magic`.
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Most memory-map entries we read: bounds the loop on a garbage count.
const MAX_ENTRIES: usize = 1024;

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

/// Copies the command line and memory map out of firmware memory.
///
/// # Safety
/// `paddr` must be the PVH start-info address, readable through the identity map.
pub(super) unsafe fn read(paddr: u64) -> BootInfo {
    let mut boot = BootInfo::new(Protocol::Pvh);
    // SAFETY: per the caller's contract the structure is mapped and readable.
    let start = unsafe { core::ptr::read_volatile(paddr as *const HvmStartInfo) };
    if start.magic != HVM_START_MAGIC {
        // Nothing to trust: boot with an empty map; memory init reports it.
        return boot;
    }
    if start.cmdline_paddr != 0 {
        let mut line = [0u8; MAX_CMDLINE];
        for (i, slot) in line.iter_mut().enumerate() {
            // SAFETY: the command line is a NUL-terminated string in mapped
            // low memory; we stop at the NUL or at our buffer's end.
            let byte =
                unsafe { core::ptr::read_volatile((start.cmdline_paddr + i as u64) as *const u8) };
            *slot = byte;
            if byte == 0 {
                break;
            }
        }
        boot.set_cmdline(&line);
    }
    // Version 0 of the structure has no memory map.
    if start.version >= 1 && start.memmap_paddr != 0 {
        for i in 0..(start.memmap_entries as usize).min(MAX_ENTRIES) {
            let at = start.memmap_paddr + (i * size_of::<HvmMemmapEntry>()) as u64;
            // SAFETY: `memmap_entries` entries follow `memmap_paddr`; we read at most that many.
            let e = unsafe { core::ptr::read_volatile(at as *const HvmMemmapEntry) };
            boot.push_region(MemoryRegion {
                start: e.addr,
                len: e.size,
                kind: e.kind,
            });
        }
    }
    boot
}
