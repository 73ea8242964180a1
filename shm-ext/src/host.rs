//! Host side (`std` only): a file mapped shared is a shared memory node.
//!
//! Several processes mapping the same file (in /dev/shm or a temp dir) are
//! several nodes, with real cross-process atomics; QEMU's
//! `memory-backend-file,share=on` maps such a file into the VMs too.
//! Truncating the file while it is mapped makes accesses past the new end
//! fault (SIGBUS); nothing in shmos truncates a file in use.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use crate::region::Region;

/// A shared read-write mapping of a whole file.
#[derive(Debug)]
pub struct SharedFile {
    map: memmap2::MmapRaw,
    _file: File,
}

impl SharedFile {
    /// Opens `path`, creating it with `len` zero bytes (blank) if it is
    /// missing or empty; an existing file of another size is an error.
    pub fn open_or_create(path: &Path, len: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let have = file.metadata()?.len();
        let want = len as u64;
        if have == 0 {
            // Racing creators all set the same length: harmless.
            file.set_len(want)?;
        } else if have != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has {have} bytes, expected {want}", path.display()),
            ));
        }
        Self::map(file)
    }

    /// Opens an existing file and maps all of it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::map(file)
    }

    fn map(file: File) -> io::Result<Self> {
        let map = memmap2::MmapOptions::new().map_raw(&file)?;
        Ok(Self { map, _file: file })
    }

    /// The mapping as a shared memory region.
    pub fn region(&self) -> Region<'_> {
        Region::from_mmap(&self.map)
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the mapping is empty (never, since empty files do not map).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

/// Process-local memory used as a shared region (threads are the nodes).
#[derive(Debug)]
pub struct HeapRegion {
    words: Box<[AtomicU64]>,
}

impl HeapRegion {
    /// A zeroed (blank) region of `len` bytes, rounded up to 8.
    pub fn new(len: usize) -> Self {
        let words = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        Self { words }
    }

    /// A region holding a copy of `bytes` (rounded up to 8 with zeros).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let h = Self::new(bytes.len());
        // Cannot fail: the region is at least as long as `bytes`.
        let _ = h.region().write_bytes(0, bytes);
        h
    }

    /// The memory as a region.
    pub fn region(&self) -> Region<'_> {
        Region::from_atomics(&self.words)
    }

    /// A copy of all bytes (for tests that mutate images).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.words.len() * 8];
        let _ = self.region().read_bytes(0, &mut v);
        v
    }
}
