//! Global locks across OS processes sharing one mapped file: exact counters
//! through the user-space fast path, several locks at once under an
//! invariant, and recovery of a lock whose holder was SIGKILLed.
//!
//! Where the kernel would put a waiter to sleep (`prepare_wait` said
//! `Sleep`) these processes yield and retry; nothing depends on timing.
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
use shm_ext::{Caller, InitParams, LockTable, NoDoorbell, Shm, TryLock};

const SIZE: usize = 1 << 20;
/// Increments per process in the counter tests.
const M: u64 = 10_000;
/// Locks in the multi-lock test.
const K: usize = 6;
/// Critical sections per process in the multi-lock test.
const ROUNDS: u64 = 3_000;
/// Increments the victim does before it takes the lock and is killed.
const VICTIM_DONE: u64 = 500;

// Test data words in the heap area (indices of u64 words, a line apart).
const COUNTER: usize = 0;
const HOLDING: usize = 8;
const PROCS_WAITING: usize = 16;
fn count_word(i: usize) -> usize {
    64 + 8 * i
}
fn owner_word(i: usize) -> usize {
    64 + 8 * i + 1
}
fn value_word(i: usize) -> usize {
    64 + 8 * i + 2
}

fn open(env: &ChildEnv) -> (SharedFile, Instant) {
    (
        SharedFile::open(Path::new(&env.file)).unwrap(),
        Instant::now(),
    )
}

/// The user-space acquire: fast path, and where the kernel would sleep, yield.
fn acquire(t: &LockTable<'_>, ids: &[u32], me: Caller, start: Instant) {
    loop {
        let (outcome, wake) = t.try_acquire_many_fast(ids, me).unwrap();
        // Locks taken and given back that had waiters: the kernel's wake
        // would ring them; here the waiters poll anyway.
        let _ = wake;
        match outcome {
            TryLock::Acquired => return,
            TryLock::WouldBlock { id, observed } => {
                let _ = t.prepare_wait(me.node(), id, observed).unwrap();
                check_deadline(start, "acquire");
                std::thread::yield_now();
            }
        }
    }
}

fn release(shm: &Shm<'_>, t: &LockTable<'_>, ids: &[u32], me: Caller) {
    for id in t.release_many_fast(ids, me).unwrap().as_slice() {
        shm.lock_wake(&NoDoorbell, *id).unwrap();
    }
}

/// A non-atomic increment (load, then store): only mutual exclusion makes
/// it exact.
fn bump(w: &std::sync::atomic::AtomicU64) {
    let v = w.load(Ordering::Relaxed);
    std::hint::spin_loop();
    w.store(v + 1, Ordering::Relaxed);
}

