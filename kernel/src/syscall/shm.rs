//! Calls 10-35: the shared memory extension layer (pools, regions, locks,
//! signals, messages). Not wired yet: each handler returns `Unsupported`.
//!
//! To wire one: take the arguments from `a` (`a.get(i)`, `a.count(i)` for
//! lengths, `a.node(i)` for node ids), bring user data in and out through
//! `crate::user` (`read_str`, `read_array::<u32>`, `write_value`, ...), call
//! shm-ext through `super::basic::cluster()` (`None`: `Error::NoDevice`),
//! and map its errors with [`shm_error`]. To wait, use `task::wait_event`
//! with `Events::doorbell_or_tick(vector)` (doorbell interrupts wake it;
//! ivshmem-plain polls on the tick) or `Events::custom(n)` raised by
//! `task::notify`. To map shared memory into the caller:
//! `task::current().with_space(|s| s.map_shared(phys, len, writable))`, and
//! `unmap_shared(addr)`; remember what the process holds in [`ProcessShm`],
//! whose `release` runs when it ends, however it ends.

use super::{Args, SysResult};
use crate::task::Pid;
use shm_ext::ShmError;
use shmos_abi::Error;

/// What a process holds in the extension layer (mappings, reserved and held
/// locks, open pools), released when it ends.
#[derive(Debug, Default)]
pub struct ProcessShm {}

impl ProcessShm {
    /// Gives back everything process `pid` holds; runs once, when it exits
    /// or is killed, before its address space is freed.
    pub fn release(&mut self, pid: Pid) {
        let _ = pid;
    }
}

/// The ABI error for an extension-layer error.
pub fn shm_error(e: ShmError) -> Error {
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

macro_rules! unwired {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(a: &Args) -> SysResult {
                let _ = a;
                Err(Error::Unsupported)
            }
        )*
    };
}

unwired! {
    /// `pool_create(name_ptr, name_len, size)` -> pool id.
    pool_create;
    /// `pool_open(name_ptr, name_len)` -> pool id.
    pool_open;
    /// `pool_destroy(pool)`.
    pool_destroy;
    /// `pool_stat(pool, out_ptr)`: writes a `shmos_abi::PoolStat`.
    pool_stat;
    /// `shm_alloc(pool, len, align)` -> region handle.
    shm_alloc;
    /// `shm_free(handle)`.
    shm_free;
    /// `shm_map(handle, flags)` -> user address.
    shm_map;
    /// `shm_unmap(addr)`.
    shm_unmap;
    /// `shm_own(handle, nodes)`.
    shm_own;
    /// `shm_transfer(handle, from, to)`.
    shm_transfer;
    /// `lock_reserve(n, out_ptr)` -> n.
    lock_reserve;
    /// `lock_unreserve(ids_ptr, n)`.
    lock_unreserve;
    /// `lock_acquire(ids_ptr, n, timeout_ns)`.
    lock_acquire;
    /// `lock_release(ids_ptr, n)`.
    lock_release;
    /// `lock_wait(id, observed, timeout_ns)` -> the new lock word.
    lock_wait;
    /// `lock_map()` -> user address of the lock table.
    lock_map;
    /// `signal(node, sig)`.
    signal;
    /// `signal_all(sig)` -> nodes signalled.
    signal_all;
    /// `signal_wait(timeout_ns)` -> pending signal bits.
    signal_wait;
    /// `msg_send(node, port, ptr, len)`.
    msg_send;
    /// `msg_send_all(port, ptr, len)` -> nodes sent to.
    msg_send_all;
    /// `msg_recv(port, buf_ptr, buf_len, timeout_ns)` -> `RecvInfo` packed.
    msg_recv;
}
