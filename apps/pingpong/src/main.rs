//! Round trips between two nodes by message: node 0 sends numbered
//! messages to node 1 (port 1), node 1 echoes each back to node 0 (port 1),
//! node 0 checks every echo and times it.
//!
//! Arguments: `[N [SPIN_US]]`, by default `1000 2000`: N round trips; each
//! receive polls for up to SPIN_US microseconds before it blocks (on
//! ivshmem-plain a blocked receiver wakes only at its next 10 ms tick; 0 =
//! always block). Node 0 prints `pingpong: N round trips, median RTT X ns`,
//! node 1 `pingpong: node 1 echoed N messages`; nodes 2 and up have no
//! partner and exit 0 at once.
#![no_std]
#![no_main]

use demo_common::{App, Outcome, PATIENCE_NS, live_nodes, now, number, splitmix64};
use shmos_rt::println;

shmos_rt::entry!(main);

/// The port both sides receive on.
const PORT: u32 = 1;
/// First word of every message ("PING").
const MAGIC: u64 = u64::from_le_bytes(*b"PING\0\0\0\0");
/// Round-trip times kept for the median (the last ones when there are more).
const SAMPLES: usize = 4096;

fn main() -> i32 {
    demo_common::run("pingpong", pingpong)
}

fn pingpong(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let n = number(app, words.next(), "round trips", 1000)?;
    let spin_ns = number(app, words.next(), "microseconds to poll", 2000)?.saturating_mul(1000);
    app.ensure(n > 0, format_args!("need at least one round trip"))?;
    match app.node {
        0 => ping(app, n, spin_ns),
        1 => pong(app, n, spin_ns),
        node => {
            println!("pingpong: node {node} has no partner (nodes 0 and 1 play), nothing to do");
            Ok(())
        }
    }
}

/// The message of round trip `i`.
fn message(i: u64) -> [u64; 3] {
    [MAGIC, i, splitmix64(i)]
}

fn ping(app: &App, n: u64, spin_ns: u64) -> Outcome<()> {
    let live = live_nodes(app)?;
    app.ensure(
        live & 0b10 != 0,
        format_args!("node 1 is not live (live nodes {live:#x}): nobody to play with"),
    )?;
    let mut rtts = [0u32; SAMPLES];
    let (mut min, mut max) = (u64::MAX, 0u64);
    for i in 0..n {
        let msg = message(i);
        let start = now(app)?;
        demo_common::send_words(app, 1, PORT, &msg)?;
        let mut echo = [0u64; 3];
        let got = demo_common::recv_words_spinning(app, PORT, &mut echo, spin_ns, PATIENCE_NS)?;
        let rtt = now(app)?.saturating_sub(start);
        app.ensure(
            got.sender == 1 && got.words == 3 && echo == msg,
            format_args!(
                "echo {i} is wrong: {:?} from node {} (sent {msg:?})",
                &echo[..got.words],
                got.sender
            ),
        )?;
        rtts[(i % SAMPLES as u64) as usize] = rtt.min(u64::from(u32::MAX)) as u32;
        min = min.min(rtt);
        max = max.max(rtt);
    }
    let kept = &mut rtts[..(n as usize).min(SAMPLES)];
    kept.sort_unstable();
    let median = kept[kept.len() / 2];
    println!("pingpong: {n} round trips, median RTT {median} ns");
    println!(
        "pingpong: min {min} ns, max {max} ns, every echo checked (poll {} us before blocking)",
        spin_ns / 1000
    );
    Ok(())
}

fn pong(app: &App, n: u64, spin_ns: u64) -> Outcome<()> {
    for i in 0..n {
        let mut msg = [0u64; 3];
        let got = demo_common::recv_words_spinning(app, PORT, &mut msg, spin_ns, PATIENCE_NS)?;
        app.ensure(
            got.sender == 0 && got.words == 3 && msg == message(i),
            format_args!(
                "message {i} is wrong: {:?} from node {}",
                &msg[..got.words],
                got.sender
            ),
        )?;
        demo_common::send_words(app, 0, PORT, &msg)?;
    }
    println!("pingpong: node 1 echoed {n} messages");
    Ok(())
}
