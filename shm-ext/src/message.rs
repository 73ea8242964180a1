//! Messages to (node, port): one queue per destination node in the queue
//! area, many senders, one receiver at a time.
//!
//! # Layout
//!
//! The queue area is split evenly: node `n`'s queue starts at
//! `queue_area.offset + n * Q`, `Q = queue_area.len / max_nodes` rounded
//! down to 64 bytes. A queue is a 128-byte header and a ring of
//! `C = (Q - 128)` rounded down to 32 bytes. The largest message is
//! `C - 32` bytes: 8,032 with the defaults (256 KiB for 32 nodes); 64 KiB
//! messages need `queue_area_len >= max_nodes * (64 KiB + 192)`.
//!
//! Queue header:
//!
//! | offset | size | field          | value                                                  |
//! |-------:|-----:|----------------|--------------------------------------------------------|
//! |      0 |    8 | head           | byte position after the last reserved record (atomic)  |
//! |      8 |    8 | reserve lock   | 0, or the tag of the sender reserving space (atomic)   |
//! |     16 |    8 | space waiters  | bit `n`: node `n` got `QueueFull` here (atomic)        |
//! |     24 |   40 | reserved       | 0                                                      |
//! |     64 |    8 | tail           | byte position of the oldest record not yet freed       |
//! |     72 |    8 | receive lock   | 0, or the tag of the receiver (atomic)                 |
//! |     80 |   48 | reserved       | 0                                                      |
//!
//! Positions only grow; record `p` lives at ring offset `p % C`. Records
//! are 32-byte aligned and never wrap: one that would cross the end of the
//! ring is preceded by a padding record up to the end.
//!
//! Record (32-byte header, then the payload, padded to 32 bytes):
//!
//! | offset | size | field      | value                                                     |
//! |-------:|-----:|------------|-----------------------------------------------------------|
//! |      0 |    8 | control    | `(p / 32) << 8 \| state` (atomic); state 1 reserved, 2 committed, 3 done |
//! |      8 |    4 | port       | 0..16, or `u32::MAX` for padding                          |
//! |     12 |    4 | length     | payload bytes                                             |
//! |     16 |    8 | sender     | the sender's [`Caller`] tag                               |
//! |     24 |    4 | span       | header + payload + padding, a multiple of 32              |
//! |     28 |    4 | dest gen   | the destination's generation when sent                    |
//!
//! # Protocol
//!
//! - Send (one call: reserve, copy, signal): under the queue's reserve
//!   lock (a few loads and stores, never a copy) the sender checks space
//!   against the tail, writes the record header as reserved and moves the
//!   head. It then copies the payload straight into the ring, unlocked (so
//!   senders copy in parallel), commits with a compare-and-swap of the
//!   control word, and rings vector
//!   [`MESSAGE`](crate::platform::vector::MESSAGE) on the destination.
//! - Back-pressure: no room gives `QueueFull` and registers the sender's
//!   node as a space waiter; nothing is dropped or overwritten.
//! - Receive by port (the destination node only, under the receive lock):
//!   scans from the tail for the first committed record on the port,
//!   copies it out, marks it done, moves the tail over the leading done
//!   records, and if the tail moved rings `MESSAGE` on the space waiters.
//!   Other ports' messages stay where they are (a port nobody reads fills
//!   the queue, which then refuses further messages: back-pressure).
//! - Tail by a sender: one that needs room while the oldest records are
//!   done (padding, abandoned) moves the tail past them itself, under the
//!   receive lock if it is free; never when the oldest record is a
//!   message, so senders waiting at a full queue leave the receiver's lock
//!   alone. A receiver arriving in that moment gets `Busy`, to retry.
//! - Order: one sender's messages to one destination are reserved in send
//!   order and a receiver takes the oldest committed one first, so each
//!   (sender, port) stream arrives in order, without loss or duplicates.
//! - Generations: a record carries the destination's generation; a node
//!   that restarted discards messages sent to its previous incarnation.
//!
//! The control word carries the record's position, so a compare-and-swap
//! meant for one record can never hit a later record in the same place.
//!
//! # Node death
//!
//! [`Shm::recover_ipc`] frees reserve and receive locks held by the dead
//! incarnation and marks its reserved, uncommitted records done, so the
//! tail passes them; its committed messages are still delivered. A node
//! declared dead must stop touching shared memory (fencing): a sender that
//! was declared dead mid-copy gets `NodeDead` at commit, but its copy may
//! have scribbled over space that was reused meanwhile.
//!
//! Everything read from a queue (positions, spans, lengths, ports, states)
//! is checked; an inconsistent queue gives `Corrupt` for operations on that
//! queue only.

