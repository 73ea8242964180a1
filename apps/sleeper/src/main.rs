//! Sleeps in a loop and checks every sleep lasted at least what it asked:
//! proves that a blocked app wakes up on time (and costs no CPU meanwhile).
//!
//! Arguments: `[COUNT [MS]]`, by default `5 20`.
#![no_std]
#![no_main]

use shmos_rt::{println, sys};

shmos_rt::entry!(main);

fn main() -> i32 {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let count: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(5);
    let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(20);
    let mut short = 0;
    for i in 1..=count {
        let start = sys::clock_ns().unwrap_or(0);
        if let Err(e) = sys::sleep_ns(ms * 1_000_000) {
            println!("sleeper: sleep failed: {e}");
            return 2;
        }
        let took = sys::clock_ns().unwrap_or(0) - start;
        if took < ms * 1_000_000 {
            short += 1;
        }
        println!(
            "sleeper: sleep {i}/{count} of {ms} ms took {} ms",
            took / 1_000_000
        );
    }
    if short > 0 {
        println!("sleeper: FAILED: {short} sleeps ended early");
        return 1;
    }
    println!("sleeper: done");
    0
}
