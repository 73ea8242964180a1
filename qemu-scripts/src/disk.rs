//! Node disks: raw image files, attached to a VM as virtio-blk. Every VM the
//! tool boots gets one (`shmos cluster` one per node, kept in `--disks DIR`
//! or temporary; `shmos run` and the kernel tests a temporary scratch image
//! unless told otherwise). Images are created sparse: a 256 MiB disk takes
//! only the blocks the guest wrote.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Size of a new node disk unless told otherwise (`--disk-size`).
pub const DEFAULT_DISK_SIZE: u64 = 256 << 20;
/// Size of the kernel tests' scratch disk.
pub const TEST_DISK_SIZE: u64 = 8 << 20;
/// The kernel's block size: disk sizes are whole blocks.
pub const BLOCK_SIZE: u64 = 4096;
/// Largest disk the tool creates (sparse, but a guest could fill it).
pub const MAX_DISK_SIZE: u64 = 1 << 40;

/// A size for people: `256 MiB`, `64 KiB`, `1 GiB` (whole units only).
pub fn describe_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b.is_multiple_of(1 << 30) => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// The image of node `node` in a disk directory (`--disks DIR`).
pub fn node_image(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("node-{node}.img"))
}

/// Checks a size for a new disk: whole 4 KiB blocks, 4 KiB to 1 TiB.
pub fn check_size(size: u64) -> Result<(), String> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE) || size > MAX_DISK_SIZE {
        return Err(format!(
            "disk size {size} bytes must be a whole number of 4 KiB blocks, from 4K to {}G",
            MAX_DISK_SIZE >> 30
        ));
    }
    Ok(())
}

/// Creates `path` as a sparse raw image of `size` bytes unless something is
/// there already, which is kept as it is (a disk survives its VM). Returns
/// whether it created the image.
pub fn ensure_image(path: &Path, size: u64) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() || meta.file_type().is_symlink() => return Ok(false),
        Ok(_) => bail!("disk image {} is not a file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("disk image {}", path.display())),
    }
    check_size(size).map_err(anyhow::Error::msg)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating disk directory {}", dir.display()))?;
    }
    let file = std::fs::File::create_new(path)
        .with_context(|| format!("creating disk image {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing disk image {} to {size} bytes", path.display()))?;
    Ok(true)
}

/// QEMU arguments that attach `image` as a virtio-blk disk (raw; the host's
/// page cache in front, guest flushes reach the file with fdatasync).
pub fn qemu_args(image: &Path) -> Vec<OsString> {
    // QEMU's option syntax escapes a comma in a value by doubling it.
    let mut drive = OsString::from("file=");
    drive.push(image.as_os_str().to_string_lossy().replace(',', ",,"));
    drive.push(",if=none,format=raw,id=disk0,cache=writeback");
    vec![
        "-drive".into(),
        drive,
        "-device".into(),
        "virtio-blk-pci,drive=disk0".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn images_are_created_sparse_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let img = node_image(&dir.path().join("disks"), 3);
        assert!(img.ends_with("disks/node-3.img"));
        assert!(ensure_image(&img, 64 << 20).unwrap(), "created");
        let meta = std::fs::metadata(&img).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "sparse: {} blocks",
            meta.blocks()
        );
        std::fs::write(&img, b"kept").unwrap();
        assert!(!ensure_image(&img, 64 << 20).unwrap(), "not created again");
        assert_eq!(
            std::fs::read(&img).unwrap(),
            b"kept",
            "an existing image is kept"
        );
        assert!(
            ensure_image(dir.path(), 4096).is_err(),
            "a directory is no image"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(describe_size(256 << 20), "256 MiB");
        assert_eq!(describe_size(2 << 30), "2 GiB");
        assert_eq!(describe_size(1536 << 20), "1536 MiB");
        assert_eq!(describe_size(64 << 10), "64 KiB");
        assert_eq!(describe_size(100), "100 bytes");
    }

    #[test]
    fn sizes_are_whole_blocks() {
        assert!(check_size(4096).is_ok());
        assert!(check_size(DEFAULT_DISK_SIZE).is_ok());
        for bad in [0, 4095, 4097, MAX_DISK_SIZE + BLOCK_SIZE] {
            assert!(check_size(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_image(&dir.path().join("x.img"), 1000).is_err());
    }

    #[test]
    fn qemu_args_attach_virtio_blk_and_escape_commas() {
        let args = qemu_args(Path::new("/tmp/a,b.img"));
        assert_eq!(
            args,
            [
                "-drive",
                "file=/tmp/a,,b.img,if=none,format=raw,id=disk0,cache=writeback",
                "-device",
                "virtio-blk-pci,drive=disk0"
            ]
            .map(OsString::from)
        );
    }
}
