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
//! - [`snapshot`]: plain-value reports for the host inspector.
//! - [`platform`]: the `Doorbell` trait the kernel implements.
//! - [`error`]: `ShmError` and its numeric codes.
//! - `host` (feature `std`): a shared file mapping as a region.
//!
//! The shared memory is untrusted input: any node may be buggy. Every
//! offset, length and count read from it is checked before use, and nothing
//! read from it can make this crate panic; failures are `ShmError`s.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

pub mod error;
pub mod format;
#[cfg(feature = "std")]
pub mod host;
pub mod liveness;
pub mod platform;
pub mod region;
pub mod shm;
pub mod snapshot;

pub use error::ShmError;
pub use format::{
    FORMAT_VERSION, Generation, InitParams, Label, Layout, NodeFacts, NodeInfo, NodeState,
    Superblock,
};
pub use liveness::{EventKind, LivenessEvent, LivenessEvents, LivenessMonitor};
pub use platform::{Doorbell, NoDoorbell};
pub use region::Region;
pub use shm::{NodeSet, Shm};
pub use snapshot::{NodeReport, Snapshot};
