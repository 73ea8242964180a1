//! The kernel's 4-level page tables.
//!
//! Virtual layout (the kernel's PML4; every process's PML4 shares its upper
//! half and its first GiB, see `memory::space`):
//!
//! | range                                   | what                                    | mapping              |
//! |-----------------------------------------|-----------------------------------------|----------------------|
//! | `0x0000_0000_0000_0000`                 | null page                               | never mapped         |
//! | `0x0000_0000_0010_0000`..`__kernel_end` | kernel image (text, rodata, data, bss)  | identity, 4 KiB, W^X, supervisor |
//! | `..0x0000_0000_4000_0000`               | rest of the first GiB: kernel only      | unused               |
//! | `0x0000_0000_4000_0000`..`0x0000_7FFF_FFFF_0000` | user space                     | per process, USER    |
//! | `0xFFFF_8000_0000_0000` + phys          | direct map of all usable RAM (and heap) | 2 MiB/4 KiB, RW, NX  |
//! | `0xFFFF_C000_0000_0000`..               | MMIO window (APIC, PCI BARs)            | 4 KiB, uncached, NX  |
//! | `0xFFFF_D000_0000_0000`..               | task kernel stacks, with guard pages    | 4 KiB, RW, NX        |
//! | `0xFFFF_E000_0000_0000`..               | scratch space for paging tests          | 4 KiB                |
//!
//! The PML4 entries of every upper-half window are created at boot, so that
//! process PML4s, which copy the kernel's upper half, see every kernel
//! mapping made later; mapping outside those entries is refused (a panic:
//! a new window must be added to [`KERNEL_WINDOWS`]).
//!
//! The trampoline's identity map of the first 4 GiB is used only while these
//! tables are built (page-table frames come from low memory then); after the
//! switch, every physical access goes through the direct map.

use super::frames;
use crate::boot::MemoryRegion;
use crate::sync::IrqMutex;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::{MapToError, Translate, UnmapError};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as Flags, PhysFrame,
    Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Base of the direct map of physical memory.
pub const PHYS_OFFSET: u64 = 0xFFFF_8000_0000_0000;
/// Base of the MMIO window.
pub const MMIO_BASE: u64 = 0xFFFF_C000_0000_0000;
/// Base of the task kernel stacks.
pub const KERNEL_STACKS_BASE: u64 = 0xFFFF_D000_0000_0000;
/// Base of the scratch space kernel tests map and unmap in.
pub const SCRATCH_BASE: u64 = 0xFFFF_E000_0000_0000;

/// Upper-half windows mapped after boot; each gets its PML4 entry at boot.
pub const KERNEL_WINDOWS: [u64; 3] = [MMIO_BASE, KERNEL_STACKS_BASE, SCRATCH_BASE];

/// Physical address of the kernel's PML4, 0 before [`init`].
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);

/// Offset added to a physical address to reach it: 0 during boot (identity),
/// [`PHYS_OFFSET`] once our tables are live.
static PHYS_VIEW: AtomicU64 = AtomicU64::new(0);
/// Next free address in the MMIO window.
static MMIO_NEXT: AtomicU64 = AtomicU64::new(MMIO_BASE);

static KERNEL_TABLES: IrqMutex<Option<OffsetPageTable<'static>>> = IrqMutex::new(None);

unsafe extern "C" {
    static __rodata_start: u8;
    static __data_start: u8;
}

/// The kernel-readable address of physical address `phys`.
pub fn phys_to_virt(phys: u64) -> u64 {
    phys + PHYS_VIEW.load(Ordering::Relaxed)
}

/// Feeds the x86_64 crate's mapper with frames from our allocator.
struct Frames;

// SAFETY: `frames::alloc_zeroed` returns frames nothing else uses.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let f = frames::alloc_zeroed()?;
        // Before the switch, tables are reached through the 4 GiB identity map.
        if PHYS_VIEW.load(Ordering::Relaxed) == 0 {
            assert!(
                f.start_address().as_u64() < 4 << 30,
                "boot page table above 4 GiB"
            );
        }
        Some(f)
    }
}

