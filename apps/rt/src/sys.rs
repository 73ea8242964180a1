//! Safe wrappers for every system call, one per row of the table in
//! `shmos_abi`. Each returns `Result<T, Error>`; slices carry their own
//! pointer and length, so the kernel only ever sees memory the caller owns.

use crate::raw::syscall6;
use shmos_abi::{Call, Error, PoolStat, RecvInfo, decode};

/// A call whose pointer arguments (if any) come from slices borrowed for its
/// duration, as the wrappers below pass them.
fn call(c: Call, a: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: every wrapper passes pointers only from slices or objects it
    // borrows (mutably where the kernel writes) for the whole call.
    decode(unsafe { syscall6(c.number(), a[0], a[1], a[2], a[3], a[4], a[5]) })
}

fn call0(c: Call) -> Result<u64, Error> {
    call(c, [0; 6])
}

fn unit(r: Result<u64, Error>) -> Result<(), Error> {
    r.map(|_| ())
}

/// Ends the app with `code`; the kernel prints it.
pub fn exit(code: i32) -> ! {
    let _ = call(Call::Exit, [code as u32 as u64, 0, 0, 0, 0, 0]);
    // The kernel never returns from exit; should it, do not run on.
    loop {
        core::hint::spin_loop();
    }
}

/// Writes `bytes` to the console; returns how many were written.
pub fn write(bytes: &[u8]) -> Result<usize, Error> {
    call(
        Call::Write,
        [bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0, 0],
    )
    .map(|n| n as usize)
}

/// Gives the CPU to the next ready app.
pub fn yield_now() -> Result<(), Error> {
    unit(call0(Call::Yield))
}

/// Sleeps at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) -> Result<(), Error> {
    unit(call(Call::Sleep, [ns, 0, 0, 0, 0, 0]))
}

/// Nanoseconds since the node booted.
pub fn clock_ns() -> Result<u64, Error> {
    call0(Call::Clock)
}

/// This node's id.
pub fn node_id() -> Result<u16, Error> {
    call0(Call::NodeId).map(|n| n as u16)
}

/// Live nodes, bit N = node N.
pub fn nodes() -> Result<u64, Error> {
    call0(Call::Nodes)
}

/// Waits until every live node has reached this barrier.
pub fn barrier() -> Result<(), Error> {
    unit(call0(Call::Barrier))
}

/// Copies this app's argument string into `buf`; returns the string's whole
/// length (more than `buf.len()` when it did not fit).
pub fn args(buf: &mut [u8]) -> Result<usize, Error> {
    call(
        Call::Args,
        [buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0, 0],
    )
    .map(|n| n as usize)
}

/// Creates a pool named `name` of `size` bytes; returns its id.
pub fn pool_create(name: &str, size: u64) -> Result<u64, Error> {
    call(
        Call::PoolCreate,
        [name.as_ptr() as u64, name.len() as u64, size, 0, 0, 0],
    )
}

/// Opens the pool named `name`; returns its id.
pub fn pool_open(name: &str) -> Result<u64, Error> {
    call(
        Call::PoolOpen,
        [name.as_ptr() as u64, name.len() as u64, 0, 0, 0, 0],
    )
}

/// Destroys pool `pool`.
pub fn pool_destroy(pool: u64) -> Result<(), Error> {
    unit(call(Call::PoolDestroy, [pool, 0, 0, 0, 0, 0]))
}

/// Reports pool `pool`'s figures.
pub fn pool_stat(pool: u64) -> Result<PoolStat, Error> {
    let mut out = PoolStat::default();
    call(Call::PoolStat, [pool, &raw mut out as u64, 0, 0, 0, 0])?;
    Ok(out)
}

/// Allocates `len` contiguous bytes aligned to `align` in `pool`; returns a handle.
pub fn shm_alloc(pool: u64, len: u64, align: u64) -> Result<u64, Error> {
    call(Call::ShmAlloc, [pool, len, align, 0, 0, 0])
}

