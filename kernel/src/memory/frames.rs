//! The physical frame allocator: one bit per 4 KiB frame, set when free.
//!
//! Written by hand because no maintained crate offers a bitmap frame
//! allocator fed from a firmware memory map; it is small. The bitmap is
//! static (in .bss) so it exists before any allocator does, and covers the
//! first [`MAX_PHYS`] bytes of physical memory; RAM above that is ignored and
//! said so at boot.

use crate::boot::MemoryRegion;
use crate::sync::IrqMutex;
use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

/// Size of a frame.
pub const FRAME_SIZE: u64 = 4096;
/// Highest physical address the allocator manages.
pub const MAX_PHYS: u64 = 16 << 30;
const FRAMES: usize = (MAX_PHYS / FRAME_SIZE) as usize;
const WORDS: usize = FRAMES / 64;
/// Memory below 1 MiB holds firmware tables and the BIOS area: never used.
const LOW_LIMIT: u64 = 1 << 20;

struct Bitmap {
    free: [u64; WORDS],
    /// Word where the next search starts (next fit keeps allocation O(1) on average).
    cursor: usize,
    free_count: usize,
    usable_bytes: u64,
}

impl Bitmap {
    /// Marks frames `first..end` free, a whole word at a time where it can
    /// (boot speed matters: see the note on KVM in README).
    fn mark_free(&mut self, first: usize, end: usize) {
        let mut i = first;
        while i < end {
            if i.is_multiple_of(64) && i + 64 <= end {
                self.free[i / 64] = u64::MAX;
                i += 64;
            } else {
                self.free[i / 64] |= 1 << (i % 64);
                i += 1;
            }
        }
        self.free_count += end - first;
        self.usable_bytes += (end - first) as u64 * FRAME_SIZE;
    }
}

static BITMAP: IrqMutex<Bitmap> = IrqMutex::new(Bitmap {
    free: [0; WORDS],
    cursor: 0,
    free_count: 0,
    usable_bytes: 0,
});

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical range of the loaded kernel image (identity-mapped, see paging).
pub fn kernel_image() -> (u64, u64) {
    (
        (&raw const __kernel_start) as u64,
        (&raw const __kernel_end) as u64,
    )
}

/// Marks every usable frame free, except low memory and the kernel image.
pub fn init<'a>(regions: impl Iterator<Item = &'a MemoryRegion>) {
    let (k_start, k_end) = kernel_image();
    let mut map = BITMAP.lock();
    let mut ignored = 0;
    for r in regions.filter(|r| r.is_usable()) {
        let start = r.start.max(LOW_LIMIT).next_multiple_of(FRAME_SIZE);
        let end = r.end() & !(FRAME_SIZE - 1);
        if end > MAX_PHYS {
            ignored += end - start.max(MAX_PHYS);
        }
        // The kernel image splits a region in two at most.
        let end = end.min(MAX_PHYS);
        for (s, e) in [(start, end.min(k_start)), (start.max(k_end), end)] {
            if s < e {
                map.mark_free((s / FRAME_SIZE) as usize, (e / FRAME_SIZE) as usize);
            }
        }
    }
    if ignored > 0 {
        log::warn!(
            "frames: {} MiB of RAM above {} GiB ignored",
            ignored >> 20,
            MAX_PHYS >> 30
        );
    }
}

/// Takes one free frame.
pub fn alloc() -> Option<PhysFrame> {
    let mut map = BITMAP.lock();
    let start = map.cursor;
    for n in 0..WORDS {
        let w = (start + n) % WORDS;
        let word = map.free[w];
        if word != 0 {
            let bit = word.trailing_zeros() as usize;
            map.free[w] &= !(1 << bit);
            map.free_count -= 1;
            map.cursor = w;
            let addr = ((w * 64 + bit) as u64) * FRAME_SIZE;
            return Some(PhysFrame::containing_address(PhysAddr::new(addr)));
        }
    }
    None
}

/// Takes `count` physically contiguous free frames, the first aligned to
/// `align` frames; returns the first. For the heap and, later, DMA buffers.
pub fn alloc_contiguous(count: usize, align: usize) -> Option<PhysFrame> {
    let align = align.max(1);
    let mut map = BITMAP.lock();
    let is_free = |map: &Bitmap, i: usize| map.free[i / 64] & (1 << (i % 64)) != 0;
    let mut first = 0;
    while first + count <= FRAMES {
        if map.free[first / 64] == 0 {
            // A word with no free frame: skip all 64 at once.
            first = (first / 64 + 1) * 64;
            first = first.next_multiple_of(align);
            continue;
        }
        match (first..first + count).find(|&i| !is_free(&map, i)) {
            // Restart past the frame that is taken.
            Some(taken) => first = (taken + 1).next_multiple_of(align),
            None => {
                for i in first..first + count {
                    map.free[i / 64] &= !(1 << (i % 64));
                }
                map.free_count -= count;
                return Some(PhysFrame::containing_address(PhysAddr::new(
                    first as u64 * FRAME_SIZE,
                )));
            }
        }
    }
    None
}

