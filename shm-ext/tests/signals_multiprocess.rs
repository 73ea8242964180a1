//! Three OS processes as three nodes: many rounds of the cluster barrier,
//! then `signal_all` and `msg_send_all` from each to all.
#![cfg(feature = "std")]

mod locks_support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use locks_support::{
    check_deadline, child_env, facts_for, finish, load, report, spawn, wait_until, word,
};
use shm_ext::host::SharedFile;
use shm_ext::{Caller, InitParams, NoDoorbell, Shm, ShmError};

const SIZE: usize = 1 << 20;
const NODES: u16 = 3;
const ROUNDS: u64 = 300;
/// Heap word index of node `n`'s published round.
fn round_word(n: u16) -> usize {
    8 * usize::from(n)
}

fn body(n: u16) -> Vec<u8> {
    vec![n as u8 + 1; 100 + usize::from(n)]
}

/// Child side: does nothing unless spawned by the test below.
#[test]
fn child() {
    let Some(env) = child_env() else {
        return;
    };
    let start = Instant::now();
    let map = SharedFile::open(Path::new(&env.file)).unwrap();
    let shm = Shm::open(map.region()).unwrap();
    let id = env.id;
    let g = shm.join(id, &facts_for(id)).unwrap();
    let me = Caller::new(id, g, 1).unwrap();
    wait_until(start, "all nodes live", || {
        shm.live_nodes().len() == NODES.into()
    });

    for r in 1..=ROUNDS {
        word(&shm, round_word(id)).store(r, Ordering::Release);
        let ticket = shm.barrier_arrive(&NoDoorbell, id, g).unwrap();
        // The kernel would sleep until a BARRIER doorbell here.
        wait_until(start, "barrier", || {
            shm.barrier_poll(&NoDoorbell, ticket).unwrap()
        });
        for n in 0..NODES {
            // Everyone reached round r; nobody can be past r + 1.
            let theirs = load(word(&shm, round_word(n)));
            assert!(
                theirs == r || theirs == r + 1,
                "round {r}: node {n} at {theirs}"
            );
        }
    }

    shm.signal_all(&NoDoorbell, 10 + id as u8).unwrap();
    let want = 0b111u64 << 10;
    let mut got = 0u64;
    wait_until(start, "signals from all", || {
        got |= shm.take_signals(id).unwrap();
        got == want
    });

    loop {
        match shm.msg_send_all(&NoDoorbell, me, 3, &body(id)) {
            Ok(sent) => {
                assert_eq!(sent.len(), usize::from(NODES));
                break;
            }
            Err(ShmError::QueueFull | ShmError::Busy) => {
                check_deadline(start, "broadcast");
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut from = Vec::new();
    let mut buf = [0u8; 256];
    while from.len() < usize::from(NODES) {
        match shm.msg_recv(&NoDoorbell, me, 3, &mut buf) {
            Ok(r) => {
                assert_eq!(&buf[..r.len], body(r.from.node()).as_slice());
                from.push(r.from.node());
            }
            Err(ShmError::NoMessage | ShmError::Busy) => {
                check_deadline(start, "broadcast receive");
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
    from.sort_unstable();
    assert_eq!(from, (0..NODES).collect::<Vec<_>>());
    println!(
        "NODE id={id} rounds={ROUNDS} signals={} messages={}",
        got.count_ones(),
        from.len()
    );
}

#[test]
fn three_processes_meet_at_the_barrier_then_signal_and_broadcast_to_all() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shm");
    {
        let map = SharedFile::open_or_create(&file, SIZE).unwrap();
        Shm::attach(map.region(), &InitParams::default(), || 0, 1).unwrap();
    }
    let start = Instant::now();
    let children: Vec<_> = (0..NODES).map(|n| spawn(&file, "node", n, "")).collect();
    for c in children {
        let out = finish(c, start);
        assert_eq!(report(&out, "NODE", "rounds"), ROUNDS);
        assert_eq!(report(&out, "NODE", "signals"), 3);
        assert_eq!(report(&out, "NODE", "messages"), 3);
    }
    let map = SharedFile::open(&file).unwrap();
    let shm = Shm::open(map.region()).unwrap();
    assert_eq!(u64::from(shm.barrier_epoch().unwrap()), ROUNDS);
}
