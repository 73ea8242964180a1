//! Console output over the `write` call. A `println!` formats into a buffer
//! on the stack and writes it with one call, so that the lines of apps
//! running side by side do not interleave mid-line (unless longer than the
//! buffer).

use core::fmt;

const BUFFER: usize = 256;

/// Formats into a stack buffer and writes it out when full and at the end.
struct LineWriter {
    buf: [u8; BUFFER],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        let mut rest = &self.buf[..self.len];
        while !rest.is_empty() {
            match crate::sys::write(rest) {
                Ok(n) if n > 0 => rest = &rest[n.min(rest.len())..],
                // Nothing more can be done about a console that refuses.
                _ => break,
            }
        }
        self.len = 0;
    }
}

impl fmt::Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(BUFFER) {
            if self.len + chunk.len() > BUFFER {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

/// Writes formatted text to the console (used by the macros).
pub fn print(args: fmt::Arguments<'_>) {
    let mut w = LineWriter {
        buf: [0; BUFFER],
        len: 0,
    };
    let _ = fmt::write(&mut w, args);
    w.flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::print::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::print(format_args!("{}\n", format_args!($($arg)*))) };
}
