//! What the demo apps (pingpong, counter, pipeline, broadcast, kv, fuzz)
//! share:
//!
//! - [`run`] and [`App`]: every failure is printed once, as
//!   `NAME: node N: FAILED: what: Error`, and turns into exit code 1;
//!   [`Check::or_fail`] names the call that failed;
//! - [`number`]: numeric arguments with a default, refusing junk by name;
//! - [`send_words`] / [`recv_words`]: messages of little-endian u64 words,
//!   retrying a full queue (`WouldBlock`, back-pressure) after a yield, and
//!   waiting for one with a deadline;
//! - [`Mapping`]: a mapped region as an array of u64 words, read and written
//!   volatile (other nodes see the same memory), unmapped on request or drop;
//! - [`acquire`]: a global lock through the user-space fast path
//!   (`shmos_rt::lock::Locks`), waiting in bounded slices;
//! - [`splitmix64`] and [`Rng`]: deterministic pseudo-random numbers, so that
//!   one node can recompute another's sequence from its seed;
//! - node sets as bitmaps ([`nodes_of`], [`count`]).
#![no_std]
// Every unsafe block says why it holds.
#![warn(clippy::undocumented_unsafe_blocks)]

use core::fmt;
use core::sync::atomic::AtomicU64;
use shmos_rt::abi::{Error, NO_WAIT};

/// Largest message of words the demo apps exchange: their messages are
/// small, and a buffer of the ABI's whole `MAX_MESSAGE` would not sit well
/// on a user stack.
const MAX_MESSAGE: usize = 4096;
use shmos_rt::{println, sys};

/// A failure that has been printed already; the app exits with code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// What an app's steps return.
pub type Outcome<T> = Result<T, Failed>;

/// How long an app waits for a message it needs (setup, the next region)
/// or for a full queue to drain. Generous: under this host's nested KVM the
/// kernel is emulated and hundreds of times slower than under TCG.
pub const PATIENCE_NS: u64 = 120_000_000_000;

/// Exit code of a failed app.
pub const EXIT_FAILED: i32 = 1;

/// The running app: its name and node, for its output lines.
#[derive(Debug, Clone, Copy)]
pub struct App {
    /// The app's name, the first word of each line it prints.
    pub name: &'static str,
    /// This node's id.
    pub node: u16,
}

impl App {
    /// Prints `NAME: node N: FAILED: ...` and returns the failure.
    pub fn fail(&self, what: fmt::Arguments<'_>) -> Failed {
        println!("{}: node {}: FAILED: {what}", self.name, self.node);
        Failed
    }

    /// Checks a condition of the app's own: prints the failure unless it holds.
    pub fn ensure(&self, ok: bool, what: fmt::Arguments<'_>) -> Outcome<()> {
        if ok { Ok(()) } else { Err(self.fail(what)) }
    }
}

/// Runs `body` as app `name`; exit code 0 only if it returned `Ok`.
pub fn run(name: &'static str, body: fn(&App) -> Outcome<()>) -> i32 {
    let node = match sys::node_id() {
        Ok(n) => n,
        Err(e) => {
            println!("{name}: FAILED: node_id: {e}");
            return EXIT_FAILED;
        }
    };
    let app = App { name, node };
    match body(&app) {
        Ok(()) => 0,
        Err(Failed) => EXIT_FAILED,
    }
}

/// Turns a system call's error into a printed failure naming the call.
pub trait Check<T> {
    /// `Ok` as is; an error prints `NAME: node N: FAILED: what: Error`.
    fn or_fail(self, app: &App, what: &str) -> Outcome<T>;
}

impl<T> Check<T> for Result<T, Error> {
    fn or_fail(self, app: &App, what: &str) -> Outcome<T> {
        self.map_err(|e| app.fail(format_args!("{what}: {e}")))
    }
}

/// The numeric argument `word` (a decimal number), `default` when absent;
/// anything else is reported as a failure naming `what`.
pub fn number(app: &App, word: Option<&str>, what: &str, default: u64) -> Outcome<u64> {
    match word {
        None => Ok(default),
        Some(w) => w
            .parse()
            .map_err(|_| app.fail(format_args!("argument {w:?} ({what}) is not a number"))),
    }
}

/// Node ids in a bitmap, ascending.
pub fn nodes_of(bits: u64) -> impl Iterator<Item = u16> {
    (0..64u16).filter(move |n| bits & (1u64 << n) != 0)
}

/// Nodes in a bitmap.
pub fn count(bits: u64) -> u32 {
    bits.count_ones()
}