/// Takes one free frame and fills it with zeros.
pub fn alloc_zeroed() -> Option<PhysFrame> {
    let frame = alloc()?;
    let ptr = super::phys_to_virt(frame.start_address().as_u64()) as *mut u8;
    // SAFETY: the frame was free, so nothing else references it, and the
    // direct map (or, during boot, the identity map) makes it writable.
    unsafe { core::ptr::write_bytes(ptr, 0, FRAME_SIZE as usize) };
    Some(frame)
}

/// Gives a frame back. Freeing a frame that is already free is a kernel bug.
pub fn free(frame: PhysFrame<Size4KiB>) {
    let i = (frame.start_address().as_u64() / FRAME_SIZE) as usize;
    assert!(
        i < FRAMES,
        "freeing frame {:#x} beyond the managed range",
        frame.start_address().as_u64()
    );
    let mut map = BITMAP.lock();
    assert!(
        map.free[i / 64] & (1 << (i % 64)) == 0,
        "double free of frame {:#x}",
        frame.start_address().as_u64()
    );
    map.free[i / 64] |= 1 << (i % 64);
    map.free_count += 1;
}

/// Frames currently free.
pub fn free_frames() -> usize {
    BITMAP.lock().free_count
}

/// Usable RAM found in the memory map.
pub fn usable_bytes() -> u64 {
    BITMAP.lock().usable_bytes
}

crate::kernel_test!(
    fn frames_are_unique_aligned_and_outside_the_kernel() {
        let (k_start, k_end) = kernel_image();
        let mut taken = alloc::vec::Vec::new();
        for _ in 0..64 {
            let f = alloc().expect("64 frames are free");
            let a = f.start_address().as_u64();
            assert_eq!(a % FRAME_SIZE, 0);
            assert!(a >= LOW_LIMIT, "no frame below 1 MiB");
            assert!(
                !(k_start..k_end).contains(&a),
                "frame {a:#x} inside the kernel image"
            );
            assert!(!taken.contains(&a), "frame {a:#x} handed out twice");
            taken.push(a);
        }
        for a in taken {
            free(PhysFrame::containing_address(PhysAddr::new(a)));
        }
    }
);

crate::kernel_test!(
    fn frames_free_count_balances() {
        let before = free_frames();
        let a = alloc().unwrap();
        let b = alloc().unwrap();
        assert_eq!(free_frames(), before - 2);
        free(a);
        free(b);
        assert_eq!(free_frames(), before);
    }
);

crate::kernel_test!(
    fn frames_alloc_zeroed_is_zero() {
        let f = alloc_zeroed().unwrap();
        let p = super::phys_to_virt(f.start_address().as_u64()) as *const u64;
        // SAFETY: the frame is ours and the direct map covers it.
        let all_zero = (0..512).all(|i| unsafe { p.add(i).read_volatile() } == 0);
        assert!(all_zero);
        free(f);
    }
);

crate::kernel_test!(
    fn frames_contiguous_run_is_aligned_and_exclusive() {
        let before = free_frames();
        let first = alloc_contiguous(64, 16).expect("64 contiguous frames");
        let base = first.start_address().as_u64();
        assert_eq!(base % (16 * FRAME_SIZE), 0, "aligned to 16 frames");
        assert_eq!(free_frames(), before - 64);
        let other = alloc().unwrap();
        let o = other.start_address().as_u64();
        assert!(
            !(base..base + 64 * FRAME_SIZE).contains(&o),
            "the run is not handed out again"
        );
        free(other);
        for i in 0..64 {
            free(PhysFrame::containing_address(PhysAddr::new(
                base + i * FRAME_SIZE,
            )));
        }
        assert_eq!(free_frames(), before);
    }
);

crate::kernel_test!(
    fn frames_exhaustion_returns_none_then_recovers() {
        // Big runs first, then single frames, so the test stays short.
        let before = free_frames();
        let mut runs = alloc::vec::Vec::new();
        while let Some(f) = alloc_contiguous(512, 1) {
            runs.push((f, 512));
        }
        while let Some(f) = alloc() {
            runs.push((f, 1));
        }
        assert_eq!(free_frames(), 0);
        assert!(alloc().is_none(), "no frame when none is free");
        assert!(alloc_contiguous(1, 1).is_none());
        for (first, count) in runs {
            for i in 0..count {
                free(PhysFrame::containing_address(
                    first.start_address() + i * FRAME_SIZE,
                ));
            }
        }
        assert_eq!(free_frames(), before, "every frame came back");
        assert!(alloc().map(free).is_some());
    }
);
