//! Messages across OS processes: several senders into one receiver's queue,
//! small enough to fill; sizes from 1 byte to 64 KiB. The receiver checks
//! no loss, no duplicates, per-sender order and every byte (with a checksum
//! in each message large enough to carry one).
//!
//! The receiver starts taking messages only after a sender has seen
//! `QueueFull`, so back-pressure is exercised whatever the scheduling.
#![cfg(feature = "std")]

mod locks_support;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use locks_support::{
    ChildEnv, child_env, facts_for, finish_all, load, mix, report, spawn, wait_until, word,
};
use shm_ext::host::SharedFile;
use shm_ext::message::{QUEUE_HEADER_LEN, RECORD_HEADER_LEN, queue, record};
use shm_ext::{Caller, InitParams, NoDoorbell, Shm, ShmError};

const SIZE: usize = 4 << 20;
const RECEIVER: u16 = 0;
const SENDERS: u16 = 4;
/// Messages per sender.
const N: u32 = 100;
const MAX: usize = 64 * 1024;

// Test data words in the heap area.
const FULL_SEEN: usize = 0;
/// Word `SENT + s`: messages sender `s` has sent.
const SENT: usize = 1;
/// Word `TAKEN + s`: messages the receiver has taken from sender `s`.
const TAKEN: usize = SENT + SENDERS as usize + 1;
/// A child that waits this long gives up, printing the queue and everyone's
/// progress, well before the parent's deadline kills it.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

