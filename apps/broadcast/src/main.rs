//! Every node broadcasts to every node, by signal and by message.
//!
//! Each node raises signal `id` on every live node (`signal_all`) and sends
//! its id to port 2 of every live node (`msg_send_all`), itself included,
//! then waits until it holds signal bit N and a message from node N for
//! every node N that was live when it started. Prints
//! `broadcast: node X heard from all N nodes (signals and messages)`.
//!
//! Arguments: `[TIMEOUT_MS]`, by default 120000: how long to wait for the
//! others before failing (naming the nodes it did not hear from).
#![no_std]
#![no_main]

use demo_common::{App, Check, Outcome, count, live_nodes, now};
use shmos_rt::{Error, println, sys};

shmos_rt::entry!(main);

/// The port messages go to.
const PORT: u32 = 2;
/// First word of a message ("HELLO").
const MAGIC: u64 = u64::from_le_bytes(*b"HELLO\0\0\0");
/// How long one wait for signals or messages lasts before the other is checked.
const SLICE_NS: u64 = 20_000_000;

fn main() -> i32 {
    demo_common::run("broadcast", broadcast)
}

fn broadcast(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let timeout_ms = demo_common::number(app, words.next(), "timeout in ms", 120_000)?;
    let me = app.node;
    app.ensure(
        u64::from(me) < shmos_rt::abi::SIGNALS - 1,
        format_args!("node {me} has no signal number of its own (0..62)"),
    )?;
    let live = live_nodes(app)?;
    let signalled = sys::signal_all(u32::from(me)).or_fail(app, "signal_all")?;
    let sent = demo_common::send_words_all(app, PORT, &[MAGIC, u64::from(me)])?;
    let (mut signals, mut messages) = (0u64, 0u64);
    let deadline = now(app)?.saturating_add(timeout_ms.saturating_mul(1_000_000));
    loop {
        // Everything that is there already, then wait for what is missing.
        while let Some(got) = take_message(app, 0)? {
            messages |= got;
        }
        if signals & live != live {
            match sys::signal_wait(SLICE_NS) {
                Ok(bits) => signals |= bits,
                Err(Error::TimedOut) => {}
                Err(e) => return Err(app.fail(format_args!("signal_wait: {e}"))),
            }
        } else if messages & live != live
            && let Some(got) = take_message(app, SLICE_NS)?
        {
            messages |= got;
        }
        if signals & live == live && messages & live == live {
            break;
        }
        if now(app)? >= deadline {
            return Err(app.fail(format_args!(
                "after {timeout_ms} ms, no signal from nodes {:#x}, no message from nodes {:#x}",
                live & !signals,
                live & !messages
            )));
        }
    }
    println!(
        "broadcast: node {me} heard from all {} nodes (signals and messages)",
        count(live)
    );
    // The ABI table says these calls answer a count of nodes; this kernel
    // answers the bitmap of the nodes (see the report).
    println!(
        "broadcast: node {me}: signal_all answered {signalled:#x}, msg_send_all {sent:#x}; live nodes {live:#x}"
    );
    Ok(())
}

/// One message from port 2, waiting up to `timeout_ns`: the sender's bit.
fn take_message(app: &App, timeout_ns: u64) -> Outcome<Option<u64>> {
    let mut msg = [0u64; 2];
    let Some(got) = demo_common::recv_words_within(app, PORT, &mut msg, timeout_ns)? else {
        return Ok(None);
    };
    app.ensure(
        got.words == 2 && msg == [MAGIC, u64::from(got.sender)],
        format_args!(
            "unexpected message {:?} from node {}",
            &msg[..got.words],
            got.sender
        ),
    )?;
    Ok(Some(1u64 << got.sender))
}
