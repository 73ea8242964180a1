//! Messages in one process: send and receive by port, back-pressure,
//! wrap-around, broadcast, generations, recovery, corruption, reports.
#![cfg(feature = "std")]

mod locks_support;

use std::sync::atomic::Ordering;

use locks_support::{Recorder, attach, join, mix};
use shm_ext::host::HeapRegion;
use shm_ext::message::{PORTS, QUEUE_HEADER_LEN, queue, record};
use shm_ext::platform::vector;
use shm_ext::{Caller, InitParams, NoDoorbell, NodeSet, Shm, ShmError};

const SIZE: usize = 1 << 20;

/// Small queues (8 nodes, 16 KiB each) so tests fill them quickly.
fn small() -> InitParams {
    InitParams {
        max_nodes: 8,
        queue_area_len: 8 * 16 * 1024,
        ..InitParams::default()
    }
}

/// Region offset of node `n`'s queue header.
fn queue_base(shm: &Shm<'_>, n: u16) -> usize {
    let a = shm.superblock().layout.queue_area;
    let per = a.len / u64::from(shm.max_nodes()) / 64 * 64;
    (a.offset + u64::from(n) * per) as usize
}

fn recv_vec(shm: &Shm<'_>, me: Caller, port: u32) -> Result<(Vec<u8>, Caller), ShmError> {
    let mut buf = vec![0u8; 1 << 17];
    let r = shm.msg_recv(&NoDoorbell, me, port, &mut buf)?;
    buf.truncate(r.len);
    Ok((buf, r.from))
}

#[test]
fn a_message_goes_to_its_node_and_port_and_rings_the_destination() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let bell = Recorder::default();
    assert_eq!(
        shm.msg_recv(&bell, b, 3, &mut [0; 8]),
        Err(ShmError::NoMessage)
    );

    shm.msg_send(&bell, a, 1, 3, b"hello").unwrap();
    assert_eq!(bell.take(vector::MESSAGE), vec![1]);
    assert_ne!(shm.take_pending(1).unwrap() & (1 << vector::MESSAGE), 0);
    // Nothing on other ports or other nodes.
    assert_eq!(recv_vec(&shm, b, 2).unwrap_err(), ShmError::NoMessage);
    assert_eq!(recv_vec(&shm, a, 3).unwrap_err(), ShmError::NoMessage);
    let (bytes, from) = recv_vec(&shm, b, 3).unwrap();
    assert_eq!(bytes, b"hello");
    assert_eq!(from, a);
    assert_eq!(recv_vec(&shm, b, 3).unwrap_err(), ShmError::NoMessage);

    // Empty messages and messages to oneself work too.
    shm.msg_send(&bell, a, 0, 15, b"").unwrap();
    let (bytes, from) = recv_vec(&shm, a, 15).unwrap();
    assert!(bytes.is_empty());
    assert_eq!(from.node(), 0);
}

#[test]
fn ports_are_independent_and_each_is_fifo() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    for i in 0..6u8 {
        shm.msg_send(&NoDoorbell, a, 1, u32::from(i % 2), &[i])
            .unwrap();
    }
    // Port 1 first, although port 0's messages are older.
    for want in [1u8, 3, 5] {
        assert_eq!(recv_vec(&shm, b, 1).unwrap().0, vec![want]);
    }
    for want in [0u8, 2, 4] {
        assert_eq!(recv_vec(&shm, b, 0).unwrap().0, vec![want]);
    }
    let info = shm.queue_info(1).unwrap();
    assert_eq!((info.depth, info.bytes_used), (0, 0), "tail caught up");
}

#[test]
fn peek_and_short_buffers_keep_the_message() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    shm.msg_send(&NoDoorbell, a, 1, 4, &[7u8; 100]).unwrap();
    let peek = shm.msg_peek(&NoDoorbell, b, 4).unwrap();
    assert_eq!((peek.len, peek.from), (100, a));
    assert_eq!(
        shm.msg_recv(&NoDoorbell, b, 4, &mut [0u8; 99]),
        Err(ShmError::TooLarge)
    );
    let mut buf = [0u8; 100];
    assert_eq!(shm.msg_recv(&NoDoorbell, b, 4, &mut buf).unwrap().len, 100);
    assert_eq!(buf, [7u8; 100]);
    assert_eq!(shm.msg_peek(&NoDoorbell, b, 4), Err(ShmError::NoMessage));
}