fn params() -> InitParams {
    // 160 KiB per queue: two 64 KiB messages fill it.
    InitParams {
        max_nodes: 8,
        queue_area_len: 8 * 160 * 1024,
        ..InitParams::default()
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Sender `s`'s port: two ports in use, read alternately.
fn port_of(s: u16) -> u32 {
    u32::from(s % 2)
}

/// The exact bytes of message `q` of sender `s`.
fn body(s: u16, q: u32) -> Vec<u8> {
    let seed = (u64::from(s) << 32) | u64::from(q);
    let len = match q % 10 {
        0 => 1,
        1 => MAX,
        2 => 16,
        _ => 1 + (mix(seed) % MAX as u64) as usize,
    };
    let mut v = Vec::with_capacity(len);
    let mut x = seed;
    while v.len() < len {
        x = mix(x);
        v.extend(x.to_le_bytes().iter().take(len - v.len()));
    }
    if len >= 16 {
        v[..4].copy_from_slice(&q.to_le_bytes());
        v[4..8].copy_from_slice(&u32::from(s).to_le_bytes());
        let sum = fnv(&v[16..]);
        v[8..16].copy_from_slice(&sum.to_le_bytes());
    }
    v
}

/// A tag as a caller, for reports.
fn who(tag: u64) -> String {
    match (tag, Caller::from_tag(tag)) {
        (0, _) => "free".into(),
        (_, Some(c)) => format!("{c}"),
        (t, None) => format!("{t:#x}"),
    }
}

/// The receiver's queue as read raw (header words, the records from the
/// tail) and every sender's progress: what a stuck child prints.
fn dump(shm: &Shm<'_>, what: &str) -> String {
    let mut s = format!("{what}\n");
    let _ = writeln!(s, "queue_info: {:?}", shm.queue_info(RECEIVER));
    let area = shm.superblock().layout.queue_area;
    let per = area.len / u64::from(shm.max_nodes()) / 64 * 64;
    let cap = (per - QUEUE_HEADER_LEN) / RECORD_HEADER_LEN * RECORD_HEADER_LEN;
    let base = (area.offset + u64::from(RECEIVER) * per) as usize;
    let region = shm.region();
    let w = |off: usize| {
        region
            .atomic_u64(off)
            .map_or(u64::MAX, |a| a.load(Ordering::Acquire))
    };
    let (head, tail) = (w(base + queue::HEAD), w(base + queue::TAIL));
    let _ = writeln!(
        s,
        "tail={tail} head={head} used={} cap={cap} reserve_lock={} receive_lock={} space_waiters={:#x}",
        head.wrapping_sub(tail),
        who(w(base + queue::RESERVE_LOCK)),
        who(w(base + queue::RECEIVE_LOCK)),
        w(base + queue::SPACE_WAITERS),
    );
    let mut p = tail;
    for _ in 0..12 {
        if p >= head {
            break;
        }
        let at = base + (QUEUE_HEADER_LEN + p % cap) as usize;
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        if region.read_bytes(at, &mut h).is_err() {
            break;
        }
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let ctl = u64::from_le_bytes(h[record::CONTROL..][..8].try_into().unwrap());
        let span = u64::from(u32_at(record::SPAN));
        let _ = writeln!(
            s,
            "  record {p}: ctl pos={} state={} port={:#x} len={} sender={} span={span} gen={}",
            (ctl >> 8) * RECORD_HEADER_LEN,
            ctl & 0xff,
            u32_at(record::PORT),
            u32_at(record::LEN),
            who(u64::from_le_bytes(
                h[record::SENDER..][..8].try_into().unwrap()
            )),
            u32_at(record::DEST_GEN),
        );
        if span == 0 || span % RECORD_HEADER_LEN != 0 {
            break;
        }
        p += span;
    }
    for n in 1..=SENDERS as usize {
        let _ = writeln!(
            s,
            "  sender {n}: sent {} taken {}",
            load(word(shm, SENT + n)),
            load(word(shm, TAKEN + n))
        );
    }
    s
}

/// Fails a stuck child, with the queue and everyone's progress.
fn check(shm: &Shm<'_>, start: Instant, what: &str) {
    if start.elapsed() >= CHILD_DEADLINE {
        panic!(
            "{}",
            dump(shm, &format!("stuck for {CHILD_DEADLINE:?}: {what}"))
        );
    }
}

fn open(env: &ChildEnv) -> SharedFile {
    SharedFile::open(Path::new(&env.file)).unwrap()
}

fn wait_for_peers(shm: &Shm<'_>, start: Instant) {
    wait_until(start, "all nodes live", || {
        (0..=SENDERS).all(|n| shm.live_nodes().contains(n))
    });
}

fn child_sender(env: &ChildEnv) {
    let map = open(env);
    let start = Instant::now();
    let shm = Shm::open(map.region()).unwrap();
    let g = shm.join(env.id, &facts_for(env.id)).unwrap();
    let me = Caller::new(env.id, g, 1).unwrap();
    wait_for_peers(&shm, start);
    let mut fulls = 0u64;
    let mut busy = 0u64;
    for q in 0..N {
        let msg = body(env.id, q);
        loop {
            match shm.msg_send(&NoDoorbell, me, RECEIVER, port_of(env.id), &msg) {
                Ok(()) => break,
                Err(ShmError::QueueFull) => {
                    fulls += 1;
                    word(&shm, FULL_SEEN).store(1, Ordering::Release);
                }
                Err(ShmError::Busy) => busy += 1,
                Err(e) => panic!("send {q}: {e}\n{}", dump(&shm, "send failed")),
            }
            // The kernel would sleep until a MESSAGE doorbell here.
            check(&shm, start, &format!("sender {} at message {q}", env.id));
            std::thread::yield_now();
        }
        word(&shm, SENT + usize::from(env.id)).store(u64::from(q) + 1, Ordering::Release);
    }
    println!("SEND node={} sent={N} fulls={fulls} busy={busy}", env.id);
}

fn child_receiver(env: &ChildEnv) {
    let map = open(env);
    let start = Instant::now();
    let shm = Shm::open(map.region()).unwrap();
    let g = shm.join(env.id, &facts_for(env.id)).unwrap();
    let me = Caller::new(env.id, g, 1).unwrap();
    wait_for_peers(&shm, start);
    wait_until(start, "queue full", || load(word(&shm, FULL_SEEN)) == 1);
    // Refused room for at most a 64 KiB record, and nothing taken since.
    let info = shm.queue_info(RECEIVER).unwrap();
    assert!(
        info.bytes_used + RECORD_HEADER_LEN + MAX as u64 > info.capacity,
        "{info:?}"
    );

    let mut next = [0u32; SENDERS as usize + 1];
    let mut buf = vec![0u8; MAX];
    let mut bytes = 0u64;
    let mut busy = 0u64;
    let mut port = 0;
    while (1..=SENDERS).any(|s| next[usize::from(s)] < N) {
        port ^= 1;
        let r = match shm.msg_recv(&NoDoorbell, me, port, &mut buf) {
            Ok(r) => r,
            // Busy: a sender is moving the tail past padding; the kernel
            // retries at the next doorbell or tick.
            Err(e @ (ShmError::NoMessage | ShmError::Busy)) => {
                busy += u64::from(e == ShmError::Busy);
                check(&shm, start, &format!("receiver expecting {next:?}"));
                std::thread::yield_now();
                continue;
            }
            Err(e) => panic!("recv: {e}\n{}", dump(&shm, "receive failed")),
        };
        let s = r.from.node();
        assert!((1..=SENDERS).contains(&s), "from {}", r.from);
        assert_eq!(port_of(s), port);
        let q = next[usize::from(s)];
        assert!(q < N, "duplicate or extra message from {s}");
        let got = &buf[..r.len];
        if got.len() >= 16 {
            // Self-describing: sequence, sender, checksum.
            let seq = u32::from_le_bytes(got[..4].try_into().unwrap());
            assert_eq!(seq, q, "order from sender {s}");
            assert_eq!(
                u32::from_le_bytes(got[4..8].try_into().unwrap()),
                u32::from(s)
            );
            let sum = u64::from_le_bytes(got[8..16].try_into().unwrap());
            assert_eq!(sum, fnv(&got[16..]), "checksum of {s}:{q}");
        }
        assert!(got == body(s, q).as_slice(), "bytes of {s}:{q}");
        next[usize::from(s)] += 1;
        word(&shm, TAKEN + usize::from(s))
            .store(u64::from(next[usize::from(s)]), Ordering::Release);
        bytes += r.len as u64;
    }
    // Nothing extra: every sender is done (its last message arrived).
    let mut small = [0u8; 8];
    for port in 0..2 {
        assert_eq!(
            shm.msg_recv(&NoDoorbell, me, port, &mut small),
            Err(ShmError::NoMessage)
        );
    }
    let info = shm.queue_info(RECEIVER).unwrap();
    assert_eq!((info.depth, info.bytes_used), (0, 0));
    println!(
        "RECV node={} messages={} bytes={bytes} busy={busy}",
        env.id,
        u32::from(SENDERS) * N
    );
}

/// Child side: does nothing unless spawned by the test below.
#[test]
fn child() {
    let Some(env) = child_env() else {
        return;
    };
    match env.role.as_str() {
        "sender" => child_sender(&env),
        "receiver" => child_receiver(&env),
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn senders_fill_one_queue_and_the_receiver_gets_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shm");
    {
        let map = SharedFile::open_or_create(&file, SIZE).unwrap();
        let shm = Shm::attach(map.region(), &params(), || 0, 1).unwrap();
        assert!(shm.msg_max_len(RECEIVER).unwrap() >= MAX);
    }
    let start = Instant::now();
    let mut children = vec![(
        "receiver".to_string(),
        spawn(&file, "receiver", RECEIVER, ""),
    )];
    children.extend((1..=SENDERS).map(|s| (format!("sender {s}"), spawn(&file, "sender", s, ""))));
    // All at once: a receiver that fails must be what is reported, not a
    // sender killed at the deadline while waiting for it.
    let mut outs = finish_all(children, start);
    for line in outs.iter().flat_map(|o| o.lines()) {
        if line.contains("SEND ") || line.contains("RECV ") {
            println!("{line}");
        }
    }
    let out = outs.remove(0);
    let mut fulls = 0;
    for s in &outs {
        assert_eq!(report(s, "SEND", "sent"), u64::from(N));
        fulls += report(s, "SEND", "fulls");
    }
    assert_eq!(
        report(&out, "RECV", "messages"),
        u64::from(SENDERS) * u64::from(N)
    );
    assert!(fulls > 0, "the queue never filled");
    let expected: u64 = (1..=SENDERS)
        .flat_map(|s| (0..N).map(move |q| body(s, q).len() as u64))
        .sum();
    assert_eq!(report(&out, "RECV", "bytes"), expected);
}