/// Builds the kernel's tables as laid out above and switches to them.
pub fn init<'a>(regions: impl Iterator<Item = &'a MemoryRegion> + Clone) {
    let pml4_frame = frames::alloc_zeroed().expect("a frame for the PML4");
    let pml4_phys = pml4_frame.start_address().as_u64();
    // SAFETY: the frame is fresh and zeroed, reachable through the identity map
    // during boot; nothing else references it.
    let mut boot_view =
        unsafe { OffsetPageTable::new(&mut *(pml4_phys as *mut PageTable), VirtAddr::new(0)) };

    // The kernel image, identity-mapped, writable only where it holds data.
    let (k_start, k_end) = frames::kernel_image();
    let rodata = (&raw const __rodata_start) as u64;
    let data = (&raw const __data_start) as u64;
    for addr in (k_start..k_end).step_by(4096) {
        let flags = if addr < rodata {
            Flags::PRESENT
        } else if addr < data {
            Flags::PRESENT | Flags::NO_EXECUTE
        } else {
            Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE
        };
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
        let frame = PhysFrame::containing_address(PhysAddr::new(addr));
        // SAFETY: identity mapping of the running kernel image in fresh tables.
        unsafe { boot_view.map_to(page, frame, flags, &mut Frames) }
            .expect("map kernel image")
            .ignore();
    }

    // The direct map: 2 MiB pages where a whole aligned 2 MiB is RAM.
    let rw = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE;
    for r in regions.filter(|r| r.is_usable()) {
        let (start, end) = (
            r.start & !0xfff,
            r.end().min(frames::MAX_PHYS).next_multiple_of(4096),
        );
        let mut addr = start;
        while addr < end {
            let virt = VirtAddr::new(addr + PHYS_OFFSET);
            if addr % (2 << 20) == 0 && addr + (2 << 20) <= end {
                let page = Page::<Size2MiB>::containing_address(virt);
                let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(addr));
                // SAFETY: maps RAM into the direct-map range, used by nothing else.
                unsafe { boot_view.map_to(page, frame, rw | Flags::HUGE_PAGE, &mut Frames) }
                    .expect("direct map")
                    .ignore();
                addr += 2 << 20;
            } else {
                let page = Page::<Size4KiB>::containing_address(virt);
                let frame = PhysFrame::containing_address(PhysAddr::new(addr));
                // SAFETY: as above.
                unsafe { boot_view.map_to(page, frame, rw, &mut Frames) }
                    .expect("direct map")
                    .ignore();
                addr += 4096;
            }
        }
    }

    // The windows' top-level entries now, so that address spaces see later
    // mappings in them.
    for window in KERNEL_WINDOWS {
        let entry = &mut boot_view.level_4_table_mut()[pml4_index(window)];
        if entry.is_unused() {
            let table = Frames.allocate_frame().expect("a frame for a kernel PDPT");
            entry.set_frame(table, Flags::PRESENT | Flags::WRITABLE);
        }
    }

    // SAFETY: the new tables map the running kernel (code, stack in .bss,
    // statics) at the same addresses, so execution continues unchanged.
    unsafe { Cr3::write(pml4_frame, Cr3Flags::empty()) };
    KERNEL_PML4.store(pml4_phys, Ordering::Relaxed);
    PHYS_VIEW.store(PHYS_OFFSET, Ordering::Relaxed);
    // SAFETY: the PML4 is now live and reachable through the direct map; this
    // mapper is the only owner of a mutable reference to it.
    let live = unsafe {
        OffsetPageTable::new(
            &mut *((pml4_phys + PHYS_OFFSET) as *mut PageTable),
            VirtAddr::new(PHYS_OFFSET),
        )
    };
    *KERNEL_TABLES.lock() = Some(live);
}

fn pml4_index(addr: u64) -> usize {
    ((addr >> 39) & 511) as usize
}

/// Panics unless `addr`'s PML4 entry exists: a kernel mapping elsewhere in
/// the upper half would be missing from every process's address space.
fn assert_in_window(tables: &OffsetPageTable<'_>, addr: u64) {
    assert!(
        addr >= PHYS_OFFSET && !tables.level_4_table()[pml4_index(addr)].is_unused(),
        "kernel mapping at {addr:#x} outside the windows created at boot"
    );
}

/// The kernel's PML4 (what kernel tasks run on).
pub fn kernel_pml4() -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(KERNEL_PML4.load(Ordering::Relaxed)))
}

/// Switches to the kernel's own tables, unless they are loaded already.
pub fn activate_kernel_tables() {
    let kernel = kernel_pml4();
    if Cr3::read().0 != kernel {
        // SAFETY: the kernel's tables map everything kernel code uses; every
        // address space shares those mappings, so nothing moves under us.
        unsafe { Cr3::write(kernel, Cr3Flags::empty()) };
    }
}