#[test]
fn every_bad_argument_is_a_named_error() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let max = shm.msg_max_len(1).unwrap();
    assert_eq!(max, 16 * 1024 - 128 - 32);
    let bad_port = |r: Result<_, ShmError>| matches!(r, Err(ShmError::InvalidArgument { .. }));
    assert!(bad_port(shm.msg_send(&NoDoorbell, a, 1, PORTS, b"x")));
    assert!(bad_port(shm.msg_send(&NoDoorbell, a, 1, u32::MAX, b"x")));
    assert!(bad_port(
        shm.msg_recv(&NoDoorbell, b, PORTS, &mut [0; 4]).map(|_| ())
    ));
    assert!(bad_port(
        shm.msg_send_all(&NoDoorbell, a, 99, b"x").map(|_| ())
    ));
    assert_eq!(
        shm.msg_send(&NoDoorbell, a, 8, 0, b"x"),
        Err(ShmError::NoSuchNode)
    );
    assert_eq!(
        shm.msg_send(&NoDoorbell, a, 5, 0, b"x"),
        Err(ShmError::NotLive)
    );
    assert_eq!(
        shm.msg_send(&NoDoorbell, a, 1, 0, &vec![0u8; max + 1]),
        Err(ShmError::TooLarge)
    );
    shm.msg_send(&NoDoorbell, a, 1, 0, &vec![9u8; max]).unwrap();
    assert_eq!(recv_vec(&shm, b, 0).unwrap().0.len(), max);
    // Callers that are not live at their generation.
    let stale = Caller::new(0, shm_ext::Generation(a.generation().0 + 1), 0).unwrap();
    assert_eq!(
        shm.msg_send(&NoDoorbell, stale, 1, 0, b"x"),
        Err(ShmError::StaleGeneration)
    );
    let ghost = Caller::new(7, shm_ext::Generation(1), 0).unwrap();
    assert_eq!(
        shm.msg_recv(&NoDoorbell, ghost, 0, &mut []),
        Err(ShmError::StaleGeneration)
    );
    let outside = Caller::new(20, shm_ext::Generation(1), 0).unwrap();
    assert_eq!(
        shm.msg_send(&NoDoorbell, outside, 1, 0, b"x"),
        Err(ShmError::NoSuchNode)
    );
    shm.leave(1, b.generation()).unwrap();
    assert_eq!(
        shm.msg_recv(&NoDoorbell, b, 0, &mut []),
        Err(ShmError::NotLive)
    );
}

