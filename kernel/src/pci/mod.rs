//! PCI: recursive enumeration from bus 0 through bridges, BAR sizing and
//! assignment, the capability list, and MSI-X.
//!
//! Firmware differs: SeaBIOS assigns BARs and bridge bus numbers, qboot
//! leaves every BAR at 0. So the kernel sizes every BAR and assigns any that
//! is unassigned, from windows above whatever the firmware already placed.
//! Only the buses reachable from bus 0 are scanned: a brute-force scan of 256
//! buses costs ~16k port exits, seconds under nested KVM.

pub mod config;
pub mod msix;

use alloc::vec::Vec;
use config::{Bdf, read8, read16, read32, write16, write32};
use core::fmt;

const REG_VENDOR: u16 = 0x00;
const REG_COMMAND: u16 = 0x04;
const REG_STATUS: u16 = 0x06;
const REG_CLASS: u16 = 0x08;
const REG_HEADER_TYPE: u16 = 0x0e;
const REG_BAR0: u16 = 0x10;
const REG_BRIDGE_BUSES: u16 = 0x18;
const REG_BRIDGE_MEM: u16 = 0x20;
const REG_BRIDGE_PREF: u16 = 0x24;
const REG_BRIDGE_PREF_BASE_HI: u16 = 0x28;
const REG_BRIDGE_PREF_LIMIT_HI: u16 = 0x2c;
const REG_CAP_PTR: u16 = 0x34;

/// Command register bits.
const CMD_IO: u16 = 1 << 0;
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const STATUS_CAP_LIST: u16 = 1 << 4;

/// Where unassigned 32-bit memory BARs go (below the IOAPIC at 0xFEC0_0000).
const MEM32_WINDOW: (u64, u64) = (0xe000_0000, 0xfec0_0000);
/// Where unassigned 64-bit memory BARs go: above 4 GiB, inside the 40
/// physical address bits of QEMU's default CPU.
const MEM64_WINDOW: (u64, u64) = (0x80_0000_0000, 0x100_0000_0000);
/// Where unassigned I/O BARs go.
const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);

/// Kind of a base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (takes two BAR slots).
    Mem64,
}

/// One sized (and assigned) BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Slot 0..6.
    pub index: u8,
    /// I/O, 32- or 64-bit memory.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Bus address.
    pub address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// A PCI function found by enumeration.
#[derive(Debug, Clone)]
pub struct Device {
    /// Where it sits.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: (u8, u8, u8),
    /// Header type (0 device, 1 bridge), without the multi-function bit.
    pub header_type: u8,
    /// Its BARs, sized.
    pub bars: Vec<Bar>,
}

impl Device {
    /// The BAR in slot `index`, if implemented.
    pub fn bar(&self, index: u8) -> Option<Bar> {
        self.bars.iter().copied().find(|b| b.index == index)
    }

    /// Offsets of the capabilities with id `id`.
    pub fn capabilities(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        Capabilities::new(self.bdf)
    }

    /// Turns on memory and I/O decoding and bus mastering (for MSI-X writes).
    pub fn enable(&self) {
        let cmd = read16(self.bdf, REG_COMMAND);
        write16(
            self.bdf,
            REG_COMMAND,
            cmd | CMD_MEMORY | CMD_IO | CMD_BUS_MASTER,
        );
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:04x}:{:04x}] class {:02x}{:02x}{:02x} {}",
            self.bdf,
            self.vendor,
            self.device,
            self.class.0,
            self.class.1,
            self.class.2,
            class_name(self.class.0, self.class.1)
        )?;
        for b in &self.bars {
            let kind = match b.kind {
                BarKind::Io => "io",
                BarKind::Mem32 => "mem32",
                BarKind::Mem64 => "mem64",
            };
            write!(
                f,
                " BAR{}={kind}@{:#x}+{:#x}{}",
                b.index,
                b.address,
                b.size,
                if b.prefetchable { ",pf" } else { "" }
            )?;
        }
        Ok(())
    }
}

fn class_name(class: u8, sub: u8) -> &'static str {
    match (class, sub) {
        (0x01, _) => "storage",
        (0x02, _) => "network",
        (0x03, _) => "display",
        (0x05, _) => "memory",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "serial bus",
        _ => "device",
    }
}