/// Runs `f` on the kernel's PML4 under its lock (address spaces copy its
/// upper half).
pub fn with_kernel_pml4<R>(f: impl FnOnce(&PageTable) -> R) -> R {
    let guard = KERNEL_TABLES.lock();
    f(guard.as_ref().expect("paging initialised").level_4_table())
}

/// Why a mapping change failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No frame was free for a page table.
    OutOfFrames,
    /// The page is already mapped.
    AlreadyMapped,
    /// The page is not mapped.
    NotMapped,
    /// The address lies inside a huge page.
    HugePage,
    /// The range is not page-aligned or leaves the space it must stay in
    /// (user space, for a process's address space).
    OutOfRange,
}

/// Maps `page` to `frame` in the kernel tables.
pub fn map(page: Page<Size4KiB>, frame: PhysFrame<Size4KiB>, flags: Flags) -> Result<(), MapError> {
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().expect("paging initialised");
    assert_in_window(tables, page.start_address().as_u64());
    // SAFETY: callers map only fresh frames or device memory at addresses of
    // the kernel's own ranges, so no existing Rust reference is invalidated.
    match unsafe { tables.map_to(page, frame, flags, &mut Frames) } {
        Ok(flush) => {
            flush.flush();
            Ok(())
        }
        Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
        Err(MapToError::PageAlreadyMapped(_)) => Err(MapError::AlreadyMapped),
        Err(MapToError::ParentEntryHugePage) => Err(MapError::HugePage),
    }
}

/// Unmaps `page` and returns the frame it mapped (the caller owns it again).
pub fn unmap(page: Page<Size4KiB>) -> Result<PhysFrame<Size4KiB>, MapError> {
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().expect("paging initialised");
    match tables.unmap(page) {
        Ok((frame, flush)) => {
            flush.flush();
            Ok(frame)
        }
        Err(UnmapError::PageNotMapped) => Err(MapError::NotMapped),
        Err(UnmapError::ParentEntryHugePage) => Err(MapError::HugePage),
        Err(UnmapError::InvalidFrameAddress(_)) => Err(MapError::NotMapped),
    }
}

/// The physical address `virt` maps to, if any.
pub fn translate(virt: u64) -> Option<u64> {
    let guard = KERNEL_TABLES.lock();
    let tables = guard.as_ref().expect("paging initialised");
    tables
        .translate_addr(VirtAddr::try_new(virt).ok()?)
        .map(|p| p.as_u64())
}

/// Maps `len` bytes of device registers at `phys` uncached; returns their address.
pub fn map_mmio(phys: u64, len: u64) -> u64 {
    map_device(phys, len, Flags::NO_CACHE | Flags::WRITE_THROUGH)
}

/// Maps `len` bytes of device memory at `phys` write-back cached (memory
/// that behaves as RAM, such as ivshmem's shared BAR); returns its address.
pub fn map_device_memory(phys: u64, len: u64) -> u64 {
    map_device(phys, len, Flags::empty())
}

/// Maps a device range into the MMIO window, with 2 MiB pages wherever
/// physical and virtual addresses allow (a 1 GiB BAR is 512 entries, not
/// 262,144: every page-table write is costly under nested KVM).
fn map_device(phys: u64, len: u64, caching: Flags) -> u64 {
    const HUGE: u64 = 2 << 20;
    let first = phys & !0xfff;
    let end = (phys + len).next_multiple_of(4096);
    // Give the range the same offset within 2 MiB virtually as physically.
    let reserve = (end - first + HUGE).next_multiple_of(HUGE);
    let window = MMIO_NEXT.fetch_add(reserve, Ordering::Relaxed);
    let base = window + (first % HUGE);
    let flags = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE | caching;
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().expect("paging initialised");
    assert_in_window(tables, base);
    assert_in_window(tables, base + (end - first) - 1);
    let mut at = first;
    while at < end {
        let virt = VirtAddr::new(base + (at - first));
        let huge = at.is_multiple_of(HUGE) && at + HUGE <= end;
        // SAFETY: device memory mapped at fresh addresses of the MMIO window,
        // which no Rust reference points into.
        let mapped = unsafe {
            if huge {
                let page = Page::<Size2MiB>::containing_address(virt);
                let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(at));
                tables
                    .map_to(page, frame, flags | Flags::HUGE_PAGE, &mut Frames)
                    .map(|f| f.flush())
                    .is_ok()
            } else {
                let page = Page::<Size4KiB>::containing_address(virt);
                let frame = PhysFrame::containing_address(PhysAddr::new(at));
                tables
                    .map_to(page, frame, flags, &mut Frames)
                    .map(|f| f.flush())
                    .is_ok()
            }
        };
        assert!(mapped, "the MMIO window is never reused");
        at += if huge { HUGE } else { 4096 };
    }
    base + (phys - first)
}

