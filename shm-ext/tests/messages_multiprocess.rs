//! Messages across OS processes: several senders into one receiver's queue,
//! small enough to fill; sizes from 1 byte to 64 KiB. The receiver checks
//! no loss, no duplicates, per-sender order and every byte (with a checksum
//! in each message large enough to carry one).
//!
//! The receiver starts taking messages only after a sender has seen
//! `QueueFull`, so back-pressure is exercised whatever the scheduling.
#![cfg(feature = "std")]

mod locks_support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use locks_support::{
    ChildEnv, check_deadline, child_env, facts_for, finish, load, mix, report, spawn, wait_until,
    word,
};
use shm_ext::host::SharedFile;
use shm_ext::{Caller, InitParams, NoDoorbell, Shm, ShmError};

const SIZE: usize = 4 << 20;
const RECEIVER: u16 = 0;
const SENDERS: u16 = 4;
/// Messages per sender.
const N: u32 = 100;
const MAX: usize = 64 * 1024;

// Test data words in the heap area.
const FULL_SEEN: usize = 0;

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
                Err(e) => panic!("send {q}: {e}"),
            }
            // The kernel would sleep until a MESSAGE doorbell here.
            check_deadline(start, "send");
            std::thread::yield_now();
        }
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
    assert!(shm.queue_info(RECEIVER).unwrap().bytes_used > 96 * 1024);

    let mut next = [0u32; SENDERS as usize + 1];
    let mut buf = vec![0u8; MAX];
    let mut bytes = 0u64;
    let mut port = 0;
    while (1..=SENDERS).any(|s| next[usize::from(s)] < N) {
        port ^= 1;
        let r = match shm.msg_recv(&NoDoorbell, me, port, &mut buf) {
            Ok(r) => r,
            Err(ShmError::NoMessage) => {
                check_deadline(start, "receive");
                std::thread::yield_now();
                continue;
            }
            Err(e) => panic!("recv: {e}"),
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
        "RECV node={} messages={} bytes={bytes}",
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
    let receiver = spawn(&file, "receiver", RECEIVER, "");
    let senders: Vec<_> = (1..=SENDERS)
        .map(|s| spawn(&file, "sender", s, ""))
        .collect();
    let mut fulls = 0;
    for s in senders {
        let out = finish(s, start);
        assert_eq!(report(&out, "SEND", "sent"), u64::from(N));
        fulls += report(&out, "SEND", "fulls");
    }
    let out = finish(receiver, start);
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
