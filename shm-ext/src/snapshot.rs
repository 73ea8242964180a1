//! `Snapshot`: the superblock and node table as plain values, for the host
//! inspector (`shmos inspect`) and for logs.

use core::fmt;

use crate::error::ShmError;
use crate::format::{Area, MAX_NODES, NodeInfo, NodeState, Superblock};
use crate::region::Region;
use crate::shm::Shm;

/// One node-table entry as read: its validated contents, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct NodeReport {
    /// Node id (index in the table).
    pub id: u16,
    /// The validated entry, when it validated.
    pub info: Option<NodeInfo>,
    /// Why the entry did not validate.
    pub error: Option<ShmError>,
}

/// The node table entries of a snapshot (fixed capacity, no allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeReports {
    entries: [NodeReport; MAX_NODES],
    len: usize,
}

impl NodeReports {
    /// The entries, one per node-table slot.
    pub fn as_slice(&self) -> &[NodeReport] {
        self.entries.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for NodeReports {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

/// The superblock and every node-table entry, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Snapshot {
    /// The validated superblock.
    pub superblock: Superblock,
    /// One report per node-table entry.
    pub nodes: NodeReports,
    /// Reserved, held or waited-for global locks.
    pub locks: crate::lock::LockReports,
    /// Every node's message queue.
    pub queues: crate::message::QueueReports,
    /// The pool directory and the allocated regions.
    pub pools: crate::pool::PoolsReport,
}

impl Snapshot {
    /// Validates the superblock of `region` (never initialises) and reads it.
    pub fn read(region: Region<'_>) -> Result<Self, ShmError> {
        Ok(Shm::open(region)?.snapshot())
    }
}

impl Shm<'_> {
    /// Reads the superblock and every node-table entry into a `Snapshot`.
    pub fn snapshot(&self) -> Snapshot {
        let entries = core::array::from_fn(|i| {
            let id = i as u16;
            let (info, error) = match self.node(id) {
                Ok(info) => (Some(info), None),
                Err(e) => (None, Some(e)),
            };
            NodeReport { id, info, error }
        });
        Snapshot {
            superblock: *self.superblock(),
            nodes: NodeReports {
                entries,
                len: usize::from(self.max_nodes()).min(MAX_NODES),
            },
            locks: self.lock_reports(),
            queues: self.queue_reports(),
            pools: crate::pool::report(self),
        }
    }
}

struct AreaFmt(&'static str, Area);

impl fmt::Display for AreaFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(name, a) = self;
        writeln!(
            f,
            "  {name:<11} {:#010x}..{:#010x}  {:>8} KiB",
            a.offset,
            a.end(),
            a.len / 1024
        )
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sb = &self.superblock;
        writeln!(
            f,
            "shared memory: format v{}, {} bytes ({} MiB), heartbeat timeout {} ms, {} node entries",
            sb.version,
            sb.total_size,
            sb.total_size / (1024 * 1024),
            sb.heartbeat_timeout_ns / 1_000_000,
            sb.max_nodes
        )?;
        let l = &sb.layout;
        write!(f, "{}", AreaFmt("superblock", l.superblock))?;
        write!(f, "{}", AreaFmt("node table", l.node_table))?;
        write!(f, "{}", AreaFmt("lock table", l.lock_table))?;
        write!(f, "{}", AreaFmt("queue area", l.queue_area))?;
        write!(f, "{}", AreaFmt("heap", l.heap))?;
        let unused = self
            .nodes
            .as_slice()
            .iter()
            .filter(|r| r.info.is_some_and(|i| i.state == NodeState::Unused))
            .count();
        writeln!(
            f,
            "nodes ({unused} entries unused; DSM RAM and disk: free pages published):"
        )?;
        writeln!(
            f,
            "  {:>3}  {:<7}  {:>5}  {:>10}  {:>5}  {:>8}  {:>9}  {:>9}  {:>4}  label",
            "id", "state", "gen", "heartbeat", "peer", "mem MiB", "DSM RAM", "DSM disk", "apps"
        )?;
        for r in self.nodes.as_slice() {
            match (r.info, r.error) {
                (Some(i), _) if i.state == NodeState::Unused => {}
                (Some(i), _) => {
                    write!(
                        f,
                        "  {:>3}  {:<7}  {:>5}  {:>10}  ",
                        i.id, i.state, i.generation.0, i.heartbeat
                    )?;
                    match i.doorbell_peer {
                        Some(p) => write!(f, "{p:>5}")?,
                        None => write!(f, "{:>5}", "-")?,
                    }
                    writeln!(
                        f,
                        "  {:>8}  {:>9}  {:>9}  {:>4}  {}",
                        i.memory_mib,
                        i.dsm_free.ram_pages,
                        i.dsm_free.disk_pages,
                        i.app_count,
                        i.label
                    )?;
                }
                (None, Some(e)) => writeln!(f, "  {:>3}  unreadable: {e}", r.id)?,
                (None, None) => {}
            }
        }
        write!(f, "{}{}", self.locks, self.queues)?;
        write!(f, "{}", self.pools)?;
        Ok(())
    }
}