fn child_counter(env: &ChildEnv, victim: bool) {
    let (map, start) = open(env);
    let shm = Shm::open(map.region()).unwrap();
    let g = shm.join(env.id, &facts_for(env.id)).unwrap();
    let me = Caller::new(env.id, g, std::process::id() as u16).unwrap();
    let id: u32 = env.arg.parse().unwrap();
    let t = shm.lock_table().unwrap();
    let counter = word(&shm, COUNTER);
    if victim {
        for _ in 0..VICTIM_DONE {
            acquire(&t, &[id], me, start);
            bump(counter);
            release(&shm, &t, &[id], me);
        }
        // Take the lock for good once every worker is halfway, so they
        // all run into the dead holder.
        wait_until(start, "workers halfway", || {
            load(word(&shm, PROCS_WAITING)) == 3
        });
        acquire(&t, &[id], me, start);
        word(&shm, HOLDING).store(1, Ordering::Release);
        // Hold the lock until the parent kills us.
        loop {
            check_deadline(start, "victim never killed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let recovery = env.role == "worker-recovery";
    for i in 0..M {
        if recovery && i == M / 2 {
            // Meet the dead holder: wait until it holds the lock.
            word(&shm, PROCS_WAITING).fetch_add(1, Ordering::AcqRel);
            wait_until(start, "victim holds the lock", || {
                load(word(&shm, HOLDING)) == 1
            });
        }
        acquire(&t, &[id], me, start);
        bump(counter);
        release(&shm, &t, &[id], me);
    }
    println!("COUNTER node={} done={M}", env.id);
}

fn child_multi(env: &ChildEnv) {
    let (map, start) = open(env);
    let shm = Shm::open(map.region()).unwrap();
    let g = shm.join(env.id, &facts_for(env.id)).unwrap();
    let me = Caller::new(env.id, g, 1).unwrap();
    let base: u32 = env.arg.parse().unwrap();
    let t = shm.lock_table().unwrap();
    let mut tally = [0u64; K];
    let mut all_checks = 0u64;
    let mut rng = mix(u64::from(env.id) + 1);
    for round in 0..ROUNDS {
        rng = mix(rng);
        // Every 16th round takes every lock, to check the global invariant.
        let mask = if round % 16 == 0 {
            (1u64 << K) - 1
        } else {
            (rng % ((1 << K) - 1)) + 1
        };
        // Ids in a scrambled order: the call sorts them.
        let mut ids: Vec<u32> = (0..K as u32)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| base + i)
            .collect();
        ids.reverse();
        acquire(&t, &ids, me, start);
        let held: Vec<usize> = ids.iter().map(|&id| (id - base) as usize).collect();
        for &i in &held {
            let owner = word(&shm, owner_word(i));
            assert_eq!(owner.load(Ordering::Relaxed), 0, "lock {i} not exclusive");
            owner.store(u64::from(env.id) + 1, Ordering::Relaxed);
        }
        for &i in &held {
            bump(word(&shm, count_word(i)));
            tally[i] += 1;
        }
        if held.len() >= 2 {
            // Move an amount between two protected words: the sum over all
            // words stays 0, observable only when holding all of them.
            let (a, b) = (held[0], held[1]);
            let x = rng % 1000;
            let wa = word(&shm, value_word(a));
            let wb = word(&shm, value_word(b));
            wa.store(
                wa.load(Ordering::Relaxed).wrapping_sub(x),
                Ordering::Relaxed,
            );
            std::hint::spin_loop();
            wb.store(
                wb.load(Ordering::Relaxed).wrapping_add(x),
                Ordering::Relaxed,
            );
        }
        if held.len() == K {
            let sum = (0..K).fold(0u64, |s, i| {
                s.wrapping_add(word(&shm, value_word(i)).load(Ordering::Relaxed))
            });
            assert_eq!(sum, 0, "invariant broken");
            all_checks += 1;
        }
        for &i in &held {
            let owner = word(&shm, owner_word(i));
            assert_eq!(owner.load(Ordering::Relaxed), u64::from(env.id) + 1);
            owner.store(0, Ordering::Relaxed);
        }
        release(&shm, &t, &ids, me);
    }
    let tallies: Vec<String> = tally
        .iter()
        .enumerate()
        .map(|(i, n)| format!("t{i}={n}"))
        .collect();
    println!(
        "MULTI node={} checks={all_checks} {}",
        env.id,
        tallies.join(" ")
    );
}

/// Child side: does nothing unless spawned by a test below.
#[test]
fn child() {
    let Some(env) = child_env() else {
        return;
    };
    match env.role.as_str() {
        "worker" | "worker-recovery" => child_counter(&env, false),
        "victim" => child_counter(&env, true),
        "multi" => child_multi(&env),
        r => panic!("unknown role {r}"),
    }
}

/// Formats a fresh file; the parent joins `node` to reserve `n` lock ids.
fn setup(dir: &Path, node: u16, n: usize) -> (std::path::PathBuf, Vec<u32>) {
    let file = dir.join("shm");
    let map = SharedFile::open_or_create(&file, SIZE).unwrap();
    let shm = Shm::attach(map.region(), &InitParams::default(), || 0, 1).unwrap();
    let g = shm.join(node, &facts_for(node)).unwrap();
    let me = Caller::new(node, g, 0).unwrap();
    let mut ids = vec![0u32; n];
    // Skip id 1 so a test cannot pass by accident on slot arithmetic.
    shm.lock_reserve(me, &mut [0]).unwrap();
    shm.lock_reserve(me, &mut ids).unwrap();
    (file, ids)
}

#[test]
fn three_processes_count_exactly_under_one_global_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ids) = setup(dir.path(), 7, 1);
    let start = Instant::now();
    let procs = 4u16;
    let children: Vec<_> = (0..procs)
        .map(|i| spawn(&file, "worker", i, &ids[0].to_string()))
        .collect();
    for c in children {
        let out = finish(c, start);
        assert_eq!(report(&out, "COUNTER", "done"), M);
    }
    let map = SharedFile::open(&file).unwrap();
    let shm = Shm::open(map.region()).unwrap();
    assert_eq!(load(word(&shm, COUNTER)), u64::from(procs) * M);
    let info = shm.lock_info(ids[0]).unwrap();
    assert_eq!(info.holder, None);
}

