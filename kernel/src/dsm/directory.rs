//! The directory in the kernel: `DirectoryPages` over DSM pages of the
//! directory space, read and written through this node's engine (a kernel
//! fault, waited for like a user's), and the cluster-wide lock that
//! serialises directory walks and updates.
//!
//! Design: directory pages are ordinary DSM pages (homeless: each one's
//! responsible node is the node whose directory slice holds it; the root,
//! at global address 0, is node 0's). A lookup reads pages with read
//! copies that stay cached until a writer invalidates them. Every
//! directory operation runs under the directory lock: a lock word in the
//! last page of node 0's directory slice ([`LOCK_PAGE`]), taken by
//! write-faulting that page and setting the word while this node is its
//! single writer (the engine lock makes test-and-set atomic: no other node
//! can take the page in between). A lock held by a node that is no longer
//! live is taken over. The root needs no formatting step: a root page
//! nobody wrote yet (all zeros) reads as the empty root.

use super::fault::wait_for;
use super::{Dsm, with};
use crate::task;
use shm_ext::dsm::addr::DIRECTORY_SLICE;
use shm_ext::dsm::directory::{DirectoryPage, DirectoryPages};
use shm_ext::dsm::{Access, DsmError, GlobalAddr, PAGE_SIZE, PageBuf, ROOT_DIRECTORY};

/// The page holding the directory lock word (bytes 0..8: 0 free, else
/// `holder node + 1`).
pub const LOCK_PAGE: GlobalAddr = GlobalAddr(DIRECTORY_SLICE - PAGE_SIZE);
/// Tries of one kernel access before it gives up (each try waits for a
/// fault; another node may take the page away between tries).
const MAX_TRIES: u32 = 1000;
/// How long a node waits between tries of a taken directory lock.
const LOCK_RETRY_NS: u64 = 2_000_000;
/// How long a node tries to take the directory lock.
pub const LOCK_TIMEOUT_NS: u64 = 60_000_000_000;

/// Runs `f` on the DSM state once this node holds `page` with the rights
/// `access` needs, faulting it in (and waiting) as often as needed.
fn access<R>(
    page: GlobalAddr,
    access: Access,
    mut f: impl FnMut(&mut Dsm) -> R,
) -> Result<R, DsmError> {
    for _ in 0..MAX_TRIES {
        let done = with(|d| (d.engine.cache().rights(page) >= access.rights()).then(|| f(d)))
            .ok_or(DsmError::NoSuchNode)?;
        if let Some(r) = done {
            return Ok(r);
        }
        wait_for(page, access)?;
    }
    Err(DsmError::Busy)
}

/// This node's view of the directory pages (see the module docs).
pub struct KernelDirectory;

impl DirectoryPages for KernelDirectory {
    fn load(&mut self, addr: GlobalAddr, out: &mut PageBuf) -> Result<(), DsmError> {
        access(addr, Access::Read, |d| {
            if let Some(p) = d.engine.page(addr) {
                out.0.copy_from_slice(&p.0);
            }
        })?;
        if addr == ROOT_DIRECTORY && out.0.iter().all(|&b| b == 0) {
            *out = DirectoryPage::empty_root().encode();
        }
        Ok(())
    }

    fn store(&mut self, addr: GlobalAddr, page: &PageBuf) -> Result<(), DsmError> {
        access(addr, Access::Write, |d| {
            d.engine
                .page_mut(addr)
                .map(|p| p.0.copy_from_slice(&page.0))
        })?
    }

    fn allocate(&mut self) -> Result<(GlobalAddr, u16), DsmError> {
        with(|d| {
            let r = d.dir.allocate(PAGE_SIZE)?;
            if r.start() == LOCK_PAGE {
                return Err(DsmError::Exhausted);
            }
            Ok((r.start(), d.node.id))
        })
        .ok_or(DsmError::NoSuchNode)?
    }

    fn release(&mut self, _addr: GlobalAddr) -> Result<(), DsmError> {
        // The page keeps its (never reused) address and its owner's frame;
        // reclaiming it needs eviction of owned pages, which the engine
        // does not do yet.
        Ok(())
    }
}

/// The directory lock, held until dropped.
pub struct DirectoryLock(());

impl Drop for DirectoryLock {
    fn drop(&mut self) {
        let r = access(LOCK_PAGE, Access::Write, |d| {
            if let Ok(p) = d.engine.page_mut(LOCK_PAGE) {
                p.0[..8].fill(0);
            }
        });
        if let Err(e) = r {
            log::warn!("dsm: cannot release the directory lock: {e}");
        }
    }
}

/// Takes the cluster-wide directory lock (`Busy` if it stays taken for
/// [`LOCK_TIMEOUT_NS`]).
pub fn lock() -> Result<DirectoryLock, DsmError> {
    let give_up = crate::time::now_ns().saturating_add(LOCK_TIMEOUT_NS);
    loop {
        let got = access(LOCK_PAGE, Access::Write, |d| {
            let me = d.node.id;
            let live = d.node.live();
            let Ok(p) = d.engine.page_mut(LOCK_PAGE) else {
                return false;
            };
            let mut word = [0u8; 8];
            word.copy_from_slice(&p.0[..8]);
            let holder = u64::from_le_bytes(word);
            // A holder that is gone (or a damaged word) cannot release it.
            let stale =
                holder != 0 && u16::try_from(holder - 1).map_or(true, |n| !live.contains(n));
            if holder == 0 || stale {
                p.0[..8].copy_from_slice(&(u64::from(me) + 1).to_le_bytes());
                true
            } else {
                false
            }
        })?;
        if got {
            return Ok(DirectoryLock(()));
        }
        if crate::time::now_ns() >= give_up {
            return Err(DsmError::Busy);
        }
        let until = crate::time::now_ns().saturating_add(LOCK_RETRY_NS);
        let _ = task::wait_event(super::wait_events(), Some(until), || {
            super::pump();
            false
        });
    }
}