/// Frees the region `handle`.
pub fn shm_free(handle: u64) -> Result<(), Error> {
    unit(call(Call::ShmFree, [handle, 0, 0, 0, 0, 0]))
}

/// Maps region `handle` into this app; returns its address. Reading or
/// writing through it is up to the caller (other nodes share the memory).
pub fn shm_map(handle: u64, writable: bool) -> Result<*mut u8, Error> {
    let flags = if writable { shmos_abi::MAP_WRITABLE } else { 0 };
    call(Call::ShmMap, [handle, flags, 0, 0, 0, 0]).map(|a| a as *mut u8)
}

/// Unmaps a mapping that `shm_map` returned.
pub fn shm_unmap(addr: *mut u8) -> Result<(), Error> {
    unit(call(Call::ShmUnmap, [addr as u64, 0, 0, 0, 0, 0]))
}

/// Makes region `handle` exclusive to the node set `nodes`.
pub fn shm_own(handle: u64, nodes: u64) -> Result<(), Error> {
    unit(call(Call::ShmOwn, [handle, nodes, 0, 0, 0, 0]))
}

/// Moves region `handle` from node set `from` to node set `to`.
pub fn shm_transfer(handle: u64, from: u64, to: u64) -> Result<(), Error> {
    unit(call(Call::ShmTransfer, [handle, from, to, 0, 0, 0]))
}

/// Reserves `ids.len()` global lock ids into `ids`; returns how many.
pub fn lock_reserve(ids: &mut [u32]) -> Result<usize, Error> {
    call(
        Call::LockReserve,
        [ids.len() as u64, ids.as_mut_ptr() as u64, 0, 0, 0, 0],
    )
    .map(|n| n as usize)
}

/// Gives lock ids back.
pub fn lock_unreserve(ids: &[u32]) -> Result<(), Error> {
    unit(call(
        Call::LockUnreserve,
        [ids.as_ptr() as u64, ids.len() as u64, 0, 0, 0, 0],
    ))
}

/// Takes every lock in `ids`, waiting at most `timeout_ns`.
pub fn lock_acquire(ids: &[u32], timeout_ns: u64) -> Result<(), Error> {
    unit(call(
        Call::LockAcquire,
        [ids.as_ptr() as u64, ids.len() as u64, timeout_ns, 0, 0, 0],
    ))
}

/// Releases every lock in `ids`.
pub fn lock_release(ids: &[u32]) -> Result<(), Error> {
    unit(call(
        Call::LockRelease,
        [ids.as_ptr() as u64, ids.len() as u64, 0, 0, 0, 0],
    ))
}

/// Sleeps while lock `id` still reads `observed` (until a lock doorbell or the
/// deadline); returns 0, and the caller retries its acquire.
pub fn lock_wait(id: u32, observed: u64, timeout_ns: u64) -> Result<u64, Error> {
    call(Call::LockWait, [id as u64, observed, timeout_ns, 0, 0, 0])
}

/// Maps the lock table for the fast path; says where, and who we are.
pub fn lock_map() -> Result<shmos_abi::LockMapping, Error> {
    let mut out = shmos_abi::LockMapping::default();
    let ptr = &mut out as *mut shmos_abi::LockMapping as u64;
    call(Call::LockMap, [ptr, 0, 0, 0, 0, 0])?;
    Ok(out)
}

/// Wakes the waiters of locks the fast path released.
pub fn lock_wake(ids: &[u32]) -> Result<(), Error> {
    unit(call(
        Call::LockWake,
        [ids.as_ptr() as u64, ids.len() as u64, 0, 0, 0, 0],
    ))
}

/// Raises signal `sig` on node `node`.
pub fn signal(node: u16, sig: u32) -> Result<(), Error> {
    unit(call(Call::Signal, [node as u64, sig as u64, 0, 0, 0, 0]))
}

/// Raises signal `sig` on every live node; returns the nodes signalled (bitmap).
pub fn signal_all(sig: u32) -> Result<u64, Error> {
    call(Call::SignalAll, [sig as u64, 0, 0, 0, 0, 0])
}

