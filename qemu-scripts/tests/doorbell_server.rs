//! The ivshmem-doorbell server against fake clients that check the exact
//! message sequences of QEMU's ivshmem-spec, and against a real QEMU.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::stat::{SFlag, fstat};
use shmos::doorbell::{Event, Server, ServerConfig, ServerHandle, ShmBacking};

const MIB: u64 = 1 << 20;
/// Generous: every wait ends as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running server with its events and a private directory.
struct Fixture {
    handle: Option<ServerHandle>,
    events: Receiver<Event>,
    path: PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn start(vectors: u32, max_peers: u32) -> Fixture {
        Fixture::start_with(vectors, max_peers, |_| ShmBacking::Memfd { size: 2 * MIB })
    }

    fn start_with(vectors: u32, max_peers: u32, shm: impl FnOnce(&Path) -> ShmBacking) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let mut config = ServerConfig::new(&path, shm(dir.path()));
        config.vectors = vectors;
        config.max_peers = max_peers;
        let server = Server::bind(config).unwrap();
        let (tx, events) = channel();
        let handle = server
            .spawn(move |e| {
                let _ = tx.send(e);
            })
            .unwrap();
        Fixture {
            handle: Some(handle),
            events,
            path,
            dir,
        }
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    fn connect(&self) -> Client {
        Client::connect(&self.path)
    }

    /// Waits for the next PeerJoined event and returns its id.
    fn joined_id(&self) -> u16 {
        loop {
            match self.events.recv_timeout(TIMEOUT) {
                Ok(Event::PeerJoined { id }) => return id,
                Ok(_) => {}
                Err(_) => panic!("no PeerJoined within {TIMEOUT:?}"),
            }
        }
    }

    /// Waits for `want`, skipping other events.
    fn expect_event(&self, want: Event) {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(e) if e == want => return,
                Ok(e) => seen.push(e),
                Err(_) => break,
            }
        }
        panic!("no {want:?} within {TIMEOUT:?}; saw {seen:?}");
    }

    fn stop(&mut self) {
        self.handle.take().unwrap().stop().unwrap();
    }
}

/// One message as a client receives it.
type Message = (i64, Option<OwnedFd>);

/// A fake QEMU: reads the server's messages with recvmsg.
struct Client {
    stream: UnixStream,
}

/// What a client learns on connect.
struct Initial {
    id: i64,
    shm: OwnedFd,
    /// Other peers' eventfds by id, in vector order.
    peers: BTreeMap<i64, Vec<OwnedFd>>,
    /// Its own eventfds, in vector order.
    own: Vec<OwnedFd>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client { stream }
    }

    /// The next message, or an error (timeout, EOF).
    fn try_recv(&self) -> io::Result<Message> {
        let mut buf = [0u8; 8];
        let mut got = 0;
        let mut fd: Option<OwnedFd> = None;
        while got < buf.len() {
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            let msg = recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            assert!(
                !msg.flags.contains(MsgFlags::MSG_CTRUNC),
                "control data truncated"
            );
            let bytes = msg.bytes;
            for cmsg in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for raw in fds {
                        // SAFETY: SCM_RIGHTS just installed `raw` in this process; we own it.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        assert!(fd.is_none(), "more than one fd with one message");
                        assert_eq!(got, 0, "an fd arrived in the middle of a message");
                        fd = Some(owned);
                    }
                }
            }
            if bytes == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += bytes;
        }
        Ok((i64::from_le_bytes(buf), fd))
    }

    fn recv(&self) -> Message {
        self.try_recv().expect("a message from the server")
    }

    /// Asserts the next message is `value` with (`true`) or without an fd.
    fn expect(&self, value: i64, with_fd: bool) -> Option<OwnedFd> {
        let (got, fd) = self.recv();
        assert_eq!((got, fd.is_some()), (value, with_fd), "unexpected message");
        fd
    }

    /// Asserts nothing more arrives within a short while.
    fn expect_silence(&self) {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        match self.try_recv() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!(
                "expected silence, got {:?}",
                other.map(|(v, fd)| (v, fd.is_some()))
            ),
        }
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    }

    /// Reads and checks the whole connect sequence: version 0, id, -1 with
    /// the shm fd, `vectors` fds for each of `existing` (in that order), then
    /// `vectors` of its own.
    fn initial(&self, vectors: usize, id: i64, existing: &[i64]) -> Initial {
        self.expect(0, false);
        self.expect(id, false);
        let shm = self.expect(-1, true).unwrap();
        let mut peers = BTreeMap::new();
        for &peer in existing {
            let fds = (0..vectors)
                .map(|_| self.expect(peer, true).unwrap())
                .collect();
            peers.insert(peer, fds);
        }
        let own = (0..vectors)
            .map(|_| self.expect(id, true).unwrap())
            .collect();
        Initial {
            id,
            shm,
            peers,
            own,
        }
    }

    /// Reads the connect notification of peer `id`: `vectors` fds.
    fn joined(&self, vectors: usize, id: i64) -> Vec<OwnedFd> {
        (0..vectors)
            .map(|_| self.expect(id, true).unwrap())
            .collect()
    }
}

