//! virtio-blk (PCI 1af4:1001 transitional, 1af4:1042 modern): the node's
//! own disk, through the `virtio-drivers` crate.
//!
//! The crate does the virtqueue and the device protocol; this module gives
//! it what it needs from the kernel: configuration space through the port
//! I/O mechanism of [`pci::config`] ([`PortCam`]), BARs mapped uncached in
//! the MMIO window, and DMA memory ([`KernelHal`]). Completion is polled (the
//! request spins on the used ring; no interrupt is wired), which is what a
//! synchronous [`BlockDevice`] wants anyway.
//!
//! DMA: buffers are handed to the device by physical address. The kernel
//! heap and every frame live in the direct map, which is physically
//! contiguous, so such buffers are shared as they are; a buffer elsewhere
//! (a task stack: its pages are separate frames) is shared as it is when
//! its pages happen to be physically contiguous, and bounced through fresh
//! contiguous frames otherwise. x86 DMA is cache-coherent: sharing needs no
//! cache maintenance.
//!
//! The disk is found once at boot ([`init`]); [`take`] hands it to one user
//! at a time ([`put_back`] returns it).

use crate::memory::frames::{self, FRAME_SIZE};
use crate::memory::paging;
use crate::pci::{self, config::Bdf};
use crate::sync::IrqMutex;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;
use shm_ext::dsm::{BLOCK_BYTES, BlockDevice, DiskError};
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use x86_64::PhysAddr as X86PhysAddr;
use x86_64::structures::paging::PhysFrame;

const VENDOR_VIRTIO: u16 = 0x1af4;
/// virtio-blk as a transitional device (QEMU's default on a PCI bus).
const DEVICE_BLK_TRANSITIONAL: u16 = 0x1001;
/// virtio-blk as a modern-only device (0x1040 + device type 2).
const DEVICE_BLK_MODERN: u16 = 0x1042;
/// 512-byte sectors in one 4 KiB block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_BYTES / SECTOR_SIZE) as u64;

/// The node's disk: a [`BlockDevice`] of 4 KiB blocks on virtio-blk.
pub struct VirtioDisk {
    blk: VirtIOBlk<KernelHal, PciTransport>,
    blocks: u64,
    bdf: Bdf,
}

impl core::fmt::Debug for VirtioDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioDisk")
            .field("bdf", &self.bdf)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

/// Why the disk could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioBlkError {
    /// The virtio PCI transport refused the function (capabilities, BARs).
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    /// The device refused initialisation (features, queue set-up).
    Device(virtio_drivers::Error),
}

impl core::fmt::Display for VirtioBlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "PCI transport: {e}"),
            Self::Device(e) => write!(f, "device: {e}"),
        }
    }
}

impl VirtioDisk {
    fn probe(dev: &pci::Device) -> Result<VirtioDisk, VirtioBlkError> {
        // Memory decoding for the BARs, bus mastering for DMA.
        dev.enable();
        let mut root = PciRoot::new(PortCam);
        let function = DeviceFunction {
            bus: dev.bdf.bus,
            device: dev.bdf.dev,
            function: dev.bdf.func,
        };
        let transport = PciTransport::new::<KernelHal, _>(&mut root, function)
            .map_err(VirtioBlkError::Transport)?;
        let mut blk = VirtIOBlk::<KernelHal, _>::new(transport).map_err(VirtioBlkError::Device)?;
        // Polled: tell the device not to interrupt (no vector is wired).
        blk.disable_interrupts();
        Ok(VirtioDisk {
            blocks: blk.capacity() / SECTORS_PER_BLOCK,
            blk,
            bdf: dev.bdf,
        })
    }

    /// Whether the device refuses writes (`readonly=on` in QEMU).
    pub fn read_only(&self) -> bool {
        self.blk.readonly()
    }

    /// The first sector of block `n`, or `OutOfRange`.
    fn sector(&self, n: u64) -> Result<usize, DiskError> {
        if n >= self.blocks {
            return Err(DiskError::OutOfRange);
        }
        usize::try_from(n * SECTORS_PER_BLOCK).map_err(|_| DiskError::OutOfRange)
    }
}

impl BlockDevice for VirtioDisk {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_block(&mut self, n: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), DiskError> {
        let sector = self.sector(n)?;
        self.blk.read_blocks(sector, buf).map_err(|_| DiskError::Io)
    }

    fn write_block(&mut self, n: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), DiskError> {
        let sector = self.sector(n)?;
        self.blk
            .write_blocks(sector, buf)
            .map_err(|_| DiskError::Io)
    }

    /// VIRTIO_BLK_T_FLUSH. A device that does not offer the flush feature
    /// has no volatile cache (QEMU's `cache=writethrough`): every write is
    /// durable when it completes, and the crate's flush is then a no-op.
    fn flush(&mut self) -> Result<(), DiskError> {
        self.blk.flush().map_err(|_| DiskError::Io)
    }
}

