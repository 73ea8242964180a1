//! Page faults on DSM pages: from user mode (a load or store in a
//! `dsm_map` window) and from the kernel itself (directory pages).

use super::{pump, wait_events, with};
use crate::task;
use shm_ext::dsm::{Access, DsmError, Event, GlobalAddr};
use x86_64::instructions::interrupts;

/// How long one fault may wait for its page before it fails (a responsible
/// node or owner that died never answers).
const FAULT_TIMEOUT_NS: u64 = 60_000_000_000;

/// Reports a fault on global address `addr` to the engine and blocks until
/// the engine resumes the page (pumping messages meanwhile). `Ok` means
/// "retry the access": it may fault again if the rights moved on since.
/// Never inlined: its callers' frames stay small.
#[inline(never)]
pub fn wait_for(addr: GlobalAddr, access: Access) -> Result<(), DsmError> {
    let page = addr.page();
    // Back-pressure: a node whose sends wait for full queues issues no new
    // faults (each may bring page-outs and replies) until they drain.
    let drain_by = crate::time::now_ns().saturating_add(FAULT_TIMEOUT_NS);
    let _ = task::wait_event(wait_events(), Some(drain_by), || {
        pump();
        with(|d| d.outbox_len() < super::OUTBOX_SOFT_LIMIT).unwrap_or(true)
    });
    let seen = with(|d| {
        let seen = d.resume_count(page);
        d.handle(Event::Fault { addr, access }).map(|()| seen)
    })
    .ok_or(DsmError::NoSuchNode)??;
    let deadline = crate::time::now_ns().saturating_add(FAULT_TIMEOUT_NS);
    task::wait_event(wait_events(), Some(deadline), || {
        pump();
        with(|d| d.resume_count(page) != seen).unwrap_or(true)
    })
    .map_err(|task::TimedOut| DsmError::Busy)?;
    with(|d| d.last_result(page)).unwrap_or(Err(DsmError::NoSuchNode))
}

/// Handles a user-mode page fault at `va` with error code `error`, with
/// interrupts off (exception entry). True if it was a DSM page and the
/// access may be retried; false if it is not the DSM's (the caller kills
/// the app as for any other fault). A DSM fault that fails kills the app
/// with the DSM error's name.
pub fn user_fault(va: u64, error: u64) -> bool {
    // Instruction fetches from DSM pages are never allowed (NX).
    if error & 16 != 0 {
        return false;
    }
    let pid = task::current().pid;
    let Some((mapping, gaddr)) = with(|d| d.lookup(pid, va)).flatten() else {
        return false;
    };
    let write = error & 2 != 0;
    if write && !mapping.writable {
        return false;
    }
    let access = if write { Access::Write } else { Access::Read };
    interrupts::enable();
    let r = wait_for(gaddr, access);
    interrupts::disable();
    match r {
        Ok(()) => true,
        Err(e) => task::kill_current(&format_args!(
            "DSM {} fault at {va:#x} ({gaddr}) failed: {} ({e})",
            if write { "write" } else { "read" },
            e.name()
        )),
    }
}