#[test]
fn processes_take_random_subsets_of_locks_without_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ids) = setup(dir.path(), 7, K);
    // The reserved ids are consecutive.
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    let start = Instant::now();
    let procs = 3u16;
    let children: Vec<_> = (0..procs)
        .map(|i| spawn(&file, "multi", i, &ids[0].to_string()))
        .collect();
    let mut totals = [0u64; K];
    for c in children {
        let out = finish(c, start);
        assert!(report(&out, "MULTI", "checks") >= ROUNDS / 16);
        for (i, total) in totals.iter_mut().enumerate() {
            *total += report(&out, "MULTI", &format!("t{i}"));
        }
    }
    let map = SharedFile::open(&file).unwrap();
    let shm = Shm::open(map.region()).unwrap();
    let mut sum = 0u64;
    for (i, total) in totals.iter().enumerate() {
        assert_eq!(load(word(&shm, count_word(i))), *total, "lock {i}");
        assert_eq!(load(word(&shm, owner_word(i))), 0);
        sum = sum.wrapping_add(load(word(&shm, value_word(i))));
        assert_eq!(shm.lock_info(ids[i]).unwrap().holder, None);
    }
    assert_eq!(sum, 0);
}

#[test]
fn a_holder_killed_by_sigkill_is_recovered_and_the_others_finish_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let survivor = 7;
    let (file, ids) = setup(dir.path(), survivor, 1);
    let id = ids[0].to_string();
    let start = Instant::now();
    let victim_node = 3u16;
    let victim = spawn(&file, "victim", victim_node, &id);
    let workers: Vec<_> = (0..3)
        .map(|i| spawn(&file, "worker-recovery", i, &id))
        .collect();

    let map = SharedFile::open(&file).unwrap();
    let shm = Shm::open(map.region()).unwrap();
    // The victim holds the lock and every worker has reached it.
    wait_until(start, "victim holds, workers wait", || {
        load(word(&shm, HOLDING)) == 1 && load(word(&shm, PROCS_WAITING)) == 3
    });
    let mut victim = victim;
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let dead = shm.node(victim_node).unwrap();
    let holder = shm.lock_info(ids[0]).unwrap().holder.unwrap();
    assert_eq!(
        (holder.node(), holder.generation()),
        (victim_node, dead.generation)
    );

    // The process is gone for sure; the host marks the node as departed (a
    // cluster's liveness monitor would declare it dead) and recovers it.
    shm.leave(victim_node, dead.generation).unwrap();
    let g = shm.node(survivor).unwrap().generation;
    let me = Caller::new(survivor, g, 0).unwrap();
    let rep = shm
        .recover_ipc(&NoDoorbell, me, victim_node, dead.generation)
        .unwrap();
    assert_eq!(rep.locks.locks_freed, 1);

    for w in workers {
        let out = finish(w, start);
        assert_eq!(report(&out, "COUNTER", "done"), M);
    }
    assert_eq!(load(word(&shm, COUNTER)), 3 * M + VICTIM_DONE);
    assert_eq!(shm.lock_info(ids[0]).unwrap().holder, None);
}
