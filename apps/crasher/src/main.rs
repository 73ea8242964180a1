//! Crashes on purpose, as its argument says, so that the kernel can show it
//! kills the app alone: `null` (read address 0), `div` (divide by zero),
//! `priv` (a privileged instruction), `ud` (an invalid opcode), `kernel`
//! (write into the kernel's image), `stack` (run into the stack's guard
//! page), `panic` (a Rust panic: exit code 101).
#![no_std]
// Every unsafe block says why it holds.
#![warn(clippy::undocumented_unsafe_blocks)]
#![no_main]

use shmos_rt::println;

shmos_rt::entry!(main);

fn main() -> i32 {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let how = shmos_rt::args(&mut buf).trim();
    let how = if how.is_empty() { "null" } else { how };
    println!("crasher: crashing with {how}");
    match how {
        // SAFETY: reads address 0, which is never mapped: the kernel kills
        // this app at the fault, so nothing after it runs.
        "null" => unsafe {
            core::arch::asm!("mov rax, qword ptr [0]", out("rax") _, options(nostack));
        },
        // SAFETY: divides by zero in registers only; #DE kills the app.
        "div" => unsafe {
            core::arch::asm!(
                "xor edx, edx",
                "xor ecx, ecx",
                "div rcx",
                inout("rax") 1u64 => _,
                out("rcx") _,
                out("rdx") _,
                options(nostack)
            );
        },
        // SAFETY: hlt is privileged: #GP in user mode kills the app.
        "priv" => unsafe {
            core::arch::asm!("hlt", options(nostack));
        },
        // SAFETY: ud2 raises #UD, which kills the app.
        "ud" => unsafe {
            core::arch::asm!("ud2", options(nostack));
        },
        // SAFETY: the kernel image at 1 MiB is supervisor-only: the write
        // faults before it changes anything, and the fault kills the app.
        "kernel" => unsafe {
            core::arch::asm!("mov qword ptr [0x100000], rax", in("rax") 0u64, options(nostack));
        },
        "stack" => return recurse(0) as i32,
        "panic" => panic!("crasher: panicking on purpose"),
        other => {
            println!("crasher: unknown way {other:?}");
            return 2;
        }
    }
    println!("crasher: FAILED: still running after {how}");
    1
}

/// Recurses until the stack runs into its guard page.
#[allow(unconditional_recursion)] // the point: it ends in a fault
fn recurse(depth: u64) -> u64 {
    let mut pad = [depth; 64];
    core::hint::black_box(&mut pad);
    recurse(depth + 1) + pad[7]
}
