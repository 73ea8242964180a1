//! Device drivers.
pub mod ivshmem;
pub mod serial;
pub mod virtio_blk;