fn ring(fd: &OwnedFd) {
    nix::unistd::write(fd, &1u64.to_ne_bytes()).unwrap();
}

/// Reads an eventfd's counter; `None` if it is zero (the fds are non-blocking).
fn take(fd: &OwnedFd) -> Option<u64> {
    let mut buf = [0u8; 8];
    match nix::unistd::read(fd.as_fd(), &mut buf) {
        Ok(8) => Some(u64::from_ne_bytes(buf)),
        Ok(n) => panic!("short eventfd read: {n}"),
        Err(nix::errno::Errno::EAGAIN) => None,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

/// Asserts that ringing `sender[v]` is seen on `receiver[v]` and on no other vector.
fn assert_same_eventfds(sender: &[OwnedFd], receiver: &[OwnedFd]) {
    assert_eq!(sender.len(), receiver.len());
    for (v, fd) in sender.iter().enumerate() {
        ring(fd);
        for (w, rx) in receiver.iter().enumerate() {
            assert_eq!(
                take(rx),
                (v == w).then_some(1),
                "rang vector {v}, read vector {w}"
            );
        }
    }
}

#[test]
fn first_client_gets_the_exact_sequence_and_a_memfd_of_the_size() {
    let fx = Fixture::start(4, 16);
    let a = fx.connect();
    let init = a.initial(4, 0, &[]);
    fx.expect_event(Event::PeerJoined { id: 0 });
    let st = fstat(&init.shm).unwrap();
    assert_eq!(st.st_size as u64, 2 * MIB);
    assert_eq!(
        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
        SFlag::S_IFREG,
        "the shm fd must be a memory object (memfd)"
    );
    let link = fs::read_link(format!("/proc/self/fd/{}", init.shm.as_raw_fd())).unwrap();
    assert!(link.to_string_lossy().starts_with("/memfd:"), "{link:?}");
    assert_eq!(init.own.len(), 4);
    a.expect_silence();
    assert_eq!(fx.handle().shm().size, 2 * MIB);
}

#[test]
fn named_file_backing_maps_that_file() {
    let fx = Fixture::start_with(2, 4, |dir| ShmBacking::File {
        path: dir.join("shm"),
        size: MIB,
    });
    let shm_path = fx.dir.path().join("shm");
    let init = fx.connect().initial(2, 0, &[]);
    let st = fstat(&init.shm).unwrap();
    let meta = fs::metadata(&shm_path).unwrap();
    assert_eq!((st.st_dev, st.st_ino), (meta.dev(), meta.ino()));
    assert_eq!(st.st_size as u64, MIB);
    let info = fx.handle().shm();
    assert_eq!(info.path.as_deref(), Some(shm_path.as_path()));
    assert!(info.created);
}

#[test]
fn peers_learn_of_each_other_and_share_eventfds() {
    let vectors = 3;
    let fx = Fixture::start(vectors as u32, 16);
    let a = fx.connect();
    let ia = a.initial(vectors, 0, &[]);
    fx.expect_event(Event::PeerJoined { id: 0 });

    let b = fx.connect();
    let ib = b.initial(vectors, 1, &[0]);
    let a_to_b = a.joined(vectors, 1);
    fx.expect_event(Event::PeerJoined { id: 1 });
    a.expect_silence();

    // A's fds for peer 1 are B's own, vector by vector, and vice versa.
    assert_same_eventfds(&a_to_b, &ib.own);
    assert_same_eventfds(&ib.peers[&0], &ia.own);

    let c = fx.connect();
    let ic = c.initial(vectors, 2, &[0, 1]);
    a.joined(vectors, 2);
    b.joined(vectors, 2);
    assert_same_eventfds(&ic.peers[&1], &ib.own);

    drop(b);
    fx.expect_event(Event::PeerLeft { id: 1, error: None });
    a.expect(1, false);
    c.expect(1, false);
    a.expect_silence();
    c.expect_silence();
    let ids: Vec<u16> = fx.handle().peers().iter().map(|p| p.id).collect();
    assert_eq!(ids, [0, 2]);
    assert_eq!(ic.id, 2);
}

#[test]
fn a_departed_id_is_reused_once_no_client_remembers_its_holder() {
    let fx = Fixture::start(2, 16);
    let a = fx.connect();
    a.initial(2, 0, &[]);
    let b = fx.connect();
    let ib = b.initial(2, 1, &[0]);
    a.joined(2, 1);

    drop(a);
    fx.expect_event(Event::PeerLeft { id: 0, error: None });
    b.expect(0, false);

    // b still remembers peer 0 (QEMU 7.2 would corrupt its heap if a new
    // peer 0 were announced to it), so the newcomer gets the next id.
    let c = fx.connect();
    let ic = c.initial(2, 2, &[1]);
    let b_to_c = b.joined(2, 2);
    assert_same_eventfds(&b_to_c, &ic.own);
    assert_same_eventfds(&ic.peers[&1], &ib.own);

    // Once b, the last client that knew the old peer 0, is gone, id 0 is
    // free again: the lowest free id is used.
    drop(b);
    fx.expect_event(Event::PeerLeft { id: 1, error: None });
    c.expect(1, false);
    let d = fx.connect();
    d.initial(2, 0, &[2]);
}

#[test]
fn clients_beyond_max_peers_are_closed() {
    let fx = Fixture::start(1, 2);
    let a = fx.connect();
    a.initial(1, 0, &[]);
    let b = fx.connect();
    b.initial(1, 1, &[0]);
    let c = fx.connect();
    match c.try_recv() {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("refused client got {:?}", other.map(|(v, _)| v)),
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match fx.events.recv_timeout(TIMEOUT) {
            Ok(Event::ClientRefused { reason }) => {
                assert!(reason.contains("all 2 peer ids"), "{reason}");
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline),
            Err(_) => panic!("no ClientRefused event"),
        }
    }
    a.joined(1, 1);
    a.expect_silence();
    drop(b);
    a.expect(1, false);
    // a was told peer 1 left, so the newcomer gets id 2 (see Peer::departed).
    fx.connect().initial(1, 2, &[0]);
}

#[test]
fn bad_sizes_are_refused_with_the_size_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let bind = |shm| Server::bind(ServerConfig::new(&path, shm)).err().unwrap();

    let err = format!("{:#}", bind(ShmBacking::Memfd { size: 3 * MIB }));
    assert!(
        err.contains("3 MiB") && err.contains("power of two"),
        "{err}"
    );
    let err = format!("{:#}", bind(ShmBacking::Memfd { size: 512 << 10 }));
    assert!(
        err.contains("512 KiB") && err.contains("too small"),
        "{err}"
    );
    let shm_path = dir.path().join("shm");
    let err = format!(
        "{:#}",
        bind(ShmBacking::File {
            path: shm_path.clone(),
            size: 3 * MIB
        })
    );
    assert!(err.contains("3 MiB"), "{err}");
    assert!(!path.exists(), "no socket may be left by a refused start");
    assert!(
        !shm_path.exists(),
        "no shm file may be left by a refused start"
    );
}

#[test]
fn socket_is_0600_and_removed_after_stop() {
    let mut fx = Fixture::start(1, 4);
    let meta = fs::symlink_metadata(&fx.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let a = fx.connect();
    a.initial(1, 0, &[]);
    fx.stop();
    assert!(!fx.path.exists());
    // The client sees the server go away.
    assert!(a.try_recv().is_err());
    // Only our socket was in the directory; nothing else is left.
    assert_eq!(fs::read_dir(fx.dir.path()).unwrap().count(), 0);
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::bind(ServerConfig::new(&path, ShmBacking::Memfd { size: MIB })).unwrap();
    let handle = server.spawn(|_| {}).unwrap();
    Client::connect(&path).initial(4, 0, &[]);
    handle.stop().unwrap();
    assert!(!path.exists());
}

#[test]
fn a_live_servers_socket_is_refused() {
    let fx = Fixture::start(1, 4);
    let err = Server::bind(ServerConfig::new(&fx.path, ShmBacking::Memfd { size: MIB }))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("already listening"), "{err:#}");
    // The running server is untouched and still serves (the probe's short
    // visit took and released id 0).
    assert!(fx.path.exists());
    fx.connect().initial(1, 0, &[]);
}

#[test]
fn a_stalled_client_does_not_hold_up_the_others() {
    let vectors = 64;
    let fx = Fixture::start(vectors as u32, 8);
    // Never reads; a small receive buffer where the kernel honours it.
    let stalled = fx.connect();
    setsockopt(&stalled.stream, sockopt::RcvBuf, &1).unwrap();
    fx.expect_event(Event::PeerJoined { id: 0 });

    // Peers come and go, each announced to the stalled client with 64 fds,
    // until its socket is full and messages wait in the server's queue.
    let mut churns = 0;
    while fx.handle().peers()[0].queued == 0 {
        assert!(churns < 2000, "the stalled client's socket never filled");
        let c = fx.connect();
        let id = fx.joined_id();
        drop(c);
        fx.expect_event(Event::PeerLeft { id, error: None });
        churns += 1;
    }
    for _ in 0..20 {
        let c = fx.connect();
        let id = fx.joined_id();
        drop(c);
        fx.expect_event(Event::PeerLeft { id, error: None });
    }
    let queued = fx.handle().peers()[0].queued;
    assert!(queued > 0);
    // Announcements of peers that left before being sent are dropped, so
    // the queue stays small however many peers come and go.
    assert!(queued <= 2 * (vectors + 1) + 3, "queue grew to {queued}");

    let start = Instant::now();
    let third = fx.connect();
    // Usually 1; higher if the stalled client had been told an id left.
    let id = fx.joined_id();
    let it = third.initial(vectors, id.into(), &[0]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "initial sequence took {:?}",
        start.elapsed()
    );
    assert_eq!(it.own.len(), vectors);
    assert_eq!(
        fx.handle().peers()[0].id,
        0,
        "the stalled client is still a peer"
    );
    drop(stalled);
    fx.expect_event(Event::PeerLeft { id: 0, error: None });
    third.expect(0, false);
}

/// Kills and reaps QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_stderr(qemu: &mut Qemu) -> String {
    let _ = qemu.0.kill();
    let _ = qemu.0.wait();
    let mut err = String::new();
    if let Some(mut pipe) = qemu.0.stderr.take() {
        let _ = pipe.read_to_string(&mut err);
    }
    err
}

