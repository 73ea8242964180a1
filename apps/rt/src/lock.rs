//! Global locks with a fast path in user space, as futexes do: the lock
//! table is mapped into the process, an uncontended acquire or release is
//! one compare-and-swap on the lock word (shm-ext's protocol, no system
//! call), and the kernel is entered only to sleep on a busy lock
//! (`lock_wait`) or to wake the nodes waiting on one just released
//! (`lock_wake`).

use crate::sys;
use shm_ext::lock::{Caller, LockTable, TryLock};
use shm_ext::{Generation, Region, ShmError};
use shmos_abi::{Error, FOREVER};

/// The mapped lock table and who this process is in lock words.
pub struct Locks {
    table: LockTable<'static>,
    caller: Caller,
}

static LOCKS: spin::Once<Result<Locks, Error>> = spin::Once::new();

fn error(e: ShmError) -> Error {
    match e {
        ShmError::NoSuchLock => Error::NotFound,
        ShmError::NotReserved | ShmError::NotHolder => Error::PermissionDenied,
        ShmError::InvalidArgument { .. } => Error::InvalidArgument,
        ShmError::TimedOut => Error::TimedOut,
        ShmError::Busy => Error::Busy,
        _ => Error::Corrupt,
    }
}

impl Locks {
    /// Maps the lock table on first use (one system call per process).
    pub fn get() -> Result<&'static Locks, Error> {
        LOCKS
            .call_once(|| {
                let m = sys::lock_map()?;
                // SAFETY: the kernel mapped `len` bytes at `addr` writable
                // into this process for its whole life; other nodes and
                // processes change them concurrently, which shm-ext allows
                // for by touching the region only through atomics.
                let region = unsafe { Region::new(m.addr as *mut u8, m.len as usize) };
                let table = LockTable::mapped(region).map_err(error)?;
                let caller = Caller::new(m.node as u16, Generation(m.generation), m.process as u16)
                    .map_err(error)?;
                Ok(Locks { table, caller })
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// Takes every lock in `ids` (ascending order, all or none, so several
    /// at once cannot deadlock); sleeps in the kernel only while one is busy.
    pub fn acquire(&self, ids: &[u32], timeout_ns: u64) -> Result<(), Error> {
        // One lock, free: one compare-and-swap and one load, nothing else
        // (the common case the uncontended benchmark measures).
        if let [id] = ids
            && let Ok(TryLock::Acquired) = self.table.try_acquire_fast(*id, self.caller)
        {
            return Ok(());
        }
        let start = if timeout_ns == FOREVER {
            0
        } else {
            sys::clock_ns()?
        };
        loop {
            let (outcome, wake) = self
                .table
                .try_acquire_many_fast(ids, self.caller)
                .map_err(error)?;
            if !wake.as_slice().is_empty() {
                // Locks taken and given back while backing off had waiters.
                sys::lock_wake(wake.as_slice())?;
            }
            let (id, observed) = match outcome {
                TryLock::Acquired => return Ok(()),
                TryLock::WouldBlock { id, observed } => (id, observed),
            };
            let left = match timeout_ns {
                FOREVER => FOREVER,
                t => {
                    let spent = sys::clock_ns()?.saturating_sub(start);
                    if spent >= t {
                        return Err(Error::TimedOut);
                    }
                    t - spent
                }
            };
            sys::lock_wait(id, observed, left)?;
        }
    }

    /// Releases every lock in `ids`; wakes waiters (the only system call).
    pub fn release(&self, ids: &[u32]) -> Result<(), Error> {
        if let [id] = ids {
            return match self.table.release_fast(*id, self.caller).map_err(error)? {
                true => sys::lock_wake(ids),
                false => Ok(()),
            };
        }
        let wake = self
            .table
            .release_many_fast(ids, self.caller)
            .map_err(error)?;
        if !wake.as_slice().is_empty() {
            sys::lock_wake(wake.as_slice())?;
        }
        Ok(())
    }
}
