//! The VM side of `shmos bench`: node 0 times each figure, node 1 is its
//! partner, and both meet at the cluster barrier between figures. Node 0
//! prints one line per figure, `bench FIGURE n=N value=X unit=U` (U is ps
//! per operation, or B/s for a stream), which the host tool parses; every echo, counter and owner is checked, so a figure
//! is never the speed of a wrong answer.
//!
//! Arguments: `[N [FIGURE...]]`: N timed operations per figure (default
//! 1000; warm-up is N/10 more), and the figures to run (default all, in
//! [`FIGURES`] order). Timing reads the clock once before and once after
//! the N operations, so the clock call costs nothing per operation.
#![no_std]
#![no_main]
// Every unsafe block says why it holds.
#![warn(clippy::undocumented_unsafe_blocks)]

use demo_common::{App, Check, Mapping, Outcome, PATIENCE_NS, live_nodes, now, number};
use shmos_rt::abi::{Error, FOREVER, MAX_MESSAGE, NO_WAIT};
use shmos_rt::lock::Locks;
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

/// Every figure, in the order they run by default.
const FIGURES: [&str; 12] = [
    "syscall",
    "memcpy-vm",
    "lock",
    "alloc",
    "msg64-polled",
    "msg4k-polled",
    "msg64-doorbell",
    "msg4k-doorbell",
    "msg64k-throughput",
    "lock-handoff",
    "transfer",
    "boot",
];
/// Port of the measured exchanges; setup messages use [`SETUP`].
const PORT: u32 = 2;
/// Port for handing handles and lock ids to the partner.
const SETUP: u32 = 3;
/// The pool the allocation and transfer figures use.
const POOL: &str = "bench";

/// Message buffers: 64 KiB does not sit on the user stack.
struct Buffers {
    out: [u8; MAX_MESSAGE],
    back: [u8; MAX_MESSAGE],
}

static mut BUFFERS: Buffers = Buffers {
    out: [0; MAX_MESSAGE],
    back: [0; MAX_MESSAGE],
};

fn main() -> i32 {
    demo_common::run("bench", bench)
}

fn bench(app: &App) -> Outcome<()> {
    let mut argbuf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut argbuf).split_ascii_whitespace();
    let n = number(app, words.next(), "operations per figure", 1000)?;
    app.ensure(n > 0, format_args!("need at least one operation"))?;
    // SAFETY: the only reference to BUFFERS, taken once; apps are single-threaded.
    let bufs = unsafe { &mut *core::ptr::addr_of_mut!(BUFFERS) };
    let chosen: [Option<&str>; 16] = {
        let mut c = [None; 16];
        for (slot, w) in c.iter_mut().zip(words) {
            *slot = Some(w);
        }
        c
    };
    let all = chosen[0].is_none();
    for name in chosen.iter().flatten() {
        app.ensure(
            FIGURES.contains(name),
            format_args!("unknown figure {name:?} (figures: {FIGURES:?})"),
        )?;
    }
    if app.node > 1 {
        println!("bench: node {} has no part (nodes 0 and 1 play)", app.node);
        return Ok(());
    }
    if app.node == 0 && !all && chosen.iter().flatten().all(|&f| f == "boot") {
        // The boot figure is this app's first instruction; nothing to time here.
        println!("bench boot n=1 value=0 unit=ps");
        return Ok(());
    }
    let live = live_nodes(app)?;
    app.ensure(
        live & 0b11 == 0b11,
        format_args!("nodes 0 and 1 must be live (live {live:#x})"),
    )?;
    for &figure in FIGURES.iter() {
        if figure == "boot" || !(all || chosen.iter().flatten().any(|&f| f == figure)) {
            continue;
        }
        sys::barrier().or_fail(app, "barrier")?;
        let partner = 1 - app.node;
        let value = match figure {
            "syscall" => null_call(app, n)?,
            "memcpy-vm" => memcpy(app, n, bufs)?,
            "lock" => lock(app, n)?,
            "alloc" => alloc(app, n)?,
            "msg64-polled" => round_trips(app, partner, n, 64, NO_WAIT, bufs)?,
            "msg4k-polled" => round_trips(app, partner, n, 4096, NO_WAIT, bufs)?,
            "msg64-doorbell" => round_trips(app, partner, n, 64, FOREVER, bufs)?,
            "msg4k-doorbell" => round_trips(app, partner, n, 4096, FOREVER, bufs)?,
            "msg64k-throughput" => throughput(app, partner, n, bufs)?,
            "lock-handoff" => handoff(app, partner, n)?,
            _ => transfer(app, partner, n)?,
        };
        if let Some((value, unit)) = value {
            println!("bench {figure} n={n} value={value} unit={unit}");
        }
    }
    sys::barrier().or_fail(app, "barrier")?;
    Ok(())
}

