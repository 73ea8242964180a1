//! Helpers shared by the pool tests.
#![allow(dead_code)]

use shm_ext::{
    Generation, InitParams, LivenessMonitor, NodeFacts, NodeState, PoolId, PoolStat, Pools, Region,
    RegionHandle, Shm, ShmError,
};

/// A short heartbeat timeout for tests, in ns.
pub const TIMEOUT_NS: u64 = 100_000_000;

/// Parameters with the test timeout.
pub fn params() -> InitParams {
    InitParams {
        heartbeat_timeout_ns: TIMEOUT_NS,
        ..InitParams::default()
    }
}

/// Facts with the given label.
pub fn facts(label: &str) -> NodeFacts<'_> {
    NodeFacts {
        doorbell_peer: None,
        memory_mib: 256,
        app_count: 1,
        label,
    }
}

/// Attaches (initialising a blank region) with a clock that never moves.
pub fn attach(region: Region<'_>) -> Shm<'_> {
    Shm::attach(region, &params(), || 0, 1).unwrap()
}

/// Joins `node` and attaches its pool access.
pub fn join<'a>(shm: &Shm<'a>, node: u16) -> Pools<'a> {
    let g = shm.join(node, &facts("pool test")).unwrap();
    Pools::attach(shm, node, g).unwrap()
}

/// Declares `dead` dead with a fake clock: every node in `alive` beats
/// between two observations, `dead` does not.
pub fn declare_dead(shm: &Shm<'_>, dead: u16, alive: &[&Pools<'_>]) {
    let mut mon = LivenessMonitor::new(None);
    mon.observe(shm, 0);
    for p in alive {
        shm.heartbeat(p.node(), p.generation()).unwrap();
    }
    mon.observe(shm, TIMEOUT_NS + 1);
    assert_eq!(shm.node(dead).unwrap().state, NodeState::Dead);
}

/// Generation of `node` as the node table has it.
pub fn generation_of(shm: &Shm<'_>, node: u16) -> Generation {
    shm.node(node).unwrap().generation
}

/// True if the error is one of the named codes, with a message.
pub fn is_named(e: &ShmError) -> bool {
    (1..=27).contains(&e.code()) && !e.to_string().is_empty() && !e.name().is_empty()
}

/// Checks every structural promise about pool `pool` using only public
/// calls: regions (as the snapshot lists them) lie inside the pool's data
/// area, do not overlap, and with the free bytes add up to the pool size.
/// Returns the stat and the regions (handle, offset, reserved).
pub fn check_pool(
    shm: &Shm<'_>,
    p: &Pools<'_>,
    pool: PoolId,
) -> (PoolStat, Vec<(RegionHandle, u64, u64)>) {
    let stat = p.pool_stat(pool).unwrap();
    let snap = shm.snapshot();
    assert!(
        snap.pools.regions_total as usize == snap.pools.regions().len(),
        "too many regions for the report"
    );
    let mut regions: Vec<(RegionHandle, u64, u64)> = snap
        .pools
        .regions()
        .iter()
        .filter(|r| r.pool == pool.index)
        .map(|r| (r.handle, r.offset, r.reserved))
        .collect();
    regions.sort_by_key(|r| r.1);
    let (lo, hi) = (stat.data_offset, stat.data_offset + stat.size);
    let mut reserved = 0;
    let mut prev_end = lo;
    for &(h, off, res) in &regions {
        assert!(
            off >= prev_end,
            "region {h} at {off:#x} overlaps one ending at {prev_end:#x}"
        );
        assert!(off % 64 == 0 && res % 64 == 0 && res > 0);
        prev_end = off + res;
        assert!(prev_end <= hi, "region {h} ends past the pool");
        reserved += res;
    }
    assert_eq!(
        stat.free + reserved,
        stat.size,
        "free + reserved != size: {stat:?}"
    );
    assert_eq!(stat.regions, regions.len() as u64);
    assert!(stat.largest_free <= stat.free);
    if regions.is_empty() {
        assert_eq!(
            stat.largest_free, stat.size,
            "an empty pool is one free block"
        );
        assert_eq!(stat.slots_used, 1);
    }
    (stat, regions)
}
