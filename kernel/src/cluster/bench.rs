//! Doorbell round-trip benchmark between node 0 (pinger) and node 1 (ponger).
//!
//! Two paths are timed in the same kernel: `bare` writes the ivshmem
//! Doorbell register and spins on the interrupt handler's flag (no shmos
//! layer in between: the floor this hardware path allows), `shmos` rings
//! through the node table (`Node::ring`) and waits as a blocked app would
//! (`task::wait_event`: it polls the node table briefly, then halts until
//! the interrupt). The pinger prints one
//! `bench doorbell-rtt ...` line the host tool parses.

use super::Node;
use crate::drivers::ivshmem;
use crate::kprintln;
use crate::time;
use alloc::vec::Vec;

/// Doorbell vector the benchmark uses.
const VECTOR: u16 = 1;
/// Round trips before timing starts.
const WARMUP: usize = 20;

/// Which path to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Raw Doorbell register and a spin on the interrupt flag.
    Bare,
    /// The node table ring and a halting wait.
    Shmos,
}

impl Path {
    /// Parses `bare` or `shmos`.
    pub fn parse(s: &str) -> Option<Path> {
        match s {
            "bare" => Some(Path::Bare),
            "shmos" => Some(Path::Shmos),
            _ => None,
        }
    }
}

fn peer_of(node: &Node, other: u16) -> Option<u16> {
    node.shm().node(other).ok()?.doorbell_peer
}

fn wait_bare() {
    while ivshmem::take_pending() & (1 << VECTOR) == 0 {
        core::hint::spin_loop();
    }
}

fn wait_shmos(node: &Node) {
    // Exactly how a blocked app's system call waits (spin briefly, then halt).
    let _ = crate::task::wait_event(crate::task::Events::doorbell(VECTOR), None, || {
        node.take_doorbells() & (1 << VECTOR) != 0
    });
}

/// Runs `iterations` timed round trips; returns whether it could.
pub fn run(node: &Node, path: Path, iterations: usize) -> bool {
    let (me, other) = (node.id, 1 - node.id.min(1));
    let dev = ivshmem::device().filter(|d| d.has_doorbells());
    let (Some(dev), Some(peer)) = (dev, peer_of(node, other)) else {
        kprintln!("node {me}: FAILED: bench doorbell-rtt needs ivshmem-doorbell on both nodes");
        return false;
    };
    let ring = || match path {
        Path::Bare => dev.ring(peer, VECTOR),
        Path::Shmos => {
            let _ = node.ring(other, VECTOR);
        }
    };
    let wait = || match path {
        Path::Bare => wait_bare(),
        Path::Shmos => wait_shmos(node),
    };
    // No draining of old doorbells here: the pinger may ring before the
    // ponger gets this far, and that first ring must count.
    let total = WARMUP + iterations;
    if me == 1 {
        for _ in 0..total {
            wait();
            ring();
        }
        return true;
    }
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..total {
        let start = time::now_ns();
        ring();
        wait();
        if i >= WARMUP {
            samples.push(time::now_ns() - start);
        }
    }
    samples.sort_unstable();
    let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
    kprintln!(
        "bench doorbell-rtt path={} n={} median_ns={} p10_ns={} p90_ns={}",
        if path == Path::Bare { "bare" } else { "shmos" },
        samples.len(),
        pct(50),
        pct(10),
        pct(90)
    );
    true
}