#[test]
fn a_full_queue_says_queue_full_and_the_receiver_wakes_the_sender() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    let bell = Recorder::default();
    let msg = [1u8; 1000]; // a record of 1056 bytes
    let mut sent = 0;
    loop {
        match shm.msg_send(&bell, a, 1, 0, &msg) {
            Ok(()) => sent += 1,
            Err(ShmError::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let cap = (16 * 1024 - QUEUE_HEADER_LEN) as usize;
    assert_eq!(sent, cap / 1056);
    // Another sender is refused too; other queues are unaffected.
    assert_eq!(shm.msg_send(&bell, c, 1, 0, b"x"), Err(ShmError::QueueFull));
    shm.msg_send(&bell, a, 2, 0, &msg).unwrap();
    bell.take(vector::MESSAGE);
    // Receiving frees space and rings the nodes that found it full.
    shm.msg_recv(&bell, b, 0, &mut [0u8; 1000]).unwrap();
    assert_eq!(bell.take(vector::MESSAGE), vec![0, 2]);
    shm.msg_send(&bell, a, 1, 0, &msg).unwrap();
    // Nothing was lost: all `sent + 1` messages arrive.
    let mut got = 0;
    while recv_vec(&shm, b, 0).is_ok() {
        got += 1;
    }
    assert_eq!(got, sent);
}

#[test]
fn records_wrap_around_the_ring_in_order_over_many_laps() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let max = shm.msg_max_len(1).unwrap();
    let mut next_send = 0u64;
    let mut next_recv = 0u64;
    let size = |i: u64| match i % 7 {
        0 => max,
        1 => 1,
        _ => (mix(i) % max as u64) as usize + 1,
    };
    let body =
        |i: u64, n: usize| -> Vec<u8> { (0..n).map(|k| (mix(i) as usize + k) as u8).collect() };
    while next_recv < 2000 {
        // Send until full, then take a few: the ring wraps constantly.
        while next_send < 2000 {
            match shm.msg_send(&NoDoorbell, a, 1, 5, &body(next_send, size(next_send))) {
                Ok(()) => next_send += 1,
                Err(ShmError::QueueFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for _ in 0..3 {
            let Ok((bytes, _)) = recv_vec(&shm, b, 5) else {
                break;
            };
            assert_eq!(
                bytes,
                body(next_recv, size(next_recv)),
                "message {next_recv}"
            );
            next_recv += 1;
        }
    }
    assert_eq!(recv_vec(&shm, b, 5).unwrap_err(), ShmError::NoMessage);
    // Positions ran many times around the ring.
    let head = shm
        .region()
        .atomic_u64(queue_base(&shm, 1) + queue::HEAD)
        .unwrap()
        .load(Ordering::Relaxed);
    assert!(head > 100 * 16 * 1024, "{head}");
}

#[test]
fn send_all_reaches_every_live_node_or_none() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 2);
    let c = join(&shm, 5);
    let bell = Recorder::default();
    let sent = shm.msg_send_all(&bell, a, 9, b"all").unwrap();
    assert_eq!(sent.iter().collect::<Vec<_>>(), vec![0, 2, 5]);
    assert_eq!(bell.take(vector::MESSAGE), vec![0, 2, 5]);
    for me in [a, b, c] {
        assert_eq!(recv_vec(&shm, me, 9).unwrap(), (b"all".to_vec(), a));
    }
    // Fill c's queue: a broadcast then sends to nobody.
    let big = vec![0u8; 5000];
    while shm.msg_send(&bell, b, 5, 1, &big).is_ok() {}
    while shm.msg_send(&bell, b, 5, 1, b"").is_ok() {}
    assert_eq!(
        shm.msg_send_all(&bell, a, 9, b"again"),
        Err(ShmError::QueueFull)
    );
    for me in [a, b] {
        assert_eq!(recv_vec(&shm, me, 9).unwrap_err(), ShmError::NoMessage);
    }
    // An explicit set without c goes through; non-live members are skipped.
    let set = NodeSet(0b0000_0111);
    let sent = shm.msg_send_set(&bell, a, set, 9, b"set").unwrap();
    assert_eq!(sent.iter().collect::<Vec<_>>(), vec![0, 2]);
    // The given-up reservations left no trace for the receivers.
    assert_eq!(recv_vec(&shm, a, 9).unwrap().0, b"set");
    assert_eq!(recv_vec(&shm, b, 9).unwrap().0, b"set");
    assert_eq!(recv_vec(&shm, a, 9).unwrap_err(), ShmError::NoMessage);
    assert_eq!(shm.queue_info(0).unwrap().bytes_used, 0);
    assert_eq!(
        shm.msg_send_all(&bell, a, 9, &vec![0u8; 20000]),
        Err(ShmError::TooLarge)
    );
}

#[test]
fn a_restarted_node_does_not_get_its_previous_incarnations_messages() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let _b1 = join(&shm, 1);
    shm.msg_send(&NoDoorbell, a, 1, 0, b"old").unwrap();
    let b2 = join(&shm, 1); // restart
    shm.msg_send(&NoDoorbell, a, 1, 0, b"new").unwrap();
    assert_eq!(recv_vec(&shm, b2, 0).unwrap().0, b"new");
    assert_eq!(recv_vec(&shm, b2, 0).unwrap_err(), ShmError::NoMessage);
    assert_eq!(shm.queue_info(1).unwrap().bytes_used, 0);
}

#[test]
fn a_sender_that_died_mid_send_is_skipped_then_reclaimed() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let d = join(&shm, 2);
    // d sends; then its record is turned back into "reserved, not
    // committed": exactly what a sender leaves when it dies mid-copy.
    shm.msg_send(&NoDoorbell, d, 1, 0, b"dying").unwrap();
    let first = queue_base(&shm, 1) + QUEUE_HEADER_LEN as usize;
    let ctl = shm.region().atomic_u64(first + record::CONTROL).unwrap();
    ctl.store(ctl.load(Ordering::Relaxed) & !0xff | 1, Ordering::Relaxed);
    // It also died holding b's reserve lock.
    let reserve = shm
        .region()
        .atomic_u64(queue_base(&shm, 1) + queue::RESERVE_LOCK)
        .unwrap();
    reserve.store(d.tag(), Ordering::Relaxed);
    assert_eq!(
        shm.msg_send(&NoDoorbell, a, 1, 0, b"x"),
        Err(ShmError::Busy)
    );
    reserve.store(0, Ordering::Relaxed);
    shm.msg_send(&NoDoorbell, a, 1, 0, b"later").unwrap();
    // The uncommitted record does not block later messages...
    assert_eq!(recv_vec(&shm, b, 0).unwrap().0, b"later");
    assert_eq!(recv_vec(&shm, b, 0).unwrap_err(), ShmError::NoMessage);
    // ...but it holds the tail.
    let info = shm.queue_info(1).unwrap();
    assert_eq!(info.depth, 1);
    assert!(info.bytes_used > 0);

    reserve.store(d.tag(), Ordering::Relaxed);
    shm.leave(2, d.generation()).unwrap();
    let bell = Recorder::default();
    let rep = shm.recover_ipc(&bell, a, 2, d.generation()).unwrap();
    assert_eq!(rep.queues.records_abandoned, 1);
    assert_eq!(rep.queues.queue_locks_freed, 1);
    assert_eq!(rep.queues.queues_corrupt, 0);
    assert_eq!(
        bell.take(vector::MESSAGE),
        vec![1],
        "receiver told to move on"
    );
    // The next receive moves the tail past it; sending works again.
    assert_eq!(recv_vec(&shm, b, 0).unwrap_err(), ShmError::NoMessage);
    assert_eq!(shm.queue_info(1).unwrap().bytes_used, 0);
    shm.msg_send(&NoDoorbell, a, 1, 0, b"after").unwrap();
    assert_eq!(recv_vec(&shm, b, 0).unwrap().0, b"after");
}