/// A scratch page for test `n`, distinct per test so a failed test cannot
/// disturb the next.
fn scratch_page(n: u64) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new(SCRATCH_BASE + n * 4096))
}

crate::kernel_test!(
    fn paging_map_translate_and_access() {
        let frame = frames::alloc_zeroed().unwrap();
        let page = scratch_page(1);
        map(
            page,
            frame,
            Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE,
        )
        .unwrap();
        let virt = page.start_address().as_u64();
        assert_eq!(
            translate(virt + 0x123),
            Some(frame.start_address().as_u64() + 0x123)
        );
        crate::arch::fault::write_u64(virt + 8, 0x5eed).unwrap();
        // The same byte seen through the direct map.
        let direct =
            crate::arch::fault::read_u64(phys_to_virt(frame.start_address().as_u64()) + 8).unwrap();
        assert_eq!(direct, 0x5eed);
        assert_eq!(
            map(page, frame, Flags::PRESENT),
            Err(MapError::AlreadyMapped)
        );
        frames::free(unmap(page).unwrap());
    }
);

crate::kernel_test!(
    fn paging_unmap_removes_translation() {
        let frame = frames::alloc_zeroed().unwrap();
        let page = scratch_page(2);
        map(page, frame, Flags::PRESENT | Flags::WRITABLE).unwrap();
        assert_eq!(unmap(page), Ok(frame));
        assert_eq!(translate(page.start_address().as_u64()), None);
        assert_eq!(unmap(page), Err(MapError::NotMapped));
        frames::free(frame);
    }
);

crate::kernel_test!(
    fn paging_page_fault_is_caught_and_reported() {
        let addr = scratch_page(3).start_address().as_u64() + 0x10;
        let fault = crate::arch::fault::read_u64(addr).expect_err("unmapped page must fault");
        assert_eq!(fault.vector, 14, "a page fault");
        assert_eq!(fault.address, addr, "CR2 names the address");
        assert_eq!(
            fault.error_code & 0b111,
            0,
            "not-present read from the kernel"
        );
    }
);

crate::kernel_test!(
    fn paging_read_only_page_rejects_writes() {
        let frame = frames::alloc_zeroed().unwrap();
        let page = scratch_page(4);
        map(page, frame, Flags::PRESENT | Flags::NO_EXECUTE).unwrap();
        let addr = page.start_address().as_u64();
        assert_eq!(crate::arch::fault::read_u64(addr), Ok(0), "readable");
        let fault = crate::arch::fault::write_u64(addr, 1).expect_err("read-only");
        assert_eq!(
            (fault.vector, fault.error_code & 0b11),
            (14, 0b11),
            "protection violation on write"
        );
        frames::free(unmap(page).unwrap());
    }
);

crate::kernel_test!(
    fn paging_kernel_text_is_not_writable_and_null_is_unmapped() {
        let text = paging_kernel_text_is_not_writable_and_null_is_unmapped as fn() as usize as u64;
        // Write back what is there, so that a broken W^X corrupts nothing.
        let word = crate::arch::fault::read_u64(text & !7).expect("text is readable");
        let fault =
            crate::arch::fault::write_u64(text & !7, word).expect_err("W^X: text is read-only");
        assert_eq!(fault.vector, 14);
        let null = crate::arch::fault::read_u64(0).expect_err("null page unmapped");
        assert_eq!((null.vector, null.address), (14, 0));
    }
);

crate::kernel_test!(
    fn paging_direct_map_covers_allocated_frames() {
        let frame = frames::alloc().unwrap();
        let phys = frame.start_address().as_u64();
        assert_eq!(translate(phys_to_virt(phys)), Some(phys));
        frames::free(frame);
    }
);