/// The live nodes now (bit N = node N); this node must be one of them.
pub fn live_nodes(app: &App) -> Outcome<u64> {
    let live = sys::nodes().or_fail(app, "nodes")?;
    app.ensure(
        live & (1u64 << app.node) != 0,
        format_args!("this node is not live in the cluster (live nodes {live:#x})"),
    )?;
    Ok(live)
}

/// Now, in nanoseconds since boot.
pub fn now(app: &App) -> Outcome<u64> {
    sys::clock_ns().or_fail(app, "clock")
}

/// Most words in one message of these helpers (a message is at most
/// `MAX_MESSAGE` bytes).
pub const MAX_WORDS: usize = MAX_MESSAGE / 8;

/// Sends `words` (little-endian) to `port` on `node`. A full queue
/// (`WouldBlock`: back-pressure) or a busy one is retried after a yield
/// for up to [`PATIENCE_NS`]; any other error is a failure.
pub fn send_words(app: &App, node: u16, port: u32, words: &[u64]) -> Outcome<()> {
    let mut bytes = [0u8; MAX_MESSAGE];
    let len = encode(app, words, &mut bytes)?;
    let mut deadline = None;
    loop {
        match sys::msg_send(node, port, &bytes[..len]) {
            Ok(()) => return Ok(()),
            Err(e @ (Error::WouldBlock | Error::Busy)) => backoff(
                app,
                &mut deadline,
                e,
                format_args!("msg_send to node {node} port {port}"),
            )?,
            Err(e) => {
                return Err(app.fail(format_args!("msg_send to node {node} port {port}: {e}")));
            }
        }
    }
}

/// Sends `words` to `port` on every live node, this one included; returns
/// how many nodes (all or none: a full queue anywhere is retried).
pub fn send_words_all(app: &App, port: u32, words: &[u64]) -> Outcome<u64> {
    let mut bytes = [0u8; MAX_MESSAGE];
    let len = encode(app, words, &mut bytes)?;
    let mut deadline = None;
    loop {
        match sys::msg_send_all(port, &bytes[..len]) {
            Ok(n) => return Ok(n),
            Err(e @ (Error::WouldBlock | Error::Busy)) => backoff(
                app,
                &mut deadline,
                e,
                format_args!("msg_send_all to port {port}"),
            )?,
            Err(e) => return Err(app.fail(format_args!("msg_send_all to port {port}: {e}"))),
        }
    }
}

fn encode(app: &App, words: &[u64], bytes: &mut [u8; MAX_MESSAGE]) -> Outcome<usize> {
    app.ensure(
        words.len() <= MAX_WORDS,
        format_args!("a message of {} words exceeds {MAX_WORDS}", words.len()),
    )?;
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    Ok(words.len() * 8)
}

/// One retry of a call that got `e` (WouldBlock or Busy): yields, and fails
/// once [`PATIENCE_NS`] passed since the first retry.
fn backoff(
    app: &App,
    deadline: &mut Option<u64>,
    e: Error,
    what: fmt::Arguments<'_>,
) -> Outcome<()> {
    let now = now(app)?;
    let until = *deadline.get_or_insert(now.saturating_add(PATIENCE_NS));
    if now >= until {
        return Err(app.fail(format_args!(
            "{what}: still {e} after {} s",
            PATIENCE_NS / 1_000_000_000
        )));
    }
    sys::yield_now().or_fail(app, "yield")
}

/// A message as received: who sent it and how many words it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The sending node.
    pub sender: u16,
    /// Words copied into the caller's buffer.
    pub words: usize,
}

/// Receives a message of u64 words from `port` into `out`, waiting at most
/// `timeout_ns`; a timeout, a message that is not whole words or does not
/// fit `out` are failures.
pub fn recv_words(app: &App, port: u32, out: &mut [u64], timeout_ns: u64) -> Outcome<Received> {
    match recv_inner(app, port, out, timeout_ns)? {
        Some(r) => Ok(r),
        None => Err(app.fail(format_args!(
            "msg_recv on port {port}: nothing within {} ms (TimedOut)",
            timeout_ns / 1_000_000
        ))),
    }
}

/// Like [`recv_words`] without waiting: `None` when no message is there.
pub fn try_recv_words(app: &App, port: u32, out: &mut [u64]) -> Outcome<Option<Received>> {
    recv_inner(app, port, out, NO_WAIT)
}

/// Like [`recv_words`], but `None` when nothing came within `timeout_ns`.
pub fn recv_words_within(
    app: &App,
    port: u32,
    out: &mut [u64],
    timeout_ns: u64,
) -> Outcome<Option<Received>> {
    recv_inner(app, port, out, timeout_ns)
}

