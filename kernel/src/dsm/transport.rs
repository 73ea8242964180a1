//! DSM messages over the extension layer: port `DSM_PORT`, sent and
//! received by the kernel as process [`DSM_PROCESS`](super::DSM_PROCESS).
//!
//! Everything received is untrusted: a message from another process
//! (an app may send to any port), one that does not decode, or one the
//! engine refuses is dropped and counted, never followed.

use super::{DSM_PROCESS, Dsm};
use crate::cluster::IvshmemDoorbell;
use shm_ext::ShmError;
use shm_ext::dsm::{DSM_PORT, Event, Message};
use shm_ext::platform::vector;

/// Most messages one pump takes, so that a flood cannot hold the CPU with
/// interrupts off for long.
const MAX_PER_PUMP: usize = 64;
/// Longest a pump goes on taking messages. Under this host's KVM (ring 0
/// emulated) one message with its disk writes cost tens of milliseconds,
/// and 64 of them held the DSM lock, interrupts off, for 4 s; the rest
/// waits for the next pump (at the latest the next tick).
const PUMP_BUDGET_NS: u64 = 20_000_000;
/// Refusals logged (then only counted).
const MAX_REFUSAL_LOGS: u64 = 8;

fn refuse(d: &mut Dsm, from: u16, why: &dyn core::fmt::Display) {
    d.refused += 1;
    if d.refused <= MAX_REFUSAL_LOGS {
        crate::kprintln!(
            "node {}: DSM message from node {from} refused: {why}",
            d.node.id
        );
    }
}

/// Takes the DSM messages waiting for this node and hands them to the
/// engine; returns how many it took.
pub fn receive(d: &mut Dsm) -> usize {
    let Ok(me) = d.node.caller(u64::from(DSM_PROCESS)) else {
        return 0;
    };
    replay_held(d);
    let mut taken = 0;
    let until = crate::time::now_ns().saturating_add(PUMP_BUDGET_NS);
    for _ in 0..MAX_PER_PUMP {
        if crate::time::now_ns() > until {
            break;
        }
        crate::cluster::beat_if_due("DSM receive");
        let mut rx = core::mem::take(&mut d.rx);
        let got = d
            .node
            .shm()
            .msg_recv(&IvshmemDoorbell, me, DSM_PORT, &mut rx);
        let r = match got {
            Ok(r) => r,
            Err(ShmError::TooLarge) => {
                // Longer than any queue message should be: drop it by
                // taking it into a buffer of its size.
                let len = d
                    .node
                    .shm()
                    .msg_peek(&IvshmemDoorbell, me, DSM_PORT)
                    .map_or(0, |p| p.len);
                let mut big = alloc::vec![0u8; len];
                let _ = d
                    .node
                    .shm()
                    .msg_recv(&IvshmemDoorbell, me, DSM_PORT, &mut big);
                d.rx = rx;
                refuse(d, u16::MAX, &"message longer than the receive buffer");
                taken += 1;
                continue;
            }
            Err(_) => {
                // NoMessage, Busy (try at the next pump), or a damaged
                // queue (the extension layer reports that itself).
                d.rx = rx;
                return taken;
            }
        };
        let from = r.from.node();
        let decoded = if r.from.process() != DSM_PROCESS {
            Err(shm_ext::dsm::DsmError::BadMessage {
                what: "not sent by a kernel's DSM",
            })
        } else {
            Message::decode(&rx[..r.len.min(rx.len())], d.engine_nodes())
        };
        d.rx = rx;
        match decoded {
            Ok(msg) if is_request(&msg) && d.outbox.len() >= super::OUTBOX_SOFT_LIMIT => {
                // Back-pressure without deadlock: a new request (whose answer
                // is a page to send) waits while sends pile up; everything
                // else, which frees or completes work, is handled now.
                d.held.push_back((from, msg));
            }
            Ok(msg) => {
                if let Err(e) = d.handle(Event::Message { from, msg }) {
                    refuse(d, from, &e);
                }
            }
            Err(e) => refuse(d, from, &e),
        }
        taken += 1;
    }
    taken
}

fn is_request(m: &Message) -> bool {
    use shm_ext::dsm::Kind;
    matches!(
        m.kind,
        Kind::ReadRequest | Kind::WriteRequest | Kind::Fetch | Kind::WriteBack
    )
}

/// Handles requests held back while the outbox was full, once it drained.
pub fn replay_held(d: &mut Dsm) {
    while d.outbox.len() < super::OUTBOX_SOFT_LIMIT / 2 {
        let Some((from, msg)) = d.held.pop_front() else {
            return;
        };
        if let Err(e) = d.handle(Event::Message { from, msg }) {
            refuse(d, from, &e);
        }
    }
}

/// Encodes `msg` for node `to` and sends it, or queues it behind earlier
/// messages to the same node.
pub fn queue(d: &mut Dsm, to: u16, msg: &Message) {
    let mut bytes = alloc::vec![0u8; msg.encoded_len()];
    match msg.encode(&mut bytes) {
        Ok(n) => {
            bytes.truncate(n);
            d.outbox.push_back((to, bytes));
        }
        Err(e) => log::warn!("dsm: cannot encode a message for node {to}: {e}"),
    }
}

/// Sends what the outbox holds, oldest first; a destination whose queue is
/// full keeps its messages (and their order) for the next pump.
pub fn flush(d: &mut Dsm) {
    if d.outbox.is_empty() {
        return;
    }
    let Ok(me) = d.node.caller(u64::from(DSM_PROCESS)) else {
        return;
    };
    let mut blocked = shm_ext::NodeSet::default();
    let mut sent = shm_ext::NodeSet::default();
    let mut keep = alloc::collections::VecDeque::new();
    while let Some((to, bytes)) = d.outbox.pop_front() {
        crate::cluster::beat_if_due("DSM send");
        if blocked.contains(to) {
            keep.push_back((to, bytes));
            continue;
        }
        match d
            .node
            .shm()
            .msg_send(&IvshmemDoorbell, me, to, DSM_PORT, &bytes)
        {
            Ok(()) => sent.insert(to),
            Err(ShmError::QueueFull | ShmError::Busy) => {
                blocked.insert(to);
                keep.push_back((to, bytes));
            }
            Err(e) => {
                // A node that left or died: its transactions are lost with it.
                log::warn!("dsm: message to node {to} dropped: {e}");
            }
        }
    }
    d.outbox = keep;
    // The send rang MESSAGE, which wakes the peer's app waiters; DSM wakes
    // the task that serves DSM requests there (once per peer and flush).
    for to in sent.iter() {
        let _ = d.node.shm().ring(&IvshmemDoorbell, to, vector::DSM);
    }
}

impl Dsm {
    /// The node count the engine was made with (the node table's size).
    fn engine_nodes(&self) -> u16 {
        self.node.shm().max_nodes()
    }
}
