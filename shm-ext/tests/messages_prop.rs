//! Property tests: random bytes in a queue's header and records never make
//! message operations panic (Ok or a named error), and never disturb the
//! other queues, which keep delivering exactly what was sent.
#![cfg(feature = "std")]

mod locks_support;

use locks_support::{attach, is_named, join};
use proptest::prelude::*;
use shm_ext::host::HeapRegion;
use shm_ext::{Generation, InitParams, NoDoorbell, ShmError};

const SIZE: usize = 512 * 1024;

fn ok_or_named<T>(r: Result<T, ShmError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(is_named(&e), "{e:?}");
            None
        }
    }
}

fn params() -> InitParams {
    InitParams {
        max_nodes: 4,
        queue_area_len: 4 * 8192,
        ..InitParams::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Send(u16, u32, usize),
    SendAll(u32, usize),
    Recv(u32, usize),
    Peek(u32),
    Info,
    Recover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..6, 0u32..18, 0usize..9000).prop_map(|(n, p, l)| Op::Send(n, p, l)),
        (0u32..17, 0usize..300).prop_map(|(p, l)| Op::SendAll(p, l)),
        (0u32..17, 0usize..9000).prop_map(|(p, l)| Op::Recv(p, l)),
        (0u32..17).prop_map(Op::Peek),
        Just(Op::Info),
        Just(Op::Recover),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_queue_bytes_never_panic_and_stay_in_their_queue(
        prefill in 0usize..6,
        header in prop::collection::vec(any::<u8>(), 0..128),
        records in prop::collection::vec((0usize..8192 / 8, any::<u64>()), 0..24),
        small_words in prop::collection::vec((0usize..8192 / 8, 0u64..20000), 0..8),
        ops in prop::collection::vec(op(), 1..24),
    ) {
        let mem = HeapRegion::new(SIZE);
        let shm = attach(mem.region(), &params());
        let a = join(&shm, 0);
        let b = join(&shm, 1);
        let c = join(&shm, 2);
        // Some honest traffic first, so records exist to be scrambled.
        for i in 0..prefill {
            shm.msg_send(&NoDoorbell, a, 1, (i % 3) as u32, &vec![i as u8; 100 * i]).unwrap();
        }
        // Scramble node 1's queue: header bytes, random and plausible words.
        let q1 = shm.superblock().layout.queue_area.offset as usize + 8192;
        shm.region().write_bytes(q1, &header).unwrap();
        for (w, v) in records.into_iter().chain(small_words) {
            shm.region().write_bytes(q1 + 8 * w, &v.to_le_bytes()).unwrap();
        }
        let mut sent_to_c = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let me = if i % 2 == 0 { a } else { b };
            match op {
                Op::Send(to, port, len) => {
                    let msg = vec![i as u8; len];
                    let r = shm.msg_send(&NoDoorbell, me, to, port, &msg);
                    if to == 2 && r.is_ok() {
                        sent_to_c.push((me, port, msg));
                    }
                    ok_or_named(r);
                }
                Op::SendAll(port, len) => {
                    let msg = vec![7u8; len];
                    let r = shm.msg_send_all(&NoDoorbell, me, port, &msg);
                    if r.is_ok_and(|set| set.contains(2)) {
                        sent_to_c.push((me, port, msg));
                    }
                    ok_or_named(r);
                }
                Op::Recv(port, len) => {
                    let mut buf = vec![0u8; len];
                    ok_or_named(shm.msg_recv(&NoDoorbell, b, port, &mut buf));
                }
                Op::Peek(port) => { ok_or_named(shm.msg_peek(&NoDoorbell, b, port)); }
                Op::Info => { ok_or_named(shm.queue_info(1)); }
                Op::Recover => {
                    ok_or_named(shm.recover_ipc(&NoDoorbell, a, 3, Generation(1)));
                }
            }
        }
        let snap = shm.snapshot();
        let _ = snap.to_string();
        let _ = serde_json::to_string(&snap).unwrap();
        // Node 2's queue delivered exactly what was sent to it, per port in
        // order, whatever happened to node 1's.
        for port in 0..16 {
            let mut want = sent_to_c.iter().filter(|(_, p, _)| *p == port);
            let mut buf = vec![0u8; 9000];
            while let Ok(r) = shm.msg_recv(&NoDoorbell, c, port, &mut buf) {
                let (from, _, msg) = want.next().expect("extra message");
                prop_assert_eq!(r.from, *from);
                prop_assert_eq!(&buf[..r.len], msg.as_slice());
            }
            prop_assert!(want.next().is_none(), "lost message");
        }
    }
}