/// Receives by polling (no wait, yielding in between) for up to `spin_ns`,
/// then blocks for the rest of `timeout_ns`: on ivshmem-plain a blocked
/// receiver only wakes at its next timer tick (10 ms), so a latency-bound
/// exchange polls first.
pub fn recv_words_spinning(
    app: &App,
    port: u32,
    out: &mut [u64],
    spin_ns: u64,
    timeout_ns: u64,
) -> Outcome<Received> {
    if spin_ns > 0 {
        let start = now(app)?;
        loop {
            if let Some(r) = try_recv_words(app, port, out)? {
                return Ok(r);
            }
            if now(app)?.saturating_sub(start) >= spin_ns {
                break;
            }
            sys::yield_now().or_fail(app, "yield")?;
        }
    }
    recv_words(app, port, out, timeout_ns)
}

fn recv_inner(app: &App, port: u32, out: &mut [u64], timeout_ns: u64) -> Outcome<Option<Received>> {
    let mut bytes = [0u8; MAX_MESSAGE];
    let info = match sys::msg_recv(port, &mut bytes, timeout_ns) {
        Ok(info) => info,
        // Nothing there: a wait that ran out (the kernel answers a NO_WAIT
        // receive with TimedOut; the ABI table names WouldBlock for it).
        Err(Error::TimedOut | Error::WouldBlock) => return Ok(None),
        Err(e) => return Err(app.fail(format_args!("msg_recv on port {port}: {e}"))),
    };
    let len = info.len as usize;
    app.ensure(
        len.is_multiple_of(8) && len / 8 <= out.len() && len <= bytes.len(),
        format_args!(
            "malformed message on port {port} from node {}: {len} bytes (want at most {} words)",
            info.sender,
            out.len()
        ),
    )?;
    for (w, chunk) in out.iter_mut().zip(bytes[..len].chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    Ok(Some(Received {
        sender: info.sender,
        words: len / 8,
    }))
}

/// Longest single lock wait: [`acquire`] waits in slices of this length.
pub const LOCK_SLICE_NS: u64 = 50_000_000;

/// Takes every lock in `ids` through the user-space fast path, waiting up
/// to [`PATIENCE_NS`] in all, in slices of [`LOCK_SLICE_NS`]. The kernel's
/// `lock_wait` can miss the release doorbell that should end its sleep (it
/// marks the lock contended before it registers the sleeper), and the slice
/// bounds what such a miss costs. Counts in `slow` the acquires that took
/// more than 4/5 of a slice: with short critical sections, missed wake-ups.
pub fn acquire(
    app: &App,
    locks: &shmos_rt::lock::Locks,
    ids: &[u32],
    slow: &mut u64,
) -> Outcome<()> {
    let start = now(app)?;
    loop {
        match locks.acquire(ids, LOCK_SLICE_NS) {
            Ok(()) => break,
            Err(Error::TimedOut) if now(app)?.saturating_sub(start) < PATIENCE_NS => {}
            Err(e) => return Err(app.fail(format_args!("lock acquire of {ids:?}: {e}"))),
        }
    }
    if now(app)?.saturating_sub(start) > LOCK_SLICE_NS / 5 * 4 {
        *slow += 1;
    }
    Ok(())
}

/// Bytes of a page: regions are allocated page-aligned in page multiples,
/// since the kernel maps whole pages.
pub const PAGE: u64 = 4096;

/// A region mapped into this app, seen as u64 words.
#[derive(Debug)]
pub struct Mapping {
    addr: *mut u64,
    words: usize,
    writable: bool,
}

impl Mapping {
    /// Maps region `handle` of `len` bytes (as allocated).
    pub fn map(handle: u64, len: u64, writable: bool) -> Result<Mapping, Error> {
        let addr = sys::shm_map(handle, writable)?;
        Ok(Mapping {
            addr: addr.cast(),
            words: (len / 8) as usize,
            writable,
        })
    }

    /// Word `i`, as it is in the shared memory now.
    pub fn get(&self, i: usize) -> u64 {
        assert!(i < self.words, "word {i} of a {}-word mapping", self.words);
        // SAFETY: the kernel mapped at least `words` words at `addr`, 8-byte
        // aligned (page-aligned), readable, until `unmap` (which consumes
        // self); other nodes may write them concurrently, which a volatile
        // read of a plain integer tolerates.
        unsafe { self.addr.add(i).read_volatile() }
    }

    /// Writes word `i`.
    pub fn set(&self, i: usize, v: u64) {
        assert!(i < self.words, "word {i} of a {}-word mapping", self.words);
        assert!(self.writable, "write to a read-only mapping");
        // SAFETY: as in `get`, and the mapping is writable; no Rust reference
        // points into it (only these volatile accesses and `atomic`).
        unsafe { self.addr.add(i).write_volatile(v) }
    }

    /// Word `i` as an atomic, for cross-node read-modify-writes.
    pub fn atomic(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words, "word {i} of a {}-word mapping", self.words);
        // SAFETY: the word is mapped and 8-byte aligned for as long as self
        // lives (the returned reference borrows self); AtomicU64 has the
        // layout of u64, and all other accesses are volatile or atomic.
        unsafe { AtomicU64::from_ptr(self.addr.add(i)) }
    }

    /// Where it is mapped in this app.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Words in the mapping.
    pub fn len(&self) -> usize {
        self.words
    }

    /// Whether the mapping has no words.
    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// Unmaps it.
    pub fn unmap(self) -> Result<(), Error> {
        let addr = self.addr;
        core::mem::forget(self);
        sys::shm_unmap(addr.cast())
    }
}

