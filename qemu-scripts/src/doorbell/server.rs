//! The poll loop: accepts clients, assigns ids, queues and flushes messages.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::listener::{self, SocketFile};
use super::peer::{Msg, Peer, lowest_free_id};
use super::shm::{SharedMemory, ShmInfo};
use super::{Event, MAX_VECTORS, PROTOCOL_MAX_PEERS, PROTOCOL_VERSION, ServerConfig};

/// Longest the loop sleeps without looking at the stop flag; also the retry
/// period for clients at the in-flight fd limit and after accept failures.
const TICK: Duration = Duration::from_millis(50);

/// A connected peer, as seen from outside the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its id (what its IVPosition register reads).
    pub id: u16,
    /// Messages queued for it and not yet sent (non-zero while it is not reading).
    pub queued: usize,
}

/// A bound doorbell server: clients can connect (the kernel queues them) but
/// are served only while [`Server::run_until`] runs or after [`Server::spawn`].
/// Dropping it closes every client and removes the socket.
pub struct Server {
    vectors: usize,
    max_peers: u32,
    listener: UnixListener,
    socket: SocketFile,
    shm: SharedMemory,
    peers: BTreeMap<u16, Peer>,
    next_serial: u64,
    /// Written to wake the loop at once (by [`ServerHandle::stop`]).
    waker: Arc<EventFd>,
    snapshot: Arc<Mutex<Vec<PeerInfo>>>,
    /// Set after an accept failure such as EMFILE, which would otherwise
    /// leave the listener readable and spin the loop.
    accept_paused_until: Option<Instant>,
}

impl Server {
    /// Validates `config`, creates the shared memory and listens on the socket
    /// (mode 0600; a stale socket is replaced, a live server's is refused).
    pub fn bind(config: ServerConfig) -> Result<Server> {
        if config.vectors == 0 || config.vectors > MAX_VECTORS {
            bail!(
                "doorbell vectors must be 1..={MAX_VECTORS}, not {}",
                config.vectors
            );
        }
        if config.max_peers == 0 || config.max_peers > PROTOCOL_MAX_PEERS {
            bail!(
                "doorbell max_peers must be 1..={PROTOCOL_MAX_PEERS}, not {}",
                config.max_peers
            );
        }
        // Shared memory first: a bad size must fail before the socket exists.
        let shm = SharedMemory::open(&config.shm)?;
        let (listener, socket) = listener::bind(&config.socket_path)?;
        let waker = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .context("creating the doorbell server's wake-up eventfd")?;
        Ok(Server {
            vectors: config.vectors as usize,
            max_peers: config.max_peers,
            listener,
            socket,
            shm,
            peers: BTreeMap::new(),
            next_serial: 0,
            waker: Arc::new(waker),
            snapshot: Arc::new(Mutex::new(Vec::new())),
            accept_paused_until: None,
        })
    }

    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The shared memory's size and backing.
    pub fn shm(&self) -> &ShmInfo {
        &self.shm.info
    }

    /// The connected peers, by id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.snapshot.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Serves clients until `stop` is set (checked at least every 50 ms),
    /// reporting to `on_event`. Returns early only if polling itself fails.
    pub fn run_until(&mut self, stop: &AtomicBool, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        while !stop.load(Ordering::SeqCst) {
            self.turn(on_event)?;
        }
        Ok(())
    }

    /// Serves clients on a background thread until [`ServerHandle::stop`].
    pub fn spawn(self, mut on_event: impl FnMut(Event) + Send + 'static) -> Result<ServerHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::clone(&self.waker);
        let snapshot = Arc::clone(&self.snapshot);
        let socket_path = self.socket_path().to_path_buf();
        let shm = self.shm.info.clone();
        let thread_stop = Arc::clone(&stop);
        let mut server = self;
        let thread = std::thread::Builder::new()
            .name("shmos-doorbell".into())
            .spawn(move || {
                let result = server.run_until(&thread_stop, &mut on_event);
                server.shutdown().and(result)
            })
            .context("spawning the doorbell server thread")?;
        Ok(ServerHandle {
            thread: Some(thread),
            stop,
            waker,
            snapshot,
            socket_path,
            shm,
        })
    }

    /// Closes every client and removes the socket, reporting a removal error
    /// (dropping the server does the same silently).
    pub fn shutdown(mut self) -> Result<()> {
        self.peers.clear();
        let path = self.socket.path().to_path_buf();
        self.socket
            .remove()
            .with_context(|| format!("removing socket {}", path.display()))
    }

