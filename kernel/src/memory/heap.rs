//! The kernel heap: `linked_list_allocator` over one physically contiguous
//! run of frames, used through the direct map, sized from the RAM the memory
//! map reports. Using the direct map (2 MiB pages) instead of mapping the heap
//! page by page costs no page-table writes at boot: under this host's nested
//! KVM each such write and its TLB flush trap to the hypervisor, and mapping
//! 32 MiB in 4 KiB pages took four seconds.
//!
//! The allocator sits behind an [`IrqMutex`] (not the crate's own spinlock)
//! so that an interrupt arriving mid-allocation cannot deadlock on it.

use super::frames::{self, FRAME_SIZE};
use super::paging;
use crate::sync::IrqMutex;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;

/// Smallest heap, whatever the RAM.
const MIN_HEAP: u64 = 4 << 20;
/// Largest heap; the rest of RAM stays for frames (page tables, shared pages).
const MAX_HEAP: u64 = 64 << 20;

struct KernelHeap(IrqMutex<Heap>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(IrqMutex::new(Heap::empty()));

// SAFETY: allocation and release go through linked_list_allocator, which
// returns blocks that fit the layout and never overlap, under our lock.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with `layout`.
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}

/// Takes a quarter of usable RAM (clamped to 4..64 MiB, halved until it
/// fits in one contiguous run) and hands it to the allocator. A quarter, not
/// less: the DSM keeps its RAM pages and, on a responsible node, a record
/// per page of its ranges (~350 bytes with the disk index) here, and a
/// range larger than the node's RAM must fit.
pub fn init(usable_ram: u64) {
    let mut size = (usable_ram / 4).clamp(MIN_HEAP, MAX_HEAP) & !(FRAME_SIZE - 1);
    let first = loop {
        // 2 MiB alignment keeps the heap on the direct map's large pages.
        if let Some(f) = frames::alloc_contiguous((size / FRAME_SIZE) as usize, 512) {
            break f;
        }
        assert!(size > MIN_HEAP / 4, "no contiguous RAM for a kernel heap");
        size /= 2;
    };
    let base = paging::phys_to_virt(first.start_address().as_u64());
    // SAFETY: the run was free, so nothing else uses it; the direct map makes
    // it writable; init runs once.
    unsafe { HEAP.0.lock().init(base as *mut u8, size as usize) };
}

/// Size of the heap in bytes.
pub fn size() -> usize {
    HEAP.0.lock().size()
}

/// Bytes currently allocated.
pub fn used() -> usize {
    HEAP.0.lock().used()
}

crate::kernel_test!(
    fn heap_small_allocations() {
        use alloc::boxed::Box;
        let boxes: alloc::vec::Vec<Box<u64>> = (0..300).map(Box::new).collect();
        assert!(boxes.iter().enumerate().all(|(i, b)| **b == i as u64));
    }
);

crate::kernel_test!(
    fn heap_large_allocation() {
        // 4 MiB, spanning many pages; one word per page is enough to show
        // the pages are distinct and writable.
        let n = 4 << 20;
        let mut v = alloc::vec![0u64; n / 8];
        for (page, i) in (0..v.len()).step_by(512).enumerate() {
            v[i] = page as u64 + 1;
        }
        let last = v.len() - 1;
        v[last] = u64::MAX;
        assert!(
            (0..v.len() - 1)
                .step_by(512)
                .enumerate()
                .all(|(page, i)| v[i] == page as u64 + 1)
        );
        assert_eq!(v[last], u64::MAX);
    }
);

crate::kernel_test!(
    fn heap_alloc_free_cycles_return_to_baseline() {
        let before = used();
        for round in 0..300usize {
            let v = alloc::vec![round as u8; 16 + round % 500];
            assert_eq!(v[v.len() - 1], round as u8);
        }
        assert_eq!(used(), before, "every block came back");
    }
);

crate::kernel_test!(
    fn heap_mixed_sizes_interleaved_frees() {
        let before = used();
        let mut blocks = alloc::vec::Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..150 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = 1 + (seed % 8192) as usize;
            blocks.push(alloc::vec![i as u8; len]);
            if seed.is_multiple_of(3) {
                let victim = (seed as usize / 3) % blocks.len();
                blocks.swap_remove(victim);
            }
        }
        for b in &blocks {
            let first = b[0];
            assert!(b.iter().all(|x| *x == first), "no block was overwritten");
        }
        drop(blocks);
        assert_eq!(used(), before);
    }
);

crate::kernel_test!(
    fn heap_honours_alignment_and_growth() {
        let layout = Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: the layout has a non-zero size; the block is freed with it.
        let p = unsafe { alloc::alloc::alloc(layout) };
        assert!(
            !p.is_null() && (p as usize).is_multiple_of(4096),
            "page-aligned block"
        );
        // SAFETY: allocated just above with `layout`.
        unsafe { alloc::alloc::dealloc(p, layout) };
        let mut v = alloc::vec::Vec::new();
        for i in 0..10_000u32 {
            v.push(i);
        }
        assert!(
            v.iter().enumerate().all(|(i, x)| *x == i as u32),
            "contents survive reallocation"
        );
    }
);
