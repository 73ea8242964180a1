//! Meets the apps of the other live nodes at a barrier, several times:
//! `barrier` returns only once every live node has reached the same one.
//!
//! Arguments: `[ROUNDS [DELAY_MS]]`, by default `3 0`: sleeps DELAY_MS
//! before the first barrier (so the others visibly wait for this node).
//! Run one instance per node.
#![no_std]
#![no_main]

use shmos_rt::{println, sys};

shmos_rt::entry!(main);

fn main() -> i32 {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let rounds: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(3);
    let delay_ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let node = sys::node_id().unwrap_or(u16::MAX);
    let _ = sys::sleep_ns(delay_ms * 1_000_000);
    for round in 1..=rounds {
        let live = sys::nodes().unwrap_or(0);
        let start = sys::clock_ns().unwrap_or(0);
        if let Err(e) = sys::barrier() {
            println!("barrier: node {node}: barrier {round} failed: {e}");
            return 1;
        }
        let waited = (sys::clock_ns().unwrap_or(0) - start) / 1_000_000;
        println!(
            "barrier: node {node} passed barrier {round}/{rounds} after {waited} ms (live nodes {live:#x})"
        );
    }
    0
}
