//! Calls 40-44: the distributed shared virtual memory (see `crate::dsm`).
//!
//! Global addresses come in as two u64 halves (low, high) and go out
//! through a 16-byte little-endian out pointer. Every directory access
//! runs under the cluster-wide directory lock, so no walk sees a tree that
//! another node is half-way through changing.

use super::{Args, SysResult};
use crate::dsm::directory::{self as kdir, KernelDirectory};
use crate::dsm::{self, Mapping};
use crate::task;
use crate::user;
use shm_ext::dsm::Rights;
use shm_ext::dsm::directory;
use shm_ext::dsm::{DsmError, GlobalAddr, GlobalRange};
use shmos_abi::{DsmInfo, DsmStat, Error, MAP_FLAGS, MAP_WRITABLE};

/// Damage reports printed so far (bounded, as for the extension layer).
static DAMAGE_REPORTS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The ABI error for a DSM error; a damaged directory page or message is
/// also reported on the console (the first few times).
pub fn dsm_error(e: DsmError) -> Error {
    if matches!(
        e,
        DsmError::CorruptDirectory { .. } | DsmError::BadMessage { .. }
    ) && DAMAGE_REPORTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) < 8
    {
        crate::kprintln!("DSM directory damaged: {e}; the page is refused");
    }
    match e {
        DsmError::NotAllocated | DsmError::Unowned | DsmError::NoSuchNode => Error::NotFound,
        DsmError::Unaligned | DsmError::OutOfRange => Error::InvalidArgument,
        DsmError::CorruptDirectory { .. }
        | DsmError::BadMessage { .. }
        | DsmError::Unexpected { .. } => Error::Corrupt,
        DsmError::Overlap => Error::AlreadyExists,
        DsmError::Exhausted => Error::OutOfMemory,
        DsmError::NoAccess => Error::PermissionDenied,
        DsmError::Busy => Error::Busy,
        DsmError::NoDisk => Error::NoDevice,
        DsmError::DiskFailed => Error::Io,
    }
}

fn gaddr(a: &Args, lo: usize) -> GlobalAddr {
    GlobalAddr(u128::from(a.get(lo)) | u128::from(a.get(lo + 1)) << 64)
}

fn ready() -> Result<(), Error> {
    dsm::with(|_| ()).ok_or(Error::NoDevice)
}

/// `dsm_alloc(len, out_ptr)`: a fresh range of the data space, linked into
/// the directory with this node as its responsible node.
pub fn dsm_alloc(a: &Args) -> SysResult {
    let len = a.get(0);
    user::check(a.get(1), 16, true)?;
    ready()?;
    if len == 0 || !len.is_multiple_of(dsm::PAGE) {
        return Err(Error::InvalidArgument);
    }
    let _guard = kdir::lock().map_err(dsm_error)?;
    dsm::exchange_free_space();
    let (range, me, replicas) = dsm::with(|d| {
        let range = d.data.allocate(u128::from(len))?;
        Ok((range, d.node.id, d.engine.choose_replicas(len / dsm::PAGE)))
    })
    .ok_or(Error::NoDevice)?
    .map_err(dsm_error)?;
    directory::insert_placed(&mut KernelDirectory, range, me, replicas).map_err(dsm_error)?;
    dsm::with(|d| {
        d.engine.create_range(range)?;
        d.engine.place_range(range, replicas)
    })
    .ok_or(Error::NoDevice)?
    .map_err(dsm_error)?;
    drop(_guard);
    user::write_bytes(a.get(1), &range.start().0.to_le_bytes())?;
    Ok(0)
}

/// `dsm_map(gaddr_lo, gaddr_hi, len, flags)` -> user address: the pages
/// `[gaddr, gaddr+len)` of one allocated range, faulted in on access.
pub fn dsm_map(a: &Args) -> SysResult {
    let (start, len, flags) = (gaddr(a, 0), a.get(2), a.get(3));
    if flags & !MAP_FLAGS != 0 {
        return Err(Error::InvalidArgument);
    }
    ready()?;
    let want = GlobalRange::new(start, u128::from(len)).map_err(dsm_error)?;
    if start.in_directory_space() {
        // Directory pages are the kernel's: nobody maps them.
        return Err(Error::NotFound);
    }
    let (range, responsible, replicas) = {
        let _guard = kdir::lock().map_err(dsm_error)?;
        directory::resolve(&mut KernelDirectory, start).map_err(dsm_error)?
    };
    if want.last() > range.last() {
        return Err(Error::NotFound);
    }
    dsm::with(|d| {
        d.engine.map_range(range, responsible)?;
        d.engine.place_range(range, replicas)
    })
        .ok_or(Error::NoDevice)?
        .map_err(dsm_error)?;
    let me = task::current();
    let va = me
        .with_space(|s| s.reserve(len, dsm::PAGE))
        .ok_or(Error::InvalidArgument)?
        .ok_or(Error::OutOfMemory)?;
    dsm::with(|d| {
        d.maps.push(Mapping {
            pid: me.pid,
            va,
            len,
            start,
            writable: flags & MAP_WRITABLE != 0,
        })
    });
    Ok(va)
}

