//! The shared memory OS extension layer (see ../shared/ARCHITECTURE.md).
//!
//! Kernel-agnostic and `no_std` without an allocator; the host builds it with
//! the `std` feature for tests, the inspector and benchmarks.
//!
//! - [`format`](mod@format): the on-device format (superblock, areas, node table), with
//!   its tables.
//! - [`region`]: the mapped memory and the crate's only `unsafe` code;
//!   everything else goes through its bounds- and alignment-checked accessors.
//! - [`shm`]: attach (initialise or validate), join, heartbeat, leave, read.
//! - [`liveness`]: per-observer heartbeat watching that declares nodes dead.
//! - [`lock`]: global locks (futex-style fast path user space runs itself)
//!   and node-death recovery of locks, queues and the barrier.
//! - [`signal`]: 64 signals per node. [`message`]: per-node queues of
//!   messages to (node, port). [`barrier`]: the cluster barrier.
//! - [`pool`]: named pools on the heap area, contiguous allocation and
//!   release, ownership and its transfer, recovery after a node dies.
//! - [`snapshot`]: plain-value reports for the host inspector.
//! - [`platform`]: the `Doorbell` trait the kernel implements.
//! - [`error`]: `ShmError` and its numeric codes.
//! - `host` (feature `std`): a shared file mapping as a region.
//! - [`dsm`] (feature `alloc`): the distributed shared virtual memory's
//!   protocol core: global addresses, directory pages, per-node engine.
//!
//! The shared memory is untrusted input: any node may be buggy. Every
//! offset, length and count read from it is checked before use, and nothing
//! read from it can make this crate panic; failures are `ShmError`s.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

// The DSM engine's tables need a heap; the rest of the crate does not, so
// user-space runtimes without an allocator can still link it.
#[cfg(feature = "alloc")]
extern crate alloc;

pub mod barrier;
#[cfg(feature = "alloc")]
pub mod dsm;
pub mod error;
pub mod format;
#[cfg(feature = "std")]
pub mod host;
pub mod liveness;
pub mod lock;
pub mod message;
pub mod platform;
pub mod pool;
pub mod region;
pub mod shm;
pub mod signal;
pub mod snapshot;

pub use barrier::BarrierTicket;
pub use error::ShmError;
pub use format::{
    FORMAT_VERSION, FreeSpace, Generation, InitParams, Label, Layout, NodeFacts, NodeInfo,
    NodeState, Superblock,
};
pub use liveness::{EventKind, LivenessEvent, LivenessEvents, LivenessMonitor};
pub use lock::{Caller, IpcRecovery, LockIds, LockInfo, LockTable, LockWait, TryLock};
pub use message::{QueueInfo, Received};
pub use platform::{Doorbell, NoDoorbell};
pub use pool::{
    PoolId, PoolName, PoolStat, Pools, RecoveryReport, RegionHandle, RegionInfo, RegionState,
};
pub use region::Region;
pub use shm::{NodeSet, Shm};
pub use snapshot::{NodeReport, Snapshot};
