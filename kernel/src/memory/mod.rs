//! Memory: physical frames, the kernel's page tables, the heap, and the
//! address spaces of processes.

pub mod frames;
pub mod heap;
pub mod paging;
pub mod space;

pub use paging::{map_device_memory, map_mmio, phys_to_virt};

use crate::boot::BootInfo;

/// A summary for the banner and tests.
#[derive(Debug, Clone, Copy)]
pub struct MemoryStats {
    /// Usable RAM the frame allocator manages.
    pub usable_bytes: u64,
    /// RAM still free in the frame allocator.
    pub free_bytes: u64,
    /// Size of the kernel heap.
    pub heap_bytes: u64,
}

/// Sets up frames, the kernel's own page tables, then the heap.
pub fn init(boot: &BootInfo) {
    frames::init(boot.memory_regions());
    paging::init(boot.memory_regions());
    heap::init(frames::usable_bytes());
}

/// Current memory figures.
pub fn stats() -> MemoryStats {
    MemoryStats {
        usable_bytes: frames::usable_bytes(),
        free_bytes: frames::free_frames() as u64 * frames::FRAME_SIZE,
        heap_bytes: heap::size() as u64,
    }
}
