//! The shared memory object handed to every peer with the -1 message.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::{MIN_SHM_SIZE, ShmBacking};

/// What backs the shared memory of a running server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmInfo {
    /// Size in bytes.
    pub size: u64,
    /// The named file, or `None` for a memfd.
    pub path: Option<PathBuf>,
    /// Whether the server created the backing (always for a memfd; for a
    /// named file, whether the caller may want to remove it).
    pub created: bool,
}

/// The open shared memory: its fd is shared by every queued -1 message.
pub(crate) struct SharedMemory {
    pub(crate) fd: Arc<OwnedFd>,
    pub(crate) info: ShmInfo,
}

/// `size` in the unit a person would have typed, with the exact byte count.
pub(crate) fn describe_size(size: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let unit = if size >= GIB && size.is_multiple_of(GIB) {
        format!("{} GiB", size / GIB)
    } else if size >= MIB && size.is_multiple_of(MIB) {
        format!("{} MiB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{} KiB", size / KIB)
    } else {
        return format!("{size} bytes");
    };
    format!("{unit} ({size} bytes)")
}

/// Refuses sizes QEMU cannot use: its BAR2 must be a power of two (QEMU
/// aborts otherwise), and tiny regions are surely a mistake.
pub(crate) fn check_size(size: u64) -> Result<()> {
    if size < MIN_SHM_SIZE {
        bail!(
            "shared memory size {} is too small: the minimum is 1 MiB",
            describe_size(size)
        );
    }
    if !size.is_power_of_two() {
        bail!(
            "shared memory size {} is not a power of two (QEMU's ivshmem aborts on it)",
            describe_size(size)
        );
    }
    Ok(())
}

impl SharedMemory {
    /// Creates or opens the backing described by `backing`.
    pub(crate) fn open(backing: &ShmBacking) -> Result<SharedMemory> {
        check_size(backing.size())?;
        match backing {
            ShmBacking::Memfd { size } => memfd(*size),
            ShmBacking::File { path, size } => named(path, *size),
        }
    }
}

fn memfd(size: u64) -> Result<SharedMemory> {
    let fd = memfd_create(
        c"shmos-doorbell",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .context("memfd_create for the shared memory")?;
    let file = File::from(fd);
    file.set_len(size)
        .with_context(|| format!("sizing the memfd to {}", describe_size(size)))?;
    // Seal the size so no peer can shrink the region under the others (QEMU's
    // reference server seals its memfd the same way); writes stay allowed.
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
        ),
    )
    .context("sealing the memfd's size")?;
    Ok(SharedMemory {
        fd: Arc::new(file.into()),
        info: ShmInfo {
            size,
            path: None,
            created: true,
        },
    })
}

fn named(path: &Path, size: u64) -> Result<SharedMemory> {
    let mut created = true;
    // create_new first, to know whether the caller's file existed.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            created = false;
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening shared memory file {}", path.display()))?
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("creating shared memory file {}", path.display()));
        }
    };
    let result = (|| {
        let meta = file
            .metadata()
            .with_context(|| format!("fstat of {}", path.display()))?;
        if !meta.is_file() {
            bail!(
                "shared memory path {} is not a regular file",
                path.display()
            );
        }
        match meta.len() {
            0 => file
                .set_len(size)
                .with_context(|| format!("sizing {} to {}", path.display(), describe_size(size)))?,
            len if len == size => {}
            len => bail!(
                "shared memory file {} is {}, not the configured {}",
                path.display(),
                describe_size(len),
                describe_size(size)
            ),
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Leave no half-made file behind on an error path.
        if created {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(SharedMemory {
        fd: Arc::new(file.into()),
        info: ShmInfo {
            size,
            path: Some(path.to_path_buf()),
            created,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(check_size(1 << 20).is_ok());
        assert!(check_size(1 << 30).is_ok());
        let err = check_size(3 << 20).unwrap_err().to_string();
        assert!(err.contains("3 MiB (3145728 bytes)"), "{err}");
        assert!(err.contains("power of two"), "{err}");
        let err = check_size(4096).unwrap_err().to_string();
        assert!(err.contains("4 KiB (4096 bytes)"), "{err}");
        assert!(err.contains("too small"), "{err}");
        assert!(check_size(0).unwrap_err().to_string().contains("0 bytes"));
        assert_eq!(describe_size(1000), "1000 bytes");
        assert_eq!(describe_size(2 << 30), "2 GiB (2147483648 bytes)");
    }

    #[test]
    fn memfd_has_the_size_and_is_sealed() {
        let shm = SharedMemory::open(&ShmBacking::Memfd { size: 1 << 21 }).unwrap();
        let file = File::from(shm.fd.try_clone().unwrap());
        assert_eq!(file.metadata().unwrap().len(), 1 << 21);
        assert!(
            file.set_len(1 << 20).is_err(),
            "shrinking must be sealed off"
        );
        assert!(shm.info.path.is_none());
    }

    #[test]
    fn named_file_created_reused_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shm");
        let backing = ShmBacking::File {
            path: path.clone(),
            size: 1 << 20,
        };
        let shm = SharedMemory::open(&backing).unwrap();
        assert!(shm.info.created);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        drop(shm);
        let shm = SharedMemory::open(&backing).unwrap();
        assert!(!shm.info.created);
        let other = ShmBacking::File {
            path: path.clone(),
            size: 1 << 21,
        };
        let err = SharedMemory::open(&other).err().unwrap().to_string();
        assert!(err.contains("is 1 MiB") && err.contains("2 MiB"), "{err}");
        assert!(path.exists(), "an existing file is never removed");
    }
}
