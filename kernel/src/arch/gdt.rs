//! The GDT and TSS of the boot CPU.
//!
//! Segment order is the one `syscall`/`sysret` need: kernel code, kernel
//! data, user data, user code, then the TSS. The TSS's RSP0 (the stack an
//! interrupt from user mode lands on) changes at every task switch, so the
//! TSS sits in an `UnsafeCell` and is only ever written through
//! [`set_kernel_stack`].

use super::cpu;
use core::cell::UnsafeCell;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// The selectors the rest of the kernel refers to.
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    /// Ring-0 code.
    pub kernel_code: SegmentSelector,
    /// Ring-0 data and stack.
    pub kernel_data: SegmentSelector,
    /// Ring-3 data and stack.
    pub user_data: SegmentSelector,
    /// Ring-3 code.
    pub user_code: SegmentSelector,
    /// The task state segment.
    pub tss: SegmentSelector,
}

/// Ring-0 code selector (the syscall entry relies on this order).
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// Ring-3 data selector with RPL 3, as `sysret` loads it into SS.
pub const USER_DATA_SELECTOR: u16 = 0x18 | 3;
/// Ring-3 code selector with RPL 3, as `sysret` loads it into CS.
pub const USER_CODE_SELECTOR: u16 = 0x20 | 3;

/// The boot CPU's TSS. The CPU reads it behind our back; Rust code touches it
/// only through raw pointers (no reference to it outlives a statement).
struct TssCell(UnsafeCell<TaskStateSegment>);

// SAFETY: written only by the CPU that owns it, with interrupts off (task
// switch) or before any other code runs (init).
unsafe impl Sync for TssCell {}

static TSS: spin::Once<TssCell> = spin::Once::new();
static GDT: spin::Once<(GlobalDescriptorTable, Selectors)> = spin::Once::new();

/// Builds and loads the boot CPU's GDT and TSS.
pub fn init() {
    let tss = TSS.call_once(|| TssCell(UnsafeCell::new(cpu::new_tss(cpu::current().index))));
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        // SAFETY: the TSS lives in a static for the kernel's whole life.
        let tss_descriptor = unsafe { Descriptor::tss_segment_unchecked(tss.0.get()) };
        let sel = Selectors {
            kernel_code: gdt.append(Descriptor::kernel_code_segment()),
            kernel_data: gdt.append(Descriptor::kernel_data_segment()),
            user_data: gdt.append(Descriptor::user_data_segment()),
            user_code: gdt.append(Descriptor::user_code_segment()),
            tss: gdt.append(tss_descriptor),
        };
        assert_eq!(sel.kernel_code.0, KERNEL_CODE_SELECTOR);
        assert_eq!(sel.user_data.0, USER_DATA_SELECTOR);
        assert_eq!(sel.user_code.0, USER_CODE_SELECTOR);
        (gdt, sel)
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded and describe valid
    // 64-bit kernel segments and an available TSS.
    unsafe {
        CS::set_reg(sel.kernel_code);
        SS::set_reg(sel.kernel_data);
        DS::set_reg(sel.kernel_data);
        ES::set_reg(sel.kernel_data);
        load_tss(sel.tss);
    }
}

/// The selectors of the loaded GDT.
pub fn selectors() -> Selectors {
    GDT.get().expect("GDT initialised at boot").1
}

/// Sets the stack the CPU switches to on an interrupt or exception from
/// user mode (TSS.RSP0). Called at every switch to a user task.
pub fn set_kernel_stack(top: u64) {
    let tss = TSS.get().expect("TSS loaded").0.get();
    // SAFETY: a plain store into the boot CPU's TSS through its raw pointer;
    // the CPU reads the field only when it enters ring 0 from ring 3, which
    // cannot happen on this CPU while we run here.
    unsafe { (*tss).privilege_stack_table[0] = x86_64::VirtAddr::new(top) };
}

/// The TSS's current RSP0 (for tests).
pub fn kernel_stack() -> u64 {
    let tss = TSS.get().expect("TSS loaded").0.get();
    // SAFETY: a plain read of a field the CPU does not write.
    unsafe { (*tss).privilege_stack_table[0].as_u64() }
}

crate::kernel_test!(
    fn gdt_tss_has_separate_fault_stacks() {
        let tss = TSS.get().expect("TSS loaded").0.get();
        // SAFETY: plain reads of fields only init writes.
        let (df, nmi) = unsafe {
            (
                (*tss).interrupt_stack_table[cpu::IST_DOUBLE_FAULT as usize].as_u64(),
                (*tss).interrupt_stack_table[cpu::IST_NMI as usize].as_u64(),
            )
        };
        assert!(df != 0 && nmi != 0, "both IST stacks are set");
        assert!(
            df.abs_diff(nmi) >= cpu::IST_STACK_SIZE as u64,
            "the stacks do not overlap"
        );
        assert_eq!(CS::get_reg(), GDT.get().unwrap().1.kernel_code);
    }
);
