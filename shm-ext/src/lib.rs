//! The shared memory OS extension layer (see ../shared/ARCHITECTURE.md).
//!
//! Kernel-agnostic and `no_std`; the host builds it with `std` for tests, the
//! inspector and benchmarks. The on-device format arrives with the link-medium
//! work; for now this crate only fixes its place in the workspace.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

/// Version of the on-device format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 0;
