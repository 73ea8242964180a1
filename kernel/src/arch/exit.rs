//! Power-off. Under the host tool, QEMU's isa-debug-exit device turns the
//! written value v into QEMU's exit status (v << 1) | 1.

use x86_64::instructions::port::Port;

/// How the run ended, as seen by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
}

/// I/O port of isa-debug-exit (`iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// ACPI PM1a control port as QEMU's firmware sets it up on `pc` machines.
const ACPI_PM1A_CONTROL: u16 = 0x604;
/// SLP_EN with sleep type 5 (soft off) on QEMU.
const ACPI_SOFT_OFF: u16 = 0x2000;

/// Powers the node off; never returns.
pub fn exit(code: ExitCode) -> ! {
    x86_64::instructions::interrupts::disable();
    // SAFETY: writing these ports only asks QEMU to stop the machine; without
    // the devices the writes are ignored and we fall through to the next way.
    unsafe {
        Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32);
        Port::<u16>::new(ACPI_PM1A_CONTROL).write(ACPI_SOFT_OFF);
    }
    loop {
        x86_64::instructions::hlt();
    }
}