/// Walks a function's capability list, guarding against loops and pointers
/// outside the capability area (config space is device input too).
pub struct Capabilities {
    bdf: Bdf,
    next: u8,
    budget: u8,
}

impl Capabilities {
    fn new(bdf: Bdf) -> Self {
        let next = if read16(bdf, REG_STATUS) & STATUS_CAP_LIST != 0 {
            read8(bdf, REG_CAP_PTR) & 0xfc
        } else {
            0
        };
        // 48 capabilities of 4 bytes fill the 192 bytes after the header.
        Self {
            bdf,
            next,
            budget: 48,
        }
    }
}

impl Iterator for Capabilities {
    /// (capability id, offset).
    type Item = (u8, u16);
    fn next(&mut self) -> Option<(u8, u16)> {
        if self.next < 0x40 || self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let at = self.next as u16;
        let header = read16(self.bdf, at);
        self.next = (header >> 8) as u8 & 0xfc;
        Some((header as u8, at))
    }
}

/// Bump allocators for BAR addresses.
struct Windows {
    mem32: u64,
    mem64: u64,
    io: u64,
}

impl Windows {
    fn take(&mut self, kind: BarKind, size: u64) -> Option<u64> {
        let (cursor, limit) = match kind {
            BarKind::Mem32 => (&mut self.mem32, MEM32_WINDOW.1),
            BarKind::Mem64 => (&mut self.mem64, MEM64_WINDOW.1),
            BarKind::Io => (&mut self.io, IO_WINDOW.1),
        };
        let at = cursor.next_multiple_of(size);
        (at + size <= limit).then(|| {
            *cursor = at + size;
            at
        })
    }
}

/// Everything enumeration found, in bus order.
static DEVICES: spin::Once<Vec<Device>> = spin::Once::new();

/// Whether `init` skips its listing (the `quiet` command-line key).
pub static QUIET: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Enumerates and assigns, once; prints one line per function like `lspci`
/// (unless [`QUIET`]).
pub fn init() -> &'static [Device] {
    DEVICES.call_once(|| {
        let mut found = Vec::new();
        let mut next_bus = 1;
        scan_bus(0, &mut next_bus, &mut found);
        // Assign after sizing everything, above whatever firmware placed.
        let mut w = Windows {
            mem32: MEM32_WINDOW.0,
            mem64: MEM64_WINDOW.0,
            io: IO_WINDOW.0,
        };
        for b in found
            .iter()
            .flat_map(|d: &Device| d.bars.iter())
            .filter(|b| b.address != 0)
        {
            let end = b.address + b.size;
            match b.kind {
                BarKind::Mem32 if (MEM32_WINDOW.0..MEM32_WINDOW.1).contains(&b.address) => {
                    w.mem32 = w.mem32.max(end)
                }
                BarKind::Mem64 if b.address >= MEM64_WINDOW.0 => w.mem64 = w.mem64.max(end),
                BarKind::Io if b.address >= IO_WINDOW.0 => w.io = w.io.max(end),
                _ => {}
            }
        }
        for d in &mut found {
            assign_bars(d, &mut w);
        }
        open_bridge_windows(&found);
        if !QUIET.load(core::sync::atomic::Ordering::Relaxed) {
            for d in &found {
                crate::kprintln!("pci {d}");
            }
        }
        found
    })
}

/// Functions found so far (empty before [`init`]).
pub fn devices() -> &'static [Device] {
    DEVICES.get().map_or(&[], Vec::as_slice)
}

fn scan_bus(bus: u8, next_bus: &mut u8, found: &mut Vec<Device>) {
    for dev in 0..32 {
        let first = Bdf { bus, dev, func: 0 };
        if read16(first, REG_VENDOR) == 0xffff {
            continue;
        }
        let functions = if read8(first, REG_HEADER_TYPE) & 0x80 != 0 {
            8
        } else {
            1
        };
        for func in 0..functions {
            let bdf = Bdf { bus, dev, func };
            if read16(bdf, REG_VENDOR) == 0xffff {
                continue;
            }
            let d = probe(bdf);
            let is_bridge = d.header_type == 1;
            found.push(d);
            if is_bridge {
                scan_bridge(bdf, bus, next_bus, found);
            }
        }
    }
}

