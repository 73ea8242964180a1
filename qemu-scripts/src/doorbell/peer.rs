//! One connected client: its eventfds and its queue of outgoing messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// One protocol message waiting to be sent.
pub(crate) struct Msg {
    value: i64,
    /// Kept alive by the `Arc` until sent, even after its peer has left.
    fd: Option<Arc<OwnedFd>>,
    /// For a connect notification: the serial of the peer it announces, so
    /// the notification can be dropped if that peer leaves before it is sent.
    announces: Option<u64>,
}

impl Msg {
    /// A message without fd.
    pub(crate) fn plain(value: i64) -> Msg {
        Msg {
            value,
            fd: None,
            announces: None,
        }
    }

    /// A message carrying `fd`.
    pub(crate) fn with_fd(value: i64, fd: &Arc<OwnedFd>) -> Msg {
        Msg {
            value,
            fd: Some(Arc::clone(fd)),
            announces: None,
        }
    }

    /// A connect notification for peer `serial` (id `value`) carrying one of its eventfds.
    pub(crate) fn announce(value: i64, fd: &Arc<OwnedFd>, serial: u64) -> Msg {
        Msg {
            value,
            fd: Some(Arc::clone(fd)),
            announces: Some(serial),
        }
    }
}

/// Why [`Peer::flush`] stopped before the queue was empty.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Everything queued was sent.
    Done,
    /// The socket buffer is full: wait for POLLOUT.
    Full,
    /// The kernel refused more in-flight fds (ETOOMANYREFS, the per-user
    /// limit on fds sent but not yet received): retry on a timer, since
    /// POLLOUT would fire at once and spin.
    FdLimit,
}

/// A connected client.
pub(crate) struct Peer {
    pub(crate) id: u16,
    /// Unique over the server's life, unlike ids, which are reused.
    pub(crate) serial: u64,
    pub(crate) stream: UnixStream,
    /// This peer's eventfds, one per vector, in vector order.
    pub(crate) vectors: Vec<Arc<OwnedFd>>,
    queue: VecDeque<Msg>,
    /// Bytes of the front message already sent (a stream socket may take part of it).
    front_sent: usize,
    /// Set while the kernel refuses more in-flight fds for this client.
    pub(crate) fd_limited: bool,
    /// Ids whose departure this client was told about. QEMU 7.2 frees a
    /// departed peer's eventfd array but keeps the pointer, so announcing a
    /// new peer under such an id to this client corrupts QEMU's heap
    /// ("corrupted double-linked list", seen here): the server avoids them.
    pub(crate) departed: BTreeSet<u16>,
}

impl Peer {
    /// A peer around a non-blocking `stream`.
    pub(crate) fn new(
        id: u16,
        serial: u64,
        stream: UnixStream,
        vectors: Vec<Arc<OwnedFd>>,
    ) -> Peer {
        Peer {
            id,
            serial,
            stream,
            vectors,
            queue: VecDeque::new(),
            front_sent: 0,
            fd_limited: false,
            departed: BTreeSet::new(),
        }
    }

    /// Queues `msg` behind everything not yet sent.
    pub(crate) fn push(&mut self, msg: Msg) {
        self.queue.push_back(msg);
    }

    /// Messages not yet (completely) sent.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues what this client must hear about peer `departed` (id `id`,
    /// `vectors` eventfds) having left. If none of its connect notifications
    /// has started to go out, they are dropped and the client is told nothing
    /// (it never knew the peer), which keeps a stalled client's queue bounded
    /// however many peers come and go; otherwise the disconnect notification
    /// is queued behind them.
    pub(crate) fn forget(&mut self, id: u16, departed: u64, vectors: usize) {
        let announces = |m: &Msg| m.announces == Some(departed);
        // A peer's notifications are queued together, one per vector, so all
        // of them are still pending iff `vectors` are queued and the first
        // has not been partly sent.
        let pending = self.queue.iter().filter(|m| announces(m)).count();
        let started = self.front_sent > 0 && self.queue.front().is_some_and(announces);
        if pending == vectors && !started {
            self.queue.retain(|m| !announces(m));
        } else {
            self.push(Msg::plain(i64::from(id)));
            self.departed.insert(id);
        }
    }