/// `dsm_unmap(addr)`: undoes a `dsm_map` at `addr`.
pub fn dsm_unmap(a: &Args) -> SysResult {
    let va = a.get(0);
    let me = task::current();
    let m = dsm::with(|d| {
        let i = d.maps.iter().position(|m| m.pid == me.pid && m.va == va)?;
        Some(d.maps.swap_remove(i))
    })
    .flatten()
    .ok_or(Error::NotFound)?;
    // The window maps only DSM frames, which the space does not own.
    me.with_space(|s| {
        let _ = s.unmap(m.va, m.len);
        s.release(m.va);
    });
    Ok(0)
}

/// `dsm_free(gaddr_lo, gaddr_hi, len)`: unlinks the whole range from the
/// directory and drops every copy; only on its responsible node.
pub fn dsm_free(a: &Args) -> SysResult {
    let (start, len) = (gaddr(a, 0), a.get(2));
    ready()?;
    let range = GlobalRange::new(start, u128::from(len)).map_err(dsm_error)?;
    if start.in_directory_space() {
        return Err(Error::NotFound);
    }
    {
        let _guard = kdir::lock().map_err(dsm_error)?;
        let e = directory::lookup(&mut KernelDirectory, start).map_err(dsm_error)?;
        if e.range().map_err(dsm_error)? != range {
            return Err(Error::InvalidArgument);
        }
        let me = dsm::with(|d| d.node.id).ok_or(Error::NoDevice)?;
        if e.responsible != me {
            return Err(Error::PermissionDenied);
        }
        directory::remove(&mut KernelDirectory, range).map_err(dsm_error)?;
    }
    // Transactions under way finish first; later requests are refused.
    let mut result = Ok(());
    let _ = task::wait_event(dsm::wait_events(), None, || {
        dsm::pump();
        let r = dsm::with(|d| {
            let mut out = alloc::vec::Vec::new();
            let r = d.engine.free_range(range, &mut out);
            d.apply(out);
            r
        });
        match r {
            Some(Err(DsmError::Busy)) => false,
            Some(r) => {
                result = r.map_err(dsm_error);
                true
            }
            None => {
                result = Err(Error::NoDevice);
                true
            }
        }
    });
    result.map(|()| 0)
}

/// How long a sync may take before it fails `Busy` (a node that stops
/// answering does not hang the caller forever).
const SYNC_TIMEOUT_NS: u64 = 600_000_000_000;

/// `dsm_sync(gaddr_lo, gaddr_hi, len)`: returns once every node's writes to
/// the pages of one range, and the directory pages, are on their disks.
pub fn dsm_sync(a: &Args) -> SysResult {
    let (start, len) = (gaddr(a, 0), a.get(2));
    ready()?;
    let want = GlobalRange::new(start, u128::from(len)).map_err(dsm_error)?;
    if start.in_directory_space() {
        return Err(Error::NotFound);
    }
    let (range, ..) = {
        let _guard = kdir::lock().map_err(dsm_error)?;
        directory::resolve(&mut KernelDirectory, start).map_err(dsm_error)?
    };
    if want.last() > range.last() {
        return Err(Error::NotFound);
    }
    let id = dsm::with(|d| {
        let mut out = alloc::vec::Vec::new();
        let id = d.engine.sync(want, &mut out);
        d.apply(out);
        id
    })
    .ok_or(Error::NoDevice)?
    .map_err(dsm_error)?;
    let mut result = Err(Error::Busy);
    let deadline = crate::time::now_ns().saturating_add(SYNC_TIMEOUT_NS);
    let _ = task::wait_event(dsm::wait_events(), Some(deadline), || {
        dsm::pump();
        match dsm::with(|d| d.take_synced(id)).flatten() {
            Some(r) => {
                result = r.map_err(dsm_error);
                true
            }
            None => false,
        }
    });
    result.map(|()| 0)
}