    /// One poll and everything it reported.
    fn turn(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        let now = Instant::now();
        let accepting = self.accept_paused_until.is_none_or(|t| now >= t);
        if accepting {
            self.accept_paused_until = None;
        }
        let (woken, listener_ready, ready) = {
            let mut fds = Vec::with_capacity(2 + self.peers.len());
            fds.push(PollFd::new(self.waker.as_fd(), PollFlags::POLLIN));
            if accepting {
                fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            }
            for peer in self.peers.values() {
                let mut events = PollFlags::POLLIN;
                if peer.queued() > 0 && !peer.fd_limited {
                    events |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(peer.stream.as_fd(), events));
            }
            let timeout = PollTimeout::try_from(TICK).expect("TICK fits a poll timeout");
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(()),
                Err(e) => return Err(anyhow!(e).context("poll in the doorbell server")),
            }
            let revents = |fd: &PollFd| fd.revents().unwrap_or(PollFlags::empty());
            let woken = !revents(&fds[0]).is_empty();
            let first_peer = if accepting { 2 } else { 1 };
            let listener_ready = accepting && !revents(&fds[1]).is_empty();
            let ready: Vec<(u16, PollFlags)> = self
                .peers
                .keys()
                .zip(&fds[first_peer..])
                .map(|(&id, fd)| (id, revents(fd)))
                .filter(|(_, ev)| !ev.is_empty())
                .collect();
            (woken, listener_ready, ready)
        };
        if woken {
            // Only resets the counter: the caller's stop flag says why we woke.
            let _ = self.waker.read();
        }
        for (id, events) in ready {
            self.serve_peer(id, events, on_event);
        }
        // Clients stuck at the in-flight fd limit get a retry every turn.
        let limited: Vec<u16> = self
            .peers
            .values()
            .filter(|p| p.fd_limited)
            .map(|p| p.id)
            .collect();
        for id in limited {
            self.flush_peer(id, on_event);
        }
        if listener_ready {
            self.accept_all(on_event);
        }
        self.publish();
        Ok(())
    }

    /// Handles what poll reported for one client.
    fn serve_peer(&mut self, id: u16, events: PollFlags, on_event: &mut dyn FnMut(Event)) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            // The protocol is one-way: any input is discarded; EOF, a hangup or
            // an error means the client is gone. A bounded number of reads per
            // turn, so a client that floods us cannot starve the others.
            let mut buf = [0u8; 4096];
            let mut reads = 0;
            let gone = loop {
                match (&peer.stream).read(&mut buf) {
                    Ok(0) => break Some(None),
                    Ok(_) if reads >= 16 => break None,
                    Ok(_) => reads += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Some(read_error(&e)),
                }
            };
            let gone = match gone {
                None if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) => {
                    let error = peer.stream.take_error().ok().flatten();
                    Some(error.as_ref().and_then(read_error))
                }
                other => other,
            };
            if let Some(error) = gone {
                self.remove_peer(id, error, on_event);
                return;
            }
        }
        if events.contains(PollFlags::POLLOUT) {
            self.flush_peer(id, on_event);
        }
    }

    /// Sends what a client has queued; drops it if its socket failed.
    fn flush_peer(&mut self, id: u16, on_event: &mut dyn FnMut(Event)) {
        if let Some(peer) = self.peers.get_mut(&id)
            && let Err(e) = peer.flush()
        {
            self.remove_peer(id, send_error(e), on_event);
        }
    }

    /// Accepts every pending connection.
    fn accept_all(&mut self, on_event: &mut dyn FnMut(Event)) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, on_event),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    on_event(Event::AcceptFailed {
                        error: e.to_string(),
                    });
                    self.accept_paused_until = Some(Instant::now() + TICK);
                    return;
                }
            }
        }
    }

    /// Gives a new client the lowest free id and queues the protocol's
    /// messages, in the order of the spec and QEMU's reference server.
    fn admit(&mut self, stream: std::os::unix::net::UnixStream, on_event: &mut dyn FnMut(Event)) {
        // `max_peers` bounds the clients connected at once; an id is skipped
        // while a connected client was told its previous holder left.
        let peers = &self.peers;
        let told_departed = |id: u16| peers.values().any(|p| p.departed.contains(&id));
        let free = lowest_free_id(peers, super::PROTOCOL_MAX_PEERS, |id| !told_departed(id));
        let Some(id) = free.filter(|_| peers.len() < self.max_peers as usize) else {
            on_event(Event::ClientRefused {
                reason: format!("all {} peer ids are in use", self.max_peers),
            });
            return;
        };
        if let Err(e) = stream.set_nonblocking(true) {
            on_event(Event::ClientRefused {
                reason: format!("making its socket non-blocking: {e}"),
            });
            return;
        }
        // EFD_NONBLOCK | EFD_CLOEXEC, as QEMU's event_notifier_init makes them.
        let vectors: Result<Vec<Arc<OwnedFd>>, Errno> = (0..self.vectors)
            .map(|_| {
                EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map(|e| Arc::new(OwnedFd::from(e)))
            })
            .collect();
        let vectors = match vectors {
            Ok(v) => v,
            Err(e) => {
                on_event(Event::ClientRefused {
                    reason: format!("creating its eventfds: {e}"),
                });
                return;
            }
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut peer = Peer::new(id, serial, stream, vectors);
        let own = i64::from(id);
        peer.push(Msg::plain(PROTOCOL_VERSION));
        peer.push(Msg::plain(own));
        peer.push(Msg::with_fd(-1, &self.shm.fd));
        for other in self.peers.values() {
            for fd in &other.vectors {
                peer.push(Msg::announce(i64::from(other.id), fd, other.serial));
            }
        }
        for fd in peer.vectors.clone() {
            peer.push(Msg::with_fd(own, &fd));
        }
        for other in self.peers.values_mut() {
            for fd in &peer.vectors {
                other.push(Msg::announce(own, fd, serial));
            }
        }
        self.peers.insert(id, peer);
        // Publish first, so whoever sees the event also sees the peer.
        self.publish();
        on_event(Event::PeerJoined { id });
        let ids: Vec<u16> = self.peers.keys().copied().collect();
        for other in ids {
            self.flush_peer(other, on_event);
        }
    }

    /// Drops client `id` and tells the others; clients whose sockets fail on
    /// the way are dropped in turn.
    fn remove_peer(&mut self, id: u16, error: Option<String>, on_event: &mut dyn FnMut(Event)) {
        let mut pending = vec![(id, error)];
        while let Some((id, error)) = pending.pop() {
            let Some(gone) = self.peers.remove(&id) else {
                continue;
            };
            self.publish();
            on_event(Event::PeerLeft { id, error });
            for peer in self.peers.values_mut() {
                peer.forget(gone.id, gone.serial, self.vectors);
                if let Err(e) = peer.flush() {
                    pending.push((peer.id, send_error(e)));
                }
            }
        }
    }

    /// Updates what [`Server::peers`] and [`ServerHandle::peers`] return.
    fn publish(&self) {
        let peers = self
            .peers
            .values()
            .map(|p| PeerInfo {
                id: p.id,
                queued: p.queued(),
            })
            .collect();
        if let Ok(mut snapshot) = self.snapshot.lock() {
            *snapshot = peers;
        }
    }
}

