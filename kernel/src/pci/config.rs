//! PCI configuration space through configuration mechanism #1 (ports
//! 0xCF8/0xCFC), which every QEMU x86 machine provides.

use crate::sync::IrqMutex;
use core::fmt;
use x86_64::instructions::port::Port;

/// Bus, device and function of a PCI function.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..32.
    pub dev: u8,
    /// Function number, 0..8.
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The address/data port pair is one resource: a read is two port accesses
/// that must not interleave with another CPU's or an interrupt handler's.
static PORTS: IrqMutex<()> = IrqMutex::new(());

fn address(bdf: Bdf, offset: u16) -> u32 {
    debug_assert!(bdf.dev < 32 && bdf.func < 8 && offset < 256);
    0x8000_0000
        | (bdf.bus as u32) << 16
        | (bdf.dev as u32) << 11
        | (bdf.func as u32) << 8
        | (offset as u32 & 0xfc)
}

/// Reads the aligned 32-bit register at `offset`.
pub fn read32(bdf: Bdf, offset: u16) -> u32 {
    let _ports = PORTS.lock();
    // SAFETY: 0xCF8/0xCFC are the PCI configuration ports; reading config
    // space has no side effects on the devices QEMU emulates.
    unsafe {
        Port::<u32>::new(0xcf8).write(address(bdf, offset));
        Port::<u32>::new(0xcfc).read()
    }
}

/// Writes the aligned 32-bit register at `offset`.
pub fn write32(bdf: Bdf, offset: u16, value: u32) {
    let _ports = PORTS.lock();
    // SAFETY: as in `read32`; callers write only registers they own (BARs,
    // command, bridge bus numbers and windows, MSI-X control).
    unsafe {
        Port::<u32>::new(0xcf8).write(address(bdf, offset));
        Port::<u32>::new(0xcfc).write(value);
    }
}

/// Reads the 16-bit register at `offset` (2-aligned).
pub fn read16(bdf: Bdf, offset: u16) -> u16 {
    (read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
}

/// Writes the 16-bit register at `offset` (2-aligned), keeping its neighbour.
pub fn write16(bdf: Bdf, offset: u16, value: u16) {
    let shift = (offset & 2) * 8;
    let old = read32(bdf, offset & !3);
    let new = (old & !(0xffff << shift)) | (value as u32) << shift;
    write32(bdf, offset & !3, new);
}

/// Reads the byte at `offset`.
pub fn read8(bdf: Bdf, offset: u16) -> u8 {
    (read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
}
