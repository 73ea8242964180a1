//! MSI-X: a function's interrupts as messages written to the local APIC.
//! Each table entry gets an address (0xFEE0_0000 | APIC id << 12) and data
//! (the IDT vector); no legacy INTx and no IOAPIC are involved.

use super::config::{read16, read32, write16};
use super::{BarKind, Device};

/// MSI-X capability id.
pub const CAP_MSIX: u8 = 0x11;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: u64 = 16;

/// Why MSI-X could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// The function has no MSI-X capability.
    NoCapability,
    /// The table's BAR is missing, not memory, or unassigned.
    BadTableBar,
    /// More vectors asked for than the table has entries.
    TooManyVectors,
}

fn capability(dev: &Device) -> Result<u16, MsixError> {
    dev.capabilities()
        .find(|(id, _)| *id == CAP_MSIX)
        .map(|(_, at)| at)
        .ok_or(MsixError::NoCapability)
}

/// Number of entries in the function's MSI-X table.
pub fn table_size(dev: &Device) -> Result<u16, MsixError> {
    Ok((read16(dev.bdf, capability(dev)? + 2) & 0x7ff) + 1)
}

/// Programs entry `i` with `idt_vectors[i]`, aimed at this CPU, unmasked,
/// and enables MSI-X. Returns the table size.
pub fn enable(dev: &Device, idt_vectors: &[u8]) -> Result<u16, MsixError> {
    let cap = capability(dev)?;
    let ctrl = read16(dev.bdf, cap + 2);
    let table_size = table_size(dev)?;
    if idt_vectors.len() > table_size as usize {
        return Err(MsixError::TooManyVectors);
    }
    let table = read32(dev.bdf, cap + 4);
    let bar = dev.bar((table & 0x7) as u8).ok_or(MsixError::BadTableBar)?;
    if bar.kind == BarKind::Io || bar.address == 0 {
        return Err(MsixError::BadTableBar);
    }
    let offset = (table & !0x7) as u64;
    if offset + table_size as u64 * ENTRY_SIZE > bar.size {
        return Err(MsixError::BadTableBar);
    }
    dev.enable();
    // Mask the whole function while the entries change.
    write16(dev.bdf, cap + 2, ctrl | CTRL_FUNCTION_MASK);
    let base = crate::memory::map_mmio(bar.address + offset, table_size as u64 * ENTRY_SIZE);
    let apic_id = crate::arch::apic::id();
    for (i, &vector) in idt_vectors.iter().enumerate() {
        let entry = base + i as u64 * ENTRY_SIZE;
        let words = [0xfee0_0000 | apic_id << 12, 0, vector as u32, 0];
        for (w, value) in words.iter().enumerate() {
            // SAFETY: `entry` lies inside the MSI-X table just mapped uncached
            // (bounds checked against the BAR above); each word is 4-aligned.
            unsafe { core::ptr::write_volatile((entry + w as u64 * 4) as *mut u32, *value) };
        }
    }
    write16(dev.bdf, cap + 2, (ctrl | CTRL_ENABLE) & !CTRL_FUNCTION_MASK);
    Ok(table_size)
}
