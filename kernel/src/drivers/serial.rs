//! The COM1 serial port: the node's console, which the host tool streams.

use crate::sync::IrqMutex;
use core::fmt;
use uart_16550::{Config, Uart16550Tty, backend::PioBackend};

/// I/O port base of COM1.
const COM1: u16 = 0x3f8;

static PORT: IrqMutex<Option<Uart16550Tty<PioBackend>>> = IrqMutex::new(None);

/// Initialises COM1; without a working port the kernel runs silently.
pub fn init() {
    // SAFETY: 0x3f8 is COM1 on every PC-compatible machine QEMU emulates and
    // nothing else in the kernel touches these ports.
    let tty = unsafe { Uart16550Tty::new_port(COM1, Config::default()) };
    *PORT.lock() = tty.ok();
}

/// Writes formatted text to the port, if it is up.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    if let Some(tty) = PORT.lock().as_mut() {
        let _ = fmt::Write::write_fmt(tty, args);
    }
}

/// Writes from a context that may have interrupted a writer (fault and panic
/// paths): skips the output rather than deadlock on our own lock.
pub fn write_fmt_nonblocking(args: fmt::Arguments<'_>) {
    if let Some(mut guard) = PORT.try_lock()
        && let Some(tty) = guard.as_mut()
    {
        let _ = fmt::Write::write_fmt(tty, args);
    }
}

/// Whether the port passed its loopback self-test at start-up.
pub fn is_up() -> bool {
    PORT.lock().is_some()
}

crate::kernel_test!(
    fn serial_console_writes() {
        assert!(is_up(), "COM1 passed its loopback self-test");
        // The host harness reads this very output; a write must not block.
        write_fmt(format_args!(""));
        let mut guard = PORT.lock();
        let tty = guard.as_mut().expect("port is up");
        assert!(
            tty.inner_mut().ready_to_send().is_ok(),
            "transmitter drains"
        );
    }
);
