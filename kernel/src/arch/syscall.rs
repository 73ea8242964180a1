//! The `syscall`/`sysret` path and the first entry into user mode.
//!
//! `syscall` jumps to [`syscall_entry`] in ring 0 with the user's RSP still
//! loaded, RIP in RCX and RFLAGS in R11, and interrupts masked (SFMASK). The
//! stub swaps GS to this CPU's area (`arch::cpu::PerCpu`), saves the user RSP
//! there, switches to the running task's kernel stack, and pushes a frame with
//! the same layout as an interrupt's [`TrapFrame`] (so a task blocked in a
//! system call looks like one interrupted in user mode). It then calls
//! `crate::syscall::dispatch`, which may block and switch tasks, and returns
//! with `sysretq`, or with `iretq` should the return RIP be non-canonical
//! (`sysret` would fault in ring 0 on the user's stack on Intel; the
//! dispatcher kills such a task before it gets here, this is the second lock).

use super::cpu::{KERNEL_STACK_OFFSET, USER_RSP_OFFSET};
use super::gdt::{self, USER_CODE_SELECTOR, USER_DATA_SELECTOR};
use super::interrupts::TrapFrame;
use x86_64::VirtAddr;
use x86_64::registers::model_specific::{
    Efer, EferFlags, GsBase, KernelGsBase, LStar, SFMask, Star,
};
use x86_64::registers::rflags::RFlags;

/// The `vector` field of a frame built by the syscall entry.
pub const SYSCALL_FRAME_MARK: u64 = 0x100;

/// What a system call sees: the registers at `syscall`, as a [`TrapFrame`].
pub type SyscallFrame = TrapFrame;

/// RFLAGS bits a user task may have set; the rest are cleared on return.
const USER_RFLAGS: u64 = RFlags::CARRY_FLAG.bits()
    | RFlags::PARITY_FLAG.bits()
    | RFlags::AUXILIARY_CARRY_FLAG.bits()
    | RFlags::ZERO_FLAG.bits()
    | RFlags::SIGN_FLAG.bits()
    | RFlags::TRAP_FLAG.bits()
    | RFlags::DIRECTION_FLAG.bits()
    | RFlags::OVERFLOW_FLAG.bits()
    | RFlags::ALIGNMENT_CHECK.bits();

core::arch::global_asm!(
    r#"
    .section .text
    .global syscall_entry
syscall_entry:
    swapgs
    mov %rsp, %gs:{user_rsp}
    mov %gs:{kernel_stack}, %rsp
    /* The hardware part of a TrapFrame: ss, rsp, rflags, cs, rip. */
    pushq ${user_ds}
    pushq %gs:{user_rsp}
    push %r11
    pushq ${user_cs}
    push %rcx
    pushq $0
    pushq ${mark}
    push %rax
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
    call {dispatch}
    /* The dispatcher returns with interrupts off. */
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
    add $16, %rsp
    /* rip, cs, rflags, rsp, ss are left; sysret needs RIP canonical. */
    mov (%rsp), %rcx
    mov %rcx, %r11
    shl $16, %r11
    sar $16, %r11
    cmp %rcx, %r11
    jne 1f
    mov 16(%rsp), %r11
    mov 24(%rsp), %rsp
    swapgs
    sysretq
1:  swapgs
    iretq
"#,
    user_rsp = const USER_RSP_OFFSET,
    kernel_stack = const KERNEL_STACK_OFFSET,
    user_ds = const USER_DATA_SELECTOR,
    user_cs = const USER_CODE_SELECTOR,
    mark = const SYSCALL_FRAME_MARK,
    dispatch = sym crate::syscall::dispatch,
    options(att_syntax)
);

unsafe extern "C" {
    /// The `syscall` target (LSTAR); never called from Rust.
    fn syscall_entry();
}

/// Enables `syscall` and points it at [`syscall_entry`]; sets GS base to this
/// CPU's area (kernel mode always runs with it).
pub fn init() {
    let sel = gdt::selectors();
    Star::write(
        sel.user_code,
        sel.user_data,
        sel.kernel_code,
        sel.kernel_data,
    )
    .expect("the GDT is in sysret order");
    LStar::write(VirtAddr::new(syscall_entry as *const () as u64));
    // Interrupts stay off until the stub has switched stacks; DF, TF, AC
    // and NT must not leak from user mode into kernel code.
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK,
    );
    // SAFETY: setting SCE only enables the syscall instruction, whose entry
    // point and segments were configured just above.
    unsafe { Efer::update(|f| f.insert(EferFlags::SYSTEM_CALL_EXTENSIONS)) };
    GsBase::write(VirtAddr::from_ptr(super::cpu::current()));
    KernelGsBase::write(VirtAddr::zero());
}

