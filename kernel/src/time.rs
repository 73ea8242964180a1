//! The monotonic clock and the periodic tick.
//!
//! At boot, windows of the PIT (1 ms under TCG, 10 ms elsewhere) calibrate both the TSC (the clock:
//! reading it does not leave the VM, which matters under nested KVM where
//! every exit costs 100-200 µs) and the local APIC timer (the tick, which
//! wakes `hlt` so that waiting does not burn the CPU).

use core::sync::atomic::{AtomicU64, Ordering};

/// Periodic timer interrupts per second.
pub const TICK_HZ: u64 = 100;
/// Length of a calibration window under TCG, whose PIT reads cost
/// microseconds: 1 ms (1,193 PIT counts) gives a clock within a few tenths of a per cent, and three windows keep the
/// boot short (the boot benchmark's target is 20 ms for the whole kernel).
const CALIBRATION_MS_TCG: u64 = 1;
/// Length of a calibration window elsewhere: under KVM every PIT read is a
/// VM exit of 100-200 µs, so a window must be long for that to be small.
const CALIBRATION_MS_OTHER: u64 = 10;

/// The calibration window for the hypervisor we run under (CPUID leaf
/// 0x4000_0000 names it: QEMU's TCG says "TCGTCGTCGTCG").
fn calibration_ms() -> u64 {
    let r = core::arch::x86_64::__cpuid(0x4000_0000);
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&r.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    name[8..].copy_from_slice(&r.edx.to_le_bytes());
    if &name == b"TCGTCGTCGTCG" {
        CALIBRATION_MS_TCG
    } else {
        CALIBRATION_MS_OTHER
    }
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// The TSC when the kernel's Rust code started (before calibration).
static TSC_AT_ENTRY: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static APIC_COUNT_PER_TICK: AtomicU64 = AtomicU64::new(0);

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calibration windows; the median one (by TSC cycles) wins.
const CALIBRATION_WINDOWS: usize = 5;

/// Calibrates the TSC and the APIC timer, then starts the tick.
///
/// A window is only as good as the vCPU's attention: if the host deschedules
/// it while it polls the PIT, the PIT's window end is seen late and the TSC
/// delta (and the APIC count) come out too large (seen under this host's
/// KVM: 67,912 MHz instead of 2,602, so clocks ran 26x slow and peers were
/// declared dead). Under TCG a window was once seen 34x too short instead
/// (76 MHz), so neither extreme is trusted: the median of several windows
/// is.
pub fn init() {
    let mut window_ms = calibration_ms();
    let mut windows = [(0u64, 0u64, 0u64); CALIBRATION_WINDOWS];
    loop {
        for w in &mut windows {
            let (mut t0, mut t1) = (0, 0);
            let apic_ticks =
                crate::arch::apic::calibrate_timer(window_ms, || t0 = rdtsc(), || t1 = rdtsc());
            *w = (t1.saturating_sub(t0), apic_ticks, t0);
        }
        windows.sort_unstable_by_key(|w| w.0);
        // The middle windows must agree within 2%; short windows on a busy
        // host may not (a 2x error was seen), and then longer ones are used.
        let (lo, hi) = (windows[1].0, windows[CALIBRATION_WINDOWS - 2].0);
        if hi.saturating_mul(50) <= lo.saturating_mul(51) || window_ms >= 20 {
            break;
        }
        window_ms *= 4;
    }
    let (cycles, apic_ticks, _) = windows[CALIBRATION_WINDOWS / 2];
    // The clock starts at the first window.
    let t0 = windows.iter().map(|w| w.2).min().unwrap_or(0);
    let tsc_hz = cycles * 1000 / window_ms;
    TSC_HZ.store(tsc_hz.max(1), Ordering::Relaxed);
    TSC_AT_BOOT.store(t0, Ordering::Relaxed);
    let per_tick = apic_ticks * 1000 / window_ms / TICK_HZ;
    APIC_COUNT_PER_TICK.store(per_tick, Ordering::Relaxed);
    crate::arch::apic::start_periodic(per_tick.min(u32::MAX as u64) as u32);
}

/// Notes the kernel's first instant, for [`since_entry_us`].
pub fn mark_entry() {
    TSC_AT_ENTRY.store(rdtsc(), Ordering::Relaxed);
}

/// Microseconds since [`mark_entry`] (0 before calibration): how long the
/// boot took inside the VM.
pub fn since_entry_us() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    let elapsed = rdtsc().saturating_sub(TSC_AT_ENTRY.load(Ordering::Relaxed));
    (elapsed as u128 * 1_000_000 / hz as u128) as u64
}

/// TSC frequency found at boot.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since calibration; 0 before it. Never goes backwards.
pub fn now_ns() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    let elapsed = rdtsc().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (elapsed as u128 * 1_000_000_000 / hz as u128) as u64
}

/// Timer interrupts since the tick started.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Called from the timer interrupt; returns the new tick count.
pub fn on_tick() -> u64 {
    TICKS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Waits at least `ns` nanoseconds, halting between ticks.
pub fn sleep_ns(ns: u64) {
    let deadline = now_ns() + ns;
    while now_ns() < deadline {
        // Interrupts are on, so the next tick ends the hlt.
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

crate::kernel_test!(
    fn clock_calibration_found_frequencies() {
        assert!(
            tsc_hz() > 1_000_000,
            "TSC runs at more than 1 MHz: {}",
            tsc_hz()
        );
        assert!(
            APIC_COUNT_PER_TICK.load(Ordering::Relaxed) > 0,
            "APIC timer counts"
        );
    }
);

crate::kernel_test!(
    fn clock_is_monotonic() {
        let mut last = now_ns();
        for _ in 0..1000 {
            let t = now_ns();
            assert!(t >= last, "clock went back from {last} to {t}");
            last = t;
        }
    }
);

crate::kernel_test!(
    fn clock_sleep_waits_at_least_the_request() {
        let start = now_ns();
        sleep_ns(20_000_000);
        assert!(now_ns() - start >= 20_000_000);
    }
);

crate::kernel_test!(
    fn timer_ticks_arrive_while_halted() {
        let before = ticks();
        // A tick comes every 10 ms; a whole second without one is a hang.
        let limit = now_ns() + 1_000_000_000;
        while ticks() == before {
            assert!(now_ns() < limit, "no timer interrupt within a second");
            x86_64::instructions::interrupts::enable_and_hlt();
        }
        assert!(ticks() > before);
    }
);