#[test]
fn a_corrupt_queue_is_refused_and_the_others_keep_working() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    shm.msg_send(&NoDoorbell, a, 1, 0, b"one").unwrap();
    let head = shm
        .region()
        .atomic_u64(queue_base(&shm, 1) + queue::HEAD)
        .unwrap();
    let good = head.load(Ordering::Relaxed);
    // (A plausible wrong head, say 32, is only caught by the receiver.)
    for bad in [good + 8, u64::MAX, good + (1 << 40)] {
        head.store(bad, Ordering::Relaxed);
        for r in [
            shm.msg_send(&NoDoorbell, a, 1, 0, b"x").map(|_| ()),
            shm.msg_recv(&NoDoorbell, b, 0, &mut [0; 8]).map(|_| ()),
            shm.queue_info(1).map(|_| ()),
        ] {
            assert!(matches!(r, Err(ShmError::Corrupt { .. })), "{bad}: {r:?}");
        }
        shm.msg_send(&NoDoorbell, a, 2, 0, b"fine").unwrap();
        assert_eq!(recv_vec(&shm, c, 0).unwrap().0, b"fine");
    }
    head.store(good, Ordering::Relaxed);
    assert_eq!(recv_vec(&shm, b, 0).unwrap().0, b"one");
    // A corrupt record span.
    shm.msg_send(&NoDoorbell, a, 1, 0, b"two").unwrap();
    let text = shm.snapshot().to_string();
    assert!(
        text.contains("queues (8 of 16256 bytes, messages up to 16224"),
        "{text}"
    );
    let rec = (good % (16 * 1024 - 128)) as usize;
    let span = shm
        .region()
        .atomic_u32(queue_base(&shm, 1) + 128 + rec + record::SPAN)
        .unwrap();
    span.store(7, Ordering::Relaxed);
    assert!(matches!(
        recv_vec(&shm, b, 0),
        Err(ShmError::Corrupt { .. })
    ));
    let snap = shm.snapshot();
    assert!(snap.queues.as_slice()[1].error.is_some());
    assert!(snap.to_string().contains("unreadable"));
}

#[test]
fn snapshot_reports_queue_depth_and_bytes() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let _b = join(&shm, 3);
    for n in [10usize, 50, 200] {
        shm.msg_send(&NoDoorbell, a, 3, 1, &vec![0u8; n]).unwrap();
    }
    let snap = shm.snapshot();
    let q = snap.queues.as_slice()[3].info.unwrap();
    assert_eq!(q.depth, 3);
    assert_eq!(q.bytes_used, 64 + 96 + 256);
    assert_eq!(q.max_message, 16 * 1024 - 128 - 32);
    let text = snap.to_string();
    assert!(text.contains("     3       3         416"), "{text}");
    let json = serde_json::to_value(snap).unwrap();
    assert_eq!(json["queues"][3]["info"]["depth"], 3);
    assert_eq!(json["queues"].as_array().unwrap().len(), 8);
}

#[test]
fn default_parameters_give_8k_messages() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &InitParams::default());
    assert_eq!(shm.msg_max_len(0).unwrap(), 8192 - 128 - 32);
    assert_eq!(shm.msg_max_len(31).unwrap(), 8192 - 128 - 32);
    assert_eq!(shm.msg_max_len(32), Err(ShmError::NoSuchNode));
}

