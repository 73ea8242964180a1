//! Address spaces of processes: one PML4 each.
//!
//! A process's PML4 shares the kernel's whole upper half (its entries are
//! copied; the kernel created all 256 at boot, see `paging`) and the first
//! GiB, where the kernel image is identity-mapped (the process's first PDPT
//! points its entry 0 at the kernel's page directory, supervisor-only).
//! Everything from [`USER_BASE`] to [`USER_END`] is the process's own:
//!
//! | range | what |
//! |-------|------|
//! | `0x0000_0000_4000_0000`.. | the app's image (apps/user.ld links it here) |
//! | [`MAP_BASE`]..[`MAP_END`] | mappings made by system calls (`shm_map`, `lock_map`) |
//! | [`STACK_TOP`] - [`STACK_SIZE`]..[`STACK_TOP`] | the user stack; the page below is a guard, never mapped |
//!
//! Page tables of the user half are walked by hand (the kernel's shared
//! tables are never touched from here). A leaf entry carries the software
//! bit [`OWNED`] when its frame belongs to the space (anonymous memory,
//! freed with it) and not when it maps someone else's memory (device or
//! shared memory): dropping the space frees exactly the owned frames and
//! every table of its user half.

use super::frames::{self, FRAME_SIZE};
use super::paging::{self, MapError, phys_to_virt};
use alloc::vec::Vec;
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{PageTable, PageTableFlags as Flags, PhysFrame};

/// First user address: the first GiB belongs to the kernel.
pub const USER_BASE: u64 = 0x0000_0000_4000_0000;
/// End of user space (exclusive). The last pages below the canonical hole
/// are never mapped, so `sysret` never returns to a non-canonical RIP.
pub const USER_END: u64 = 0x0000_7FFF_FFFF_0000;
/// Start of the window for mappings made by system calls.
pub const MAP_BASE: u64 = 0x0000_1000_0000_0000;
/// End of that window (exclusive).
pub const MAP_END: u64 = 0x0000_7000_0000_0000;
/// Top of the user stack (exclusive); the stack grows down from here.
pub const STACK_TOP: u64 = 0x0000_7FFF_F000_0000;
/// Size of the user stack, mapped up front.
pub const STACK_SIZE: u64 = 64 * 1024;

/// Size of a large page (shared mappings use them where aligned).
const HUGE: u64 = 2 << 20;

/// Software bit of a leaf entry: the frame belongs to this space.
pub const OWNED: Flags = Flags::BIT_9;
/// Flags of every intermediate table of the user half: leaf entries decide.
const TABLE_FLAGS: Flags = Flags::PRESENT
    .union(Flags::WRITABLE)
    .union(Flags::USER_ACCESSIBLE);
/// Flags a caller may ask for on a user page (the rest are set here).
const USER_LEAF_FLAGS: Flags = Flags::WRITABLE
    .union(Flags::NO_EXECUTE)
    .union(Flags::NO_CACHE)
    .union(Flags::WRITE_THROUGH);

/// One process's page tables and the ranges its mapping window hands out.
#[derive(Debug)]
pub struct AddressSpace {
    pml4: PhysFrame,
    /// Ranges reserved in the mapping window: (start, len), sorted by start.
    reserved: Vec<(u64, u64)>,
}

