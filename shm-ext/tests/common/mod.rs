//! Helpers shared by the integration tests.
#![allow(dead_code)]

use shm_ext::{InitParams, NodeFacts, Region, Shm, ShmError};

/// Region size most tests use.
pub const SIZE: usize = 1 << 20;

/// A short heartbeat timeout for tests, in ns.
pub const TIMEOUT_NS: u64 = 100_000_000;

/// Parameters with the test timeout.
pub fn params() -> InitParams {
    InitParams {
        heartbeat_timeout_ns: TIMEOUT_NS,
        ..InitParams::default()
    }
}

/// Attaches with a clock that never advances past the deadline.
pub fn attach<'a>(region: Region<'a>) -> Result<Shm<'a>, ShmError> {
    Shm::attach(region, &params(), || 0, 1)
}

/// Facts with the given label.
pub fn facts(label: &str) -> NodeFacts<'_> {
    NodeFacts {
        doorbell_peer: Some(7),
        memory_mib: 256,
        app_count: 1,
        label,
    }
}
