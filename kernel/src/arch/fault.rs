//! CPU exceptions: the fatal report, and guarded accesses that may fault.
//!
//! A guarded access is an instruction listed in the `.fault_fixup` table with
//! a resume address. When it faults, the handler records the fault in the
//! per-CPU slot and resumes at the fixup instead of failing the run (Linux's
//! exception tables do the same). Kernel tests use this to provoke page faults
//! and check how they are reported; user-pointer copies will use it too.
//! User-memory copies use the `rep movsb` probe the same way: a fault
//! mid-copy returns an error instead of crashing the kernel.
//!
//! An exception raised in user mode kills that app alone (see
//! `task::kill_current`). Any other exception prints a full report and fails
//! the run.

use super::cpu::{self, CaughtFault};
use super::interrupts::TrapFrame;
use core::fmt;

core::arch::global_asm!(
    r#"
    .section .text
    .global fault_probe_read_u64
fault_probe_read_u64:
    xor %edx, %edx
1:  mov (%rdi), %rax
    ret
2:  xor %eax, %eax
    mov $1, %edx
    ret
    .pushsection .fault_fixup, "a"
    .quad 1b, 2b
    .popsection

    .global fault_probe_write_u64
fault_probe_write_u64:
    xor %edx, %edx
1:  mov %rsi, (%rdi)
    xor %eax, %eax
    ret
2:  xor %eax, %eax
    mov $1, %edx
    ret
    .pushsection .fault_fixup, "a"
    .quad 1b, 2b
    .popsection

    .global fault_probe_copy
fault_probe_copy:
    /* Eight bytes at a time, then the tail: TCG runs `rep movsb` a byte
       per step, and this copy carries every message body. */
    mov %rdx, %rcx
    shr $3, %rcx
    and $7, %edx
1:  rep movsq
    mov %rdx, %rcx
3:  rep movsb
    xor %eax, %eax
    xor %edx, %edx
    ret
2:  lea (%rdx,%rcx,8), %rax         /* bytes left: quadwords and the tail */
    mov $1, %edx
    ret
4:  mov %rcx, %rax
    mov $1, %edx
    ret
    .pushsection .fault_fixup, "a"
    .quad 1b, 2b
    .quad 3b, 4b
    .popsection

    .global fault_probe_invalid_opcode
fault_probe_invalid_opcode:
    xor %edx, %edx
1:  ud2
2:  xor %eax, %eax
    mov $1, %edx
    ret
    .pushsection .fault_fixup, "a"
    .quad 1b, 2b
    .popsection
"#,
    options(att_syntax)
);

/// What a probe returns: the value read, and 1 in `faulted` if it faulted.
#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

/// One `.fault_fixup` entry.
#[repr(C)]
struct Fixup {
    instruction: u64,
    resume: u64,
}

unsafe extern "C" {
    fn fault_probe_read_u64(addr: u64) -> ProbeResult;
    fn fault_probe_write_u64(addr: u64, value: u64) -> ProbeResult;
    fn fault_probe_invalid_opcode() -> ProbeResult;
    fn fault_probe_copy(dst: u64, src: u64, len: u64) -> ProbeResult;
    static __fault_fixup_start: u8;
    static __fault_fixup_end: u8;
}

fn fixups() -> &'static [Fixup] {
    let start = (&raw const __fault_fixup_start).cast::<Fixup>();
    let end = (&raw const __fault_fixup_end).cast::<Fixup>();
    // SAFETY: the linker script brackets the .fault_fixup section, made only
    // of (instruction, resume) pairs, with these two symbols.
    unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) }
}

fn finish(r: ProbeResult) -> Result<u64, CaughtFault> {
    match (r.faulted, cpu::current().take_caught_fault()) {
        (0, _) => Ok(r.value),
        (_, Some(f)) => Err(f),
        (_, None) => unreachable!("a probe faulted without a recorded fault"),
    }
}