fn table_at(phys: PhysAddr) -> *mut PageTable {
    phys_to_virt(phys.as_u64()) as *mut PageTable
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Whether [start, start+len) is page-aligned, non-empty and inside user space.
fn user_range(start: u64, len: u64) -> Result<u64, MapError> {
    let end = start.checked_add(len).ok_or(MapError::OutOfRange)?;
    let aligned = start.is_multiple_of(FRAME_SIZE) && len.is_multiple_of(FRAME_SIZE);
    if !aligned || len == 0 || start < USER_BASE || end > USER_END {
        return Err(MapError::OutOfRange);
    }
    Ok(end)
}

impl AddressSpace {
    /// A space with the kernel's mappings and an empty user half.
    pub fn new() -> Result<Self, MapError> {
        let pml4 = frames::alloc_zeroed().ok_or(MapError::OutOfFrames)?;
        let Some(pdpt) = frames::alloc_zeroed() else {
            frames::free(pml4);
            return Err(MapError::OutOfFrames);
        };
        let new = table_at(pml4.start_address());
        paging::with_kernel_pml4(|kernel| {
            let low = kernel[0].addr();
            // SAFETY: the kernel's PML4 entry 0 points at its PDPT of the first
            // 512 GiB, reachable through the direct map and only read here
            // under the kernel tables' lock. The two fresh frames are ours
            // alone; the direct map makes them writable.
            unsafe {
                let kernel_pdpt = &*table_at(low);
                assert!(
                    kernel_pdpt.iter().skip(1).all(PageTableEntry::is_unused),
                    "the kernel uses only the first GiB of the lower half"
                );
                let own_pdpt = &mut *table_at(pdpt.start_address());
                own_pdpt[0] = kernel_pdpt[0].clone();
                let new = &mut *new;
                new[0].set_frame(pdpt, TABLE_FLAGS);
                for i in 256..512 {
                    new[i] = kernel[i].clone();
                }
            }
        });
        Ok(AddressSpace {
            pml4,
            reserved: Vec::new(),
        })
    }

    /// The space's PML4 (what CR3 holds while it runs).
    pub fn pml4(&self) -> PhysFrame {
        self.pml4
    }

    /// Whether this space is the one loaded on this CPU.
    pub fn is_active(&self) -> bool {
        Cr3::read().0 == self.pml4
    }

    /// Loads this space on this CPU (if it is not loaded yet).
    pub fn activate(&self) {
        if !self.is_active() {
            // SAFETY: the space shares every kernel mapping, so the kernel
            // code, stacks and data in use stay where they are.
            unsafe { Cr3::write(self.pml4, Cr3Flags::empty()) };
        }
    }

    /// The entry for user address `va` at `level` (1: a 4 KiB page's, 2: a
    /// 2 MiB page's), creating the tables above it when `create`. Never
    /// descends into the kernel's first GiB.
    fn walk(&mut self, va: u64, level: u32, create: bool) -> Result<*mut PageTableEntry, MapError> {
        if !(USER_BASE..USER_END).contains(&va) {
            return Err(MapError::OutOfRange);
        }
        let mut table = table_at(self.pml4.start_address());
        for above in (level + 1..=4).rev() {
            // SAFETY: `table` is a table of this space's user half (the range
            // check keeps us out of the kernel's), reachable through the
            // direct map; `&mut self` makes us its only editor.
            let entry = unsafe { &mut (&mut *table)[index(va, above)] };
            if entry.is_unused() {
                if !create {
                    return Err(MapError::NotMapped);
                }
                let frame = frames::alloc_zeroed().ok_or(MapError::OutOfFrames)?;
                entry.set_frame(frame, TABLE_FLAGS);
            } else if entry.flags().contains(Flags::HUGE_PAGE) {
                return Err(MapError::HugePage);
            }
            table = table_at(entry.addr());
        }
        // SAFETY: as above, for the table at `level`.
        Ok(unsafe { &mut (&mut *table)[index(va, level)] })
    }

    /// The 4 KiB leaf entry for `va` (see [`walk`](Self::walk)).
    fn leaf(&mut self, va: u64, create: bool) -> Result<*mut PageTableEntry, MapError> {
        self.walk(va, 1, create)
    }

    /// A copy of the entry mapping `va`, whether every table above it
    /// allows user access and writes, and the size of the page it maps; or
    /// `None` when `va` is not mapped.
    fn lookup(&self, va: u64) -> Option<(PageTableEntry, Flags, u64)> {
        if !(USER_BASE..USER_END).contains(&va) {
            return None;
        }
        let mut path = TABLE_FLAGS;
        let mut table = table_at(self.pml4.start_address());
        for level in [4, 3, 2] {
            // SAFETY: as in `walk`; this only reads.
            let entry = unsafe { &(&*table)[index(va, level)] };
            if !entry.flags().contains(Flags::PRESENT) {
                return None;
            }
            if entry.flags().contains(Flags::HUGE_PAGE) {
                // Only page directories hold large pages here (2 MiB).
                return (level == 2).then(|| (entry.clone(), path, HUGE));
            }
            path &= entry.flags();
            table = table_at(entry.addr());
        }
        // SAFETY: as above.
        let entry = unsafe { &(&*table)[index(va, 1)] };
        entry
            .flags()
            .contains(Flags::PRESENT)
            .then(|| (entry.clone(), path, FRAME_SIZE))
    }

    fn set_leaf(&mut self, va: u64, frame: PhysFrame, flags: Flags) -> Result<(), MapError> {
        let entry = self.leaf(va, true)?;
        // SAFETY: `leaf` returned an entry of this space's own tables.
        let entry = unsafe { &mut *entry };
        if !entry.is_unused() {
            return Err(MapError::AlreadyMapped);
        }
        entry.set_frame(frame, flags);
        Ok(())
    }

    /// Maps fresh zeroed frames, owned by the space, over `[start, start+len)`.
    /// `flags` may hold WRITABLE and NO_EXECUTE; pages are always user pages.
    /// On failure, the pages mapped so far stay mapped (freed with the space).
    pub fn map_anonymous(&mut self, start: u64, len: u64, flags: Flags) -> Result<(), MapError> {
        let end = user_range(start, len)?;
        let flags = (flags & USER_LEAF_FLAGS) | Flags::PRESENT | Flags::USER_ACCESSIBLE | OWNED;
        for va in (start..end).step_by(FRAME_SIZE as usize) {
            let frame = frames::alloc_zeroed().ok_or(MapError::OutOfFrames)?;
            if let Err(e) = self.set_leaf(va, frame, flags) {
                frames::free(frame);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Maps the physical range at `phys` (device or shared memory, not owned
    /// by the space) over `[start, start+len)`, user-accessible, never
    /// executable, writable if asked. Uses 2 MiB pages where both addresses
    /// allow (each page-table write is costly under nested KVM).
    pub fn map_physical(
        &mut self,
        start: u64,
        phys: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), MapError> {
        user_range(start, len)?;
        if !phys.is_multiple_of(FRAME_SIZE) {
            return Err(MapError::OutOfRange);
        }
        let mut flags = Flags::PRESENT | Flags::USER_ACCESSIBLE | Flags::NO_EXECUTE;
        if writable {
            flags |= Flags::WRITABLE;
        }
        let mut done = 0;
        while done < len {
            let (va, pa) = (start + done, phys + done);
            if va.is_multiple_of(HUGE) && pa.is_multiple_of(HUGE) && len - done >= HUGE {
                // SAFETY: `walk` returned an entry of this space's own tables.
                let entry = unsafe { &mut *self.walk(va, 2, true)? };
                if !entry.is_unused() {
                    return Err(MapError::AlreadyMapped);
                }
                entry.set_addr(PhysAddr::new(pa), flags | Flags::HUGE_PAGE);
                done += HUGE;
            } else {
                let frame = PhysFrame::containing_address(PhysAddr::new(pa));
                self.set_leaf(va, frame, flags)?;
                done += FRAME_SIZE;
            }
        }
        Ok(())
    }

    /// Changes the permissions of mapped pages (WRITABLE and NO_EXECUTE).
    pub fn protect(&mut self, start: u64, len: u64, flags: Flags) -> Result<(), MapError> {
        let end = user_range(start, len)?;
        for va in (start..end).step_by(FRAME_SIZE as usize) {
            // SAFETY: `leaf` returned an entry of this space's own tables.
            let entry = unsafe { &mut *self.leaf(va, false)? };
            if entry.is_unused() {
                return Err(MapError::NotMapped);
            }
            let keep = entry.flags() & !(Flags::WRITABLE | Flags::NO_EXECUTE);
            entry.set_flags(keep | (flags & (Flags::WRITABLE | Flags::NO_EXECUTE)));
            self.flush(va);
        }
        Ok(())
    }

    /// Unmaps `[start, start+len)`; owned frames go back to the allocator.
    /// Pages that are not mapped are skipped; returns how many 4 KiB pages
    /// were unmapped. A 2 MiB page goes whole or not at all (`HugePage`).
    pub fn unmap(&mut self, start: u64, len: u64) -> Result<u64, MapError> {
        let end = user_range(start, len)?;
        let mut unmapped = 0;
        let mut va = start;
        while va < end {
            if let Ok(entry) = self.walk(va, 2, false) {
                // SAFETY: `walk` returned an entry of this space's own tables.
                let entry = unsafe { &mut *entry };
                if entry.flags().contains(Flags::PRESENT | Flags::HUGE_PAGE) {
                    if !va.is_multiple_of(HUGE) || end - va < HUGE {
                        return Err(MapError::HugePage);
                    }
                    // Large pages are only ever shared mappings: nothing to free.
                    entry.set_unused();
                    self.flush(va);
                    unmapped += HUGE / FRAME_SIZE;
                    va += HUGE;
                    continue;
                }
            }
            let entry = match self.leaf(va, false) {
                Ok(e) => e,
                Err(MapError::NotMapped) => {
                    va += FRAME_SIZE;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // SAFETY: `leaf` returned an entry of this space's own tables.
            let entry = unsafe { &mut *entry };
            if !entry.is_unused() {
                let owned = entry.flags().contains(OWNED);
                let frame = entry.frame().ok();
                entry.set_unused();
                // The TLB must forget the page before its frame is reused.
                self.flush(va);
                if let (true, Some(frame)) = (owned, frame) {
                    frames::free(frame);
                }
                unmapped += 1;
            }
            va += FRAME_SIZE;
        }
        Ok(unmapped)
    }

    fn flush(&self, va: u64) {
        if self.is_active() {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(va));
        }
    }

    /// The physical address `va` maps to and the leaf's flags, if mapped.
    pub fn translate(&self, va: u64) -> Option<(u64, Flags)> {
        self.lookup(va)
            .map(|(e, _, size)| (e.addr().as_u64() + (va & (size - 1)), e.flags()))
    }

    /// Whether user code may access every byte of `[addr, addr+len)`: inside
    /// user space, mapped, user-accessible, and writable when `write`. An
    /// empty range is always allowed (nothing is touched).
    pub fn is_user_accessible(&self, addr: u64, len: u64, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        if addr < USER_BASE || end > USER_END {
            return false;
        }
        let mut need = Flags::PRESENT | Flags::USER_ACCESSIBLE;
        if write {
            need |= Flags::WRITABLE;
        }
        let mut at = addr;
        while at < end {
            match self.lookup(at) {
                Some((e, path, size)) if e.flags().contains(need) && path.contains(need) => {
                    at = (at & !(size - 1)) + size;
                }
                _ => return false,
            }
        }
        true
    }

    /// Copies `data` to user address `va` through the direct map (the space
    /// need not be loaded); every page must be mapped and owned.
    pub fn fill(&mut self, va: u64, data: &[u8]) -> Result<(), MapError> {
        let mut done = 0;
        while done < data.len() {
            let at = va + done as u64;
            let (phys, flags) = self.translate(at).ok_or(MapError::NotMapped)?;
            if !flags.contains(OWNED) {
                return Err(MapError::OutOfRange);
            }
            let n = (FRAME_SIZE - (at & (FRAME_SIZE - 1))).min((data.len() - done) as u64) as usize;
            // SAFETY: the frame is owned by this space, so it is RAM no Rust
            // reference points into; the direct map makes it writable and the
            // copy stays inside the page.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data[done..].as_ptr(),
                    phys_to_virt(phys) as *mut u8,
                    n,
                )
            };
            done += n;
        }
        Ok(())
    }

    /// Reserves `len` bytes (rounded up to pages) in the mapping window at an
    /// address aligned to `align` (a power of two, at least a page), with
    /// an unmapped page after it; returns the start.
    pub fn reserve(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(FRAME_SIZE);
        let len = len.checked_next_multiple_of(FRAME_SIZE)?;
        let mut candidate = MAP_BASE;
        let mut at = 0;
        loop {
            candidate = candidate.checked_next_multiple_of(align)?;
            let end = candidate.checked_add(len)?;
            match self.reserved.get(at) {
                // A guard page between neighbours catches overruns.
                Some(&(s, l)) if end + FRAME_SIZE > s => {
                    candidate = s + l + FRAME_SIZE;
                    at += 1;
                }
                _ if end > MAP_END => return None,
                _ => {
                    self.reserved.insert(at, (candidate, len));
                    return Some(candidate);
                }
            }
        }
    }

    /// Gives back the range [`reserve`](Self::reserve) returned at `start`;
    /// returns its length. The caller unmaps it.
    pub fn release(&mut self, start: u64) -> Option<u64> {
        let at = self.reserved.iter().position(|&(s, _)| s == start)?;
        Some(self.reserved.remove(at).1)
    }

    /// Reserves a window range and maps `len` bytes of physical memory at
    /// `phys` there (see [`map_physical`](Self::map_physical)); returns the
    /// user address. For `shm_map` and friends.
    pub fn map_shared(&mut self, phys: u64, len: u64, writable: bool) -> Result<u64, MapError> {
        // Large-page alignment lets a large region use 2 MiB pages.
        let align = if len >= HUGE { HUGE } else { FRAME_SIZE };
        let start = self.reserve(len, align).ok_or(MapError::OutOfRange)?;
        let rounded = len.next_multiple_of(FRAME_SIZE);
        if let Err(e) = self.map_physical(start, phys, rounded, writable) {
            let _ = self.unmap(start, rounded);
            self.release(start);
            return Err(e);
        }
        Ok(start)
    }

    /// Undoes [`map_shared`](Self::map_shared) at `start`; returns the
    /// length that was mapped, or `None` if nothing was mapped there.
    pub fn unmap_shared(&mut self, start: u64) -> Option<u64> {
        let len = self.release(start)?;
        let _ = self.unmap(start, len);
        Some(len)
    }

    /// Points the 4 KiB page at `va` (in a range from [`reserve`](Self::reserve))
    /// at frame `phys`, which the space does not own (a DSM page's frame
    /// in the kernel heap), read-only or writable, never executable;
    /// replaces whatever was there. For the DSM's Map action.
    pub fn set_foreign_page(&mut self, va: u64, phys: u64, writable: bool) -> Result<(), MapError> {
        user_range(va, FRAME_SIZE)?;
        if !phys.is_multiple_of(FRAME_SIZE) {
            return Err(MapError::OutOfRange);
        }
        let entry = self.leaf(va, true)?;
        // SAFETY: `leaf` returned an entry of this space's own tables.
        let entry = unsafe { &mut *entry };
        if entry.flags().contains(OWNED) {
            // Never drop a frame the space owns on the floor.
            return Err(MapError::AlreadyMapped);
        }
        let mut flags = Flags::PRESENT | Flags::USER_ACCESSIBLE | Flags::NO_EXECUTE;
        if writable {
            flags |= Flags::WRITABLE;
        }
        entry.set_frame(PhysFrame::containing_address(PhysAddr::new(phys)), flags);
        self.flush(va);
        Ok(())
    }

    /// Removes the mapping of the 4 KiB page at `va` set by
    /// [`set_foreign_page`](Self::set_foreign_page), if any.
    pub fn clear_foreign_page(&mut self, va: u64) {
        let Ok(entry) = self.leaf(va, false) else {
            return;
        };
        // SAFETY: `leaf` returned an entry of this space's own tables.
        let entry = unsafe { &mut *entry };
        if !entry.is_unused() && !entry.flags().contains(OWNED) {
            entry.set_unused();
            self.flush(va);
        }
    }

    /// Frees every table of the user half and every owned frame.
    fn tear_down(&mut self) {
        let free_frame = |e: &PageTableEntry| {
            if let Ok(f) = e.frame() {
                frames::free(f);
            }
        };
        // SAFETY: the space is not loaded anywhere (see Drop), so nothing
        // walks these tables any more; they are reached through the direct
        // map and belong to this space alone, except the kernel's page
        // directory in the first PDPT's entry 0, which is skipped.
        unsafe {
            let pml4 = &*table_at(self.pml4.start_address());
            for (i4, e4) in pml4.iter().enumerate().take(256) {
                if e4.is_unused() {
                    continue;
                }
                let pdpt = &*table_at(e4.addr());
                for e3 in pdpt.iter().skip(if i4 == 0 { 1 } else { 0 }) {
                    if e3.is_unused() || e3.flags().contains(Flags::HUGE_PAGE) {
                        continue;
                    }
                    let pd = &*table_at(e3.addr());
                    for e2 in pd.iter() {
                        if e2.is_unused() || e2.flags().contains(Flags::HUGE_PAGE) {
                            continue;
                        }
                        let pt = &*table_at(e2.addr());
                        for e1 in pt.iter() {
                            if e1.flags().contains(Flags::PRESENT | OWNED) {
                                free_frame(e1);
                            }
                        }
                        free_frame(e2);
                    }
                    free_frame(e3);
                }
                free_frame(e4);
            }
        }
        frames::free(self.pml4);
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // Never free tables the CPU is walking.
        if self.is_active() {
            paging::activate_kernel_tables();
        }
        self.tear_down();
    }
}

crate::kernel_test!(
    fn space_map_translate_unmap_and_free_everything() {
        let before = frames::free_frames();
        let mut space = AddressSpace::new().expect("a space");
        let va = USER_BASE + 0x10_0000;
        space
            .map_anonymous(va, 3 * FRAME_SIZE, Flags::WRITABLE | Flags::NO_EXECUTE)
            .unwrap();
        let (phys, flags) = space.translate(va + 0x123).expect("mapped");
        assert_eq!(phys & 0xfff, 0x123);
        assert!(flags.contains(Flags::USER_ACCESSIBLE | Flags::WRITABLE | OWNED));
        assert_eq!(
            space.map_anonymous(va, FRAME_SIZE, Flags::empty()),
            Err(MapError::AlreadyMapped)
        );
        space.fill(va + 4090, b"across a page").unwrap();
        let (p2, _) = space.translate(va + FRAME_SIZE).unwrap();
        // SAFETY: the frame is owned by the space we hold; a plain read.
        let second = unsafe { *(phys_to_virt(p2) as *const [u8; 7]) };
        assert_eq!(&second, b" a page");
        assert_eq!(space.unmap(va, FRAME_SIZE), Ok(1));
        assert!(space.translate(va).is_none());
        assert_eq!(
            space.unmap(va, 3 * FRAME_SIZE),
            Ok(2),
            "unmapped pages are skipped"
        );
        space
            .map_anonymous(STACK_TOP - STACK_SIZE, STACK_SIZE, Flags::WRITABLE)
            .unwrap();
        drop(space);
        assert_eq!(
            frames::free_frames(),
            before,
            "every frame and table came back"
        );
    }
);

crate::kernel_test!(
    fn space_refuses_kernel_and_unaligned_ranges() {
        let mut space = AddressSpace::new().unwrap();
        for (start, len) in [
            (0, FRAME_SIZE),
            (0x10_0000, FRAME_SIZE),                  // the kernel image
            (USER_BASE - FRAME_SIZE, 2 * FRAME_SIZE), // straddles into the first GiB
            (USER_BASE + 1, FRAME_SIZE),
            (USER_END - FRAME_SIZE, 2 * FRAME_SIZE),
            (0xFFFF_8000_0000_0000, FRAME_SIZE),
            (!0xfff, FRAME_SIZE),
            (USER_BASE, 0),
        ] {
            assert_eq!(
                space.map_anonymous(start, len, Flags::WRITABLE),
                Err(MapError::OutOfRange),
                "{start:#x}+{len:#x}"
            );
        }
    }
);

crate::kernel_test!(
    fn space_user_access_checks() {
        let mut space = AddressSpace::new().unwrap();
        let ro = USER_BASE;
        let rw = USER_BASE + 0x1000;
        space.map_anonymous(ro, FRAME_SIZE, Flags::empty()).unwrap();
        space
            .map_anonymous(rw, FRAME_SIZE, Flags::WRITABLE)
            .unwrap();
        assert!(
            space.is_user_accessible(ro, 8192, false),
            "both pages readable"
        );
        assert!(
            !space.is_user_accessible(ro, 8192, true),
            "the first is read-only"
        );
        assert!(space.is_user_accessible(rw, 4096, true));
        space.protect(rw, FRAME_SIZE, Flags::NO_EXECUTE).unwrap();
        assert!(
            !space.is_user_accessible(rw, 4096, true),
            "protect took write away"
        );
        assert!(space.is_user_accessible(rw, 4096, false));
        space.protect(rw, FRAME_SIZE, Flags::WRITABLE).unwrap();
        assert!(space.is_user_accessible(rw, 4096, true), "and gave it back");
        assert_eq!(
            space.protect(rw + FRAME_SIZE, FRAME_SIZE, Flags::WRITABLE),
            Err(MapError::NotMapped)
        );
        assert!(
            !space.is_user_accessible(rw + 4000, 200, true),
            "runs off the end"
        );
        assert!(
            !space.is_user_accessible(0x10_0000, 8, false),
            "kernel image"
        );
        assert!(
            !space.is_user_accessible(0xFFFF_8000_0000_0000, 8, false),
            "direct map"
        );
        assert!(
            !space.is_user_accessible(u64::MAX - 4, 8, false),
            "wraps around"
        );
        assert!(
            !space.is_user_accessible(USER_END - 8, 16, false),
            "past user space"
        );
        assert!(space.is_user_accessible(0, 0, true), "nothing to touch");
        // The kernel's mappings are there, but not for user mode.
        let kernel_text = space_user_access_checks as fn() as usize as u64;
        assert!(!space.is_user_accessible(kernel_text, 1, false));
    }
);

crate::kernel_test!(
    fn space_shares_kernel_mappings_and_switches() {
        let space = AddressSpace::new().unwrap();
        let heap_value = alloc::boxed::Box::new(0x5eed_u64);
        let here = &*heap_value as *const u64 as u64;
        space.activate();
        let loaded = Cr3::read().0;
        // Kernel code, stack, heap and statics are all still there.
        let seen = crate::arch::fault::read_u64(here);
        paging::activate_kernel_tables();
        assert_eq!(loaded, space.pml4());
        assert_eq!(seen, Ok(0x5eed));
        assert!(!space.is_active());
    }
);

crate::kernel_test!(
    fn space_mapping_window_reserves_with_guards() {
        let mut space = AddressSpace::new().unwrap();
        let a = space.reserve(FRAME_SIZE, FRAME_SIZE).unwrap();
        let b = space.reserve(3 * FRAME_SIZE, 2 << 20).unwrap();
        assert_eq!(a, MAP_BASE);
        assert!(b.is_multiple_of(2 << 20) && b >= a + 2 * FRAME_SIZE);
        let c = space.reserve(FRAME_SIZE, FRAME_SIZE).unwrap();
        assert!(c >= a + 2 * FRAME_SIZE && (c + FRAME_SIZE < b || c > b + 3 * FRAME_SIZE));
        assert_eq!(space.release(a), Some(FRAME_SIZE));
        assert_eq!(space.release(a), None);
        assert_eq!(
            space.reserve(1, FRAME_SIZE),
            Some(a),
            "freed ranges are reused"
        );
        assert!(space.reserve(MAP_END, FRAME_SIZE).is_none(), "too large");
        // Shared mappings are not owned: unmapping leaves the frame alone.
        let frame = frames::alloc_zeroed().unwrap();
        let before = frames::free_frames();
        let at = space
            .map_shared(frame.start_address().as_u64(), 100, true)
            .unwrap();
        let (_, flags) = space.translate(at).unwrap();
        assert!(flags.contains(Flags::WRITABLE | Flags::NO_EXECUTE) && !flags.contains(OWNED));
        assert_eq!(space.unmap_shared(at), Some(FRAME_SIZE));
        // A large aligned range gets 2 MiB pages, used and removed whole.
        let phys = 0x8000_0000; // never touched: only the tables are written
        let big = space.map_shared(phys, 4 * HUGE + 0x3000, false).unwrap();
        assert!(big.is_multiple_of(HUGE));
        assert_eq!(
            space.translate(big + HUGE + 0x1234),
            Some((phys + HUGE + 0x1234, space.translate(big).unwrap().1))
        );
        assert!(space.translate(big).unwrap().1.contains(Flags::HUGE_PAGE));
        assert_eq!(
            space.translate(big + 4 * HUGE + 0x2008).unwrap().0,
            phys + 4 * HUGE + 0x2008
        );
        assert!(space.is_user_accessible(big, 4 * HUGE + 0x3000, false));
        assert!(
            !space.is_user_accessible(big, 4 * HUGE + 0x3000, true),
            "read-only"
        );
        assert_eq!(
            space.unmap(big + FRAME_SIZE, FRAME_SIZE),
            Err(MapError::HugePage)
        );
        assert_eq!(space.unmap_shared(big), Some(4 * HUGE + 0x3000));
        assert!(space.translate(big).is_none() && space.translate(big + 4 * HUGE).is_none());
        drop(space);
        assert!(frames::free_frames() > before, "tables freed");
        frames::free(frame); // still ours: a double free would panic
    }
);

crate::kernel_test!(
    fn space_foreign_pages_map_replace_clear_and_are_never_freed() {
        let mut space = AddressSpace::new().unwrap();
        let va = space.reserve(2 * FRAME_SIZE, FRAME_SIZE).expect("window");
        let (a, b) = (
            frames::alloc_zeroed().unwrap(),
            frames::alloc_zeroed().unwrap(),
        );
        let pa = a.start_address().as_u64();
        space.set_foreign_page(va, pa, false).unwrap();
        assert!(space.is_user_accessible(va, FRAME_SIZE, false));
        assert!(!space.is_user_accessible(va, FRAME_SIZE, true), "read-only");
        // A Map action replaces the mapping (upgrade, or a new frame).
        let pb = b.start_address().as_u64();
        space.set_foreign_page(va, pb, true).unwrap();
        assert_eq!(space.translate(va).map(|t| t.0), Some(pb));
        assert!(space.is_user_accessible(va, FRAME_SIZE, true));
        assert!(!space.translate(va).unwrap().1.contains(OWNED));
        space.clear_foreign_page(va);
        assert_eq!(space.translate(va), None);
        space.clear_foreign_page(va + FRAME_SIZE); // nothing there: no-op
        // An owned page is never replaced by a foreign one.
        space
            .map_anonymous(USER_BASE, FRAME_SIZE, Flags::WRITABLE)
            .unwrap();
        assert_eq!(
            space.set_foreign_page(USER_BASE, pa, true),
            Err(MapError::AlreadyMapped)
        );
        space.set_foreign_page(va, pa, true).unwrap();
        drop(space);
        // The space did not free the foreign frames: they are still ours.
        frames::free(a);
        frames::free(b);
    }
);