/// Warm-up operations before the clock starts.
fn warmup(n: u64) -> u64 {
    (n / 10).max(1)
}

/// What reading the clock adds to a timed interval: the end of the first
/// `clock` call and the start of the second (the shortest of a few). Under
/// this host's KVM a system call costs ~400 µs, which would add 20 ns to
/// each of 20,000 lock operations.
fn clock_overhead(app: &App) -> Outcome<u64> {
    let mut best = u64::MAX;
    for _ in 0..5 {
        let a = now(app)?;
        let b = now(app)?;
        best = best.min(b.saturating_sub(a));
    }
    Ok(best)
}

/// Runs `op` warm-up plus `n` times, timing the `n`; picoseconds per
/// operation (a lock pair takes a few ns), the clock's own cost taken out.
fn timed(app: &App, n: u64, mut op: impl FnMut(u64) -> Outcome<()>) -> Outcome<u64> {
    for i in 0..warmup(n) {
        op(i)?;
    }
    let overhead = clock_overhead(app)?;
    let start = now(app)?;
    for i in 0..n {
        op(i)?;
    }
    let elapsed = now(app)?.saturating_sub(start);
    Ok((u128::from(elapsed.saturating_sub(overhead).max(1)) * 1000 / u128::from(n)) as u64)
}

/// The cheapest system call (`clock`): what entering and leaving the
/// kernel costs, which every other call pays (node 0 alone).
fn null_call(app: &App, n: u64) -> Outcome<Option<(u64, &'static str)>> {
    if app.node != 0 {
        return Ok(None);
    }
    let ps = timed(app, n, |_| sys::clock_ns().map(drop).or_fail(app, "clock"))?;
    Ok(Some((ps, "ps")))
}

/// 64 KiB copies in user memory (node 0 alone): the VM's own copy speed,
/// which bounds what a message stream can reach.
fn memcpy(app: &App, n: u64, bufs: &mut Buffers) -> Outcome<Option<(u64, &'static str)>> {
    if app.node != 0 {
        return Ok(None);
    }
    let ps = timed(app, n, |i| {
        bufs.out[0] = i as u8;
        bufs.back.copy_from_slice(core::hint::black_box(&bufs.out));
        app.ensure(
            bufs.back[0] == i as u8,
            format_args!("copy {i} lost its bytes"),
        )
    })?
    .max(1);
    Ok(Some((
        (MAX_MESSAGE as u128 * 1_000_000_000_000 / u128::from(ps)) as u64,
        "B/s",
    )))
}

/// Uncontended acquire and release of one global lock through the
/// user-space fast path (node 0 alone).
fn lock(app: &App, n: u64) -> Outcome<Option<(u64, &'static str)>> {
    if app.node != 0 {
        return Ok(None);
    }
    let locks = Locks::get().or_fail(app, "lock_map")?;
    let mut id = [0u32];
    sys::lock_reserve(&mut id).or_fail(app, "lock_reserve")?;
    // A hundred times the operations: each takes nanoseconds, and the
    // interval must dwarf the clock's own noise (~100 µs under KVM).
    let ps = timed(app, n * 100, |_| {
        locks.acquire(&id, FOREVER).or_fail(app, "lock acquire")?;
        locks.release(&id).or_fail(app, "lock release")
    })?;
    sys::lock_unreserve(&id).or_fail(app, "lock_unreserve")?;
    Ok(Some((ps, "ps")))
}

fn pool(app: &App) -> Outcome<u64> {
    match sys::pool_create(POOL, 1 << 20) {
        Ok(p) => Ok(p),
        Err(Error::AlreadyExists) => sys::pool_open(POOL).or_fail(app, "pool_open"),
        Err(e) => Err(app.fail(format_args!("pool_create {POOL}: {e}"))),
    }
}