/// The disk found at boot, until someone takes it.
static DISK: IrqMutex<Option<VirtioDisk>> = IrqMutex::new(None);
/// Blocks of the disk found at boot (0: none), for [`found_blocks`].
static FOUND_BLOCKS: spin::Once<Option<u64>> = spin::Once::new();

/// Finds the first virtio-blk function, sets it up and keeps it for
/// [`take`]; prints one line (unless `quiet`), or the reason it is unusable.
pub fn init(quiet: bool) {
    FOUND_BLOCKS.call_once(|| {
        let dev = pci::devices().iter().find(|d| {
            d.vendor == VENDOR_VIRTIO
                && matches!(d.device, DEVICE_BLK_TRANSITIONAL | DEVICE_BLK_MODERN)
        });
        let Some(dev) = dev else {
            if !quiet {
                crate::kprintln!("virtio-blk: no disk");
            }
            return None;
        };
        let disk = match VirtioDisk::probe(dev) {
            Ok(disk) => disk,
            Err(e) => {
                log::error!("virtio-blk {}: unusable: {e}", dev.bdf);
                return None;
            }
        };
        let blocks = disk.blocks;
        if !quiet {
            let bytes = blocks * BLOCK_BYTES as u64;
            let (size, unit) = if bytes >= 1 << 20 {
                (bytes >> 20, "MiB")
            } else {
                (bytes >> 10, "KiB")
            };
            let ro = if disk.read_only() { ", read-only" } else { "" };
            crate::kprintln!("virtio-blk: {blocks} blocks ({size} {unit}){ro}");
        }
        *DISK.lock() = Some(disk);
        Some(blocks)
    });
}

/// Hands the node's disk to the caller; `None` if there is none or someone
/// else holds it. Give it back with [`put_back`] when done.
pub fn take() -> Option<VirtioDisk> {
    DISK.lock().take()
}

/// Returns a disk obtained from [`take`], for the next user.
pub fn put_back(disk: VirtioDisk) {
    let mut slot = DISK.lock();
    assert!(slot.is_none(), "virtio-blk: two disks put back");
    *slot = Some(disk);
}

/// Blocks of the disk found at boot, whoever holds it (`None`: no disk).
pub fn found_blocks() -> Option<u64> {
    FOUND_BLOCKS.get().copied().flatten()
}

/// Configuration space through mechanism #1 (ports 0xCF8/0xCFC), as the rest
/// of the kernel reads it; stateless, so a clone is the same thing.
#[derive(Debug, Clone, Copy)]
struct PortCam;

