//! Calls 10-35: the shared memory extension layer (pools, regions, locks,
//! signals, messages), each a thin layer over shm-ext.
//!
//! Each handler takes its arguments from `a`, brings user data in and out
//! through `crate::user` (checked against the caller's address space), calls
//! shm-ext on this node's shared memory and maps its errors with
//! [`shm_error`]. A call that must wait retries its non-blocking shm-ext
//! operation from `task::wait_event`, woken by the doorbell vector the other
//! side rings (or by every tick on ivshmem-plain, which has no interrupts).

use super::{Args, SysResult};
use crate::cluster::{IvshmemDoorbell, Node};
use crate::task::{self, Events, Pid};
use crate::user;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use shm_ext::ShmError;
use shm_ext::lock::{Caller, LockWait, TryLock};
use shm_ext::platform::vector;
use shm_ext::pool::{PoolId, RegionHandle};
use shmos_abi::{
    Error, LockMapping, MAP_FLAGS, MAP_WRITABLE, MAX_LOCKS, MAX_MESSAGE, MAX_NAME, PoolStat,
    RecvInfo, SIGNALS,
};

/// What a process holds in the extension layer, released when it ends.
/// Mappings go with its address space; locks it still holds are freed here
/// so that other processes and nodes are not blocked by a dead process.
#[derive(Debug, Default)]
pub struct ProcessShm {
    /// Whether it ever took a global lock.
    used_locks: bool,
    /// Its region mappings: (user address, region handle).
    maps: Vec<(u64, u64)>,
    /// Its message buffer, kept between calls: allocating and zeroing
    /// `MAX_MESSAGE` bytes per receive made every poll cost a 64 KiB memset.
    message: Vec<u8>,
}

/// Runs `f` on the calling process's message buffer (`MAX_MESSAGE` bytes).
/// The buffer is taken out of the process for the call, so no lock is held
/// while `f` waits.
fn with_message_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    let current = task::current();
    let mut buf = core::mem::take(&mut current.shm.lock().message);
    buf.resize(MAX_MESSAGE, 0);
    let result = f(&mut buf);
    current.shm.lock().message = buf;
    result
}

/// How many mappings of each region (by handle) processes on this node hold:
/// `shm_free` of a region mapped here is refused (`Busy`), so that no app is
/// left writing into memory that another allocation reuses.
static MAPPED: crate::sync::IrqMutex<alloc::collections::BTreeMap<u64, u32>> =
    crate::sync::IrqMutex::new(alloc::collections::BTreeMap::new());

fn unmapped(handle: u64) {
    let mut mapped = MAPPED.lock();
    if let Some(n) = mapped.get_mut(&handle) {
        *n -= 1;
        if *n == 0 {
            mapped.remove(&handle);
        }
    }
}

impl ProcessShm {
    /// Gives back everything process `pid` holds; runs once, when it exits
    /// or is killed, before its address space is freed.
    pub fn release(&mut self, pid: Pid) {
        for (_, handle) in self.maps.drain(..) {
            unmapped(handle);
        }
        if !self.used_locks {
            return;
        }
        if let Some(node) = super::basic::cluster()
            && let Ok(me) = node.caller(pid as u64)
            && let Ok(freed) = node.shm().lock_release_owner(&IvshmemDoorbell, me)
            && freed > 0
        {
            crate::kprintln!(
                "node {}: released {freed} lock(s) held by exited pid {pid}",
                node.id
            );
        }
    }
}

fn node() -> Result<&'static Node, Error> {
    super::basic::cluster().ok_or(Error::NoDevice)
}

fn me(node: &Node) -> Result<Caller, Error> {
    node.caller(task::current().pid as u64).map_err(shm_error)
}

fn name(a: &Args) -> Result<String, Error> {
    user::read_str(a.get(0), a.count(1)?, MAX_NAME)
}

fn pool_id(raw: u64) -> Result<PoolId, Error> {
    PoolId::from_raw(raw).ok_or(Error::NotFound)
}

fn lock_ids(ptr: u64, n: usize) -> Result<Vec<u32>, Error> {
    if n == 0 || n > MAX_LOCKS.min(shm_ext::lock::MAX_LOCKS_PER_CALL) {
        return Err(Error::InvalidArgument);
    }
    user::read_array::<u32>(ptr, n, MAX_LOCKS)
}