/// Reads 8 bytes at `addr`, or returns the fault the read took.
pub fn read_u64(addr: u64) -> Result<u64, CaughtFault> {
    // SAFETY: the read instruction is guarded: any fault resumes at its fixup.
    finish(unsafe { fault_probe_read_u64(addr) })
}

/// Writes 8 bytes at `addr`, or returns the fault the write took.
pub fn write_u64(addr: u64, value: u64) -> Result<(), CaughtFault> {
    // SAFETY: guarded as above; callers only target memory no Rust reference
    // points into (scratch pages or addresses expected to fault).
    finish(unsafe { fault_probe_write_u64(addr, value) }).map(|_| ())
}

/// Copies `len` bytes from `src` to `dst` (forward, byte by byte as far as
/// the caller can tell), or returns the first fault either side took.
///
/// # Safety
///
/// `dst..dst+len` must be memory no Rust reference points into, other than
/// a `&mut [u8]` the caller holds for it (user memory, or the caller's own
/// buffer); `src` may be anything: a fault reading it is caught.
pub unsafe fn copy(dst: u64, src: u64, len: usize) -> Result<(), CaughtFault> {
    // SAFETY: the copy instruction is guarded; the caller vouches for dst.
    finish(unsafe { fault_probe_copy(dst, src, len as u64) }).map(|_| ())
}

/// Executes `ud2` under a guard and returns the fault it raised.
pub fn invalid_opcode() -> Result<(), CaughtFault> {
    // SAFETY: the ud2 is guarded and resumes at its fixup.
    finish(unsafe { fault_probe_invalid_opcode() }).map(|_| ())
}

/// Mnemonic and name of a CPU exception vector.
pub fn exception_name(vector: u8) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("-", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point error"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        _ => ("-", "reserved exception"),
    }
}

/// The report printed for an exception: name, error code, CR2, registers.
pub struct ExceptionReport<'a> {
    frame: &'a TrapFrame,
    cr2: u64,
}

impl<'a> ExceptionReport<'a> {
    /// A report for `frame`, with the faulting address `cr2` (page faults).
    pub fn new(frame: &'a TrapFrame, cr2: u64) -> Self {
        Self { frame, cr2 }
    }
}

impl fmt::Display for ExceptionReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vector = self.frame.vector as u8;
        let (mnemonic, name) = exception_name(vector);
        write!(
            f,
            "CPU exception: {name} ({mnemonic}, vector {vector}), error code {:#x}",
            self.frame.error_code
        )?;
        if vector == 14 {
            let e = self.frame.error_code;
            write!(
                f,
                " [{}, {}, {}{}]",
                if e & 1 != 0 {
                    "protection violation"
                } else {
                    "page not present"
                },
                if e & 2 != 0 { "write" } else { "read" },
                if e & 4 != 0 { "user" } else { "kernel" },
                if e & 16 != 0 {
                    ", instruction fetch"
                } else {
                    ""
                },
            )?;
            write!(f, "\n  faulting address (CR2) {:#018x}", self.cr2)?;
        }
        write!(f, "\n{}", self.frame)
    }
}

/// Handles vectors 0-31: resume guarded accesses, report everything else.
pub fn handle_exception(frame: &mut TrapFrame) {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    if let Some(fix) = fixups().iter().find(|f| f.instruction == frame.rip) {
        cpu::current().record_caught_fault(CaughtFault {
            vector: frame.vector as u8,
            error_code: frame.error_code,
            address: cr2,
        });
        frame.rip = fix.resume;
        return;
    }
    // A `syscall` that nested KVM left in user mode (see arch::syscall).
    let entry = super::syscall::entry_address();
    if frame.is_from_user() && frame.vector == 14 && frame.rip == entry && cr2 == entry {
        super::syscall::dispatch_from_fetch_fault(frame);
        return;
    }
    // A load or store in a DSM window: the engine brings the page, then the
    // instruction runs again.
    if frame.is_from_user()
        && frame.vector == 14
        && crate::dsm::fault::user_fault(cr2, frame.error_code)
    {
        return;
    }
    // NMI and machine checks are the machine's, not the app's.
    if frame.is_from_user() && !matches!(frame.vector, 2 | 18) {
        crate::task::kill_current(&ExceptionReport::new(frame, cr2));
    }
    let report = ExceptionReport::new(frame, cr2);
    crate::console::emergency_println(format_args!("{report}"));
    let (mnemonic, name) = exception_name(frame.vector as u8);
    crate::testing::on_crash(format_args!(
        "CPU exception: {name} ({mnemonic}) at RIP {:#x}",
        frame.rip
    ));
    crate::arch::exit::exit(crate::arch::exit::ExitCode::Failure);
}

