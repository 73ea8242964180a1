//! The shmos user runtime: what every app links.
//!
//! - the entry point `_start`, which calls the app's `main() -> i32` (named
//!   with [`entry!`]) and exits with its result;
//! - a panic handler that prints the panic and exits with code 101;
//! - [`println!`] and [`print!`] over the `write` call;
//! - safe wrappers for every system call in [`sys`], returning
//!   `Result<T, Error>`; the raw `syscall` instruction lives in [`raw`].
//!
//! An app:
//! ```ignore
//! #![no_std]
// Every unsafe block says why it holds.
#![warn(clippy::undocumented_unsafe_blocks)]
//! #![no_main]
//! shmos_rt::entry!(main);
//! fn main() -> i32 {
//!     shmos_rt::println!("hello");
//!     0
//! }
//! ```
#![no_std]

pub mod lock;
pub mod print;
pub mod raw;
pub mod sys;

pub use shmos_abi as abi;
pub use shmos_abi::Error;

/// Exit code of an app that panicked.
pub const PANIC_EXIT_CODE: i32 = 101;

/// Names the app's `fn main() -> i32`, which `_start` calls.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn __shmos_app_main() -> i32 {
            let main: fn() -> i32 = $main;
            main()
        }
    };
}

unsafe extern "Rust" {
    /// Defined by the app through [`entry!`].
    fn __shmos_app_main() -> i32;
}

/// The first instruction of an app. The kernel enters with a 16-byte aligned
/// stack and every other register zero; this makes the stack look as a call
/// would have left it (the ABI Rust code expects) and calls into Rust.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "xor ebp, ebp",
        "and rsp, -16",
        "call {start}",
        "ud2",
        start = sym start,
    )
}

extern "C" fn start() -> ! {
    // SAFETY: `entry!` defines this symbol with exactly this signature; an app
    // without it does not link.
    let code = unsafe { __shmos_app_main() };
    sys::exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panicked: {info}");
    sys::exit(PANIC_EXIT_CODE)
}

/// This app's argument string (from the kernel command line), in `buf`;
/// empty when it is not UTF-8, cut short when it does not fit.
pub fn args(buf: &mut [u8]) -> &str {
    let len = sys::args(buf).unwrap_or(0).min(buf.len());
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}