fn map_device(offset: u64, len: u64, writable: bool) -> SysResult {
    let dev = crate::drivers::ivshmem::device().ok_or(Error::NoDevice)?;
    // shm-ext checked the range against its area; check it against the BAR too.
    let end = offset.checked_add(len).ok_or(Error::Corrupt)?;
    if end > dev.shared_len || len == 0 {
        return Err(Error::Corrupt);
    }
    let phys = dev.shared_phys + offset;
    match task::current().with_space(|s| s.map_shared(phys, len, writable)) {
        Some(Ok(addr)) => Ok(addr),
        Some(Err(_)) => Err(Error::OutOfMemory),
        None => Err(Error::InvalidArgument),
    }
}

/// `pool_create(name_ptr, name_len, size)` -> pool id.
pub fn pool_create(a: &Args) -> SysResult {
    let (name, size) = (name(a)?, a.get(2));
    let pools = node()?.pools().map_err(shm_error)?;
    Ok(pools.pool_create(&name, size).map_err(shm_error)?.to_raw())
}

/// `pool_open(name_ptr, name_len)` -> pool id.
pub fn pool_open(a: &Args) -> SysResult {
    let name = name(a)?;
    let pools = node()?.pools().map_err(shm_error)?;
    Ok(pools.pool_open(&name).map_err(shm_error)?.to_raw())
}

/// `pool_destroy(pool)`.
pub fn pool_destroy(a: &Args) -> SysResult {
    let pool = pool_id(a.get(0))?;
    node()?
        .pools()
        .and_then(|p| p.pool_destroy(pool))
        .map_err(shm_error)?;
    Ok(0)
}

/// `pool_stat(pool, out_ptr)`: writes a `shmos_abi::PoolStat`.
pub fn pool_stat(a: &Args) -> SysResult {
    let pool = pool_id(a.get(0))?;
    user::check(a.get(1), size_of::<PoolStat>(), true)?;
    let s = node()?
        .pools()
        .and_then(|p| p.pool_stat(pool))
        .map_err(shm_error)?;
    let out = PoolStat {
        size: s.size,
        free: s.free,
        largest_free: s.largest_free,
        regions: s.regions,
    };
    user::write_value(a.get(1), &out)?;
    Ok(0)
}

/// `shm_alloc(pool, len, align)` -> region handle.
pub fn shm_alloc(a: &Args) -> SysResult {
    let pool = pool_id(a.get(0))?;
    let pools = node()?.pools().map_err(shm_error)?;
    Ok(pools
        .shm_alloc(pool, a.get(1), a.get(2))
        .map_err(shm_error)?
        .0)
}

/// `shm_free(handle)`; `Busy` while a process on this node maps it.
pub fn shm_free(a: &Args) -> SysResult {
    let handle = a.get(0);
    if MAPPED.lock().contains_key(&handle) {
        return Err(Error::Busy);
    }
    node()?
        .pools()
        .and_then(|p| p.shm_free(RegionHandle(handle)))
        .map_err(shm_error)?;
    Ok(0)
}

/// `shm_map(handle, flags)` -> user address; writable only for an owner.
pub fn shm_map(a: &Args) -> SysResult {
    let (handle, flags) = (RegionHandle(a.get(0)), a.get(1));
    if flags & !MAP_FLAGS != 0 {
        return Err(Error::InvalidArgument);
    }
    let writable = flags & MAP_WRITABLE != 0;
    let node = node()?;
    let pools = node.pools().map_err(shm_error)?;
    pools
        .may_map(handle, node.id, writable)
        .map_err(shm_error)?;
    let info = pools.region_info(handle).map_err(shm_error)?;
    let addr = map_device(info.offset, info.len, writable)?;
    *MAPPED.lock().entry(handle.0).or_insert(0) += 1;
    task::current().shm.lock().maps.push((addr, handle.0));
    Ok(addr)
}