/// The address `syscall` jumps to (LSTAR).
pub fn entry_address() -> u64 {
    syscall_entry as *const () as u64
}

/// Finishes a `syscall` that arrived as a page fault: under this host's
/// nested KVM (kvm_pvm), `syscall` from user mode loads RIP from LSTAR,
/// RCX and R11 and masks RFLAGS, but stays in user mode, so fetching the
/// entry stub faults (user, instruction fetch, CR2 = LSTAR). The fault's
/// frame then holds exactly the registers the stub would have saved, so the
/// call is dispatched from here and returns with `iretq`. `fault` calls this
/// for that one fault; jumping to the stub on purpose is no different from
/// executing `syscall` (RCX and R11 are checked on return either way).
pub fn dispatch_from_fetch_fault(frame: &mut TrapFrame) {
    frame.rip = frame.rcx;
    frame.rflags = frame.r11;
    frame.vector = SYSCALL_FRAME_MARK;
    frame.error_code = 0;
    crate::syscall::dispatch(frame);
}

/// Whether `addr` is canonical (bits 63..47 all equal).
pub fn is_canonical(addr: u64) -> bool {
    ((addr << 16) as i64 >> 16) as u64 == addr
}

/// Clears the RFLAGS bits a user task must not carry back and sets IF.
pub fn sanitize_user_rflags(rflags: u64) -> u64 {
    (rflags & USER_RFLAGS) | RFlags::INTERRUPT_FLAG.bits() | 0x2
}

/// Leaves the kernel for user mode at `entry` with stack `stack_top`, every
/// general register zero and interrupts on. Used once per task, on its
/// kernel stack, after the scheduler switched to it.
///
/// # Safety
///
/// The current address space must map `entry` executable and the stack
/// writable for user mode, and TSS.RSP0 and the per-CPU kernel stack must be
/// this task's: the next interrupt or system call lands there.
pub unsafe fn enter_user(entry: u64, stack_top: u64) -> ! {
    x86_64::instructions::interrupts::disable();
    // SAFETY: the caller vouches for the mappings and stacks. The stack the
    // iretq frame is built on is ours and never returned to. swapgs comes
    // last, with interrupts off, so kernel code never runs with the user GS.
    unsafe {
        core::arch::asm!(
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "xor eax, eax",
            "xor ebx, ebx",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor esi, esi",
            "xor edi, edi",
            "xor ebp, ebp",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "xor r10d, r10d",
            "xor r11d, r11d",
            "xor r12d, r12d",
            "xor r13d, r13d",
            "xor r14d, r14d",
            "xor r15d, r15d",
            "swapgs",
            "iretq",
            ss = const USER_DATA_SELECTOR as u64,
            cs = const USER_CODE_SELECTOR as u64,
            rflags = const 0x202u64,
            rsp = in(reg) stack_top,
            rip = in(reg) entry,
            options(noreturn)
        )
    }
}

crate::kernel_test!(
    fn syscall_msrs_point_at_the_entry_stub() {
        assert_eq!(LStar::read().as_u64(), syscall_entry as *const () as u64);
        assert!(Efer::read().contains(EferFlags::SYSTEM_CALL_EXTENSIONS));
        assert!(SFMask::read().contains(RFlags::INTERRUPT_FLAG));
        let (user_cs, user_ss, kernel_cs, _) = Star::read();
        assert_eq!(user_cs.0, USER_CODE_SELECTOR);
        assert_eq!(user_ss.0, USER_DATA_SELECTOR);
        assert_eq!(kernel_cs.0, gdt::KERNEL_CODE_SELECTOR);
        assert_eq!(
            GsBase::read().as_u64(),
            super::cpu::current() as *const _ as u64,
            "kernel mode runs with GS at the per-CPU area"
        );
    }
);

crate::kernel_test!(
    fn syscall_canonical_and_rflags_rules() {
        assert!(is_canonical(0x4000_0000));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        let iopl3_nt = 0x3000 | RFlags::NESTED_TASK.bits();
        let clean = sanitize_user_rflags(iopl3_nt | RFlags::CARRY_FLAG.bits());
        assert_eq!(
            clean,
            0x202 | RFlags::CARRY_FLAG.bits(),
            "IOPL and NT cleared, IF set"
        );
    }
);