fn bdf(f: DeviceFunction) -> Bdf {
    Bdf {
        bus: f.bus,
        dev: f.device,
        func: f.function,
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, function: DeviceFunction, register_offset: u8) -> u32 {
        pci::config::read32(bdf(function), register_offset.into())
    }

    fn write_word(&mut self, function: DeviceFunction, register_offset: u8, data: u32) {
        pci::config::write32(bdf(function), register_offset.into(), data)
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// BAR ranges mapped so far: (physical start, length, virtual start). A BAR
/// is mapped whole, once, however many of its structures the crate asks for.
static MAPPED_BARS: IrqMutex<Vec<(u64, u64, u64)>> = IrqMutex::new(Vec::new());

/// The uncached virtual address of `len` bytes of MMIO at `phys`.
fn mmio_virt(phys: u64, len: u64) -> u64 {
    let inside = |&(start, size, _): &(u64, u64, u64)| phys >= start && phys + len <= start + size;
    let mut mapped = MAPPED_BARS.lock();
    if let Some(&(start, _, virt)) = mapped.iter().find(|m| inside(m)) {
        return virt + (phys - start);
    }
    // The whole BAR that holds the range, if enumeration knows it.
    let bar = pci::devices()
        .iter()
        .flat_map(|d| d.bars.iter())
        .filter(|b| b.kind != pci::BarKind::Io && b.address != 0)
        .map(|b| (b.address, b.size))
        .find(|&(start, size)| phys >= start && phys + len <= start + size);
    let (start, size) = bar.unwrap_or((phys, len));
    let virt = crate::memory::map_mmio(start, size);
    mapped.push((start, size, virt));
    virt + (phys - start)
}

/// The physical address of `len` bytes at kernel address `virt` if they are
/// physically contiguous (always so in the direct map), else `None`.
fn contiguous_phys(virt: u64, len: u64) -> Option<u64> {
    let direct = paging::PHYS_OFFSET..paging::PHYS_OFFSET + frames::MAX_PHYS;
    if direct.contains(&virt) && virt.checked_add(len)? <= direct.end {
        return Some(virt - paging::PHYS_OFFSET);
    }
    let first = paging::translate(virt)?;
    let mut page = virt & !(FRAME_SIZE - 1);
    while page + FRAME_SIZE < virt + len {
        page += FRAME_SIZE;
        if paging::translate(page)? != first + (page - virt) {
            return None;
        }
    }
    Some(first)
}

/// Takes `pages` contiguous zeroed frames; returns their physical address.
fn alloc_dma(pages: usize) -> Option<u64> {
    let first = frames::alloc_contiguous(pages, 1)?;
    let phys = first.start_address().as_u64();
    let virt = paging::phys_to_virt(phys) as *mut u8;
    // SAFETY: the frames were free, so nothing references them; the direct
    // map makes all `pages` of them writable at `virt`.
    unsafe { core::ptr::write_bytes(virt, 0, pages * FRAME_SIZE as usize) };
    Some(phys)
}

fn free_dma(phys: u64, pages: usize) {
    for i in 0..pages as u64 {
        frames::free(PhysFrame::containing_address(X86PhysAddr::new(
            phys + i * FRAME_SIZE,
        )));
    }
}

/// DMA, MMIO and address translation for `virtio-drivers`.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, physically contiguous
// frames taken from the frame allocator (so aliased by nothing) with their
// direct-map address; `mmio_phys_to_virt` returns fresh uncached mappings
// in the MMIO window; `share` gives the device the physical address of the
// buffer itself or of a bounce copy that `unshare` copies back and frees.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match alloc_dma(pages) {
            Some(phys) => {
                let virt = paging::phys_to_virt(phys) as *mut u8;
                (
                    phys,
                    NonNull::new(virt).expect("the direct map is not at 0"),
                )
            }
            // The crate reports a zero physical address as `DmaError`.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        free_dma(paddr, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let virt = mmio_virt(paddr, size as u64) as *mut u8;
        NonNull::new(virt).expect("the MMIO window is not at 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let (virt, len) = (buffer.as_ptr().cast::<u8>() as u64, buffer.len());
        if let Some(phys) = contiguous_phys(virt, len as u64) {
            return phys;
        }
        let pages = len.div_ceil(FRAME_SIZE as usize);
        let bounce = alloc_dma(pages).expect("virtio-blk: no frames for a DMA bounce buffer");
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller guarantees `buffer` is valid for `len` bytes
            // and not accessed meanwhile; the bounce frames are ours and
            // mapped writable in the direct map; the two do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    virt as *const u8,
                    paging::phys_to_virt(bounce) as *mut u8,
                    len,
                )
            };
        }
        bounce
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let (virt, len) = (buffer.as_ptr().cast::<u8>() as u64, buffer.len());
        if contiguous_phys(virt, len as u64) == Some(paddr) {
            return; // shared in place
        }
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `paddr` is the bounce buffer `share` made for this
            // buffer (the device is done with it); the caller guarantees
            // `buffer` is valid and exclusively ours for `len` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    paging::phys_to_virt(paddr) as *const u8,
                    virt as *mut u8,
                    len,
                )
            };
        }
        free_dma(paddr, len.div_ceil(FRAME_SIZE as usize));
    }
}

/// `bench.disk=MIB`: writes MIB MiB sequentially in 4 KiB blocks from block
/// 0, flushes, and prints `bench disk-write bytes=N ns=T` (the host tool
/// parses it). Returns whether it could.
pub fn bench(mib: u64) -> bool {
    let Some(mut disk) = take() else {
        crate::kprintln!("bench disk-write: FAILED: no virtio-blk disk");
        return false;
    };
    let blocks = mib * (1 << 20) / BLOCK_BYTES as u64;
    if blocks == 0 || blocks > disk.blocks() {
        crate::kprintln!(
            "bench disk-write: FAILED: {mib} MiB asked, the disk has {} blocks of 4 KiB",
            disk.blocks()
        );
        put_back(disk);
        return false;
    }
    // On the heap: in the direct map, so shared with the device in place.
    let mut buf = Box::new([0x5au8; BLOCK_BYTES]);
    let start = crate::time::now_ns();
    let mut result = Ok(());
    for n in 0..blocks {
        buf[..8].copy_from_slice(&n.to_le_bytes());
        result = disk.write_block(n, &buf);
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|()| disk.flush());
    let ns = crate::time::now_ns() - start;
    put_back(disk);
    match result {
        Ok(()) => {
            crate::kprintln!(
                "bench disk-write bytes={} ns={ns}",
                blocks * BLOCK_BYTES as u64
            );
            true
        }
        Err(e) => {
            crate::kprintln!("bench disk-write: FAILED: {e}");
            false
        }
    }
}