    /// Sends queued messages until the queue is empty or the socket is full.
    /// An error means the client is gone or broken and must be dropped.
    pub(crate) fn flush(&mut self) -> Result<Flush, Errno> {
        self.fd_limited = false;
        while let Some(front) = self.queue.front() {
            let bytes = front.value.to_le_bytes();
            let iov = [IoSlice::new(&bytes[self.front_sent..])];
            let raw;
            let rights;
            // The fd goes with the first byte of its message only.
            let cmsgs: &[ControlMessage] = match &front.fd {
                Some(fd) if self.front_sent == 0 => {
                    raw = [fd.as_raw_fd()];
                    rights = [ControlMessage::ScmRights(&raw)];
                    &rights
                }
                _ => &[],
            };
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(0) => return Ok(Flush::Full),
                Ok(n) => {
                    self.front_sent += n;
                    if self.front_sent == bytes.len() {
                        self.front_sent = 0;
                        self.queue.pop_front();
                    }
                }
                Err(Errno::EAGAIN) => return Ok(Flush::Full),
                Err(Errno::EINTR) => {}
                Err(Errno::ETOOMANYREFS) => {
                    self.fd_limited = true;
                    return Ok(Flush::FdLimit);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }
}

/// The lowest id in `0..max_peers` that no connected peer has and that
/// `usable` accepts (the server uses it to keep departed ids in quarantine).
pub(crate) fn lowest_free_id<V>(
    peers: &BTreeMap<u16, V>,
    max_peers: u32,
    usable: impl Fn(u16) -> bool,
) -> Option<u16> {
    (0..max_peers.min(super::PROTOCOL_MAX_PEERS))
        .map(|id| id as u16)
        .find(|&id| !peers.contains_key(&id) && usable(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::EventFd;
    use std::io::Read;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(EventFd::new().unwrap().into())
    }

    fn peer() -> (Peer, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Peer::new(0, 0, ours, vec![fd()]), theirs)
    }

    fn values(peer: &Peer) -> Vec<i64> {
        peer.queue.iter().map(|m| m.value).collect()
    }

    #[test]
    fn lowest_free_id_fills_holes_and_respects_the_limit() {
        let any = |_| true;
        let mut peers = BTreeMap::new();
        assert_eq!(lowest_free_id(&peers, 2, any), Some(0));
        peers.insert(0u16, ());
        assert_eq!(lowest_free_id(&peers, 2, any), Some(1));
        peers.insert(1, ());
        assert_eq!(lowest_free_id(&peers, 2, any), None);
        peers.remove(&0);
        assert_eq!(lowest_free_id(&peers, 2, any), Some(0));
        assert_eq!(lowest_free_id(&peers, 2, |id| id != 0), None, "quarantined");
        assert_eq!(
            lowest_free_id(&BTreeMap::<u16, ()>::new(), u32::MAX, any),
            Some(0)
        );
    }

    #[test]
    fn forgetting_an_unannounced_peer_drops_its_notifications() {
        let (mut p, _other) = peer();
        let (a, b) = (fd(), fd());
        p.push(Msg::plain(0));
        p.push(Msg::announce(3, &a, 30));
        p.push(Msg::announce(3, &b, 30));
        p.push(Msg::announce(4, &a, 40));
        p.push(Msg::announce(4, &b, 40));
        p.forget(3, 30, 2);
        assert_eq!(values(&p), [0, 4, 4]);
        // Once part of a peer's notifications went out, the client must hear it left.
        p.queue.pop_front();
        p.queue.pop_front();
        p.forget(4, 40, 2);
        assert_eq!(values(&p), [4, 4]);
    }

    #[test]
    fn forgetting_a_partly_sent_notification_keeps_it() {
        let (mut p, _other) = peer();
        let a = fd();
        p.push(Msg::announce(5, &a, 50));
        p.front_sent = 3;
        p.forget(5, 50, 1);
        assert_eq!(values(&p), [5, 5]);
    }

    #[test]
    fn flush_sends_in_order_with_fds_and_stops_when_full() {
        let (mut p, theirs) = peer();
        let a = fd();
        p.push(Msg::plain(0));
        p.push(Msg::with_fd(-1, &a));
        assert_eq!(p.flush(), Ok(Flush::Done));
        let mut buf = [0u8; 16];
        let n = (&theirs).read(&mut buf).unwrap();
        assert_eq!(n, 16);
        assert_eq!(i64::from_le_bytes(buf[..8].try_into().unwrap()), 0);
        assert_eq!(i64::from_le_bytes(buf[8..].try_into().unwrap()), -1);
        // Nobody reads: the socket fills up and the rest stays queued.
        let mut rounds = 0;
        loop {
            for _ in 0..64 {
                p.push(Msg::with_fd(7, &a));
            }
            rounds += 1;
            if p.flush() == Ok(Flush::Full) {
                break;
            }
            assert!(rounds < 10_000, "the socket never filled");
        }
        assert!(p.queued() > 0);
    }
}
