//! Calls the kernel with hostile arguments (kernel pointers, unmapped and
//! read-only buffers, huge lengths, unknown call numbers) and checks that
//! each call fails with the named error instead of harming the kernel.
//! Prints one line per failed check and `badcalls: all N checks passed`.
#![no_std]
// Every unsafe block says why it holds.
#![warn(clippy::undocumented_unsafe_blocks)]
#![no_main]

use shmos_rt::abi::{self, Call, Error};
use shmos_rt::raw::syscall6;
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

unsafe extern "C" {
    /// First byte past this app's image (user.ld); the next page is unmapped.
    static __image_end: u8;
}

/// The kernel image: identity-mapped at 1 MiB, supervisor-only.
const KERNEL_IMAGE: u64 = 0x10_0000;
/// The kernel's direct map of physical memory.
const DIRECT_MAP: u64 = 0xFFFF_8000_0000_0000;
/// Kernel text at the top of the address space (unmapped, and not user's).
const KERNEL_TOP: u64 = 0xFFFF_FFFF_8000_0000;
/// First non-canonical address.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// User space nobody mapped.
const UNMAPPED: u64 = 0x10_0000_0000;

static READ_ONLY: [u8; 64] = [b'r'; 64];
/// Written from read-only memory: the kernel only reads what it writes out.
static LINE: &[u8] = b"badcalls: this line comes from read-only data\n";

/// One check: what it tries, the call number, its first two arguments
/// (the other four are junk), and the result it must get.
type Check<'a> = (&'a str, u64, [u64; 2], Result<u64, Error>);

struct Checks {
    run: u32,
    failed: u32,
}

impl Checks {
    /// Makes call `nr` with `args` and expects `want`.
    fn expect(&mut self, what: &str, nr: u64, args: [u64; 6], want: Result<u64, Error>) {
        // SAFETY: every pointer passed is one the kernel must refuse (kernel,
        // unmapped or read-only memory) or a buffer of ours that nothing else
        // uses; if the kernel wrongly wrote through one, it would hit memory
        // no Rust reference is reading.
        let got = abi::decode(unsafe {
            syscall6(nr, args[0], args[1], args[2], args[3], args[4], args[5])
        });
        self.run += 1;
        if got != want {
            self.failed += 1;
            println!("badcalls: FAILED: {what}: got {got:?}, want {want:?}");
        }
    }
}

fn main() -> i32 {
    let mut c = Checks { run: 0, failed: 0 };
    let (w, a) = (Call::Write.number(), Call::Args.number());
    let end = (&raw const __image_end) as u64;
    let past_end = end.next_multiple_of(4096);
    let read_only = READ_ONLY.as_ptr() as u64;
    let code = main as *const () as u64;
    let mut buf = [0u8; abi::MAX_ARGS];

    let bad = Err(Error::BadAddress);
    let line = (LINE.as_ptr() as u64, LINE.len() as u64);
    let args_len = sys::args(&mut buf).unwrap_or(0) as u64;
    #[rustfmt::skip]
    let table: [Check<'_>; 22] = [
        // Pointers the caller does not own.
        ("write from the kernel image", w, [KERNEL_IMAGE, 16], bad),
        ("write from the direct map", w, [DIRECT_MAP, 16], bad),
        ("write from the top of memory", w, [KERNEL_TOP, 16], bad),
        ("write from a non-canonical address", w, [NON_CANONICAL, 16], bad),
        ("write from null", w, [0, 1], bad),
        ("write from unmapped user memory", w, [UNMAPPED, 16], bad),
        ("write across the end of the image", w, [past_end - 8, 16], bad),
        ("write with a wrapping range", w, [u64::MAX - 7, 16], bad),
        ("write up to the end of the lower half", w, [NON_CANONICAL - 8, 16], bad),
        // Lengths.
        ("write of a huge length", w, [read_only, 1 << 40], Err(Error::TooLarge)),
        ("write of u64::MAX bytes", w, [read_only, u64::MAX], Err(Error::TooLarge)),
        ("write of nothing from null", w, [0, 0], Ok(0)),
        ("write of a read-only buffer", w, [line.0, line.1], Ok(line.1)),
        // Buffers the kernel writes into must be user memory and writable.
        ("args into the kernel image", a, [KERNEL_IMAGE, 16], bad),
        ("args into the direct map", a, [DIRECT_MAP, 16], bad),
        ("args into read-only data", a, [read_only, 16], bad),
        ("args into code", a, [code, 16], bad),
        ("args into unmapped memory", a, [UNMAPPED, 16], bad),
        ("args across the end of the image", a, [past_end - 8, 64], bad),
        ("args of no bytes into the kernel", a, [KERNEL_IMAGE, 0], Ok(args_len)),
        // Odd values where the kernel takes any.
        ("sleep of zero", Call::Sleep.number(), [0, 0], Ok(0)),
        ("yield with junk arguments", Call::Yield.number(), [u64::MAX, u64::MAX], Ok(0)),
    ];
    for (what, nr, [a0, a1], want) in table {
        c.expect(
            what,
            nr,
            [a0, a1, u64::MAX, u64::MAX, u64::MAX, u64::MAX],
            want,
        );
    }
    // Call numbers.
    for nr in [9, 27, 29, 36, 1000, 1 << 32, 1 << 63, u64::MAX] {
        c.expect(
            "an unknown call number",
            nr,
            [0; 6],
            Err(Error::Unsupported),
        );
    }

    // The kernel is still fine: the calls that should work do.
    let clock = sys::clock_ns();
    let len = sys::args(&mut buf);
    c.run += 1;
    if clock.is_err() || len.is_err() {
        c.failed += 1;
        println!("badcalls: FAILED: good calls fail afterwards: {clock:?} {len:?}");
    }
    if c.failed == 0 {
        println!("badcalls: all {} checks passed", c.run);
        0
    } else {
        println!("badcalls: {} of {} checks FAILED", c.failed, c.run);
        1
    }
}