use core::hint::spin_loop;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::error::ShmError;
use crate::format::{Generation, NodeState, le_u32, le_u64, split_status};
use crate::lock::{Caller, incarnation_of};
use crate::platform::{Doorbell, vector};
use crate::region::Region;
use crate::shm::{NodeSet, Shm};

/// Ports per node: messages are addressed to (node, port), port `0..PORTS`.
pub const PORTS: u32 = 16;
/// Bytes of a queue header.
pub const QUEUE_HEADER_LEN: u64 = 128;
/// Bytes of a record header; records are aligned to this too.
pub const RECORD_HEADER_LEN: u64 = 32;

/// Byte offsets of the queue header fields.
pub mod queue {
    /// Head position, atomic u64.
    pub const HEAD: usize = 0;
    /// Reserve lock, atomic u64.
    pub const RESERVE_LOCK: usize = 8;
    /// Space waiters, atomic u64.
    pub const SPACE_WAITERS: usize = 16;
    /// Tail position, atomic u64.
    pub const TAIL: usize = 64;
    /// Receive lock, atomic u64.
    pub const RECEIVE_LOCK: usize = 72;
}

/// Byte offsets of the record header fields.
pub mod record {
    /// Control word (position and state), atomic u64.
    pub const CONTROL: usize = 0;
    /// Port, u32.
    pub const PORT: usize = 8;
    /// Payload length, u32.
    pub const LEN: usize = 12;
    /// Sender tag, u64.
    pub const SENDER: usize = 16;
    /// Span, u32.
    pub const SPAN: usize = 24;
    /// Destination generation, u32.
    pub const DEST_GEN: usize = 28;
}

/// Record state: space reserved, payload being copied.
const RESERVED: u64 = 1;
/// Record state: complete, waiting for the receiver.
const COMMITTED: u64 = 2;
/// Record state: taken, abandoned, discarded or padding; the tail may pass.
const DONE: u64 = 3;
/// Port of padding records.
const PAD_PORT: u32 = u32::MAX;
/// Attempts at a queue's reserve or receive lock before `Busy`; the
/// holder's critical section is a handful of loads and stores.
const LOCK_SPINS: usize = 1 << 12;

/// A message taken by `msg_recv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Payload bytes written to the buffer.
    pub len: usize,
    /// Who sent it.
    pub from: Caller,
}

/// One queue as read, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct QueueInfo {
    /// The destination node.
    pub node: u16,
    /// Records not yet done (committed or being written).
    pub depth: u32,
    /// Ring bytes in use (tail to head).
    pub bytes_used: u64,
    /// Ring bytes.
    pub capacity: u64,
    /// Largest message this queue takes.
    pub max_message: u64,
}

/// What [`Shm::recover_ipc`] did for the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct QueueRecovery {
    /// Reserved, uncommitted records of the dead sender marked done.
    pub records_abandoned: u32,
    /// Reserve and receive locks it held that were freed.
    pub queue_locks_freed: u32,
    /// Queues refused as corrupt.
    pub queues_corrupt: u32,
    /// Queues whose reserve lock stayed busy: run recovery again.
    pub queues_busy: u32,
}

/// A record header as read and checked.
#[derive(Debug, Clone, Copy)]
struct Record {
    state: u64,
    port: u32,
    len: u64,
    sender: u64,
    span: u64,
    dest_gen: u32,
}

/// The control word of the record at position `pos` in state `state`.
fn control(pos: u64, state: u64) -> u64 {
    ((pos / RECORD_HEADER_LEN) << 8) | state
}

