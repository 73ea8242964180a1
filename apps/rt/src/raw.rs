//! The raw `syscall` instruction: the runtime's only inline assembly.
//!
//! Most apps want [`crate::sys`]; this is for code that must pass arguments
//! the safe wrappers would never produce (see the `badcalls` app).

/// Makes system call `number` with six arguments and returns `rax` as the
/// kernel left it (decode it with [`shmos_abi::decode`]).
///
/// # Safety
///
/// The kernel reads and writes memory at the pointers passed as arguments as
/// the call's contract says (see the table in `shmos_abi`): pointers it
/// writes through must point to memory that no Rust reference is reading or
/// writing meanwhile.
#[inline(always)]
pub unsafe fn syscall6(number: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    let ret: u64;
    // SAFETY: the caller vouches for the pointer arguments; `syscall`
    // clobbers only rcx and r11 (declared) and returns in rax. It does not
    // touch the user stack.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") number => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            in("r10") a3,
            in("r8") a4,
            in("r9") a5,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}
