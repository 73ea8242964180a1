//! The ivshmem-doorbell server: hands every QEMU `ivshmem-doorbell` device the
//! shared memory and one eventfd per peer and vector (QEMU's
//! `docs/specs/ivshmem-spec.txt`, "The ivshmem Client-Server Protocol").
//!
//! Each message is an 8-byte little-endian `i64`, with zero or one file
//! descriptor in SCM_RIGHTS. On connect a client receives: the protocol version
//! (0); its own id; -1 with the shared memory fd; for every existing peer (in id
//! order) that peer's id once per vector with its eventfd for that vector; its
//! own id once per vector with its own eventfds. Every existing peer then gets
//! the new id once per vector with the new peer's eventfds, and when a peer
//! leaves every remaining peer gets its id with no fd.
//!
//! The server is a single-threaded poll loop with one outgoing queue per
//! client, so a client that stops reading (a stalled or stopped QEMU) never
//! holds up the others. It never prints: it reports [`Event`]s to a callback.

mod event;
mod listener;
mod peer;
mod server;
mod shm;

use std::path::PathBuf;

pub use event::Event;
pub use server::{PeerInfo, Server, ServerHandle};
pub use shm::ShmInfo;

/// The protocol version sent first to every client (QEMU accepts only 0).
pub const PROTOCOL_VERSION: i64 = 0;
/// The smallest shared memory the server accepts, in bytes (1 MiB).
pub const MIN_SHM_SIZE: u64 = 1 << 20;
/// Interrupt vectors per peer unless configured otherwise.
pub const DEFAULT_VECTORS: u32 = 4;
/// Most vectors per peer (the limit of QEMU's reference server).
pub const MAX_VECTORS: u32 = 64;
/// Peers served at once unless configured otherwise.
pub const DEFAULT_MAX_PEERS: u32 = 16;
/// Most peers the protocol can address (ids are 16 bits in the Doorbell register).
pub const PROTOCOL_MAX_PEERS: u32 = 1 << 16;

/// Where the shared memory handed to every peer lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShmBacking {
    /// An anonymous memfd of `size` bytes, gone when the server and every QEMU are.
    Memfd {
        /// Size in bytes: a power of two, at least [`MIN_SHM_SIZE`].
        size: u64,
    },
    /// A named file (e.g. under /dev/shm): created with `size` bytes if absent
    /// or empty, else opened and required to be exactly `size` bytes. The
    /// server never deletes it: the caller owns its lifetime.
    File {
        /// Path of the file.
        path: PathBuf,
        /// Size in bytes: a power of two, at least [`MIN_SHM_SIZE`].
        size: u64,
    },
}

impl ShmBacking {
    /// The configured size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            ShmBacking::Memfd { size } | ShmBacking::File { size, .. } => *size,
        }
    }
}

/// Everything [`Server::bind`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Path of the UNIX stream socket QEMU's `-chardev socket,path=` connects to.
    pub socket_path: PathBuf,
    /// The shared memory.
    pub shm: ShmBacking,
    /// Interrupt vectors (eventfds) per peer, 1..=[`MAX_VECTORS`]; should match
    /// the devices' `vectors=` (QEMU closes extra fds and leaves missing vectors
    /// unconnected).
    pub vectors: u32,
    /// Peers served at once, 1..=[`PROTOCOL_MAX_PEERS`]; ids are 0..max_peers and
    /// a client beyond the limit is closed at once.
    pub max_peers: u32,
}

impl ServerConfig {
    /// A configuration with [`DEFAULT_VECTORS`] and [`DEFAULT_MAX_PEERS`].
    pub fn new(socket_path: impl Into<PathBuf>, shm: ShmBacking) -> Self {
        ServerConfig {
            socket_path: socket_path.into(),
            shm,
            vectors: DEFAULT_VECTORS,
            max_peers: DEFAULT_MAX_PEERS,
        }
    }
}
