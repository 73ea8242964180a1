//! Keeps using a pool and a message queue for a while (argument: ms) and
//! counts what each call answers, so that a test can damage the shared
//! memory underneath and check that every call still answers: a value or a
//! named error (`Corrupt` for the damaged objects), never a fault.
#![no_std]
#![no_main]
// Every unsafe block says why it holds (checked by clippy).
#![warn(clippy::undocumented_unsafe_blocks)]

use shmos_rt::abi::{Error, NO_WAIT};
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

/// Counts of each error, indexed by code.
struct Tally([u64; 16], u64);

impl Tally {
    fn note<T>(&mut self, r: Result<T, Error>) -> Option<T> {
        match r {
            Ok(v) => {
                self.1 += 1;
                Some(v)
            }
            Err(e) => {
                self.0[(e.code() as usize).min(15)] += 1;
                None
            }
        }
    }
}

fn main() -> i32 {
    let mut buf = [0u8; 32];
    let ms: u64 = shmos_rt::args(&mut buf).parse().unwrap_or(3000);
    let me = sys::node_id().unwrap_or(0);
    let other = 1 - me.min(1);
    let mut t = Tally([0; 16], 0);
    let name = if me == 0 { "victim0" } else { "victim1" };
    let pool = t.note(sys::pool_create(name, 1 << 20));
    println!(
        "victim: node {me} started (pool {})",
        if pool.is_some() { "created" } else { "refused" }
    );
    let end = sys::clock_ns().unwrap_or(0) + ms * 1_000_000;
    let mut rounds = 0u64;
    while sys::clock_ns().unwrap_or(u64::MAX) < end {
        rounds += 1;
        if let Some(pool) = t.note(sys::pool_open(name)) {
            t.note(sys::pool_stat(pool));
            if let Some(h) = t.note(sys::shm_alloc(pool, 4096, 64)) {
                if let Some(p) = t.note(sys::shm_map(h, true)) {
                    // SAFETY: the kernel mapped 4096 writable bytes at `p` for us.
                    unsafe { p.write_volatile(rounds as u8) };
                    if rounds == 1 {
                        // A mapped region must not be freed under its user.
                        match sys::shm_free(h) {
                            Err(Error::Busy) => {
                                println!("victim: node {me}: free while mapped refused (Busy)")
                            }
                            other => println!(
                                "victim: node {me}: FAILED: free while mapped answered {other:?}"
                            ),
                        }
                    }
                    t.note(sys::shm_unmap(p));
                }
                t.note(sys::shm_free(h));
            }
        }
        t.note(sys::msg_send(other, 3, &rounds.to_le_bytes()));
        let mut m = [0u8; 8];
        t.note(sys::msg_recv(3, &mut m, NO_WAIT));
        let _ = sys::sleep_ns(1_000_000);
    }
    println!(
        "victim: node {me}: {rounds} rounds, every call answered ({} ok)",
        t.1
    );
    for e in Error::ALL {
        let n = t.0[(e.code() as usize).min(15)];
        if n > 0 {
            println!("victim: node {me}: {n} x {}", e.name());
        }
    }
    0
}
