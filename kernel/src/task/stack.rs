//! Kernel stacks of tasks: 32 KiB each in the kernel-stack window of the
//! upper half (shared by every address space), with an unmapped guard below
//! each, so an overflow faults (and double-faults onto the IST stack, which
//! reports it) instead of corrupting a neighbour. Slots are mapped once and
//! reused: unmapping would cost page-table writes, which are slow under
//! nested KVM.

use crate::memory::frames;
use crate::memory::paging::{self, KERNEL_STACKS_BASE, MapError};
use crate::sync::IrqMutex;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags as Flags};

/// Bytes of each kernel stack. 64 KiB: a DSM directory update (shm-ext's
/// linker keeps whole 4 KiB page images in its frames) nested in a fault
/// wait needs more than 32 KiB.
pub const STACK_SIZE: u64 = 64 * 1024;
/// Distance between slots: the stack and a guard of the same size below it.
const SLOT_SIZE: u64 = 2 * STACK_SIZE;

static FREE: IrqMutex<Vec<u64>> = IrqMutex::new(Vec::new());
static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

/// One task's kernel stack; its slot goes back to the pool when dropped.
#[derive(Debug)]
pub struct KernelStack {
    slot: u64,
}

impl KernelStack {
    /// A mapped stack (reused from an ended task when one is free).
    pub fn new() -> Result<Self, MapError> {
        if let Some(slot) = FREE.lock().pop() {
            return Ok(KernelStack { slot });
        }
        // A slot that fails half-mapped is never used again (not put back).
        let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        let top = slot_top(slot);
        for addr in (top - STACK_SIZE..top).step_by(frames::FRAME_SIZE as usize) {
            let frame = frames::alloc().ok_or(MapError::OutOfFrames)?;
            let page = Page::containing_address(VirtAddr::new(addr));
            let flags = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE;
            if let Err(e) = paging::map(page, frame, flags) {
                frames::free(frame);
                return Err(e);
            }
        }
        Ok(KernelStack { slot })
    }

    /// The address just above the stack (stacks grow down).
    pub fn top(&self) -> u64 {
        slot_top(self.slot)
    }
}

fn slot_top(slot: u64) -> u64 {
    KERNEL_STACKS_BASE + (slot + 1) * SLOT_SIZE
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        FREE.lock().push(self.slot);
    }
}

crate::kernel_test!(
    fn task_kernel_stacks_have_guard_pages_and_are_reused() {
        let a = KernelStack::new().expect("a stack");
        let top = a.top();
        assert!(top.is_multiple_of(16));
        crate::arch::fault::write_u64(top - 8, 1).expect("the top is writable");
        crate::arch::fault::write_u64(top - STACK_SIZE, 2).expect("so is the bottom");
        let guard = crate::arch::fault::read_u64(top - STACK_SIZE - 8).expect_err("guard page");
        assert_eq!(guard.vector, 14);
        drop(a);
        let b = KernelStack::new().unwrap();
        assert_eq!(b.top(), top, "the slot is reused");
    }
);