/// Numbers a bridge's secondary bus if firmware did not, then scans it.
fn scan_bridge(bdf: Bdf, bus: u8, next_bus: &mut u8, found: &mut Vec<Device>) {
    let buses = read32(bdf, REG_BRIDGE_BUSES);
    let mut secondary = (buses >> 8) as u8;
    if secondary == 0 || secondary <= bus {
        if *next_bus == u8::MAX {
            log::warn!("pci: out of bus numbers behind {bdf}");
            return;
        }
        secondary = *next_bus;
        *next_bus += 1;
        // Subordinate 0xff while scanning so nested buses are reachable.
        write32(
            bdf,
            REG_BRIDGE_BUSES,
            (buses & 0xff00_0000) | 0xff << 16 | (secondary as u32) << 8 | bus as u32,
        );
        scan_bus(secondary, next_bus, found);
        let last = *next_bus - 1;
        write32(
            bdf,
            REG_BRIDGE_BUSES,
            (buses & 0xff00_0000) | (last as u32) << 16 | (secondary as u32) << 8 | bus as u32,
        );
    } else {
        *next_bus = (*next_bus).max(((buses >> 16) as u8).saturating_add(1));
        scan_bus(secondary, next_bus, found);
    }
}

fn probe(bdf: Bdf) -> Device {
    let id = read32(bdf, REG_VENDOR);
    let class = read32(bdf, REG_CLASS);
    let header_type = read8(bdf, REG_HEADER_TYPE) & 0x7f;
    let bar_count = match header_type {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    Device {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: ((class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8),
        header_type,
        bars: size_bars(bdf, bar_count),
    }
}

/// Sizes each BAR by writing all ones and reading back, with decoding off so
/// the device does not answer at a bogus address meanwhile.
fn size_bars(bdf: Bdf, count: u8) -> Vec<Bar> {
    let cmd = read16(bdf, REG_COMMAND);
    write16(bdf, REG_COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
    let mut bars = Vec::new();
    let mut index = 0;
    while index < count {
        let reg = REG_BAR0 + index as u16 * 4;
        let original = read32(bdf, reg);
        write32(bdf, reg, u32::MAX);
        let mask = read32(bdf, reg);
        write32(bdf, reg, original);
        let slot = index;
        index += 1;
        if mask == 0 {
            continue;
        }
        if original & 1 == 1 {
            let size = (!(mask & !0x3) & 0xffff) as u64 + 1;
            bars.push(Bar {
                index: slot,
                kind: BarKind::Io,
                prefetchable: false,
                address: (original & !0x3) as u64,
                size,
            });
            continue;
        }
        let prefetchable = original & 0x8 != 0;
        if (original >> 1) & 0x3 == 0x2 && index < count {
            let hi_reg = reg + 4;
            let hi_original = read32(bdf, hi_reg);
            write32(bdf, hi_reg, u32::MAX);
            let hi_mask = read32(bdf, hi_reg);
            write32(bdf, hi_reg, hi_original);
            index += 1;
            let mask64 = (hi_mask as u64) << 32 | (mask & !0xf) as u64;
            let size = (!mask64).wrapping_add(1);
            let address = (hi_original as u64) << 32 | (original & !0xf) as u64;
            bars.push(Bar {
                index: slot,
                kind: BarKind::Mem64,
                prefetchable,
                address,
                size,
            });
        } else {
            let size = (!(mask & !0xf)).wrapping_add(1) as u64;
            bars.push(Bar {
                index: slot,
                kind: BarKind::Mem32,
                prefetchable,
                address: (original & !0xf) as u64,
                size,
            });
        }
    }
    write16(bdf, REG_COMMAND, cmd);
    bars
}

fn assign_bars(d: &mut Device, w: &mut Windows) {
    for bar in d
        .bars
        .iter_mut()
        .filter(|b| b.address == 0 && b.size.is_power_of_two())
    {
        let Some(at) = w.take(bar.kind, bar.size) else {
            log::warn!(
                "pci {}: no room for BAR{} of {:#x} bytes",
                d.bdf,
                bar.index,
                bar.size
            );
            continue;
        };
        let reg = REG_BAR0 + bar.index as u16 * 4;
        let flags = read32(d.bdf, reg) & if bar.kind == BarKind::Io { 0x3 } else { 0xf };
        write32(d.bdf, reg, at as u32 | flags);
        if bar.kind == BarKind::Mem64 {
            write32(d.bdf, reg + 4, (at >> 32) as u32);
        }
        bar.address = at;
    }
}

/// Opens each bridge's memory windows over the BARs of the devices behind it
/// (its secondary..=subordinate buses), so that they are reachable.
fn open_bridge_windows(found: &[Device]) {
    for bridge in found.iter().filter(|d| d.header_type == 1) {
        let buses = read32(bridge.bdf, REG_BRIDGE_BUSES);
        let (secondary, subordinate) = ((buses >> 8) as u8, (buses >> 16) as u8);
        let behind = found
            .iter()
            .filter(|d| (secondary..=subordinate).contains(&d.bdf.bus));
        let (mut mem, mut pref) = ((u64::MAX, 0u64), (u64::MAX, 0u64));
        for b in behind
            .flat_map(|d| d.bars.iter())
            .filter(|b| b.address != 0)
        {
            let range = match b.kind {
                BarKind::Mem32 => &mut mem,
                BarKind::Mem64 => &mut pref,
                BarKind::Io => continue,
            };
            range.0 = range.0.min(b.address);
            range.1 = range.1.max(b.address + b.size);
        }
        // Windows have 1 MiB granularity: base and limit hold address bits 31:20.
        if mem.0 < mem.1 {
            let (base, limit) = (mem.0 >> 20, (mem.1 - 1) >> 20);
            write32(
                bridge.bdf,
                REG_BRIDGE_MEM,
                ((limit as u32) << 20) | ((base as u32) << 4),
            );
        }
        if pref.0 < pref.1 {
            let (base, limit) = (pref.0 >> 20, (pref.1 - 1) >> 20);
            write32(
                bridge.bdf,
                REG_BRIDGE_PREF,
                (((limit as u32) & 0xfff) << 20) | (((base as u32) & 0xfff) << 4) | 0x0001_0001,
            );
            write32(bridge.bdf, REG_BRIDGE_PREF_BASE_HI, (pref.0 >> 32) as u32);
            write32(
                bridge.bdf,
                REG_BRIDGE_PREF_LIMIT_HI,
                ((pref.1 - 1) >> 32) as u32,
            );
        }
        bridge.enable();
    }
}

crate::kernel_test!(
    fn pci_finds_the_host_bridge_and_sizes_bars() {
        let devs = init();
        assert!(!devs.is_empty(), "at least the host bridge");
        assert_eq!(
            devs[0].bdf,
            Bdf {
                bus: 0,
                dev: 0,
                func: 0
            }
        );
        assert_eq!(devs[0].class.0, 0x06, "00:00.0 is a bridge");
        for d in devs {
            for b in &d.bars {
                assert!(
                    b.size.is_power_of_two(),
                    "{} BAR{} size {:#x}",
                    d.bdf,
                    b.index,
                    b.size
                );
                assert!(
                    b.address.is_multiple_of(b.size),
                    "{} BAR{} naturally aligned",
                    d.bdf,
                    b.index
                );
            }
        }
    }
);

crate::kernel_test!(
    fn pci_windows_align_and_stay_in_range() {
        let mut w = Windows {
            mem32: MEM32_WINDOW.0 + 0x10,
            mem64: MEM64_WINDOW.0,
            io: IO_WINDOW.0,
        };
        assert_eq!(
            w.take(BarKind::Mem32, 0x1000),
            Some(MEM32_WINDOW.0 + 0x1000)
        );
        assert_eq!(w.take(BarKind::Mem64, 1 << 30), Some(MEM64_WINDOW.0));
        assert_eq!(
            w.take(BarKind::Mem64, 1 << 30),
            Some(MEM64_WINDOW.0 + (1 << 30))
        );
        assert_eq!(
            w.take(BarKind::Mem32, 1 << 31),
            None,
            "2 GiB does not fit below the IOAPIC"
        );
        assert_eq!(w.take(BarKind::Io, 0x100), Some(IO_WINDOW.0));
    }
);