/// Waits at most `timeout_ns` for signals; returns the pending bits.
pub fn signal_wait(timeout_ns: u64) -> Result<u64, Error> {
    call(Call::SignalWait, [timeout_ns, 0, 0, 0, 0, 0])
}

/// Sends `data` to `port` on node `node`.
pub fn msg_send(node: u16, port: u32, data: &[u8]) -> Result<(), Error> {
    unit(call(
        Call::MsgSend,
        [
            node as u64,
            port as u64,
            data.as_ptr() as u64,
            data.len() as u64,
            0,
            0,
        ],
    ))
}

/// Sends `data` to `port` on every live node; returns the nodes sent to (bitmap).
pub fn msg_send_all(port: u32, data: &[u8]) -> Result<u64, Error> {
    call(
        Call::MsgSendAll,
        [
            port as u64,
            data.as_ptr() as u64,
            data.len() as u64,
            0,
            0,
            0,
        ],
    )
}

/// Receives a message from `port` into `buf`, waiting at most `timeout_ns`.
pub fn msg_recv(port: u32, buf: &mut [u8], timeout_ns: u64) -> Result<RecvInfo, Error> {
    call(
        Call::MsgRecv,
        [
            port as u64,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            timeout_ns,
            0,
            0,
        ],
    )
    .map(RecvInfo::unpack)
}

/// Allocates `len` bytes (whole pages) of the DSM global space; returns the
/// range's 128-bit global address.
pub fn dsm_alloc(len: u64) -> Result<u128, Error> {
    let mut out = [0u8; 16];
    call(Call::DsmAlloc, [len, out.as_mut_ptr() as u64, 0, 0, 0, 0])?;
    Ok(u128::from_le_bytes(out))
}

/// Maps `len` bytes of the DSM range at global address `gaddr` into the
/// caller (read-write if `writable`); returns where. Loads and stores on
/// it are kept coherent across nodes by page faults.
pub fn dsm_map(gaddr: u128, len: u64, writable: bool) -> Result<*mut u8, Error> {
    let flags = if writable { shmos_abi::MAP_WRITABLE } else { 0 };
    call(
        Call::DsmMap,
        [gaddr as u64, (gaddr >> 64) as u64, len, flags, 0, 0],
    )
    .map(|a| a as *mut u8)
}

/// Unmaps a mapping `dsm_map` returned.
pub fn dsm_unmap(addr: *mut u8) -> Result<(), Error> {
    unit(call(Call::DsmUnmap, [addr as u64, 0, 0, 0, 0, 0]))
}

/// Frees the DSM range at `gaddr` of `len` bytes (on the node that
/// allocated it).
pub fn dsm_free(gaddr: u128, len: u64) -> Result<(), Error> {
    unit(call(
        Call::DsmFree,
        [gaddr as u64, (gaddr >> 64) as u64, len, 0, 0, 0],
    ))
}

/// Makes the `len` bytes of DSM range at `gaddr` durable: returns once
/// every node's writes to it, and the directory, are on their disks.
pub fn dsm_sync(gaddr: u128, len: u64) -> Result<(), Error> {
    unit(call(
        Call::DsmSync,
        [gaddr as u64, (gaddr >> 64) as u64, len, 0, 0, 0],
    ))
}

/// This node's DSM paging, disk and migration counters.
pub fn dsm_info() -> Result<shmos_abi::DsmInfo, Error> {
    let mut out = shmos_abi::DsmInfo::default();
    call(Call::DsmInfo, [&mut out as *mut _ as u64, 0, 0, 0, 0, 0])?;
    Ok(out)
}

/// The directory entry and coherence state of the DSM page at `gaddr`.
pub fn dsm_stat(gaddr: u128) -> Result<shmos_abi::DsmStat, Error> {
    let mut out = shmos_abi::DsmStat::default();
    call(
        Call::DsmStat,
        [
            gaddr as u64,
            (gaddr >> 64) as u64,
            &mut out as *mut _ as u64,
            0,
            0,
            0,
        ],
    )?;
    Ok(out)
}
