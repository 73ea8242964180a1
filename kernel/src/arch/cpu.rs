//! Per-CPU state behind one accessor.
//!
//! Only the boot CPU runs today, so [`current`] returns slot 0. In kernel
//! mode, GS base already points at the running CPU's slot (the syscall entry
//! and the interrupt stubs `swapgs` on every crossing from and to user mode,
//! see `arch::syscall`); when the other CPUs start, [`current`] will read it
//! there. Callers do not change because they only ever go through [`current`].

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use x86_64::structures::tss::TaskStateSegment;

/// How many CPUs the per-CPU tables have room for.
pub const MAX_CPUS: usize = 4;
/// Size of each interrupt stack (double fault, NMI).
pub const IST_STACK_SIZE: usize = 16 * 1024;
/// IST slot used by the double-fault handler.
pub const IST_DOUBLE_FAULT: u16 = 0;
/// IST slot used by the NMI handler.
pub const IST_NMI: u16 = 1;

/// A fault taken by a guarded instruction (see `arch::fault`), kept until the
/// code that issued the probe reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaughtFault {
    /// Exception vector (14 for a page fault).
    pub vector: u8,
    /// Error code pushed by the CPU, 0 when it pushes none.
    pub error_code: u64,
    /// CR2 at the time of the fault (meaningful for page faults).
    pub address: u64,
}

/// What one CPU keeps for itself. `repr(C)`: the syscall entry reaches the
/// first two fields through GS at fixed offsets.
#[repr(C)]
pub struct PerCpu {
    /// Top of the running task's kernel stack: the syscall entry switches to
    /// it (at [`KERNEL_STACK_OFFSET`]).
    pub kernel_stack: AtomicU64,
    /// The user stack pointer while the syscall entry saves it (at
    /// [`USER_RSP_OFFSET`]).
    user_rsp: AtomicU64,
    /// Index in the per-CPU tables.
    pub index: usize,
    /// Local APIC id, once the APIC is up.
    pub apic_id: AtomicU32,
    caught_vector: AtomicU32,
    caught_error: AtomicU64,
    caught_address: AtomicU64,
    /// Pid of the task running here (the scheduler keeps it).
    pub current_task: AtomicU32,
    /// Set when the running task should give the CPU up at the next
    /// chance (its time slice is over, or a task with work was woken).
    pub need_resched: AtomicBool,
}

/// Offset of [`PerCpu::kernel_stack`], for the syscall entry.
pub const KERNEL_STACK_OFFSET: usize = core::mem::offset_of!(PerCpu, kernel_stack);
/// Offset of `PerCpu::user_rsp`, for the syscall entry.
pub const USER_RSP_OFFSET: usize = core::mem::offset_of!(PerCpu, user_rsp);

impl PerCpu {
    const fn new(index: usize) -> Self {
        Self {
            kernel_stack: AtomicU64::new(0),
            user_rsp: AtomicU64::new(0),
            current_task: AtomicU32::new(0),
            need_resched: AtomicBool::new(false),
            index,
            apic_id: AtomicU32::new(0),
            caught_vector: AtomicU32::new(u32::MAX),
            caught_error: AtomicU64::new(0),
            caught_address: AtomicU64::new(0),
        }
    }

    /// Records a fault taken by a guarded instruction (interrupt context).
    pub fn record_caught_fault(&self, f: CaughtFault) {
        self.caught_error.store(f.error_code, Ordering::Relaxed);
        self.caught_address.store(f.address, Ordering::Relaxed);
        self.caught_vector.store(f.vector as u32, Ordering::Release);
    }

    /// Takes the recorded fault, if any.
    pub fn take_caught_fault(&self) -> Option<CaughtFault> {
        let v = self.caught_vector.swap(u32::MAX, Ordering::Acquire);
        (v != u32::MAX).then(|| CaughtFault {
            vector: v as u8,
            error_code: self.caught_error.load(Ordering::Relaxed),
            address: self.caught_address.load(Ordering::Relaxed),
        })
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [
    PerCpu::new(0),
    PerCpu::new(1),
    PerCpu::new(2),
    PerCpu::new(3),
];

/// The running CPU's state.
pub fn current() -> &'static PerCpu {
    &CPUS[0]
}

/// A stack the CPU switches to through the TSS's interrupt stack table.
#[repr(C, align(16))]
pub struct IstStack([u8; IST_STACK_SIZE]);

// Written only by the CPU when it switches stacks; Rust code never reads them.
static mut DOUBLE_FAULT_STACKS: [IstStack; MAX_CPUS] =
    [const { IstStack([0; IST_STACK_SIZE]) }; MAX_CPUS];
static mut NMI_STACKS: [IstStack; MAX_CPUS] = [const { IstStack([0; IST_STACK_SIZE]) }; MAX_CPUS];

/// A TSS for CPU `index` whose IST slots point at that CPU's own stacks.
pub fn new_tss(index: usize) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    assert!(index < MAX_CPUS);
    // `&raw mut` takes the address without creating a reference to the static.
    let top = |stacks: *mut [IstStack; MAX_CPUS]| {
        x86_64::VirtAddr::from_ptr(stacks.cast::<IstStack>().wrapping_add(index + 1))
    };
    tss.interrupt_stack_table[IST_DOUBLE_FAULT as usize] = top(&raw mut DOUBLE_FAULT_STACKS);
    tss.interrupt_stack_table[IST_NMI as usize] = top(&raw mut NMI_STACKS);
    tss
}
