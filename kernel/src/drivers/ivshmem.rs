//! QEMU's ivshmem device (PCI 1af4:1110), the link to the shared memory node.
//!
//! BAR0 holds four registers, BAR1 the MSI-X table (doorbell flavour only),
//! BAR2 the shared memory, mapped write-back cached like RAM. With
//! `ivshmem-doorbell`, writing `peer << 16 | vector` to the Doorbell register
//! interrupts that peer on that vector; incoming doorbells arrive as MSI-X
//! interrupts. `ivshmem-plain` has neither: waiting falls back to polling.

use crate::pci::{self, BarKind, Device, msix};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const VENDOR_REDHAT_QUMRANET: u16 = 0x1af4;
const DEVICE_IVSHMEM: u16 = 0x1110;
const REG_IV_POSITION: u64 = 8;
const REG_DOORBELL: u64 = 12;
/// Most vectors we take, whatever the device offers (one bit each in `PENDING`).
pub const MAX_VECTORS: u16 = 16;

/// The mapped device.
#[derive(Debug)]
pub struct Ivshmem {
    /// Where it sits on PCI.
    pub bdf: pci::config::Bdf,
    /// Virtual address of the registers.
    regs: u64,
    /// Virtual address of the shared memory.
    pub shared: u64,
    /// Bus (physical) address of the shared memory.
    pub shared_phys: u64,
    /// Size of the shared memory, a power of two.
    pub shared_len: u64,
    /// Doorbell vectors wired to interrupts; 0 for ivshmem-plain.
    pub vectors: u16,
    first_idt_vector: u8,
}

static DEVICE: spin::Once<Option<Ivshmem>> = spin::Once::new();
/// Doorbell vectors that rang and were not yet taken, one bit each.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Doorbell interrupts received, per vector.
static RECEIVED: [AtomicU64; MAX_VECTORS as usize] =
    [const { AtomicU64::new(0) }; MAX_VECTORS as usize];

/// Why the device could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvshmemError {
    /// No ivshmem function on the bus.
    Absent,
    /// BAR0 or BAR2 is missing, I/O, or unassigned.
    BadBar(u8),
    /// BAR2's size is not a power of two of at least 1 MiB.
    BadSize(u64),
}

impl Ivshmem {
    fn probe(dev: &Device) -> Result<Ivshmem, IvshmemError> {
        let usable = |i: u8| {
            dev.bar(i)
                .filter(|b| b.kind != BarKind::Io && b.address != 0)
                .ok_or(IvshmemError::BadBar(i))
        };
        let regs = usable(0)?;
        let shm = usable(2)?;
        if !shm.size.is_power_of_two() || shm.size < 1 << 20 {
            return Err(IvshmemError::BadSize(shm.size));
        }
        dev.enable();
        let mut me = Ivshmem {
            bdf: dev.bdf,
            regs: crate::memory::map_mmio(regs.address, 256),
            shared: crate::memory::map_device_memory(shm.address, shm.size),
            shared_phys: shm.address,
            shared_len: shm.size,
            vectors: 0,
            first_idt_vector: 0,
        };
        if dev.capabilities().any(|(id, _)| id == msix::CAP_MSIX) {
            me.enable_doorbells(dev);
        }
        Ok(me)
    }

    fn enable_doorbells(&mut self, dev: &Device) {
        // As many vectors as the table has (QEMU's `vectors=`), bounded.
        let count = match msix::table_size(dev) {
            Ok(size) => size.min(MAX_VECTORS),
            Err(e) => return log::warn!("ivshmem: MSI-X unusable ({e:?}); polling instead"),
        };
        let Some(first) = crate::arch::interrupts::allocate_vectors(count as u8, on_interrupt)
        else {
            return log::warn!("ivshmem: no interrupt vectors left; polling instead");
        };
        let idt: [u8; MAX_VECTORS as usize] = core::array::from_fn(|i| first.wrapping_add(i as u8));
        match msix::enable(dev, &idt[..count as usize]) {
            Ok(_) => {
                self.vectors = count;
                self.first_idt_vector = first;
            }
            Err(e) => log::warn!("ivshmem: MSI-X unusable ({e:?}); polling instead"),
        }
    }

