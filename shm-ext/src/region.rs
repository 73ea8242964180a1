//! `Region`: the mapped shared memory, and the crate's only `unsafe` code.
//!
//! Everything else in the crate reaches shared memory through the checked
//! accessors here: every offset is bounds-checked against the region length
//! and every atomic word checked for natural alignment before a reference or
//! a volatile access is formed. Short byte copies are volatile, because
//! other nodes change this memory behind the compiler's back; long ones are
//! one `memcpy` of bytes the protocols give the copier alone.
#![allow(unsafe_code)]

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::ShmError;

/// Copies of at least this many bytes are one `memcpy` (see `read_bytes`).
const BULK: usize = 256;

/// The mapped shared memory: base pointer and length, valid for `'a`.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    base: *mut u8,
    len: usize,
    // Ties the region to the lifetime of the mapping; atomics because the
    // memory is shared and mutated through `&`.
    _mem: PhantomData<&'a [AtomicU64]>,
}

// SAFETY: a `Region` is a pointer to memory that is shared by design; the
// only accesses it offers are atomics and volatile byte copies, both of which
// are fine from any thread, and it never hands out `&mut` or `&[u8]`.
unsafe impl Send for Region<'_> {}
// SAFETY: as for `Send`: all access through `&Region` is atomic or volatile.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// Wraps the mapped shared memory at `base..base + len`.
    ///
    /// # Safety
    ///
    /// For all of `'a`: `base` is non-null (unless `len` is 0) and
    /// `base..base + len` is mapped, readable and writable and stays so (it
    /// is not unmapped or reused); the memory is only ever accessed in this
    /// program through `Region`s, atomics or volatile accesses (no `&[u8]` or
    /// `&mut` to it exists), and `len <= isize::MAX`. Other nodes (other VMs
    /// or processes) may change it at any time; that is expected.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        Self {
            base,
            len,
            _mem: PhantomData,
        }
    }

    /// A region over a slice of atomic words (a heap or static buffer used as
    /// shared memory, e.g. in tests); always sound, needs no allocator.
    pub fn from_atomics(words: &'a [AtomicU64]) -> Self {
        Self {
            // AtomicU64 is an UnsafeCell, so writing through a pointer derived
            // from `&[AtomicU64]` is allowed.
            base: words.as_ptr().cast::<u8>().cast_mut(),
            len: core::mem::size_of_val(words),
            _mem: PhantomData,
        }
    }

    /// A region over a shared file mapping; the mapping outlives the region.
    #[cfg(feature = "std")]
    pub fn from_mmap(map: &'a memmap2::MmapRaw) -> Self {
        // SAFETY: `MmapRaw` owns a live mapping of `map.len()` bytes that is
        // readable and writable (it was mapped read-write by `host`) and is
        // only unmapped when `map` is dropped, which `'a` forbids while the
        // region lives. `MmapRaw` never hands out references to the bytes.
        unsafe { Self::new(map.as_mut_ptr(), map.len()) }
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the region has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks `offset..offset + size` lies inside the region and that its
    /// address is a multiple of `align`; returns the address.
    fn checked_ptr(&self, offset: usize, size: usize, align: usize) -> Result<*mut u8, ShmError> {
        let end = offset.checked_add(size).ok_or(ShmError::OutOfBounds)?;
        if end > self.len {
            return Err(ShmError::OutOfBounds);
        }
        // In bounds, so this stays inside the mapping; wrapping_add keeps the
        // computation itself free of undefined behaviour.
        let p = self.base.wrapping_add(offset);
        if !p.addr().is_multiple_of(align) {
            return Err(ShmError::Misaligned);
        }
        Ok(p)
    }

    /// The 32-bit atomic word at `offset` (must be 4-aligned and in bounds).
    pub fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32, ShmError> {
        let p = self.checked_ptr(offset, 4, 4)?;
        // SAFETY: `p..p + 4` lies inside the region, which `new`'s contract
        // keeps mapped and writable for `'a`; `p` is 4-aligned (checked), and
        // all access to this memory is atomic or volatile, as `from_ptr` asks.
        Ok(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    /// The 64-bit atomic word at `offset` (must be 8-aligned and in bounds).
    pub fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64, ShmError> {
        let p = self.checked_ptr(offset, 8, 8)?;
        // SAFETY: `p..p + 8` lies inside the region, mapped and writable for
        // `'a` by `new`'s contract; `p` is 8-aligned (checked); all access to
        // this memory is atomic or volatile, as `from_ptr` asks.
        Ok(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    /// Copies `buf.len()` bytes at `offset` out of the region.
    ///
    /// Short copies go word by word, volatile, because other nodes write
    /// the region behind the compiler's back. Long ones (message bodies,
    /// pages) are one `memcpy`: the protocols give the copier those bytes
    /// alone (a reserved record, a committed one), and a word loop moved
    /// 64 KiB messages at a twentieth of memcpy's speed.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), ShmError> {
        let p = self.checked_ptr(offset, buf.len(), 1)?;
        if buf.len() >= BULK {
            // SAFETY: `p..p + buf.len()` is inside the region, mapped and
            // readable for `'a` (checked above, `new`'s contract); `buf` is
            // our own exclusive buffer, so the two cannot overlap. A node
            // breaking the protocol by writing these bytes meanwhile can only
            // leave torn bytes in `buf`, which callers validate as untrusted.
            unsafe { ptr::copy_nonoverlapping(p.cast_const(), buf.as_mut_ptr(), buf.len()) };
            return Ok(());
        }
        // 8 bytes at a time where the region side is aligned.
        let head = p.align_offset(8).min(buf.len());
        let words = (buf.len() - head) / 8;
        for (i, b) in buf[..head].iter_mut().enumerate() {
            // SAFETY: `p + i` is inside the checked range `p..p + buf.len()`,
            // which is mapped and readable for `'a`; u8 needs no alignment.
            *b = unsafe { ptr::read_volatile(p.add(i)) };
        }
        for w in 0..words {
            let at = head + w * 8;
            // SAFETY: `p + at .. p + at + 8` lies inside the checked range and
            // `p + head` is 8-aligned, so every such word is aligned.
            let word = unsafe { ptr::read_volatile(p.add(at).cast::<u64>()) };
            buf[at..at + 8].copy_from_slice(&word.to_ne_bytes());
        }
        for (i, b) in buf.iter_mut().enumerate().skip(head + words * 8) {
            // SAFETY: as for the head bytes.
            *b = unsafe { ptr::read_volatile(p.add(i)) };
        }
        Ok(())
    }

    /// Copies `data` into the region at `offset` (see `read_bytes` for when
    /// it is volatile and when one `memcpy`).
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), ShmError> {
        let p = self.checked_ptr(offset, data.len(), 1)?;
        if data.len() >= BULK {
            // SAFETY: `p..p + data.len()` is inside the region, mapped and
            // writable for `'a` (checked above, `new`'s contract); no Rust
            // reference points into the region, and `data` is not in it
            // unless a caller built a slice over shared memory, which
            // `new`'s contract rules out, so the ranges do not overlap.
            unsafe { ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            return Ok(());
        }
        let head = p.align_offset(8).min(data.len());
        let words = (data.len() - head) / 8;
        for (i, &b) in data[..head].iter().enumerate() {
            // SAFETY: `p + i` is inside the checked range `p..p + data.len()`,
            // which is mapped and writable for `'a`; u8 needs no alignment.
            unsafe { ptr::write_volatile(p.add(i), b) };
        }
        for w in 0..words {
            let at = head + w * 8;
            let word = u64::from_ne_bytes(data[at..at + 8].try_into().expect("8 bytes"));
            // SAFETY: `p + at .. p + at + 8` lies inside the checked range and
            // `p + head` is 8-aligned, so every such word is aligned.
            unsafe { ptr::write_volatile(p.add(at).cast::<u64>(), word) };
        }
        for (i, &b) in data.iter().enumerate().skip(head + words * 8) {
            // SAFETY: as for the head bytes.
            unsafe { ptr::write_volatile(p.add(i), b) };
        }
        Ok(())
    }
}
