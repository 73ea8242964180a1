//! Publishes this node's DSM report on the shared memory device, for the
//! host (`shmos inspect`): the ranges this node is responsible for, the
//! owner and copyset of their pages, its copies of directory pages
//! (format and region protocol: `shm_ext::dsm::report`).
//!
//! [`publish`] is called by the boot task while the apps run, every time
//! it polls liveness (100 ms). It gathers the report under the DSM lock,
//! and writes it into this node's region of the `dsm-report` pool only
//! when the state changed since the last report. The work is bounded (a
//! report fits its 64 KiB region; what does not fit is counted) and
//! rationed: under this host's KVM kernel code runs emulated, so after a
//! publish that took `t` the next waits at least `20 t` (and 150 ms).
//! A node whose DSM never held anything publishes nothing (and so adds no
//! pool to clusters that do not use the DSM).
//!
//! The region is claimed on the first publish and again after a rejoin
//! (new generation); before every write the pool must still list it as
//! this node's, since survivors free the regions of a node they declared
//! dead and another node may be handed the memory.

use shm_ext::dsm::report::{self, MAX_REPORT_LEN, NodeReport};
use shm_ext::pool::RegionInfo;
use shm_ext::{Generation, ShmError};

/// The shortest time between two publishes.
const MIN_INTERVAL_NS: u64 = 150_000_000;
/// The next publish waits at least this many times the last one's cost.
const COST_FACTOR: u64 = 20;
/// How long a publish that failed waits before the next try.
const RETRY_NS: u64 = 2_000_000_000;

/// What this node published, and where.
struct Publisher {
    /// This incarnation's region.
    region: Option<(Generation, RegionInfo)>,
    /// The last report written (its state; sequence and time aside).
    last: Option<NodeReport>,
    /// Reports this incarnation wrote.
    sequence: u64,
    /// When the next publish may run (`time::now_ns`).
    next_ns: u64,
    /// The last failure, logged once until something else happens.
    failed: Option<ShmError>,
}

static PUBLISHER: spin::Mutex<Publisher> = spin::Mutex::new(Publisher {
    region: None,
    last: None,
    sequence: 0,
    next_ns: 0,
    failed: None,
});

/// Publishes this node's DSM report if it is due and the state changed.
/// Cheap when not due; never blocks (the pool calls spin within their
/// budgets and fail with `Busy`, which is retried later).
pub fn publish() {
    let Some(mut p) = PUBLISHER.try_lock() else {
        return;
    };
    let start = crate::time::now_ns();
    if start < p.next_ns {
        return;
    }
    let wait = match p.run(start) {
        Ok(()) => {
            p.failed = None;
            0
        }
        Err(e) => {
            if p.failed != Some(e) {
                log::warn!("dsm: cannot publish this node's DSM report: {e}");
            }
            p.failed = Some(e);
            RETRY_NS
        }
    };
    let end = crate::time::now_ns();
    let cost = end.saturating_sub(start);
    p.next_ns = end.saturating_add(
        MIN_INTERVAL_NS
            .max(cost.saturating_mul(COST_FACTOR))
            .max(wait),
    );
}

impl Publisher {
    fn run(&mut self, now: u64) -> Result<(), ShmError> {
        let Some(node) = super::with(|d| d.node) else {
            return Ok(());
        };
        let generation = node.generation();
        let Some(mut report) =
            super::with(|d| NodeReport::gather(&d.engine, generation.0, MAX_REPORT_LEN))
        else {
            return Ok(());
        };
        if self.region.is_some_and(|(g, _)| g != generation) {
            // Rejoined: the old region is (or will be) freed as a dead
            // incarnation's; start over in a new one.
            self.region = None;
            self.last = None;
            self.sequence = 0;
        }
        match &self.last {
            Some(last) if last.same_state(&report) => return Ok(()),
            None if report.is_empty() => return Ok(()),
            _ => {}
        }
        let pools = node.pools()?;
        let info = match self.region {
            // Still ours? (Survivors free a dead node's regions.)
            Some((_, info)) => match pools.region_info(info.handle) {
                Ok(now) if now.offset == info.offset && now.owners == info.owners => info,
                _ => {
                    self.region = None;
                    return Err(ShmError::NoSuchRegion);
                }
            },
            None => {
                let info = report::claim_region(&pools, node.shm())?;
                self.region = Some((generation, info));
                info
            }
        };
        report.sequence = self.sequence;
        report.time_ns = now;
        let bytes = report.encode()?;
        report::write_region(node.shm().region(), info.offset, info.len, &bytes)?;
        self.sequence += 1;
        self.last = Some(report);
        Ok(())
    }
}
