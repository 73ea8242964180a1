//! Calls 0-8: process and node basics.
//!
//! The node these calls describe is set once by [`set_node`] before apps
//! start: its id (from `node=`) and, when the node joined a cluster, the
//! cluster membership (`nodes`, `barrier` use the node table; without one,
//! this node is alone).

use super::{Args, SysResult};
use crate::cluster::Node;
use crate::task::{self, Events};
use crate::user;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use shmos_abi::{Error, MAX_ARGS, MAX_WRITE};

static NODE_ID: AtomicU32 = AtomicU32::new(0);
static CLUSTER: spin::Once<&'static Node> = spin::Once::new();
/// Barriers entered on this node so far.
static BARRIERS: AtomicU64 = AtomicU64::new(0);
/// Bytes of an app's output written to the console per lock hold (the port
/// is slow, and interrupts wait while it is held).
const WRITE_CHUNK: usize = 128;

/// Sets what `node_id`, `nodes` and `barrier` report: this node's id and the
/// cluster node, if it joined one.
pub fn set_node(id: u32, cluster: Option<&'static Node>) {
    NODE_ID.store(id, Ordering::Relaxed);
    if let Some(node) = cluster {
        CLUSTER.call_once(|| node);
    }
}

/// The cluster node, if this node joined one.
pub fn cluster() -> Option<&'static Node> {
    CLUSTER.get().copied()
}

/// `write(ptr, len)`: the bytes go to the console as they are (invalid
/// UTF-8 shows as U+FFFD).
pub fn write(a: &Args) -> SysResult {
    let (ptr, len) = (a.get(0), a.count(1)?);
    if len > MAX_WRITE {
        return Err(Error::TooLarge);
    }
    let bytes = user::read_bytes(ptr, len)?;
    for chunk in bytes.utf8_chunks() {
        let mut text = chunk.valid();
        while !text.is_empty() {
            // Whole characters only: a UTF-8 character is at most 4 bytes.
            let mut end = text.len().min(WRITE_CHUNK);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            crate::console::print_str(&text[..end]);
            text = &text[end..];
        }
        if !chunk.invalid().is_empty() {
            crate::console::print_str("\u{fffd}");
        }
    }
    Ok(len as u64)
}

/// `yield()`.
pub fn yield_now(_: &Args) -> SysResult {
    task::yield_now();
    Ok(0)
}

/// `sleep(ns)`.
pub fn sleep(a: &Args) -> SysResult {
    task::sleep_ns(a.get(0));
    Ok(0)
}

/// `clock()`: nanoseconds since boot.
pub fn clock(_: &Args) -> SysResult {
    Ok(crate::time::now_ns())
}

/// `node_id()`.
pub fn node_id(_: &Args) -> SysResult {
    Ok(NODE_ID.load(Ordering::Relaxed) as u64)
}

/// `nodes()`: live nodes as a bitmap (just this node without a cluster).
pub fn nodes(_: &Args) -> SysResult {
    Ok(match cluster() {
        Some(node) => node
            .live()
            .iter()
            .filter(|&n| n < 64)
            .fold(0u64, |bits, n| bits | 1 << n),
        None => 1u64 << (NODE_ID.load(Ordering::Relaxed) % 64),
    })
}

/// `barrier()`: the k-th barrier on this node publishes k as the node's
/// progress in the node table and waits until every live node published at
/// least k. Without a cluster it returns at once.
pub fn barrier(_: &Args) -> SysResult {
    // The node table's progress word is the only shared state this needs;
    // the extension layer may replace it with a dedicated barrier area.
    let Some(node) = cluster() else {
        return Ok(0);
    };
    // Barrier n publishes READY_PROGRESS + n, so the readiness mark of
    // cluster.wait_live never passes as an app's first barrier.
    let k =
        BARRIERS.fetch_add(1, Ordering::Relaxed) + 1 + u64::from(crate::cluster::READY_PROGRESS);
    let k = u32::try_from(k).map_err(|_| Error::TooLarge)?;
    node.shm()
        .set_progress(node.id, node.generation(), k)
        .map_err(|_| Error::NotLive)?;
    let reached = || {
        node.live()
            .iter()
            .all(|n| node.shm().progress(n).unwrap_or(0) >= k)
    };
    // Progress words raise no interrupt: poll them on the tick.
    let _ = task::wait_event(Events::TICK, None, reached);
    Ok(0)
}

/// `args(buf, len)`: copies the argument string (at most `len` bytes) and
/// returns its whole length. The buffer is checked over the bytes the call
/// may write, `min(len, MAX_ARGS)`, whatever the string's length.
pub fn args(a: &Args) -> SysResult {
    let (buf, len) = (a.get(0), a.count(1)?);
    let me = task::current();
    let text = me.args.as_bytes();
    user::check(buf, len.min(MAX_ARGS), true)?;
    let n = text.len().min(len);
    user::write_bytes(buf, &text[..n])?;
    Ok(text.len() as u64)
}