/// The disk for a test; fails the test with the reason when there is none.
fn test_disk() -> VirtioDisk {
    take().unwrap_or_else(|| match found_blocks() {
        None => panic!(
            "no usable virtio-blk disk: `shmos test` attaches a scratch image to every kernel-test VM (-device virtio-blk-pci); booted without one?"
        ),
        Some(_) => panic!("the virtio-blk disk is held by someone else"),
    })
}

/// A block's test pattern: distinct per block and per byte.
fn pattern(block: u64, salt: u8) -> Box<[u8; BLOCK_BYTES]> {
    let mut buf = Box::new([0u8; BLOCK_BYTES]);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u64 ^ block.wrapping_mul(0x9e37_79b9) ^ salt as u64) as u8;
    }
    buf[..8].copy_from_slice(&block.to_le_bytes());
    buf
}

crate::kernel_test!(
    fn virtio_blk_write_read_round_trip() {
        let mut disk = test_disk();
        let blocks = disk.blocks();
        assert!(
            blocks >= 16,
            "a scratch disk of at least 64 KiB, got {blocks} blocks"
        );
        let targets = [0, 1, 7, blocks / 2, blocks - 2, blocks - 1];
        for &n in &targets {
            disk.write_block(n, &pattern(n, 0xa5)).expect("write");
        }
        disk.flush().expect("flush");
        for &n in &targets {
            let mut back = Box::new([0u8; BLOCK_BYTES]);
            disk.read_block(n, &mut back).expect("read");
            assert!(
                back == pattern(n, 0xa5),
                "block {n} reads back what was written"
            );
        }
        // Overwrite one and see the new data, not a cached old copy.
        disk.write_block(1, &pattern(1, 0x3c)).expect("rewrite");
        let mut back = Box::new([0u8; BLOCK_BYTES]);
        disk.read_block(1, &mut back).expect("read");
        assert!(back == pattern(1, 0x3c), "block 1 was overwritten");
        put_back(disk);
    }
);

crate::kernel_test!(
    fn virtio_blk_refuses_block_past_end() {
        let mut disk = test_disk();
        let blocks = disk.blocks();
        let mut buf = Box::new([0u8; BLOCK_BYTES]);
        for n in [blocks, blocks + 1, u64::MAX / SECTORS_PER_BLOCK, u64::MAX] {
            assert_eq!(
                disk.read_block(n, &mut buf),
                Err(DiskError::OutOfRange),
                "read {n}"
            );
            assert_eq!(
                disk.write_block(n, &buf),
                Err(DiskError::OutOfRange),
                "write {n}"
            );
        }
        // The device still works after the refusals.
        if let Some(last) = blocks.checked_sub(1) {
            disk.read_block(last, &mut buf)
                .expect("the last block reads");
        }
        put_back(disk);
    }
);

crate::kernel_test!(
    fn virtio_blk_bounces_buffers_that_are_not_physically_contiguous() {
        use x86_64::VirtAddr;
        use x86_64::structures::paging::{Page, PageTableFlags as Flags};
        let mut disk = test_disk();
        // Two pages mapped to frames in the wrong order: the buffer across
        // them is contiguous virtually but not physically.
        let (low, high) = (
            frames::alloc_zeroed().unwrap(),
            frames::alloc_zeroed().unwrap(),
        );
        let base = paging::SCRATCH_BASE + 0x40_0000;
        let pages = [base, base + FRAME_SIZE].map(|a| Page::containing_address(VirtAddr::new(a)));
        let rw = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE;
        paging::map(pages[0], high, rw).unwrap();
        paging::map(pages[1], low, rw).unwrap();
        let at = base + 100;
        assert_eq!(contiguous_phys(at, BLOCK_BYTES as u64), None);
        let n = disk.blocks() - 3;
        let data = pattern(n, 0x77);
        // SAFETY: `at..at + 4096` lies inside the two pages just mapped
        // writable, which nothing else references; u8 has no alignment.
        let window = unsafe { &mut *(at as *mut [u8; BLOCK_BYTES]) };
        window.copy_from_slice(&data[..]);
        disk.write_block(n, window)
            .expect("write from a split buffer");
        window.fill(0);
        let mut back = Box::new([0u8; BLOCK_BYTES]);
        disk.read_block(n, &mut back).expect("read");
        assert!(back == data, "the bounced write reached the disk");
        disk.read_block(n, window)
            .expect("read into a split buffer");
        assert!(window[..] == data[..], "the bounced read was copied back");
        // A buffer on this stack works too, whatever its frames.
        let mut on_stack = [0u8; BLOCK_BYTES];
        disk.read_block(n, &mut on_stack)
            .expect("read onto the stack");
        assert!(on_stack[..] == data[..]);
        put_back(disk);
        for page in pages {
            frames::free(paging::unmap(page).unwrap());
        }
    }
);
