//! The local APIC (xAPIC, memory-mapped): periodic timer, end of interrupt,
//! and the APIC id that MSI-X messages will target.

use super::{interrupts, pit};
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;

const REG_ID: usize = 0x20;
const REG_EOI: usize = 0xb0;
const REG_SPURIOUS: usize = 0xf0;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;

const SPURIOUS_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 16".
const DIVIDE_BY_16: u32 = 0b0011;

/// Virtual address of the register page, 0 until [`init`].
static BASE: AtomicU64 = AtomicU64::new(0);

fn read(reg: usize) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "local APIC used before init");
    // SAFETY: BASE maps the APIC's 4 KiB register page uncached; `reg` is one
    // of the aligned 32-bit register offsets above.
    unsafe { core::ptr::read_volatile((base as usize + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "local APIC used before init");
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((base as usize + reg) as *mut u32, value) }
}

/// Maps and enables the local APIC and retires the legacy PICs.
pub fn init() {
    pit::disable_legacy_pics(interrupts::PIC_BASE_VECTOR);
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; setting the global
    // enable bit keeps the base address unchanged.
    let phys = unsafe {
        let value = msr.read() | APIC_GLOBAL_ENABLE;
        msr.write(value);
        value & 0x000f_ffff_ffff_f000
    };
    let virt = crate::memory::map_mmio(phys, 4096);
    BASE.store(virt, Ordering::Relaxed);
    write(
        REG_SPURIOUS,
        SPURIOUS_ENABLE | interrupts::SPURIOUS_VECTOR as u32,
    );
    write(REG_LVT_TIMER, LVT_MASKED);
    crate::arch::cpu::current()
        .apic_id
        .store(id(), Ordering::Relaxed);
}

/// This CPU's local APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signals the end of the interrupt being handled.
pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}

/// Counts timer ticks (at divide-by-16) over `ms` milliseconds of PIT time,
/// calling `start` and `end` at the same instants (for the TSC).
pub fn calibrate_timer(ms: u64, start: impl FnOnce(), end: impl FnOnce()) -> u64 {
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_MASKED);
    let mut remaining = 0;
    pit::measure(
        ms,
        || {
            write(REG_TIMER_INITIAL, u32::MAX);
            start();
        },
        || {
            remaining = read(REG_TIMER_CURRENT);
            end();
        },
    );
    write(REG_TIMER_INITIAL, 0);
    u64::from(u32::MAX - remaining)
}

/// Starts the periodic timer: one interrupt every `count` ticks.
pub fn start_periodic(count: u32) {
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(
        REG_LVT_TIMER,
        LVT_PERIODIC | interrupts::TIMER_VECTOR as u32,
    );
    write(REG_TIMER_INITIAL, count.max(1));
}

crate::kernel_test!(
    fn apic_is_enabled_with_spurious_vector() {
        let svr = read(REG_SPURIOUS);
        assert!(svr & SPURIOUS_ENABLE != 0, "software-enabled");
        assert_eq!(svr & 0xff, interrupts::SPURIOUS_VECTOR as u32);
        let lvt = read(REG_LVT_TIMER);
        assert_eq!(lvt & 0xff, interrupts::TIMER_VECTOR as u32);
        assert!(
            lvt & LVT_PERIODIC != 0 && lvt & LVT_MASKED == 0,
            "periodic and unmasked"
        );
    }
);