/// `shm_alloc` of one page plus `shm_free` (node 0 alone).
fn alloc(app: &App, n: u64) -> Outcome<Option<(u64, &'static str)>> {
    if app.node != 0 {
        return Ok(None);
    }
    let pool = pool(app)?;
    let ps = timed(app, n, |_| {
        let h = sys::shm_alloc(pool, 4096, 4096).or_fail(app, "shm_alloc")?;
        sys::shm_free(h).or_fail(app, "shm_free")
    })?;
    Ok(Some((ps, "ps")))
}

/// Sends `bytes` to `to`, retrying a full or busy queue.
fn send(app: &App, to: u16, port: u32, bytes: &[u8]) -> Outcome<()> {
    let start = now(app)?;
    loop {
        match sys::msg_send(to, port, bytes) {
            Ok(()) => return Ok(()),
            Err(Error::WouldBlock | Error::Busy) if now(app)? - start < PATIENCE_NS => {}
            Err(e) => return Err(app.fail(format_args!("msg_send to node {to}: {e}"))),
        }
    }
}

/// Receives one message on `port` into `buf`; `wait` is NO_WAIT to poll
/// (retrying at once), FOREVER to block until the doorbell. Returns its length.
fn recv(app: &App, port: u32, buf: &mut [u8], wait: u64) -> Outcome<usize> {
    let start = now(app)?;
    loop {
        let timeout = if wait == NO_WAIT {
            NO_WAIT
        } else {
            PATIENCE_NS
        };
        match sys::msg_recv(port, buf, timeout) {
            Ok(info) => return Ok(info.len as usize),
            Err(Error::WouldBlock | Error::TimedOut | Error::Busy)
                if wait == NO_WAIT && now(app)? - start < PATIENCE_NS => {}
            Err(e) => return Err(app.fail(format_args!("msg_recv on port {port}: {e}"))),
        }
    }
}

/// Stamps message `i` into `buf` (first and last word), so a stale or torn
/// echo is caught.
fn stamp(buf: &mut [u8], i: u64) {
    let len = buf.len();
    buf[..8].copy_from_slice(&i.to_le_bytes());
    buf[len - 8..].copy_from_slice(&(!i).to_le_bytes());
}

/// Message round trips of `size` bytes: node 0 sends, node 1 echoes, node 0
/// checks the echo.
fn round_trips(
    app: &App,
    partner: u16,
    n: u64,
    size: usize,
    wait: u64,
    bufs: &mut Buffers,
) -> Outcome<Option<(u64, &'static str)>> {
    let total = n + warmup(n);
    if app.node == 1 {
        for _ in 0..total {
            let len = recv(app, PORT, &mut bufs.back, wait)?;
            send(app, partner, PORT, &bufs.back[..len])?;
        }
        return Ok(None);
    }
    let ps = timed(app, n, |i| {
        let out = &mut bufs.out[..size];
        stamp(out, i);
        send(app, partner, PORT, out)?;
        let len = recv(app, PORT, &mut bufs.back, wait)?;
        app.ensure(
            len == size && bufs.back[..size] == bufs.out[..size],
            format_args!("echo {i} of {size} bytes is wrong ({len} bytes back)"),
        )
    })?;
    Ok(Some((ps, "ps")))
}

/// 64 KiB messages streamed from node 0 to node 1, which checks each and
/// acknowledges the last; MB/s over the whole stream.
fn throughput(
    app: &App,
    partner: u16,
    n: u64,
    bufs: &mut Buffers,
) -> Outcome<Option<(u64, &'static str)>> {
    if app.node == 1 {
        for i in 0..n {
            let len = recv(app, PORT, &mut bufs.back, NO_WAIT)?;
            let mut want = [0u8; 8];
            want.copy_from_slice(&i.to_le_bytes());
            app.ensure(
                len == MAX_MESSAGE && bufs.back[..8] == want,
                format_args!("64 KiB message {i} is wrong ({len} bytes)"),
            )?;
        }
        send(app, partner, PORT, b"done")?;
        return Ok(None);
    }
    let start = now(app)?;
    for i in 0..n {
        stamp(&mut bufs.out, i);
        send(app, partner, PORT, &bufs.out)?;
    }
    let len = recv(app, PORT, &mut bufs.back, NO_WAIT)?;
    app.ensure(len == 4, format_args!("no acknowledgement of the stream"))?;
    let ns = now(app)?.saturating_sub(start).max(1);
    // Bytes per second: under this host's KVM the stream is slower than
    // 1 MB/s, so MB/s in whole numbers would print 0.
    let bytes_s = (u128::from(n) * MAX_MESSAGE as u128 * 1_000_000_000 / u128::from(ns)) as u64;
    Ok(Some((bytes_s, "B/s")))
}