/// `shm_unmap(addr)`.
pub fn shm_unmap(a: &Args) -> SysResult {
    let addr = a.get(0);
    let me = task::current();
    match me.with_space(|s| s.unmap_shared(addr)) {
        Some(Some(_)) => {
            let mut shm = me.shm.lock();
            if let Some(i) = shm.maps.iter().position(|&(at, _)| at == addr) {
                unmapped(shm.maps.swap_remove(i).1);
            }
            Ok(0)
        }
        _ => Err(Error::NotFound),
    }
}

/// `shm_own(handle, nodes)`.
pub fn shm_own(a: &Args) -> SysResult {
    let node = node()?;
    let pools = node.pools().map_err(shm_error)?;
    pools
        .shm_own(RegionHandle(a.get(0)), node.id, a.get(1))
        .map_err(shm_error)?;
    Ok(0)
}

/// `shm_transfer(handle, from, to)`.
pub fn shm_transfer(a: &Args) -> SysResult {
    let node = node()?;
    let pools = node.pools().map_err(shm_error)?;
    pools
        .shm_transfer(RegionHandle(a.get(0)), node.id, a.get(1), a.get(2))
        .map_err(shm_error)?;
    Ok(0)
}

/// `lock_reserve(n, out_ptr)` -> n.
pub fn lock_reserve(a: &Args) -> SysResult {
    let n = a.count(0)?;
    if n == 0 || n > MAX_LOCKS {
        return Err(Error::InvalidArgument);
    }
    user::check(a.get(1), n * 4, true)?;
    let node = node()?;
    let mut ids = vec![0u32; n];
    node.shm()
        .lock_reserve(me(node)?, &mut ids)
        .map_err(shm_error)?;
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    user::write_bytes(a.get(1), &bytes)?;
    Ok(n as u64)
}

/// `lock_unreserve(ids_ptr, n)`.
pub fn lock_unreserve(a: &Args) -> SysResult {
    let ids = lock_ids(a.get(0), a.count(1)?)?;
    let node = node()?;
    node.shm()
        .lock_unreserve(&IvshmemDoorbell, me(node)?, &ids)
        .map_err(shm_error)?;
    Ok(0)
}

/// `lock_acquire(ids_ptr, n, timeout_ns)`: all of them or none, without
/// deadlock (ascending order, nothing held while waiting).
pub fn lock_acquire(a: &Args) -> SysResult {
    let ids = lock_ids(a.get(0), a.count(1)?)?;
    let node = node()?;
    let caller = me(node)?;
    task::current().shm.lock().used_locks = true;
    let deadline = task::deadline_after(a.get(2));
    let mut result = Ok(0);
    task::wait_event(Events::doorbell_or_tick(vector::LOCK), deadline, || {
        let now = crate::time::now_ns();
        let until = deadline.unwrap_or(u64::MAX);
        match node
            .shm()
            .lock_try_acquire(&IvshmemDoorbell, caller, &ids, now, until)
        {
            Ok(TryLock::Acquired) => true,
            Ok(_) | Err(ShmError::Busy) => false,
            Err(e) => {
                result = Err(shm_error(e));
                true
            }
        }
    })
    .map_err(|task::TimedOut| Error::TimedOut)?;
    result
}

/// `lock_release(ids_ptr, n)`.
pub fn lock_release(a: &Args) -> SysResult {
    let ids = lock_ids(a.get(0), a.count(1)?)?;
    let node = node()?;
    node.shm()
        .lock_release(&IvshmemDoorbell, me(node)?, &ids)
        .map_err(shm_error)?;
    Ok(0)
}

/// `lock_wait(id, observed, timeout_ns)`: the fast path's sleep, as a futex
/// wait: returns at once if the lock word no longer reads `observed`, else
/// sleeps until a lock doorbell or the deadline; the caller then retries.
pub fn lock_wait(a: &Args) -> SysResult {
    let id = u32::try_from(a.get(0)).map_err(|_| Error::NotFound)?;
    let node = node()?;
    task::current().shm.lock().used_locks = true;
    let deadline = task::deadline_after(a.get(2));
    let (mut registered, mut failed) = (false, None);
    // Registering as a waiter happens inside the check, after wait_event has
    // read the doorbell's sequence: a release between the two then ends the
    // sleep instead of being lost.
    let _ = task::wait_event(Events::doorbell_or_tick(vector::LOCK), deadline, || {
        if registered {
            return true; // woken once: the caller retries its acquire
        }
        match node.shm().lock_wait(node.id, id, a.get(1)) {
            Ok(LockWait::Sleep) => {
                registered = true;
                false
            }
            Ok(LockWait::Retry) => true,
            Err(e) => {
                failed = Some(shm_error(e));
                true
            }
        }
    });
    failed.map_or(Ok(0), Err)
}

