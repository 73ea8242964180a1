//! The raw disk figure: one VM with a scratch disk boots with
//! `bench.disk=MIB`, writes MIB MiB sequentially in 4 KiB blocks to its
//! virtio-blk disk, flushes, and prints `bench disk-write bytes=N ns=T`
//! (kernel/src/drivers/virtio_blk.rs). Its baseline is the host writing the
//! same amount the same way to a file in the same directory
//! ([`super::baseline::file_write_bytes_per_s`]).

use crate::cleanup::Workdir;
use crate::vm::{self, Accel, Firmware, VmConfig};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;

/// The kernel's result line.
pub const RESULT_PREFIX: &str = "bench disk-write ";

/// What one `bench.disk` boot measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskWrite {
    /// Bytes written (and flushed).
    pub bytes: u64,
    /// Time from the first write to the end of the flush, by the guest's clock.
    pub ns: u64,
}

impl DiskWrite {
    /// Throughput in bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / (self.ns.max(1) as f64 / 1e9)
    }
}

/// Reads `bench disk-write bytes=N ns=T`.
pub fn parse_result(line: &str) -> Option<DiskWrite> {
    let rest = line.trim().strip_prefix(RESULT_PREFIX)?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    Some(DiskWrite {
        bytes: field("bytes")?,
        ns: field("ns")?,
    })
}

/// Boots one VM (qboot) with a fresh sparse scratch disk of `mib` MiB in a
/// temporary directory (removed afterwards, also on failure) and
/// `bench.disk=MIB`; returns what it measured.
pub fn vm_disk_write(kernel: &Path, accel: Accel, mib: u64) -> Result<DiskWrite> {
    if mib == 0 {
        bail!("the disk benchmark writes at least 1 MiB");
    }
    let workdir = Workdir::new()?;
    let image = workdir.path().join("bench-disk.img");
    crate::disk::ensure_image(&image, mib << 20)?;
    let mut vm = VmConfig::new(kernel.to_owned(), accel, Firmware::Qboot);
    vm.cmdline = format!("quiet bench.disk={mib}");
    vm.workdir = Some(workdir.path().to_owned());
    vm.disk = Some(image);
    // This host's nested KVM manages ~2 MB/s; TCG is far faster.
    let timeout = Duration::from_secs(120 + mib * 10);
    let boot = vm::boot(&vm, Some(timeout), |_| {})?;
    let result = boot.serial.iter().find_map(|l| parse_result(l));
    match (boot.exit.outcome(), result) {
        (crate::Outcome::Success, Some(result)) if result.bytes == mib << 20 => Ok(result),
        _ => bail!(
            "disk benchmark ({mib} MiB): {}\n{}",
            boot.exit.describe(),
            boot.serial.join("\n")
        ),
    }
}

/// [`vm_disk_write`] as bytes per second: the virtio-blk write figure.
pub fn virtio_blk_write_bytes_per_s(kernel: &Path, accel: Accel, mib: u64) -> Result<f64> {
    vm_disk_write(kernel, accel, mib)
        .map(|r| r.bytes_per_s())
        .context("virtio-blk write benchmark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse() {
        let r = parse_result("bench disk-write bytes=1048576 ns=500000000").unwrap();
        assert_eq!(
            r,
            DiskWrite {
                bytes: 1 << 20,
                ns: 500_000_000
            }
        );
        assert_eq!(r.bytes_per_s(), 2.0 * 1048576.0);
        assert_eq!(
            parse_result("bench disk-write: FAILED: no virtio-blk disk"),
            None
        );
        assert_eq!(parse_result("bench disk-write bytes=x ns=1"), None);
        assert_eq!(parse_result("bench doorbell-rtt bytes=1 ns=1"), None);
    }
}
