//! The listening UNIX socket: created 0600 with no window where it is more
//! open, stale sockets replaced, live servers left alone, removed on exit.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

/// The socket file this server created; removing it is the owner's job, done
/// on drop or by [`SocketFile::remove`].
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    removed: bool,
}

impl SocketFile {
    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this server created (a
    /// later server may have replaced a file we thought was ours).
    pub(crate) fn remove(&mut self) -> std::io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                fs::remove_file(&self.path)
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// What is at a socket path before binding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Nothing there.
    Absent,
    /// A socket nobody listens on (connect refused).
    Stale,
    /// A server accepts connections there.
    Live,
}

/// Looks at `path` without changing it. Connecting to a live ivshmem server
/// makes it announce a short-lived peer to its clients; there is no quieter
/// way to tell a live socket from a stale one.
pub(crate) fn probe(path: &Path) -> Result<Probe> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Probe::Absent),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    // Non-blocking, so a live server with a full backlog cannot hang us.
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket() for probing the doorbell socket")?;
    let addr = UnixAddr::new(path).with_context(|| format!("socket path {}", path.display()))?;
    match connect(sock.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(Probe::Live),
        Err(Errno::ECONNREFUSED) => Ok(Probe::Stale),
        Err(Errno::ENOENT) => Ok(Probe::Absent),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot tell whether a server is listening on {}",
                path.display()
            )
        }),
    }
}

/// Binds and listens on `path` with mode 0600, replacing a stale socket and
/// refusing a live one. The listener is non-blocking.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    match probe(path)? {
        Probe::Absent => {}
        Probe::Live => bail!(
            "a server is already listening on {}; refusing to start another",
            path.display()
        ),
        Probe::Stale => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
            }
        },
    }
    // Bind inside a fresh 0700 directory next to the target, chmod there, then
    // hard-link into place: the socket is never reachable with a wider mode,
    // and unlike umask this is safe with other threads creating files. link()
    // also refuses to replace a socket another server created meanwhile.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = tempfile::Builder::new()
        .prefix(".sd")
        .rand_bytes(6)
        .tempdir_in(parent)
        .with_context(|| format!("creating a private directory in {}", parent.display()))?;
    let tmp = dir.path().join("s");
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("binding a socket at {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", tmp.display()))?;
    let meta = fs::symlink_metadata(&tmp).with_context(|| format!("stat {}", tmp.display()))?;
    fs::hard_link(&tmp, path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} appeared while binding: another server is starting there",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating socket {}", path.display()))
        }
    })?;
    let guard = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        removed: false,
    };
    // `dir` (and the temporary name in it) goes away here; `guard` removes
    // the real name if anything below fails.
    drop(dir);
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    Ok((listener, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_stale_live_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        assert_eq!(probe(&path).unwrap(), Probe::Absent);

        let (listener, mut guard) = bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(probe(&path).unwrap(), Probe::Live);
        let err = bind(&path).err().unwrap().to_string();
        assert!(err.contains("already listening"), "{err}");
        // Only the socket remains in the directory: no temporary leftovers.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        drop(listener);
        assert_eq!(probe(&path).unwrap(), Probe::Stale);
        guard.remove().unwrap();
        assert!(!path.exists());

        // A stale socket left by someone else is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let (_listener, guard) = bind(&path).unwrap();
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn a_foreign_file_is_neither_replaced_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        fs::write(&path, b"not a socket").unwrap();
        let err = bind(&path).err().unwrap().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn the_guard_spares_a_replaced_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let (_listener, guard) = bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        drop(guard);
        assert!(
            path.exists(),
            "another server's socket must survive our exit"
        );
    }
}