crate::kernel_test!(
    fn exception_invalid_opcode_is_caught_and_named() {
        let fault = invalid_opcode().expect_err("ud2 must raise #UD");
        assert_eq!(fault.vector, 6);
        assert_eq!(exception_name(fault.vector).1, "invalid opcode");
    }
);

crate::kernel_test!(
    fn exception_guarded_copy_stops_at_the_fault() {
        let src = [7u8; 64];
        let mut dst = [0u8; 64];
        // SAFETY: dst is our own buffer, held mutably for the call.
        unsafe { copy(dst.as_mut_ptr() as u64, src.as_ptr() as u64, 64) }.expect("plain copy");
        assert_eq!(dst, src);
        // Quadwords then a tail: 13 bytes from an odd offset, nothing more.
        let counting: [u8; 32] = core::array::from_fn(|i| i as u8);
        let mut out = [0xffu8; 32];
        // SAFETY: out is our own buffer, held mutably for the call.
        unsafe {
            copy(
                out.as_mut_ptr() as u64 + 3,
                counting.as_ptr() as u64 + 5,
                13,
            )
        }
        .expect("odd copy");
        assert_eq!(&out[3..16], &counting[5..18]);
        assert!(
            out[..3].iter().chain(&out[16..]).all(|&b| b == 0xff),
            "{out:?}"
        );
        let unmapped = crate::memory::paging::SCRATCH_BASE + 0x7000;
        // A tail alone (3 bytes) that faults.
        // SAFETY: as above; the source is unmapped on purpose.
        let fault = unsafe { copy(out.as_mut_ptr() as u64, unmapped, 3) }
            .expect_err("a 3-byte read of an unmapped page faults");
        assert_eq!((fault.vector, fault.address), (14, unmapped));
        // SAFETY: as above; the source is unmapped on purpose.
        let fault = unsafe { copy(dst.as_mut_ptr() as u64, unmapped, 16) }
            .expect_err("reading an unmapped page faults");
        assert_eq!((fault.vector, fault.address), (14, unmapped));
        // SAFETY: the destination is unmapped: nothing is written.
        let fault = unsafe { copy(unmapped, src.as_ptr() as u64, 8) }.expect_err("write faults");
        assert_eq!(fault.error_code & 0b10, 0b10, "a write fault");
    }
);

crate::kernel_test!(
    fn exception_non_canonical_access_is_general_protection() {
        let fault = read_u64(0x8000_0000_0000_0000).expect_err("non-canonical read must fault");
        assert_eq!(fault.vector, 13, "#GP, not #PF");
    }
);

crate::kernel_test!(
    fn exception_report_names_fault_address_and_registers() {
        use alloc::string::ToString;
        let frame = TrapFrame {
            vector: 14,
            error_code: 0b11,
            rip: 0x1234_5678,
            rax: 0xabcd,
            ..Default::default()
        };
        let text = ExceptionReport::new(&frame, 0xdead_beef).to_string();
        for needle in [
            "page fault (#PF, vector 14)",
            "error code 0x3",
            "protection violation, write, kernel",
            "CR2) 0x00000000deadbeef",
            "RIP 0x0000000012345678",
            "RAX 0x000000000000abcd",
        ] {
            assert!(text.contains(needle), "report lacks {needle:?}:\n{text}");
        }
    }
);