/// `lock_map(out_ptr)`: maps the lock table writable into the caller and
/// writes a `LockMapping` (where, and the caller's identity in lock words),
/// so that uncontended acquire and release are one CAS in user space.
pub fn lock_map(a: &Args) -> SysResult {
    let out = a.get(0);
    user::check(out, size_of::<LockMapping>(), true)?;
    let node = node()?;
    let caller = me(node)?;
    let area = node.shm().superblock().layout.lock_table;
    task::current().shm.lock().used_locks = true;
    let addr = map_device(area.offset, area.len, true)?;
    let mapping = LockMapping {
        addr,
        len: area.len,
        node: caller.node().into(),
        generation: caller.generation().0,
        process: caller.process().into(),
        reserved: 0,
    };
    user::write_value(out, &mapping)?;
    Ok(0)
}

/// `lock_wake(ids_ptr, n)`: rings the nodes waiting on locks that the user
/// fast path released (the one part of a release that needs the kernel).
pub fn lock_wake(a: &Args) -> SysResult {
    let ids = lock_ids(a.get(0), a.count(1)?)?;
    let node = node()?;
    for id in ids {
        node.shm()
            .lock_wake(&IvshmemDoorbell, id)
            .map_err(shm_error)?;
    }
    Ok(0)
}

fn sig(raw: u64) -> Result<u8, Error> {
    // Signal 63 would set the sign bit of signal_wait's result.
    if raw < SIGNALS - 1 {
        Ok(raw as u8)
    } else {
        Err(Error::InvalidArgument)
    }
}

/// `signal(node, sig)`.
pub fn signal(a: &Args) -> SysResult {
    let (to, s) = (a.node(0)?, sig(a.get(1))?);
    node()?
        .shm()
        .signal(&IvshmemDoorbell, to, s)
        .map_err(shm_error)?;
    Ok(0)
}

/// `signal_all(sig)` -> nodes signalled.
pub fn signal_all(a: &Args) -> SysResult {
    let s = sig(a.get(0))?;
    Ok(node()?
        .shm()
        .signal_all(&IvshmemDoorbell, s)
        .map_err(shm_error)?
        .0)
}

/// `signal_wait(timeout_ns)` -> pending signal bits.
pub fn signal_wait(a: &Args) -> SysResult {
    let node = node()?;
    let deadline = task::deadline_after(a.get(0));
    let mut bits = 0u64;
    task::wait_event(Events::doorbell_or_tick(vector::SIGNAL), deadline, || {
        bits = node.shm().take_signals(node.id).unwrap_or(0);
        bits != 0
    })
    .map_err(|task::TimedOut| Error::TimedOut)?;
    Ok(bits)
}

/// A port number from an app; the kernel's DSM port is not the apps' (an
/// app taking its messages would stall every node's page faults).
fn port(raw: u64) -> Result<u32, Error> {
    match u32::try_from(raw) {
        Ok(shm_ext::dsm::DSM_PORT) => Err(Error::PermissionDenied),
        Ok(p) => Ok(p),
        Err(_) => Err(Error::InvalidArgument),
    }
}

/// Copies the caller's message at `ptr` into `buf`; returns its bytes.
fn message(ptr: u64, len: usize, buf: &mut [u8]) -> Result<&[u8], Error> {
    let buf = buf.get_mut(..len).ok_or(Error::TooLarge)?;
    user::copy_from_user(ptr, buf)?;
    Ok(buf)
}

/// `msg_send(node, port, ptr, len)`: reserve, copy and signal in one call;
/// a full queue is `WouldBlock` (back-pressure), never a silent loss.
pub fn msg_send(a: &Args) -> SysResult {
    let (to, port) = (a.node(0)?, port(a.get(1))?);
    let node = node()?;
    let me = me(node)?;
    with_message_buffer(|buf| {
        let bytes = message(a.get(2), a.count(3)?, buf)?;
        node.shm()
            .msg_send(&IvshmemDoorbell, me, to, port, bytes)
            .map_err(shm_error)?;
        Ok(0)
    })
}

