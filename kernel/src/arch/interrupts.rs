//! Interrupt and exception entry.
//!
//! Stable Rust has no `extern "x86-interrupt"`, so every one of the 256
//! vectors gets a 16-byte assembly stub that pushes a uniform frame (a dummy
//! error code where the CPU pushes none, then the vector) and jumps to one
//! common path, which saves the registers and calls [`interrupt_dispatch`]
//! with a `&mut TrapFrame`. Handlers may change the frame (the fault-fixup
//! path moves RIP); the common path restores it and returns with `iretq`.
//! Coming from user mode, the CPU has switched to the task's kernel stack
//! (TSS.RSP0) and the common path swaps GS (see `arch::cpu`). A timer tick
//! or a wake-up that interrupts user mode may switch tasks before returning
//! (see `task::preempt_point`).

use super::{apic, cpu, fault};
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::structures::idt::InterruptDescriptorTable;

/// Vector of the local APIC's periodic timer.
pub const TIMER_VECTOR: u8 = 0x30;
/// First vector handed out to devices (MSI-X).
pub const DEVICE_VECTOR_BASE: u8 = 0x40;
/// Vector the legacy PICs are moved to before being masked.
pub const PIC_BASE_VECTOR: u8 = 0xE0;
/// Vector of the local APIC's spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    /* From user mode (CS.RPL = 3): switch GS to this CPU's area. */
    testb $3, 24(%rsp)
    jz 1f
    swapgs
1:  push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call interrupt_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    /* Back to user mode: give user space its GS again. */
    testb $3, 24(%rsp)
    jz 2f
    swapgs
2:  add $16, %rsp
    iretq
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// First of the 256 entry stubs, each 16 bytes long.
    static isr_stubs: [u8; 256 * 16];
}

/// Registers saved on interrupt entry, lowest address first.
#[repr(C)]
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// Whether the interrupted code ran in user mode (CS.RPL = 3).
    pub fn is_from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

impl fmt::Display for TrapFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  RIP {:#018x}  CS {:#06x}  RFLAGS {:#010x}",
            self.rip, self.cs, self.rflags
        )?;
        writeln!(f, "  RSP {:#018x}  SS {:#06x}", self.rsp, self.ss)?;
        writeln!(
            f,
            "  RAX {:#018x}  RBX {:#018x}  RCX {:#018x}",
            self.rax, self.rbx, self.rcx
        )?;
        writeln!(
            f,
            "  RDX {:#018x}  RSI {:#018x}  RDI {:#018x}",
            self.rdx, self.rsi, self.rdi
        )?;
        writeln!(
            f,
            "  RBP {:#018x}  R8  {:#018x}  R9  {:#018x}",
            self.rbp, self.r8, self.r9
        )?;
        writeln!(
            f,
            "  R10 {:#018x}  R11 {:#018x}  R12 {:#018x}",
            self.r10, self.r11, self.r12
        )?;
        write!(
            f,
            "  R13 {:#018x}  R14 {:#018x}  R15 {:#018x}",
            self.r13, self.r14, self.r15
        )
    }
}

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// Device interrupt handlers by vector (a `fn(u8)` as usize, 0 when none).
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static NEXT_DEVICE_VECTOR: AtomicUsize = AtomicUsize::new(DEVICE_VECTOR_BASE as usize);

/// Reserves `count` consecutive vectors that all call `handler(vector)`;
/// returns the first. The handler runs with interrupts off and must not block.
pub fn allocate_vectors(count: u8, handler: fn(u8)) -> Option<u8> {
    let first = NEXT_DEVICE_VECTOR.fetch_add(count as usize, Ordering::Relaxed);
    if first + count as usize > PIC_BASE_VECTOR as usize {
        return None;
    }
    for slot in &HANDLERS[first..first + count as usize] {
        slot.store(handler as usize, Ordering::Release);
    }
    Some(first as u8)
}

fn handler(vector: u8) -> Option<fn(u8)> {
    let raw = HANDLERS[vector as usize].load(Ordering::Acquire);
    // SAFETY: HANDLERS holds only 0 or values stored from a `fn(u8)` above.
    (raw != 0).then(|| unsafe { core::mem::transmute::<usize, fn(u8)>(raw) })
}

fn stub_address(vector: u8) -> VirtAddr {
    // `&raw const` takes the stubs' address without reading them.
    VirtAddr::from_ptr((&raw const isr_stubs).cast::<u8>()) + u64::from(vector) * 16
}

/// Builds the IDT (every vector to its stub) and loads it.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        for v in 0..=255u8 {
            let addr = stub_address(v);
            // SAFETY: every stub is a valid interrupt entry point that builds a
            // TrapFrame and returns with iretq.
            let options = unsafe {
                match v {
                    8 => idt.double_fault.set_handler_addr(addr),
                    10 => idt.invalid_tss.set_handler_addr(addr),
                    11 => idt.segment_not_present.set_handler_addr(addr),
                    12 => idt.stack_segment_fault.set_handler_addr(addr),
                    13 => idt.general_protection_fault.set_handler_addr(addr),
                    14 => idt.page_fault.set_handler_addr(addr),
                    17 => idt.alignment_check.set_handler_addr(addr),
                    18 => idt.machine_check.set_handler_addr(addr),
                    21 => idt.cp_protection_exception.set_handler_addr(addr),
                    29 => idt.vmm_communication_exception.set_handler_addr(addr),
                    30 => idt.security_exception.set_handler_addr(addr),
                    15 | 22..=27 | 31 => continue, // reserved by the CPU
                    _ => idt[v].set_handler_addr(addr),
                }
            };
            let ist = match v {
                8 => Some(cpu::IST_DOUBLE_FAULT),
                2 => Some(cpu::IST_NMI),
                _ => None,
            };
            if let Some(index) = ist {
                // SAFETY: the TSS loaded by gdt::init has a valid stack in this slot.
                unsafe {
                    options.set_stack_index(index);
                }
            }
        }
        idt
    });
    idt.load();
}

/// Called by the common stub with interrupts off.
#[unsafe(no_mangle)]
extern "C" fn interrupt_dispatch(frame: &mut TrapFrame) {
    match frame.vector as u8 {
        v if v < 32 => fault::handle_exception(frame),
        TIMER_VECTOR => {
            crate::time::on_tick();
            crate::cluster::on_tick();
            // Before any task switch: the next tick must not wait for this one.
            apic::end_of_interrupt();
            crate::task::on_tick();
        }
        SPURIOUS_VECTOR => {}           // no EOI for spurious interrupts
        v if v >= PIC_BASE_VECTOR => {} // a masked legacy PIC's spurious IRQ
        v => {
            match handler(v) {
                Some(h) => h(v),
                None => log::warn!("unexpected interrupt on vector {v:#x}"),
            }
            apic::end_of_interrupt();
        }
    }
    // Only user mode is preempted: kernel code runs to its next blocking point.
    if frame.is_from_user() {
        crate::task::preempt_point();
    }
}

crate::kernel_test!(
    fn interrupts_idt_routes_every_exception() {
        let idt = IDT.get().expect("IDT loaded");
        assert_eq!(idt.page_fault.handler_addr(), stub_address(14));
        assert_eq!(idt.double_fault.handler_addr(), stub_address(8));
        assert_eq!(idt[TIMER_VECTOR].handler_addr(), stub_address(TIMER_VECTOR));
        assert_eq!(idt.divide_error.handler_addr(), stub_address(0));
    }
);