/// `dsm_info(out_ptr)`: this node's paging, disk and migration counters.
pub fn dsm_info(a: &Args) -> SysResult {
    user::check(a.get(0), size_of::<DsmInfo>(), true)?;
    let info = dsm::with(|d| {
        let s = d.engine.stats();
        let disk = d.engine.disk();
        DsmInfo {
            page_outs: s.page_outs,
            page_ins: s.page_ins,
            dropped_copies: s.dropped_copies,
            write_backs: s.write_backs,
            stored: s.stored,
            migrations: s.migrations,
            disk_errors: s.disk_errors,
            cached_pages: d.engine.cache().len() as u64,
            ram_pages: d.engine.policy().ram_pages as u64,
            disk_pages: disk.map_or(0, |k| k.stored()),
            disk_free: disk.map_or(0, |k| k.free_pages()),
            has_disk: u64::from(disk.is_some()),
            live: d.engine.live().0,
        }
    })
    .ok_or(Error::NoDevice)?;
    user::write_value(a.get(0), &info)?;
    Ok(0)
}

fn halves(g: GlobalAddr) -> [u64; 2] {
    [g.0 as u64, (g.0 >> 64) as u64]
}

/// FNV-1a 64 over a directory entry's fields.
fn entry_sum(e: &directory::DirEntry) -> u64 {
    let mut bytes = [0u8; 50];
    bytes[..16].copy_from_slice(&e.first.0.to_le_bytes());
    bytes[16..32].copy_from_slice(&e.last.0.to_le_bytes());
    bytes[32..48].copy_from_slice(&e.child.0.to_le_bytes());
    bytes[48..].copy_from_slice(&e.responsible.to_le_bytes());
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `dsm_stat(gaddr_lo, gaddr_hi, out_ptr)`: writes a `DsmStat` for the
/// page holding `gaddr` (for tests and inspection).
pub fn dsm_stat(a: &Args) -> SysResult {
    let addr = gaddr(a, 0);
    user::check(a.get(2), size_of::<DsmStat>(), true)?;
    ready()?;
    if addr.in_directory_space() {
        return Err(Error::NotFound);
    }
    let e = {
        let _guard = kdir::lock().map_err(dsm_error)?;
        directory::lookup(&mut KernelDirectory, addr).map_err(dsm_error)?
    };
    let page = addr.page();
    // Messages already in this node's queue (a confirm that ends a
    // transaction another node saw finish) count before the state is read.
    dsm::pump();
    let mut out = DsmStat {
        first: halves(e.first),
        last: halves(e.last),
        responsible: u64::from(e.responsible),
        entry_sum: entry_sum(&e),
        managed_owner: u64::MAX,
        ..DsmStat::default()
    };
    dsm::with(|d| {
        if let Some(c) = d.engine.cache().get(page) {
            out.rights = match c.rights {
                Rights::None => 0,
                Rights::Read => 1,
                Rights::Write => 2,
            };
            out.owner = u64::from(c.owner);
            out.version = c.version;
        }
        if let Some(s) = d.engine.page_state(page) {
            out.managed_owner = s.owner.map_or(u64::MAX, u64::from);
            out.managed_copyset = s.copyset.0;
            out.managed_version = s.version;
        }
    });
    user::write_value(a.get(2), &out)?;
    Ok(0)
}

crate::kernel_test!(
    fn syscall_dsm_errors_map_to_named_abi_errors() {
        assert_eq!(dsm_error(DsmError::NotAllocated), Error::NotFound);
        assert_eq!(dsm_error(DsmError::Unaligned), Error::InvalidArgument);
        assert_eq!(dsm_error(DsmError::Unowned), Error::NotFound);
        assert_eq!(
            dsm_error(DsmError::CorruptDirectory { what: "t" }),
            Error::Corrupt
        );
        assert_eq!(dsm_error(DsmError::Busy), Error::Busy);
        // Without a cluster (the test VM) every DSM call is refused by name.
        let a = Args([4096, 0x1000, 4096, 1, 0, 0]);
        for call in [dsm_alloc, dsm_map, dsm_unmap, dsm_free, dsm_stat] {
            assert!(call(&a).is_err());
        }
    }
);