/// The receive lock of node `n`'s queue.
fn receive_lock<'a>(shm: &Shm<'a>, n: u16) -> &'a std::sync::atomic::AtomicU64 {
    shm.region()
        .atomic_u64(queue_base(shm, n) + queue::RECEIVE_LOCK)
        .unwrap()
}

/// Regression (multi-process test hanging): four senders retrying at a
/// full queue each took the receiver's receive lock on every try, to move
/// the tail, although the oldest record was a committed message the tail
/// cannot pass; one descheduled while holding it made the receiver's
/// `msg_recv` give up with `Busy`. A sender at a full queue behind a
/// message must leave that lock alone: a thread watching the lock word
/// never sees it taken.
#[test]
fn senders_at_a_full_queue_behind_a_message_leave_the_receive_lock_alone() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let _b = join(&shm, 1);
    let msg = [7u8; 1000];
    while shm.msg_send(&NoDoorbell, a, 1, 0, &msg).is_ok() {}
    let lock = receive_lock(&shm, 1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) && seen == 0 {
                seen = lock.load(Ordering::Relaxed);
            }
            seen
        });
        for _ in 0..20_000 {
            assert_eq!(
                shm.msg_send(&NoDoorbell, a, 1, 0, &msg),
                Err(ShmError::QueueFull)
            );
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert_eq!(seen, 0, "a sender took the receive lock for nothing");
}

/// The one case where a sender does take the receive lock: padding at the
/// tail with the receiver idle. Constructed step by step: a sender that
/// holds it (as if descheduled there) makes the receiver `Busy` and keeps
/// other senders out of the tail, losing nothing; once it is free, a
/// sender moves the tail past the padding itself.
#[test]
fn padding_at_the_tail_is_passed_by_a_sender_and_a_sender_holding_the_lock_loses_nothing() {
    let mem = HeapRegion::new(SIZE);
    let shm = attach(mem.region(), &small());
    let a = join(&shm, 0);
    let b = join(&shm, 1);
    let c = join(&shm, 2);
    let cap = (16 * 1024 - QUEUE_HEADER_LEN) as usize;
    // 15 records of 1056 bytes, all taken: the queue is empty, 416 bytes
    // before the end of the ring.
    for i in 0..15u8 {
        shm.msg_send(&NoDoorbell, a, 1, 0, &[i; 1000]).unwrap();
    }
    for i in 0..15u8 {
        assert_eq!(recv_vec(&shm, b, 0).unwrap().0, vec![i; 1000]);
    }
    assert_eq!(shm.queue_info(1).unwrap().bytes_used, 0);
    // A big message goes after padding to the end of the ring; the tail
    // stays on the padding (the receiver is not looking). 1024 bytes are
    // left after it.
    let big = vec![9u8; cap - 1056 - 416];
    shm.msg_send(&NoDoorbell, a, 1, 0, &big).unwrap();
    assert_eq!(
        shm.queue_info(1).unwrap().bytes_used,
        416 + 32 + big.len() as u64
    );
    // A 1000-byte message fits only once the tail is past the padding.
    // A sender in the middle of that holds the receive lock:
    let lock = receive_lock(&shm, 1);
    lock.store(a.tag(), Ordering::Relaxed);
    // the receiver is refused for now, the message stays;
    assert_eq!(recv_vec(&shm, b, 0).unwrap_err(), ShmError::Busy);
    assert_eq!(shm.msg_peek(&NoDoorbell, b, 0).unwrap_err(), ShmError::Busy);
    // another sender leaves the tail to it;
    assert_eq!(
        shm.msg_send(&NoDoorbell, c, 1, 1, &[1u8; 1000]),
        Err(ShmError::QueueFull)
    );
    assert_eq!(lock.load(Ordering::Relaxed), a.tag());
    // once done, a sender passes the padding and gets in.
    lock.store(0, Ordering::Relaxed);
    shm.msg_send(&NoDoorbell, c, 1, 1, &[1u8; 1000]).unwrap();
    assert_eq!(lock.load(Ordering::Relaxed), 0);
    assert_eq!(shm.queue_info(1).unwrap().depth, 2);
    assert_eq!(
        shm.queue_info(1).unwrap().bytes_used,
        32 + big.len() as u64 + 1056
    );
    assert_eq!(recv_vec(&shm, b, 0).unwrap(), (big, a));
    assert_eq!(recv_vec(&shm, b, 1).unwrap(), (vec![1u8; 1000], c));
    assert_eq!(shm.queue_info(1).unwrap().bytes_used, 0);
}