/// What to report for a client whose socket failed while sending to it: a
/// closed connection (EPIPE, ECONNRESET) is an ordinary departure.
fn send_error(e: Errno) -> Option<String> {
    match e {
        Errno::EPIPE | Errno::ECONNRESET => None,
        e => Some(format!("sending: {e}")),
    }
}

/// The same for a socket error seen while reading: a client that closes its
/// socket with messages unread makes the kernel report a reset.
fn read_error(e: &std::io::Error) -> Option<String> {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => None,
        _ => Some(e.to_string()),
    }
}

/// A server running on its own thread; dropping it stops the server too.
pub struct ServerHandle {
    thread: Option<JoinHandle<Result<()>>>,
    stop: Arc<AtomicBool>,
    waker: Arc<EventFd>,
    snapshot: Arc<Mutex<Vec<PeerInfo>>>,
    socket_path: PathBuf,
    shm: ShmInfo,
}

impl ServerHandle {
    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The shared memory's size and backing.
    pub fn shm(&self) -> &ShmInfo {
        &self.shm
    }

    /// The connected peers, by id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.snapshot.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Whether the server thread has ended (only on a poll failure or panic before `stop`).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the server, waits for its thread (the socket is gone when this
    /// returns) and reports how the loop ended.
    pub fn stop(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.write(1);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("the doorbell server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doorbell::ShmBacking;

    fn config(dir: &Path) -> ServerConfig {
        ServerConfig::new(dir.join("sock"), ShmBacking::Memfd { size: 1 << 20 })
    }

    #[test]
    fn bad_config_is_refused_before_the_socket_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.vectors = 0;
        assert!(Server::bind(c.clone()).is_err());
        c.vectors = MAX_VECTORS + 1;
        assert!(Server::bind(c.clone()).is_err());
        c.vectors = 4;
        c.max_peers = 0;
        assert!(Server::bind(c.clone()).is_err());
        c.max_peers = PROTOCOL_MAX_PEERS + 1;
        assert!(Server::bind(c.clone()).is_err());
        c.max_peers = 2;
        c.shm = ShmBacking::Memfd { size: 3 << 20 };
        assert!(Server::bind(c.clone()).is_err());
        assert!(!c.socket_path.exists());
    }

    #[test]
    fn run_until_returns_promptly_and_drop_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::bind(config(dir.path())).unwrap();
        let path = server.socket_path().to_path_buf();
        assert!(path.exists());
        let stop = AtomicBool::new(true);
        let start = Instant::now();
        server.run_until(&stop, &mut |_| {}).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn handle_stop_is_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(config(dir.path())).unwrap();
        let path = server.socket_path().to_path_buf();
        let handle = server.spawn(|_| {}).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        handle.stop().unwrap();
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(!path.exists());
    }
}
