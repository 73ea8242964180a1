//! Device drivers.
pub mod ivshmem;
pub mod serial;