/// `msg_send_all(port, ptr, len)` -> nodes sent to (all or none).
pub fn msg_send_all(a: &Args) -> SysResult {
    let port = port(a.get(0))?;
    let node = node()?;
    let me = me(node)?;
    with_message_buffer(|buf| {
        let bytes = message(a.get(1), a.count(2)?, buf)?;
        let sent = node.shm().msg_send_all(&IvshmemDoorbell, me, port, bytes);
        Ok(sent.map_err(shm_error)?.0)
    })
}

/// `msg_recv(port, buf_ptr, buf_len, timeout_ns)` -> `RecvInfo` packed.
pub fn msg_recv(a: &Args) -> SysResult {
    let port = port(a.get(0))?;
    let (buf, cap) = (a.get(1), a.count(2)?.min(MAX_MESSAGE));
    user::check(buf, cap, true)?;
    let node = node()?;
    let caller = me(node)?;
    let deadline = task::deadline_after(a.get(3));
    with_message_buffer(|data| {
        let mut got = Err(Error::WouldBlock);
        task::wait_event(
            Events::doorbell_or_tick(vector::MESSAGE),
            deadline,
            || match node.shm().msg_recv(&IvshmemDoorbell, caller, port, data) {
                Ok(r) => {
                    got = Ok(r);
                    true
                }
                Err(ShmError::NoMessage | ShmError::Busy) => false,
                Err(e) => {
                    got = Err(shm_error(e));
                    true
                }
            },
        )
        .map_err(|task::TimedOut| Error::TimedOut)?;
        let r = got?;
        user::write_bytes(buf, &data[..r.len.min(cap)])?;
        Ok(RecvInfo {
            len: r.len as u32,
            sender: r.from.node(),
        }
        .pack())
    })
}

/// Damage reports printed so far (bounded: a storm of calls on one damaged
/// object must not flood the console).
static DAMAGE_REPORTS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
const MAX_DAMAGE_REPORTS: u32 = 8;

/// The ABI error for an extension-layer error. Damage found in the shared
/// memory is also reported on the console (the first few times).
pub fn shm_error(e: ShmError) -> Error {
    if matches!(
        e,
        ShmError::Corrupt { .. } | ShmError::OutOfBounds | ShmError::Misaligned
    ) && DAMAGE_REPORTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) < MAX_DAMAGE_REPORTS
    {
        crate::kprintln!("shared memory damaged: {e}; the object is refused");
    }
    match e {
        ShmError::InvalidArgument { .. } => Error::InvalidArgument,
        // Offsets come from the shared memory: out of range means damaged.
        ShmError::OutOfBounds | ShmError::Misaligned => Error::Corrupt,
        ShmError::BadMagic | ShmError::UnsupportedVersion { .. } | ShmError::Corrupt { .. } => {
            Error::Corrupt
        }
        ShmError::NotInitialized | ShmError::TooSmall | ShmError::NoDoorbell => Error::NoDevice,
        ShmError::NoSuchNode | ShmError::NoSuchPool | ShmError::NoSuchLock => Error::NotFound,
        ShmError::NodeTableFull | ShmError::OutOfMemory => Error::OutOfMemory,
        ShmError::StaleGeneration | ShmError::NodeDead | ShmError::NoSuchRegion => Error::Stale,
        ShmError::NotLive => Error::NotLive,
        ShmError::Busy => Error::Busy,
        ShmError::PoolExists => Error::AlreadyExists,
        ShmError::NotOwner | ShmError::NotReserved | ShmError::NotHolder => Error::PermissionDenied,
        ShmError::TimedOut => Error::TimedOut,
        ShmError::QueueFull | ShmError::NoMessage => Error::WouldBlock,
        ShmError::TooLarge => Error::TooLarge,
        // A variant added to shm-ext later: named here when it is wired.
        #[allow(unreachable_patterns)]
        _ => Error::Corrupt,
    }
}