/// Node 0 sets up a lock and a counter page and hands both to node 1.
fn share(app: &App, partner: u16) -> Outcome<(u32, u64)> {
    let mut words = [0u8; 16];
    if app.node == 0 {
        let mut id = [0u32];
        sys::lock_reserve(&mut id).or_fail(app, "lock_reserve")?;
        let h = sys::shm_alloc(pool(app)?, 4096, 4096).or_fail(app, "shm_alloc")?;
        words[..8].copy_from_slice(&u64::from(id[0]).to_le_bytes());
        words[8..].copy_from_slice(&h.to_le_bytes());
        send(app, partner, SETUP, &words)?;
        Ok((id[0], h))
    } else {
        let len = recv(app, SETUP, &mut words, FOREVER)?;
        app.ensure(len == 16, format_args!("setup message of {len} bytes"))?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&words[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Ok((word(0) as u32, word(1)))
    }
}

/// Both nodes take one lock in turn, `n` times each, incrementing a shared
/// counter under it; ns per acquisition, the counter checked exact.
fn handoff(app: &App, partner: u16, n: u64) -> Outcome<Option<(u64, &'static str)>> {
    let (id, h) = share(app, partner)?;
    let locks = Locks::get().or_fail(app, "lock_map")?;
    let counter = Mapping::map(h, 4096, true).or_fail(app, "shm_map")?;
    sys::barrier().or_fail(app, "barrier")?;
    let start = now(app)?;
    for _ in 0..n {
        locks.acquire(&[id], FOREVER).or_fail(app, "lock acquire")?;
        counter.set(0, counter.get(0) + 1);
        locks.release(&[id]).or_fail(app, "lock release")?;
    }
    sys::barrier().or_fail(app, "barrier")?;
    let ps = now(app)?.saturating_sub(start) * 1000 / (2 * n);
    let total = counter.get(0);
    app.ensure(
        total == 2 * n,
        format_args!("counter is {total} after {n} increments on each of 2 nodes"),
    )?;
    counter.unmap().or_fail(app, "shm_unmap")?;
    sys::barrier().or_fail(app, "barrier")?;
    if app.node == 0 {
        sys::shm_free(h).or_fail(app, "shm_free")?;
        sys::lock_unreserve(&[id]).or_fail(app, "lock_unreserve")?;
        return Ok(Some((ps, "ps")));
    }
    Ok(None)
}

/// Ownership round trips: node 0 moves a region to node 1 and says so by
/// message; node 1 moves it back and answers.
fn transfer(app: &App, partner: u16, n: u64) -> Outcome<Option<(u64, &'static str)>> {
    let (_, h) = share(app, partner)?;
    let (me, other) = (1u64 << app.node, 1u64 << partner);
    let mut word = [0u8; 8];
    if app.node == 1 {
        for _ in 0..n + warmup(n) {
            recv(app, PORT, &mut word, NO_WAIT)?;
            sys::shm_transfer(h, me, other).or_fail(app, "shm_transfer back")?;
            send(app, partner, PORT, &word)?;
        }
        sys::barrier().or_fail(app, "barrier")?;
        return Ok(None);
    }
    sys::shm_own(h, me).or_fail(app, "shm_own")?;
    let ps = timed(app, n, |i| {
        sys::shm_transfer(h, me, other).or_fail(app, "shm_transfer")?;
        send(app, partner, PORT, &i.to_le_bytes())?;
        recv(app, PORT, &mut word, NO_WAIT)?;
        app.ensure(
            u64::from_le_bytes(word) == i,
            format_args!("transfer {i}: wrong answer"),
        )
    })?;
    sys::barrier().or_fail(app, "barrier")?;
    // The region is back with node 0: freeing it proves the owner is right.
    sys::shm_free(h).or_fail(app, "shm_free after the round trips")?;
    Ok(Some((ps, "ps")))
}
