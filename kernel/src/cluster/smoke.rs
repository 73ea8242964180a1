//! The cluster check run when a node has no app: wait until every node is
//! live, optionally ring a doorbell or wait for one, optionally watch a node
//! die and come back, then agree with the others and power off.
//!
//! Each step prints one line the host's cluster tests look for.

use super::Node;
use crate::cmdline::Args;
use crate::drivers::ivshmem;
use crate::kprintln;
use crate::time;

/// Progress value a node publishes once it has seen every node live.
const SAW_ALL_LIVE: u32 = 1;

/// Polls the node table (and halts between ticks) until `done` holds or
/// `limit_ns` passes; returns whether it held.
fn wait(
    node: &Node,
    limit_ns: Option<u64>,
    mut done: impl FnMut(&Node, super::Events) -> bool,
) -> bool {
    let deadline = limit_ns.map(|l| time::now_ns() + l);
    loop {
        let events = node.poll();
        if done(node, events) {
            return true;
        }
        if deadline.is_some_and(|d| time::now_ns() >= d) {
            return false;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Runs the steps the command line asks for; returns whether all held.
pub fn run(node: &Node, args: &Args) -> bool {
    let id = node.id;
    if let Some(n) = args.cluster_wait_live {
        let limit = args.cluster_live_within_ms.map(|ms| ms * 1_000_000);
        let boot_limit = limit.map(|l| l.saturating_sub(time::now_ns()));
        if !wait(node, boot_limit, |n_, _| n_.live().len() >= n as usize) {
            kprintln!(
                "node {id}: FAILED: only {} of {n} nodes live after {} ms",
                node.live(),
                time::now_ns() / 1_000_000
            );
            return false;
        }
        kprintln!(
            "node {id}: all {n} nodes live: {} ({} ms after boot)",
            node.live(),
            time::now_ns() / 1_000_000
        );
    }
    if let Some((target, vector)) = args.cluster_ring {
        match node.ring(target, vector) {
            Ok(()) => kprintln!("node {id}: rang node {target} on vector {vector}"),
            Err(e) => {
                kprintln!("node {id}: FAILED: ring node {target} vector {vector}: {e}");
                return false;
            }
        }
    }
    if let Some(vector) = args.cluster_expect_ring {
        wait(node, None, |n_, _| n_.take_doorbells() & (1 << vector) != 0);
        // The ring marks the node table before it raises the interrupt, so
        // give a doorbell device a moment to deliver it. It may also have
        // come before this step began: this check rings only once, so any
        // interrupt on the vector since boot is this ring's.
        let has_doorbells = ivshmem::device().is_some_and(|d| d.has_doorbells());
        let limit = if has_doorbells {
            Some(1_000_000_000)
        } else {
            Some(0)
        };
        let interrupted = wait(node, limit, |_, _| ivshmem::interrupts(vector) > 0);
        kprintln!(
            "node {id}: doorbell on vector {vector} ({})",
            if interrupted { "interrupt" } else { "polled" }
        );
    }
    if let Some(watched) = args.cluster_watch_rejoin {
        let before = node
            .shm()
            .node(watched)
            .map(|i| i.generation.0)
            .unwrap_or(0);
        wait(node, None, |_, e| e.died.contains(watched));
        kprintln!("node {id}: saw node {watched} die");
        wait(node, None, |_, e| e.joined.contains(watched));
        let after = node
            .shm()
            .node(watched)
            .map(|i| i.generation.0)
            .unwrap_or(0);
        kprintln!("node {id}: saw node {watched} rejoin with generation {after} (was {before})");
        if after <= before {
            kprintln!("node {id}: FAILED: generation did not grow");
            return false;
        }
    }
    if let Some(path) = args.bench_doorbell
        && !super::bench::run(node, path, args.bench_iterations.max(1))
    {
        return false;
    }
    if args.cluster_stay {
        kprintln!("node {id}: staying up (cluster.stay)");
        wait(node, None, |_, _| false);
    }
    // Agree before leaving: a node that left could otherwise vanish before a
    // slower one has seen it live.
    if let Err(e) = node.shm().set_progress(id, node.generation(), SAW_ALL_LIVE) {
        kprintln!("node {id}: FAILED: publish progress: {e}");
        return false;
    }
    wait(node, None, |n_, _| {
        n_.live()
            .iter()
            .all(|other| n_.shm().progress(other).unwrap_or(0) >= SAW_ALL_LIVE)
    });
    kprintln!("node {id}: every live node agrees; leaving");
    node.leave();
    true
}
