//! Console output: `kprint!`/`kprintln!` for what the user reads, and the
//! `log` crate's logger for diagnostics, both on the serial port.
//!
//! The test harness prints `test NAME ... ` before a test and `ok` after it;
//! if anything else is printed in between, the open line is closed first so
//! that every line the host parses stays whole.

use core::sync::atomic::{AtomicBool, Ordering};

/// Set while a line without its newline is on the console.
static LINE_OPEN: AtomicBool = AtomicBool::new(false);

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::println(format_args!("")) };
    ($($arg:tt)*) => { $crate::console::println(format_args!($($arg)*)) };
}

/// Prints a whole line, closing any line left open first.
pub fn println(args: core::fmt::Arguments<'_>) {
    close_open_line();
    crate::drivers::serial::write_fmt(format_args!("{args}\n"));
}

/// Prints text as it is (an app's output), closing any line left open first.
pub fn print_str(s: &str) {
    close_open_line();
    crate::drivers::serial::write_fmt(format_args!("{s}"));
}

/// Prints the start of a line that a later [`finish_line`] completes.
pub fn begin_line(args: core::fmt::Arguments<'_>) {
    close_open_line();
    crate::drivers::serial::write_fmt(args);
    LINE_OPEN.store(true, Ordering::Relaxed);
}

/// Completes the line opened by [`begin_line`]. Returns false when something
/// else was printed meanwhile, so the caller should print the line again whole.
pub fn finish_line(args: core::fmt::Arguments<'_>) -> bool {
    if LINE_OPEN.swap(false, Ordering::Relaxed) {
        crate::drivers::serial::write_fmt(format_args!("{args}\n"));
        true
    } else {
        false
    }
}

/// [`finish_line`] for the crash paths, which must not wait on the console lock.
pub fn emergency_finish_line(args: core::fmt::Arguments<'_>) -> bool {
    if LINE_OPEN.swap(false, Ordering::Relaxed) {
        crate::drivers::serial::write_fmt_nonblocking(format_args!("{args}\n"));
        true
    } else {
        false
    }
}

fn close_open_line() {
    if LINE_OPEN.swap(false, Ordering::Relaxed) {
        crate::drivers::serial::write_fmt(format_args!("\n"));
    }
}

/// Prints from a fault or panic path without waiting on the console lock.
pub fn emergency_println(args: core::fmt::Arguments<'_>) {
    let open = LINE_OPEN.swap(false, Ordering::Relaxed);
    crate::drivers::serial::write_fmt_nonblocking(format_args!(
        "{}{args}\n",
        if open { "\n" } else { "" }
    ));
}

struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Dependencies' chatter (virtio-drivers logs every device it finds)
        // stays off the console; their warnings and errors do not.
        metadata.level() <= log::Level::Warn || !metadata.target().starts_with("virtio_drivers")
    }
    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = crate::time::now_ns();
        println(format_args!(
            "[{:>4}.{:06}] {:<5} {}",
            t / 1_000_000_000,
            (t / 1000) % 1_000_000,
            record.level(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// Routes the `log` crate to the serial console.
pub fn init_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
