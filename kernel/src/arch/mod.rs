//! x86_64 specifics: descriptor tables, interrupt entry and dispatch, the
//! system call entry, the local APIC, fault fixups, port I/O helpers and
//! power-off.

pub mod apic;
pub mod cpu;
pub mod exit;
pub mod fault;
pub mod gdt;
pub mod interrupts;
pub mod pit;
pub mod syscall;

/// Loads this CPU's GDT, TSS and IDT and enables `syscall`. Runs before
/// memory is set up, so it uses only static storage.
pub fn init_cpu() {
    gdt::init();
    interrupts::init();
    syscall::init();
}
