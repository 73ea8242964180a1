//! The node's disk for the DSM: the virtio-blk device found at boot, opened
//! as a `PageStore` (shm-ext's on-disk format). A disk that is not a valid
//! store for this node (garbage, truncated, another node's) is reported on
//! the console, not trusted, and formatted afresh: the node still joins and
//! serves what the other nodes' copies give it.

use crate::drivers::virtio_blk::VirtioDisk;
use alloc::boxed::Box;
use shm_ext::dsm::store::{PageStore, StoreRefused};
use shm_ext::dsm::{BLOCK_BYTES, BlockDevice, Disk, DiskError};

/// The virtio disk, beating the node's heart between block operations:
/// the engine runs them with interrupts off (under the DSM lock), where
/// the timer tick cannot beat it.
pub struct BeatingDisk(VirtioDisk);

impl BlockDevice for BeatingDisk {
    fn blocks(&self) -> u64 {
        self.0.blocks()
    }

    fn read_block(&mut self, n: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), DiskError> {
        crate::cluster::beat_if_due("disk");
        self.0.read_block(n, buf)
    }

    fn write_block(&mut self, n: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), DiskError> {
        crate::cluster::beat_if_due("disk");
        self.0.write_block(n, buf)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        crate::cluster::beat_if_due("disk");
        self.0.flush()
    }
}

/// The opened disk, and whether it holds every copy it should (false when
/// it was just formatted over something that was not a valid store).
pub fn open(node: u16, quiet: bool) -> Option<(Box<dyn Disk + Send>, bool)> {
    let dev = BeatingDisk(crate::drivers::virtio_blk::take()?);
    let (store, complete) = match PageStore::open(dev) {
        Ok((store, report)) if store.node() == node => {
            if report.bad_entries > 0 {
                crate::kprintln!(
                    "node {node}: disk: {} damaged page entries refused, not trusted",
                    report.bad_entries
                );
            }
            if !quiet {
                crate::kprintln!("node {node}: disk: {} DSM pages stored", report.pages);
            }
            (store, true)
        }
        Ok((store, _)) => {
            let other = store.node();
            crate::kprintln!(
                "node {node}: disk: formatted for node {other}, not this one: not trusted; formatting it afresh"
            );
            (format(store.into_device(), node)?, false)
        }
        Err((dev, StoreRefused::NotFormatted)) => (format(dev, node)?, true),
        Err((dev, why)) => {
            crate::kprintln!("node {node}: disk damaged: {why}; not trusted, formatting it afresh");
            (format(dev, node)?, false)
        }
    };
    Some((Box::new(store), complete))
}

fn format<D: shm_ext::dsm::BlockDevice>(dev: D, node: u16) -> Option<PageStore<D>> {
    match PageStore::format(dev, node) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::kprintln!("node {node}: disk: cannot format: {e}; running without a disk");
            None
        }
    }
}