    fn reg(&self, offset: u64) -> *mut u32 {
        (self.regs + offset) as *mut u32
    }

    /// This VM's peer id from the doorbell server (0 with ivshmem-plain).
    pub fn position(&self) -> u32 {
        // SAFETY: `regs` maps BAR0 uncached; IVPosition is an aligned register.
        unsafe { core::ptr::read_volatile(self.reg(REG_IV_POSITION)) }
    }

    /// Interrupts peer `peer` on `vector` (ignored by QEMU if it is absent).
    pub fn ring(&self, peer: u16, vector: u16) {
        let value = (peer as u32) << 16 | vector as u32;
        // SAFETY: as in `position`; the Doorbell register is write-only.
        unsafe { core::ptr::write_volatile(self.reg(REG_DOORBELL), value) }
    }

    /// Whether doorbells arrive as interrupts (else poll the shared memory).
    pub fn has_doorbells(&self) -> bool {
        self.vectors > 0
    }
}

fn on_interrupt(idt_vector: u8) {
    if let Some(dev) = device() {
        let vector = idt_vector.wrapping_sub(dev.first_idt_vector) as u32;
        if vector < MAX_VECTORS as u32 {
            PENDING.fetch_or(1 << vector, Ordering::AcqRel);
            RECEIVED[vector as usize].fetch_add(1, Ordering::Relaxed);
            // Tasks blocked on this doorbell re-check their condition.
            crate::task::notify(crate::task::Events::doorbell(vector as u16));
        }
    }
}

/// Finds, maps and wires up the first ivshmem device; logs what it found.
pub fn init() -> Result<&'static Ivshmem, IvshmemError> {
    let found = DEVICE.call_once(|| {
        let dev = pci::devices().iter().find(|d| d.vendor == VENDOR_REDHAT_QUMRANET && d.device == DEVICE_IVSHMEM)?;
        let ivshmem = Ivshmem::probe(dev).inspect_err(|e| log::error!("ivshmem {}: unusable: {e:?}", dev.bdf)).ok()?;
        let (bdf, mib, phys) = (ivshmem.bdf, ivshmem.shared_len >> 20, ivshmem.shared_phys);
        if ivshmem.has_doorbells() {
            let (vectors, peer) = (ivshmem.vectors, ivshmem.position());
            crate::kprintln!("ivshmem {bdf}: {mib} MiB shared at {phys:#x}, doorbell with {vectors} vectors, peer id {peer}");
        } else {
            crate::kprintln!("ivshmem {bdf}: {mib} MiB shared at {phys:#x}, plain (no doorbells: polling)");
        }
        Some(ivshmem)
    });
    found.as_ref().ok_or(IvshmemError::Absent)
}

/// The device, once [`init`] found it.
pub fn device() -> Option<&'static Ivshmem> {
    DEVICE.get().and_then(Option::as_ref)
}

/// Takes the set of doorbell vectors that rang since the last call.
pub fn take_pending() -> u32 {
    PENDING.swap(0, Ordering::AcqRel)
}

/// Doorbell interrupts received on `vector` since boot.
pub fn interrupts(vector: u16) -> u64 {
    RECEIVED
        .get(vector as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

crate::kernel_test!(
    fn ivshmem_plain_maps_shared_memory_cached() {
        // `shmos test` attaches a 4 MiB ivshmem-plain device to the test VM.
        let dev = init().expect("the test VM has an ivshmem device");
        assert_eq!(dev.shared_len, 4 << 20);
        assert!(!dev.has_doorbells(), "ivshmem-plain has no MSI-X");
        assert_eq!(dev.position(), 0, "plain devices report peer id 0");
        let last = dev.shared + dev.shared_len - 8;
        for (addr, value) in [(dev.shared, 0x5348_4d4f_5321u64), (last, !0)] {
            crate::arch::fault::write_u64(addr, value).expect("shared memory is writable");
            assert_eq!(crate::arch::fault::read_u64(addr), Ok(value));
        }
        assert_eq!(
            crate::memory::paging::translate(dev.shared),
            Some(dev.shared_phys)
        );
    }
);
