//! Burns the CPU without ever yielding and prints its progress: two of them
//! on one node both progress only if the kernel preempts them.
//!
//! Arguments: `LABEL [ROUNDS [MS_PER_ROUND]]`, by default `spin 5 20`.
#![no_std]
#![no_main]

use shmos_rt::{println, sys};

shmos_rt::entry!(main);

fn main() -> i32 {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let label = words.next().unwrap_or("spin");
    let rounds: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(5);
    let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(20);
    let mut work = 0u64;
    for round in 1..=rounds {
        let until = sys::clock_ns().unwrap_or(0) + ms * 1_000_000;
        // Ask the clock only now and then: the loop itself must not enter
        // the kernel much, or it would not prove anything about preemption.
        loop {
            for i in 0..20_000u64 {
                work =
                    core::hint::black_box(work.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
            if sys::clock_ns().unwrap_or(u64::MAX) >= until {
                break;
            }
        }
        println!("spin {label}: round {round}/{rounds}");
    }
    println!("spin {label}: done ({:#x})", work & 0xff);
    0
}
