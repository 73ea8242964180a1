//! The GDT and TSS of the boot CPU.
//!
//! Segment order is the one `sysret` needs later: kernel code, kernel data,
//! user data, user code, then the TSS.

use super::cpu;
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
    #[allow(dead_code)] // for sysret, when user mode arrives
    pub user_data: SegmentSelector,
    /// Ring-3 code.
    #[allow(dead_code)] // for sysret, when user mode arrives
    pub user_code: SegmentSelector,
    /// The task state segment.
    pub tss: SegmentSelector,
}

static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static GDT: spin::Once<(GlobalDescriptorTable, Selectors)> = spin::Once::new();

/// Builds and loads the boot CPU's GDT and TSS.
pub fn init() {
    let tss = TSS.call_once(|| cpu::new_tss(cpu::current().index));
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let sel = Selectors {
            kernel_code: gdt.append(Descriptor::kernel_code_segment()),
            kernel_data: gdt.append(Descriptor::kernel_data_segment()),
            user_data: gdt.append(Descriptor::user_data_segment()),
            user_code: gdt.append(Descriptor::user_code_segment()),
            tss: gdt.append(Descriptor::tss_segment(tss)),
        };
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
#[allow(dead_code)] // used by user mode (syscall/sysret) in a later change
pub fn selectors() -> Selectors {
    GDT.get().expect("GDT initialised at boot").1
}

crate::kernel_test!(
    fn gdt_tss_has_separate_fault_stacks() {
        let tss = TSS.get().expect("TSS loaded");
        let df = tss.interrupt_stack_table[cpu::IST_DOUBLE_FAULT as usize].as_u64();
        let nmi = tss.interrupt_stack_table[cpu::IST_NMI as usize].as_u64();
        assert!(df != 0 && nmi != 0, "both IST stacks are set");
        assert!(
            df.abs_diff(nmi) >= cpu::IST_STACK_SIZE as u64,
            "the stacks do not overlap"
        );
        assert_eq!(CS::get_reg(), GDT.get().unwrap().1.kernel_code);
    }
);