fn round_up(n: u64) -> Option<u64> {
    n.checked_add(RECORD_HEADER_LEN - 1)
        .map(|v| v / RECORD_HEADER_LEN * RECORD_HEADER_LEN)
}

fn corrupt(what: &'static str) -> ShmError {
    ShmError::Corrupt { what }
}

fn to_usize(v: u64) -> Result<usize, ShmError> {
    usize::try_from(v).map_err(|_| ShmError::OutOfBounds)
}

/// Takes a queue lock word for `tag`, spinning briefly.
fn spin_lock(word: &AtomicU64, tag: u64) -> Result<(), ShmError> {
    for _ in 0..LOCK_SPINS {
        if word.load(Ordering::Relaxed) == 0
            && word
                .compare_exchange_weak(0, tag, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Ok(());
        }
        spin_loop();
    }
    Err(ShmError::Busy)
}

fn unlock(word: &AtomicU64, tag: u64) {
    // Fails only if recovery took the lock from us (we were declared dead).
    let _ = word.compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed);
}

/// Node `node`'s queue: header at `base`, ring of `cap` bytes after it.
#[derive(Debug, Clone, Copy)]
struct Queue<'a> {
    region: Region<'a>,
    node: u16,
    base: usize,
    cap: u64,
}

impl<'a> Queue<'a> {
    fn word(&self, field: usize) -> Result<&'a AtomicU64, ShmError> {
        self.region.atomic_u64(self.base + field)
    }

    /// Region offset of ring position `pos`.
    fn at(&self, pos: u64) -> Result<usize, ShmError> {
        Ok(self.base + to_usize(QUEUE_HEADER_LEN + pos % self.cap)?)
    }

    fn control(&self, pos: u64) -> Result<&'a AtomicU64, ShmError> {
        self.region.atomic_u64(self.at(pos)? + record::CONTROL)
    }

    /// Tail and head, read in that order (so `tail <= head` holds for a
    /// sound queue), checked.
    fn positions(&self) -> Result<(u64, u64), ShmError> {
        let tail = self.word(queue::TAIL)?.load(Ordering::Acquire);
        let head = self.word(queue::HEAD)?.load(Ordering::Acquire);
        let aligned = |p: u64| p.is_multiple_of(RECORD_HEADER_LEN);
        if tail > head || head - tail > self.cap || !aligned(tail) || !aligned(head) {
            return Err(corrupt("queue head or tail"));
        }
        Ok((tail, head))
    }

    /// The record at `pos`, which must end at or before `head`.
    fn record(&self, pos: u64, head: u64) -> Result<Record, ShmError> {
        let ctl = self.control(pos)?.load(Ordering::Acquire);
        if ctl >> 8 != control(pos, 0) >> 8 {
            return Err(corrupt("queue record position"));
        }
        let state = ctl & 0xff;
        if !(RESERVED..=DONE).contains(&state) {
            return Err(corrupt("queue record state"));
        }
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        self.region.read_bytes(self.at(pos)?, &mut h)?;
        let r = Record {
            state,
            port: le_u32(&h, record::PORT),
            len: u64::from(le_u32(&h, record::LEN)),
            sender: le_u64(&h, record::SENDER),
            span: u64::from(le_u32(&h, record::SPAN)),
            dest_gen: le_u32(&h, record::DEST_GEN),
        };
        let off = pos % self.cap;
        if r.span < RECORD_HEADER_LEN
            || !r.span.is_multiple_of(RECORD_HEADER_LEN)
            || off + r.span > self.cap
            || r.span > head - pos
            || r.len > r.span - RECORD_HEADER_LEN
        {
            return Err(corrupt("queue record span"));
        }
        if r.port == PAD_PORT {
            if state != DONE {
                return Err(corrupt("queue padding record"));
            }
        } else if r.port >= PORTS || Caller::from_tag(r.sender).is_none() {
            return Err(corrupt("queue record port or sender"));
        }
        Ok(r)
    }

    /// Writes a record header (state `state`) at `pos`.
    #[allow(clippy::too_many_arguments)]
    fn write_header(
        &self,
        pos: u64,
        state: u64,
        port: u32,
        len: u64,
        sender: u64,
        span: u64,
        dest_gen: u32,
    ) -> Result<(), ShmError> {
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        let len = u32::try_from(len).map_err(|_| ShmError::TooLarge)?;
        let span = u32::try_from(span).map_err(|_| ShmError::TooLarge)?;
        h[record::PORT..record::PORT + 4].copy_from_slice(&port.to_le_bytes());
        h[record::LEN..record::LEN + 4].copy_from_slice(&len.to_le_bytes());
        h[record::SENDER..record::SENDER + 8].copy_from_slice(&sender.to_le_bytes());
        h[record::SPAN..record::SPAN + 4].copy_from_slice(&span.to_le_bytes());
        h[record::DEST_GEN..record::DEST_GEN + 4].copy_from_slice(&dest_gen.to_le_bytes());
        let at = self.at(pos)?;
        self.region
            .write_bytes(at + record::PORT, &h[record::PORT..])?;
        // Published by the head store that follows (release).
        self.control(pos)?
            .store(control(pos, state), Ordering::Relaxed);
        Ok(())
    }

    /// Moves the tail over the leading done records (padding, abandoned
    /// records) for a sender that needs their room (reserve lock held);
    /// true if it moved.
    ///
    /// The tail belongs to the receive lock, which this takes with `tag`
    /// only if the oldest record is done and the lock is free (a receiver
    /// at work moves the tail itself). The oldest record is looked at
    /// before locking, which is sound because under the reserve lock nobody
    /// rewrites it. Taking the lock on every try at a queue full of
    /// messages, with nothing to pass, turned the receiver away (`Busy`)
    /// whenever a sender was descheduled holding it.
    fn advance_tail(&self, tag: u64) -> Result<bool, ShmError> {
        let (tail, head) = self.positions()?;
        if tail == head || self.record(tail, head)?.state != DONE {
            return Ok(false);
        }
        let lock = self.word(queue::RECEIVE_LOCK)?;
        if lock
            .compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // The receiver is at work and moves the tail itself.
            return Ok(false);
        }
        let result = (|| {
            let (tail, head) = self.positions()?;
            let mut p = tail;
            while p < head {
                let r = self.record(p, head)?;
                if r.state != DONE {
                    break;
                }
                p += r.span;
            }
            if p != tail {
                self.word(queue::TAIL)?.store(p, Ordering::Release);
            }
            Ok(p != tail)
        })();
        unlock(lock, tag);
        result
    }

    /// Reserves a record for `len` payload bytes (reserve lock held).
    fn reserve_locked(
        &self,
        sender: Caller,
        port: u32,
        len: u64,
        dest_gen: u32,
    ) -> Result<u64, ShmError> {
        let span = round_up(len + RECORD_HEADER_LEN).ok_or(ShmError::TooLarge)?;
        let head_word = self.word(queue::HEAD)?;
        // Bounded: each round either reserves, pads once, or frees space.
        for _ in 0..4 {
            let (tail, head) = self.positions()?;
            let off = head % self.cap;
            let pad = if off + span > self.cap {
                self.cap - off
            } else {
                0
            };
            let end = head
                .checked_add(pad + span)
                .ok_or(corrupt("queue head or tail"))?;
            if end - tail <= self.cap {
                if pad > 0 {
                    self.write_header(head, DONE, PAD_PORT, 0, sender.tag(), pad, 0)?;
                }
                let pos = head + pad;
                self.write_header(pos, RESERVED, port, len, sender.tag(), span, dest_gen)?;
                head_word.store(end, Ordering::Release);
                return Ok(pos);
            }
            let mut progress = false;
            if pad > 0 && end - span - tail <= self.cap {
                // Pad to the end now; the record fits at offset 0 once the
                // tail has passed the padding.
                self.write_header(head, DONE, PAD_PORT, 0, sender.tag(), pad, 0)?;
                head_word.store(head + pad, Ordering::Release);
                progress = true;
            }
            progress |= self.advance_tail(sender.tag())?;
            if !progress {
                return Err(ShmError::QueueFull);
            }
        }
        Err(ShmError::QueueFull)
    }

    /// Reserves a record under the reserve lock; on `QueueFull` registers
    /// the sender as a space waiter and checks once more.
    fn reserve(&self, sender: Caller, port: u32, len: u64, dest_gen: u32) -> Result<u64, ShmError> {
        if len > self.cap - RECORD_HEADER_LEN {
            return Err(ShmError::TooLarge);
        }
        let lock = self.word(queue::RESERVE_LOCK)?;
        let waiters = self.word(queue::SPACE_WAITERS)?;
        let tag = sender.tag();
        for round in 0..2 {
            spin_lock(lock, tag)?;
            let r = self.reserve_locked(sender, port, len, dest_gen);
            unlock(lock, tag);
            match r {
                Err(ShmError::QueueFull) if round == 0 => {
                    // Register, then look again: a receiver that freed space
                    // before seeing the bit moved the tail before we look.
                    waiters.fetch_or(1 << sender.node(), Ordering::AcqRel);
                }
                r => return r,
            }
        }
        Err(ShmError::QueueFull)
    }

    /// Copies `bytes` into the reserved record at `pos` and commits it.
    fn fill_and_commit(&self, pos: u64, bytes: &[u8]) -> Result<(), ShmError> {
        self.region
            .write_bytes(self.at(pos)? + RECORD_HEADER_LEN as usize, bytes)?;
        self.control(pos)?
            .compare_exchange(
                control(pos, RESERVED),
                control(pos, COMMITTED),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            // Recovery abandoned it: this sender was declared dead.
            .map_err(|_| ShmError::NodeDead)
    }

    /// Gives up a reserved record (it becomes done; the tail passes it).
    fn abandon(&self, pos: u64) {
        if let Ok(c) = self.control(pos) {
            let _ = c.compare_exchange(
                control(pos, RESERVED),
                control(pos, DONE),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}

/// What a receive scan should do with the first match.
enum Take<'b> {
    Copy(&'b mut [u8]),
    Peek,
}

impl<'a> Shm<'a> {
    /// Node `node`'s queue.
    fn queue(&self, node: u16) -> Result<Queue<'a>, ShmError> {
        if node >= self.max_nodes() {
            return Err(ShmError::NoSuchNode);
        }
        let area = self.superblock().layout.queue_area;
        let per = area.len / u64::from(self.max_nodes()) / 64 * 64;
        let cap = per.saturating_sub(QUEUE_HEADER_LEN) / RECORD_HEADER_LEN * RECORD_HEADER_LEN;
        if cap < 2 * RECORD_HEADER_LEN {
            return Err(ShmError::TooSmall);
        }
        let base = area
            .offset
            .checked_add(u64::from(node) * per)
            .ok_or(ShmError::OutOfBounds)?;
        let q = Queue {
            region: self.region(),
            node,
            base: to_usize(base)?,
            cap,
        };
        // The whole queue must lie in the region (validated areas do).
        to_usize(base + per)
            .ok()
            .filter(|&end| end <= self.region().len())
            .ok_or(ShmError::OutOfBounds)?;
        Ok(q)
    }

    /// The largest message node `node`'s queue takes.
    pub fn msg_max_len(&self, node: u16) -> Result<usize, ShmError> {
        let q = self.queue(node)?;
        to_usize(q.cap - RECORD_HEADER_LEN)
    }

    /// The destination's generation if it is live.
    fn live_generation(&self, node: u16) -> Result<Generation, ShmError> {
        let (raw, g) = split_status(self.status(node)?.load(Ordering::Acquire));
        if raw == NodeState::Live as u32 && g.0 != 0 {
            Ok(g)
        } else {
            Err(ShmError::NotLive)
        }
    }

    fn check_port(port: u32) -> Result<(), ShmError> {
        if port >= PORTS {
            return Err(ShmError::InvalidArgument {
                what: "port must be below 16",
            });
        }
        Ok(())
    }

    /// Sends `bytes` to port `port` of live node `to`: reserves room in its
    /// queue, copies, commits and rings its `MESSAGE` doorbell; one call.
    ///
    /// `QueueFull` when there is no room (nothing was sent; the sender's
    /// node is woken by a `MESSAGE` ring when space frees). `Busy` if the
    /// queue's reserve lock stayed taken: try again.
    pub fn msg_send(
        &self,
        doorbell: &impl Doorbell,
        from: Caller,
        to: u16,
        port: u32,
        bytes: &[u8],
    ) -> Result<(), ShmError> {
        Self::check_port(port)?;
        self.check_caller(from)?;
        let q = self.queue(to)?;
        let dest_gen = self.live_generation(to)?;
        let pos = q.reserve(from, port, bytes.len() as u64, dest_gen.0)?;
        q.fill_and_commit(pos, bytes)?;
        // Committed: a destination that died just now discards it on restart.
        let _ = self.ring(doorbell, to, vector::MESSAGE);
        Ok(())
    }

    /// Sends `bytes` to port `port` of every live node in `targets`, all or
    /// nothing: room is reserved in every queue first, and if one is full
    /// (or corrupt, or busy) the reservations are given up and that error
    /// returned, nothing sent. Nodes not live are skipped. Returns the nodes
    /// sent to.
    pub fn msg_send_set(
        &self,
        doorbell: &impl Doorbell,
        from: Caller,
        targets: NodeSet,
        port: u32,
        bytes: &[u8],
    ) -> Result<NodeSet, ShmError> {
        Self::check_port(port)?;
        self.check_caller(from)?;
        let mut reserved = [(None::<Queue<'a>>, 0u64); crate::format::MAX_NODES];
        let mut sent = NodeSet::default();
        let mut failure = None;
        for n in targets.iter().filter(|&n| n < self.max_nodes()) {
            let Ok(dest_gen) = self.live_generation(n) else {
                continue;
            };
            let r = self
                .queue(n)
                .and_then(|q| Ok((q, q.reserve(from, port, bytes.len() as u64, dest_gen.0)?)));
            match r {
                Ok((q, pos)) => {
                    if let Some(slot) = reserved.get_mut(usize::from(n)) {
                        *slot = (Some(q), pos);
                    }
                    sent.insert(n);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (q, pos) in reserved.iter() {
                if let Some(q) = q {
                    q.abandon(*pos);
                }
            }
            return Err(e);
        }
        let mut result = Ok(sent);
        for (q, pos) in reserved.iter() {
            if let Some(q) = q {
                if let Err(e) = q.fill_and_commit(*pos, bytes) {
                    result = Err(e);
                    continue;
                }
                let _ = self.ring(doorbell, q.node, vector::MESSAGE);
            }
        }
        result
    }

    /// [`Shm::msg_send_set`] to every live node, the sender's own included.
    pub fn msg_send_all(
        &self,
        doorbell: &impl Doorbell,
        from: Caller,
        port: u32,
        bytes: &[u8],
    ) -> Result<NodeSet, ShmError> {
        self.msg_send_set(doorbell, from, self.live_nodes(), port, bytes)
    }

    /// Takes the oldest message on `port` of `receiver`'s node into `buf`.
    ///
    /// `NoMessage` if none is there; `TooLarge` (message kept) if `buf` is
    /// shorter than it (see [`Shm::msg_peek`]); `Busy` if another receiver
    /// of the node holds the queue, or for a moment a sender moving its
    /// tail past padding for room: try again (nothing is lost).
    pub fn msg_recv(
        &self,
        doorbell: &impl Doorbell,
        receiver: Caller,
        port: u32,
        buf: &mut [u8],
    ) -> Result<Received, ShmError> {
        self.receive(doorbell, receiver, port, Take::Copy(buf))
    }

    /// Length and sender of the oldest message on `port` of `receiver`'s
    /// node, leaving it there.
    pub fn msg_peek(
        &self,
        doorbell: &impl Doorbell,
        receiver: Caller,
        port: u32,
    ) -> Result<Received, ShmError> {
        self.receive(doorbell, receiver, port, Take::Peek)
    }

    fn receive(
        &self,
        doorbell: &impl Doorbell,
        receiver: Caller,
        port: u32,
        take: Take<'_>,
    ) -> Result<Received, ShmError> {
        Self::check_port(port)?;
        self.check_caller(receiver)?;
        let q = self.queue(receiver.node())?;
        let lock = q.word(queue::RECEIVE_LOCK)?;
        let tag = receiver.tag();
        spin_lock(lock, tag)?;
        let result = self.receive_locked(&q, receiver.generation(), port, take);
        unlock(lock, tag);
        if let Ok((_, true)) = result {
            // Space freed: wake the senders that found the queue full.
            let waiters = NodeSet(q.word(queue::SPACE_WAITERS)?.swap(0, Ordering::AcqRel));
            for n in waiters.iter() {
                let _ = self.ring(doorbell, n, vector::MESSAGE);
            }
        }
        result.and_then(|(r, _)| r.ok_or(ShmError::NoMessage))
    }

    /// The receive scan (receive lock held): returns the message, if any,
    /// and whether the tail moved.
    fn receive_locked(
        &self,
        q: &Queue<'_>,
        generation: Generation,
        port: u32,
        mut take: Take<'_>,
    ) -> Result<(Option<Received>, bool), ShmError> {
        let (tail, head) = q.positions()?;
        let mut p = tail;
        let mut new_tail = tail;
        let mut found = None;
        let mut refused = None;
        while p < head {
            let r = q.record(p, head)?;
            let mut done = r.state == DONE;
            if r.state == COMMITTED && r.dest_gen != generation.0 {
                // Sent to an earlier incarnation of this node: discard.
                q.control(p)?.store(control(p, DONE), Ordering::Release);
                done = true;
            } else if r.state == COMMITTED && r.port == port && found.is_none() {
                let from = Caller::from_tag(r.sender).ok_or(corrupt("queue record sender"))?;
                let len = to_usize(r.len)?;
                if let Take::Copy(buf) = &mut take {
                    let Some(dst) = buf.get_mut(..len) else {
                        refused = Some(ShmError::TooLarge);
                        break;
                    };
                    q.region
                        .read_bytes(q.at(p)? + RECORD_HEADER_LEN as usize, dst)?;
                    q.control(p)?.store(control(p, DONE), Ordering::Release);
                    done = true;
                }
                found = Some(Received { len, from });
            }
            if done && new_tail == p {
                new_tail = p + r.span;
            } else if found.is_some() {
                break;
            }
            p += r.span;
        }
        if new_tail != tail {
            q.word(queue::TAIL)?.store(new_tail, Ordering::Release);
        }
        match refused {
            Some(e) => Err(e),
            None => Ok((found, new_tail != tail)),
        }
    }

    /// Node `node`'s queue as read now, without locks (for reports; a busy
    /// queue may read as `Busy`).
    pub fn queue_info(&self, node: u16) -> Result<QueueInfo, ShmError> {
        let q = self.queue(node)?;
        let mut last = ShmError::Busy;
        for _ in 0..8 {
            let scan = (|| {
                let (tail, head) = q.positions()?;
                let mut depth = 0u32;
                let mut p = tail;
                while p < head {
                    let r = q.record(p, head)?;
                    if r.state != DONE {
                        depth += 1;
                    }
                    p += r.span;
                }
                // Records read while the tail moved may be torn: check.
                if q.word(queue::TAIL)?.load(Ordering::Acquire) != tail {
                    return Err(ShmError::Busy);
                }
                Ok(QueueInfo {
                    node,
                    depth,
                    bytes_used: head - tail,
                    capacity: q.cap,
                    max_message: q.cap - RECORD_HEADER_LEN,
                })
            })();
            match scan {
                Ok(info) => return Ok(info),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Queue half of `recover_ipc` for incarnation (`dead`, `generation`),
    /// run by `me`.
    pub(crate) fn recover_queues(
        &self,
        doorbell: &impl Doorbell,
        me: Caller,
        dead: u16,
        generation: Generation,
    ) -> QueueRecovery {
        let inc = incarnation_of(dead, generation);
        let is_dead = |w: u64| w != 0 && w & 0xffff_ffff_0000_ff00 == inc;
        let mut rep = QueueRecovery::default();
        for node in 0..self.max_nodes() {
            let q = match self.queue(node) {
                Ok(q) => q,
                // No queues at all in a tiny area: nothing to recover.
                Err(ShmError::TooSmall) => break,
                Err(_) => {
                    rep.queues_corrupt += 1;
                    continue;
                }
            };
            let (Ok(reserve), Ok(receive)) =
                (q.word(queue::RESERVE_LOCK), q.word(queue::RECEIVE_LOCK))
            else {
                rep.queues_corrupt += 1;
                continue;
            };
            let cur = receive.load(Ordering::Acquire);
            if is_dead(cur)
                && receive
                    .compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                rep.queue_locks_freed += 1;
            }
            // Hold the reserve lock while scanning, so no record is reused
            // under us; take it over from the dead node if it holds it.
            let cur = reserve.load(Ordering::Acquire);
            let took = if is_dead(cur) {
                let ok = reserve
                    .compare_exchange(cur, me.tag(), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
                rep.queue_locks_freed += u32::from(ok);
                ok
            } else {
                spin_lock(reserve, me.tag()).is_ok()
            };
            if !took {
                rep.queues_busy += 1;
                continue;
            }
            let scan = (|| {
                let (tail, head) = q.positions()?;
                let mut p = tail;
                let mut abandoned = 0;
                while p < head {
                    let r = q.record(p, head)?;
                    if r.state == RESERVED && is_dead(r.sender) {
                        q.abandon(p);
                        abandoned += 1;
                    }
                    p += r.span;
                }
                Ok::<u32, ShmError>(abandoned)
            })();
            unlock(reserve, me.tag());
            match scan {
                Ok(0) => {}
                Ok(n) => {
                    rep.records_abandoned += n;
                    // Let the receiver move its tail past them.
                    let _ = self.ring(doorbell, node, vector::MESSAGE);
                }
                Err(_) => rep.queues_corrupt += 1,
            }
        }
        rep
    }
}

/// One node's queue in a snapshot: what was read, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct QueueReport {
    /// The destination node.
    pub node: u16,
    /// The queue as read.
    pub info: Option<QueueInfo>,
    /// Why it could not be read.
    pub error: Option<ShmError>,
}

/// Every node's queue, for the inspector (fixed capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueReports {
    entries: [QueueReport; crate::format::MAX_NODES],
    len: usize,
}

impl QueueReports {
    /// One report per node-table entry.
    pub fn as_slice(&self) -> &[QueueReport] {
        self.entries.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for QueueReports {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl core::fmt::Display for QueueReports {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let cap = self.as_slice().iter().find_map(|r| r.info);
        match cap {
            Some(i) => writeln!(
                f,
                "queues ({} of {} bytes, messages up to {} bytes):",
                self.len, i.capacity, i.max_message
            )?,
            None => writeln!(f, "queues ({}):", self.len)?,
        }
        let busy = |r: &&QueueReport| r.error.is_some() || r.info.is_some_and(|i| i.bytes_used > 0);
        if self.as_slice().iter().any(|r| busy(&r)) {
            writeln!(f, "  {:>4}  {:>6}  {:>10}", "node", "depth", "bytes used")?;
        }
        for r in self.as_slice().iter().filter(busy) {
            match (r.info, r.error) {
                (Some(i), _) => {
                    writeln!(f, "  {:>4}  {:>6}  {:>10}", r.node, i.depth, i.bytes_used)?
                }
                (None, Some(e)) => writeln!(f, "  {:>4}  unreadable: {e}", r.node)?,
                (None, None) => {}
            }
        }
        Ok(())
    }
}

impl Shm<'_> {
    /// Every node's queue as read now, for reports.
    pub fn queue_reports(&self) -> QueueReports {
        let entries = core::array::from_fn(|i| {
            let node = i as u16;
            let (info, error) = match self.queue_info(node) {
                Ok(info) => (Some(info), None),
                Err(e) => (None, Some(e)),
            };
            QueueReport { node, info, error }
        });
        QueueReports {
            entries,
            len: usize::from(self.max_nodes()).min(crate::format::MAX_NODES),
        }
    }
}