impl Drop for Mapping {
    /// A mapping dropped on a failure path: nothing more can be done about
    /// an unmap that fails there (the app is ending).
    fn drop(&mut self) {
        let _ = sys::shm_unmap(self.addr.cast());
    }
}

/// One step of SplitMix64: a well-mixed 64-bit function of `x`.
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A pseudo-random sequence (SplitMix64) from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The sequence for `seed`.
    pub const fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// A number below `n` (n > 0; slightly biased, which does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A checksum of words (FNV-1a over each word).
pub fn checksum(words: impl Iterator<Item = u64>) -> u64 {
    words.fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A DSM range mapped into this app (`dsm_map`), seen as u64 words. Plain
/// loads and stores: the kernel keeps them coherent across nodes by page
/// faults.
#[derive(Debug)]
pub struct DsmMapping {
    addr: *mut u64,
    words: usize,
}

impl DsmMapping {
    /// Maps `len` bytes of the DSM range at global address `gaddr`.
    pub fn map(gaddr: u128, len: u64, writable: bool) -> Result<DsmMapping, Error> {
        let addr = sys::dsm_map(gaddr, len, writable)?;
        Ok(DsmMapping {
            addr: addr.cast(),
            words: (len / 8) as usize,
        })
    }

    /// Word `i`.
    pub fn get(&self, i: usize) -> u64 {
        assert!(i < self.words, "word {i} of a {}-word mapping", self.words);
        // SAFETY: the kernel reserved `words` words at `addr` (page-aligned)
        // for this mapping until `unmap` (which consumes self); an access
        // faults the page in. Volatile: other nodes change the words.
        unsafe { self.addr.add(i).read_volatile() }
    }

    /// Writes word `i` (the mapping must be writable, or the app is killed).
    pub fn set(&self, i: usize, v: u64) {
        assert!(i < self.words, "word {i} of a {}-word mapping", self.words);
        // SAFETY: as in `get`; no Rust reference points into the mapping.
        unsafe { self.addr.add(i).write_volatile(v) }
    }

    /// Words in the mapping.
    pub fn len(&self) -> usize {
        self.words
    }

    /// Whether the mapping has no words.
    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// Unmaps it.
    pub fn unmap(self) -> Result<(), Error> {
        let addr = self.addr;
        core::mem::forget(self);
        sys::dsm_unmap(addr.cast())
    }
}

impl Drop for DsmMapping {
    /// A mapping dropped on a failure path: the app is ending anyway.
    fn drop(&mut self) {
        let _ = sys::dsm_unmap(self.addr.cast());
    }
}

/// Node 0 allocates `len` bytes of DSM and sends the global address to the
/// other nodes of `nodes` on `port` (tagged `magic`); the others receive
/// it. Returns the address on every node.
pub fn share_dsm_range(app: &App, nodes: u64, port: u32, magic: u64, len: u64) -> Outcome<u128> {
    if app.node == 0 {
        let g = sys::dsm_alloc(len).or_fail(app, "dsm_alloc")?;
        for n in nodes_of(nodes).filter(|&n| n != 0) {
            send_words(app, n, port, &[magic, g as u64, (g >> 64) as u64])?;
        }
        Ok(g)
    } else {
        let mut msg = [0u64; 3];
        let got = recv_words(app, port, &mut msg, PATIENCE_NS)?;
        app.ensure(
            got.sender == 0 && got.words == 3 && msg[0] == magic,
            format_args!(
                "unexpected setup message {:?} from node {}",
                &msg[..got.words],
                got.sender
            ),
        )?;
        Ok(u128::from(msg[1]) | u128::from(msg[2]) << 64)
    }
}