#[test]
fn real_qemu_connects_and_leaves() {
    let qemu_bin = "qemu-system-x86_64";
    if Command::new(qemu_bin).arg("--version").output().is_err() {
        eprintln!("skipping real_qemu_connects_and_leaves: {qemu_bin} is not installed");
        return;
    }
    let fx = Fixture::start(4, 16);
    let a = fx.connect();
    a.initial(4, 0, &[]);
    fx.expect_event(Event::PeerJoined { id: 0 });

    let child = Command::new(qemu_bin)
        .args(["-machine", "q35", "-nodefaults", "-display", "none", "-S"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", fx.path.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=4"])
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);

    // A hears of QEMU as peer 1 with 4 eventfds.
    a.joined(4, 1);
    fx.expect_event(Event::PeerJoined { id: 1 });
    // QEMU consumes its whole connect sequence and stays up (it aborts on a
    // message it cannot use, e.g. a shm size that is not a power of two).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = qemu.0.try_wait().unwrap() {
            panic!("QEMU exited ({status}): {}", qemu_stderr(&mut qemu));
        }
        let peers = fx.handle().peers();
        if peers.iter().any(|p| p.id == 1 && p.queued == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU did not read its messages: {peers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = qemu.0.try_wait().unwrap() {
        panic!("QEMU exited ({status}): {}", qemu_stderr(&mut qemu));
    }

    let _ = qemu.0.kill();
    let _ = qemu.0.wait();
    fx.expect_event(Event::PeerLeft { id: 1, error: None });
    a.expect(1, false);
    a.expect_silence();
}
