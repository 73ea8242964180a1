//! User memory, seen from a system call: checked, fault-tolerant copies
//! between the kernel and the calling process.
//!
//! Every pointer from user space is checked against the caller's address
//! space before use: the whole range must lie in user space and be mapped
//! user-accessible (and writable, for copies to user). The copy itself then
//! goes through the guarded `rep movsb` of `arch::fault`, so that a page that
//! vanished meanwhile (another CPU unmapping it, later) still ends in
//! `BadAddress`, never a kernel fault. Only the current task's memory is
//! reachable: system calls run in the caller's address space.
//!
//! For the shared-memory calls: [`read_bytes`], [`read_str`], [`read_array`],
//! [`read_value`] to take arguments in; [`write_bytes`], [`write_value`] to
//! hand results out; [`check`] when a range is only recorded.

use crate::arch::fault;
use crate::task;
use alloc::string::String;
use alloc::vec::Vec;
use shmos_abi::Error;

/// Plain data: any byte pattern is a valid value and it has no padding, so
/// it may be copied to and from user memory as bytes.
///
/// # Safety
///
/// Implement only for types with those two properties.
pub unsafe trait Pod: Copy + Default {}

// SAFETY: integers have no padding and no invalid bit patterns.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for i64 {}
// SAFETY: four u64 fields, repr(C): no padding, any bits valid.
unsafe impl Pod for shmos_abi::PoolStat {}
// SAFETY: `#[repr(C)]` of u64 and u32 fields with no padding; any bytes are a valid value.
unsafe impl Pod for shmos_abi::LockMapping {}
// SAFETY: `#[repr(C)]` of u64 fields only: no padding, any bytes valid.
unsafe impl Pod for shmos_abi::DsmStat {}
// SAFETY: `#[repr(C)]` of u64 fields only: no padding, any bytes valid.
unsafe impl Pod for shmos_abi::DsmInfo {}

/// Checks that the caller may access `[addr, addr+len)` (for writing if
/// `write`): `BadAddress` otherwise. An empty range always passes.
pub fn check(addr: u64, len: usize, write: bool) -> Result<(), Error> {
    let ok = task::current()
        .with_space(|space| {
            debug_assert!(space.is_active(), "system calls run in the caller's space");
            space.is_user_accessible(addr, len as u64, write)
        })
        .unwrap_or(false);
    if ok { Ok(()) } else { Err(Error::BadAddress) }
}

/// Copies `buf.len()` bytes from user address `addr` into `buf`.
pub fn copy_from_user(addr: u64, buf: &mut [u8]) -> Result<(), Error> {
    check(addr, buf.len(), false)?;
    // SAFETY: the destination is our own exclusive buffer; the source was
    // checked to be user memory, and a fault reading it is caught.
    unsafe { fault::copy(buf.as_mut_ptr() as u64, addr, buf.len()) }.map_err(|_| Error::BadAddress)
}

/// Copies `data` to user address `addr`.
pub fn write_bytes(addr: u64, data: &[u8]) -> Result<(), Error> {
    check(addr, data.len(), true)?;
    // SAFETY: the destination was checked to be writable user memory, which
    // no kernel reference points into; a fault writing it is caught.
    unsafe { fault::copy(addr, data.as_ptr() as u64, data.len()) }.map_err(|_| Error::BadAddress)
}

/// The `len` bytes at user address `addr`.
pub fn read_bytes(addr: u64, len: usize) -> Result<Vec<u8>, Error> {
    let mut buf = alloc::vec![0u8; len];
    copy_from_user(addr, &mut buf)?;
    Ok(buf)
}

/// A UTF-8 string of `len` bytes at `addr`: `TooLarge` past `max`,
/// `InvalidArgument` if not UTF-8.
pub fn read_str(addr: u64, len: usize, max: usize) -> Result<String, Error> {
    if len > max {
        return Err(Error::TooLarge);
    }
    String::from_utf8(read_bytes(addr, len)?).map_err(|_| Error::InvalidArgument)
}

/// `n` values of `T` at `addr`; `TooLarge` past `max` values.
pub fn read_array<T: Pod>(addr: u64, n: usize, max: usize) -> Result<Vec<T>, Error> {
    if n > max {
        return Err(Error::TooLarge);
    }
    let mut out = alloc::vec![T::default(); n];
    let bytes = n * core::mem::size_of::<T>();
    // SAFETY: `out` holds n initialised T; T is Pod, so viewing its memory
    // as bytes and overwriting them with any bytes is sound.
    let view = unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), bytes) };
    copy_from_user(addr, view)?;
    Ok(out)
}

/// The `T` at `addr`.
pub fn read_value<T: Pod>(addr: u64) -> Result<T, Error> {
    let mut v = read_array::<T>(addr, 1, 1)?;
    Ok(v.remove(0))
}

/// Writes `value` to `addr`.
pub fn write_value<T: Pod>(addr: u64, value: &T) -> Result<(), Error> {
    // SAFETY: T is Pod: its bytes are initialised and free of padding.
    let bytes = unsafe {
        core::slice::from_raw_parts((value as *const T).cast::<u8>(), core::mem::size_of::<T>())
    };
    write_bytes(addr, bytes)
}

crate::kernel_test!(
    fn user_copies_from_a_kernel_task_are_refused() {
        // Kernel tasks have no user memory: every user pointer is refused.
        let mut buf = [0u8; 8];
        let on_stack = buf.as_ptr() as u64;
        assert_eq!(copy_from_user(on_stack, &mut buf), Err(Error::BadAddress));
        assert_eq!(write_bytes(0x4000_0000, b"x"), Err(Error::BadAddress));
        assert_eq!(check(0, 0, true), Err(Error::BadAddress), "no space at all");
        assert_eq!(read_str(0x4000_0000, 1000, 64), Err(Error::TooLarge));
        assert_eq!(read_value::<u64>(0x4000_0000), Err(Error::BadAddress));
        assert_eq!(read_array::<u32>(0x4000_0000, 65, 64), Err(Error::TooLarge));
        let stat = shmos_abi::PoolStat::default();
        assert_eq!(write_value(0x4000_0000, &stat), Err(Error::BadAddress));
    }
);
