//! System calls with random and hostile arguments, counted by result.
//!
//! Each call picks a number in 1..=40 (every call but `exit`, the gaps
//! included, and now and then a number far beyond) and arguments that mix
//! garbage (random words, boundaries, kernel and non-canonical addresses,
//! unmapped user memory, this app's read-only code and data, huge lengths)
//! with what the kernel handed out earlier (pool ids, region handles,
//! mappings, lock ids, node ids, ports). `barrier` is made at fixed call
//! counts, the same on every node, so the nodes never wait for each other
//! for long. Every call must come back; the app counts its results by
//! error name and prints
//! `fuzz: N calls, every call answered (ok X, errors: InvalidArgument Y, ...)`.
//! Then, after a last barrier, it checks that the kernel still works (a
//! pool, a region mapped and written, a lock, a message to itself) and
//! exits 0 only if it does.
//!
//! The app must survive its own fuzzing: the kernel writes only where a
//! call's contract says, so every argument in a position the kernel writes
//! through (and every argument of a number that is no call) is either
//! memory the kernel must refuse or the scratch buffer: a shared region
//! mapped for this purpose, with unmapped guard pages around it, so that no
//! length can reach this app's stack or data. Valid readable buffers (on
//! the stack) go only where the kernel reads. Blocking calls get a timeout
//! of 0 (try once) but for one in a hundred, since deadlines end at the
//! next timer tick (10 ms).
//!
//! Arguments: `[N [SEED]]`, by default `100000 1`.
#![no_std]
// Every unsafe block says why it holds.
#![warn(clippy::undocumented_unsafe_blocks)]
#![no_main]

use demo_common::{App, Check, Mapping, Outcome, PAGE, Rng, live_nodes};
use shmos_rt::abi::{self, Call, Error};
use shmos_rt::raw::syscall6;
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

/// Highest call number fuzzed (the ABI uses 0..=35 with gaps).
const MAX_NR: u64 = 40;
/// Calls between two barriers (made at the same counts on every node).
const CHECKPOINT: u64 = 10_000;
/// Bytes of the scratch buffer.
const SCRATCH: u64 = 4 * PAGE;
/// First user address; the app's image starts here.
const USER_BASE: u64 = 0x4000_0000;
/// End of user space.
const USER_END: u64 = 0x0000_7FFF_FFFF_0000;
/// Boundary values.
const EDGES: [u64; 12] = [
    0,
    1,
    u64::MAX,
    i64::MAX as u64,
    1 << 31,
    1 << 32,
    1 << 63,
    63,
    64,
    4096,
    4097,
    0xffff_ffff,
];
/// Addresses the kernel must refuse to read or write for an app.
const HOSTILE: [u64; 12] = [
    0,                         // null
    0x1000,                    // low memory
    0x10_0000,                 // the kernel image (identity-mapped, supervisor)
    0x3fff_f000,               // just below user space
    0xffff_8000_0000_0000,     // the kernel's direct map
    0xffff_ffff_8000_0000,     // kernel text
    0xffff_ffff_ffff_f000,     // the last page
    0x0000_8000_0000_0000,     // first non-canonical address
    0x8000_0000_0000_0000,     // non-canonical
    0x10_0000_0000,            // unmapped user memory
    0x0000_6fff_ffff_f000,     // the end of the mapping window, unmapped
    0x0000_7fff_ffff_0000 - 8, // the end of user space
];
/// Read-only data of this app (the kernel may read it, never write it).
static READ_ONLY: [u8; 256] = [b'r'; 256];

fn main() -> i32 {
    demo_common::run("fuzz", fuzz)
}

/// Recently handed-out values of one kind: `items[..len]`; when full, a
/// push replaces one in turn.
struct Ring<const N: usize> {
    items: [u64; N],
    len: usize,
    next: usize,
}

impl<const N: usize> Ring<N> {
    const fn new() -> Self {
        Ring {
            items: [0; N],
            len: 0,
            next: 0,
        }
    }

    /// Adds `v`; returns the value it pushed out, if the ring was full.
    fn push(&mut self, v: u64) -> Option<u64> {
        if self.len < N {
            self.items[self.len] = v;
            self.len += 1;
            return None;
        }
        let old = core::mem::replace(&mut self.items[self.next], v);
        self.next = (self.next + 1) % N;
        Some(old)
    }

    fn pick(&self, rng: &mut Rng) -> Option<u64> {
        (self.len > 0).then(|| self.items[rng.below(self.len as u64) as usize])
    }

    /// Takes one value out (for unmapping it).
    fn take(&mut self, rng: &mut Rng) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let i = rng.below(self.len as u64) as usize;
        let v = self.items[i];
        self.len -= 1;
        self.items[i] = self.items[self.len];
        Some(v)
    }
}

/// What the fuzzer has been handed, and where it may let the kernel write.
struct Fuzzer {
    rng: Rng,
    node: u16,
    nodes: u64,
    scratch: u64,
    /// The scratch buffer's region handle and pool id.
    scratch_region: u64,
    scratch_pool: u64,
    pools: Ring<8>,
    regions: Ring<16>,
    maps: Ring<8>,
    locks: Ring<32>,
    /// Valid buffers the kernel may read: a pool name, lock ids, a message.
    name: [u8; 8],
    ids: [u32; 20],
    message: [u8; 64],
    /// This app's code and read-only data.
    code: u64,
    rodata: u64,
    /// Results: index 0 ok, else the error code.
    results: [u64; RESULTS],
    /// Bit N: call N succeeded at least once.
    succeeded: u64,
    /// Calls that were given a nonzero timeout.
    waits: u64,
}

impl Fuzzer {
    fn chance(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }

    /// A word that is never writable memory of this app except the scratch
    /// buffer: garbage, boundaries, hostile addresses, scratch offsets.
    fn scalar(&mut self) -> u64 {
        match self.rng.below(6) {
            0 => EDGES[self.rng.below(EDGES.len() as u64) as usize],
            1 => HOSTILE[self.rng.below(HOSTILE.len() as u64) as usize] + self.rng.below(64) * 8,
            2 => self.rng.below(256),
            3 => self.scratch + self.rng.below(SCRATCH + 64),
            _ => {
                let v = self.rng.next_u64();
                // Random words that land in user space go to unmapped memory.
                if (USER_BASE..USER_END).contains(&v) {
                    0x20_0000_0000 + (v & 0xff_ffff_fff8)
                } else {
                    v
                }
            }
        }
    }

    /// Where the kernel will write: the scratch buffer (any offset, up to
    /// past its end), memory it must refuse, or this app's read-only parts.
    fn out_ptr(&mut self) -> u64 {
        match self.rng.below(10) {
            0..4 => self.scratch + self.rng.below(SCRATCH + 64),
            4 => self.code + self.rng.below(64),
            5 => self.rodata + self.rng.below(READ_ONLY.len() as u64),
            _ => self.scalar(),
        }
    }

    /// Where the kernel will read: any of the above, or valid buffers.
    fn in_ptr(&mut self, valid: u64) -> u64 {
        match self.rng.below(8) {
            0..3 => valid,
            3 => self.maps.pick(&mut self.rng).unwrap_or(valid),
            4 => self.rodata + self.rng.below(READ_ONLY.len() as u64),
            _ => self.out_ptr(),
        }
    }

    fn len(&mut self) -> u64 {
        const LENS: [u64; 12] = [0, 1, 7, 8, 16, 64, 255, 4096, 4097, 65_536, 65_537, 1 << 32];
        match self.rng.below(4) {
            0..2 => LENS[self.rng.below(LENS.len() as u64) as usize],
            2 => self.rng.below(8192),
            _ => self.scalar(),
        }
    }

    fn timeout(&mut self) -> u64 {
        if self.chance(1) {
            self.waits += 1;
            1 + self.rng.below(2_000_000)
        } else {
            abi::NO_WAIT
        }
    }

    fn node_arg(&mut self) -> u64 {
        match self.rng.below(4) {
            0..2 => {
                let k = self
                    .rng
                    .below(u64::from(demo_common::count(self.nodes)).max(1));
                demo_common::nodes_of(self.nodes)
                    .nth(k as usize)
                    .map_or(u64::from(self.node), u64::from)
            }
            2 => u64::from(self.node),
            _ => self.scalar(),
        }
    }

    /// Fresh contents for the valid buffers: lock ids handed out, a name.
    fn refill(&mut self) {
        for i in 0..self.ids.len() {
            self.ids[i] = self.lock_id() as u32;
        }
        self.name[5] = b'a' + self.rng.below(8) as u8;
    }

    fn name_ptr(&self) -> u64 {
        self.name.as_ptr() as u64
    }

    fn ids_ptr(&self) -> u64 {
        self.ids.as_ptr() as u64
    }

    fn message_ptr(&self) -> u64 {
        self.message.as_ptr() as u64
    }

    fn small(&mut self, below: u64) -> u64 {
        if self.chance(75) {
            self.rng.below(below)
        } else {
            self.scalar()
        }
    }

    fn pool(&mut self) -> u64 {
        match self.pools.pick(&mut self.rng) {
            Some(p) if self.chance(70) => p,
            _ => self.scalar(),
        }
    }

    fn region(&mut self) -> u64 {
        match self.regions.pick(&mut self.rng) {
            Some(r) if self.chance(70) => r,
            _ => self.scalar(),
        }
    }

    fn lock_id(&mut self) -> u64 {
        match self.locks.pick(&mut self.rng) {
            Some(id) if self.chance(70) => id,
            _ => self.small(1100),
        }
    }

    fn node_set(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => 0,
            1 => 1 << self.node,
            2 => self.nodes,
            _ => self.scalar(),
        }
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => self.rng.below(1 << 20),
            1 => 1 << self.rng.below(24),
            _ => self.scalar(),
        }
    }

    fn align(&mut self) -> u64 {
        if self.chance(60) {
            1 << self.rng.below(24)
        } else {
            self.scalar()
        }
    }

    /// The arguments of one call numbered `nr`.
    fn args(&mut self, nr: u64) -> [u64; 6] {
        let mut a: [u64; 6] = core::array::from_fn(|_| 0);
        for w in a.iter_mut() {
            *w = self.scalar();
        }
        let Some(call) = Call::from_number(nr) else {
            // No such call: scalars only (a future call may write anywhere).
            return a;
        };
        match call {
            Call::Exit | Call::Barrier => unreachable!("never drawn"),
            Call::Write => {
                // Only memory the kernel must refuse, or nothing from valid
                // memory: the console stays readable.
                a[0] = self.scalar();
                if a[0] >= self.scratch && a[0] < self.scratch + SCRATCH + PAGE {
                    a[1] = 0;
                } else {
                    a[1] = self.len();
                }
            }
            Call::Sleep => a[0] = self.timeout(),
            Call::Args => (a[0], a[1]) = (self.out_ptr(), self.len()),
            Call::PoolCreate | Call::PoolOpen => {
                a[0] = self.in_ptr(self.name_ptr());
                a[1] = if a[0] == self.name_ptr() {
                    4 + self.rng.below(3)
                } else {
                    self.len()
                };
                a[2] = self.size();
            }
            Call::PoolDestroy => a[0] = self.pool(),
            Call::PoolStat => (a[0], a[1]) = (self.pool(), self.out_ptr()),
            Call::ShmAlloc => (a[0], a[1], a[2]) = (self.pool(), self.size(), self.align()),
            Call::ShmFree => a[0] = self.region(),
            Call::ShmMap => (a[0], a[1]) = (self.region(), self.small(3)),
            Call::ShmUnmap => {
                a[0] = match self.maps.take(&mut self.rng) {
                    Some(m) if self.chance(60) => m,
                    Some(m) => {
                        self.maps.push(m);
                        self.scalar()
                    }
                    None => self.scalar(),
                };
                if a[0] == self.scratch {
                    a[0] += PAGE;
                }
            }
            Call::ShmOwn => (a[0], a[1]) = (self.region(), self.node_set()),
            Call::ShmTransfer => {
                let from = if self.chance(50) {
                    1 << self.node
                } else {
                    self.node_set()
                };
                (a[0], a[1], a[2]) = (self.region(), from, self.node_set())
            }
            Call::LockReserve => (a[0], a[1]) = (self.small(70), self.out_ptr()),
            Call::LockUnreserve | Call::LockRelease | Call::LockWake => {
                (a[0], a[1]) = (self.in_ptr(self.ids_ptr()), self.small(20))
            }
            Call::LockAcquire => {
                (a[0], a[1], a[2]) = (self.in_ptr(self.ids_ptr()), self.small(20), self.timeout())
            }
            Call::LockWait => (a[0], a[1], a[2]) = (self.lock_id(), self.scalar(), self.timeout()),
            Call::LockMap => a[0] = self.out_ptr(),
            Call::Signal => (a[0], a[1]) = (self.node_arg(), self.small(70)),
            Call::SignalAll => a[0] = self.small(70),
            Call::SignalWait => a[0] = self.timeout(),
            Call::MsgSend => {
                (a[0], a[1], a[2], a[3]) = (
                    self.node_arg(),
                    self.small(20),
                    self.in_ptr(self.message_ptr()),
                    self.len(),
                )
            }
            Call::MsgSendAll => {
                (a[0], a[1], a[2]) = (self.small(20), self.in_ptr(self.message_ptr()), self.len())
            }
            Call::MsgRecv => {
                (a[0], a[1], a[2], a[3]) =
                    (self.small(20), self.out_ptr(), self.len(), self.timeout())
            }
            // Never a whole number of pages: the DSM's directory and
            // coherence traffic shares the nodes' message queues, which the
            // junk this app sends to unread ports fills up (back-pressure),
            // so a real allocation would wait for the end-of-run drain.
            // dsm-bench's `hostile` mode covers the DSM calls' refusals.
            Call::DsmAlloc => (a[0], a[1]) = (self.scalar() | 1, self.out_ptr()),
            Call::DsmMap | Call::DsmUnmap | Call::DsmFree => {}
            Call::DsmStat => a[2] = self.out_ptr(),
            Call::DsmSync => {}
            Call::DsmInfo => a[0] = self.out_ptr(),
            Call::Yield | Call::Clock | Call::NodeId | Call::Nodes => {}
        }
        a
    }

    /// Makes call `nr` with `a`; counts and remembers what it handed out.
    fn call(&mut self, nr: u64, mut a: [u64; 6]) {
        // The scratch region and its pool stay out of the game: freed (or
        // its pool destroyed) while mapped, its pages would be reused, for
        // pool metadata too, and the kernel's writes into the scratch
        // buffer would land there.
        for w in a.iter_mut() {
            if *w == self.scratch_region || *w == self.scratch_pool {
                *w ^= 1 << 40;
            }
        }
        // SAFETY: `args` put, in every position the kernel writes through,
        // only the scratch mapping (which no Rust reference points into, and
        // whose neighbours are unmapped guard pages) or memory the kernel
        // must refuse (kernel, unmapped, non-canonical, this app's code and
        // read-only data); valid pointers to this app's stack buffers go
        // only where the kernel reads. Numbers that are no call get none.
        let rax = unsafe { syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        let result = abi::decode(rax);
        match result {
            Ok(v) => {
                self.results[0] += 1;
                self.succeeded |= 1 << nr.min(63);
                self.remember(nr, a, v);
            }
            Err(e) => {
                self.results[e.code() as usize] += 1;
                // The shared memory damaged: name the call (a few times).
                if e == Error::Corrupt && self.results[e.code() as usize] <= 5 {
                    let name = Call::from_number(nr).map_or("?", Call::name);
                    println!("fuzz: node {}: {name}{a:x?} answered Corrupt", self.node);
                }
            }
        }
    }

    fn remember(&mut self, nr: u64, a: [u64; 6], v: u64) {
        match Call::from_number(nr) {
            Some(Call::PoolCreate | Call::PoolOpen) => {
                self.pools.push(v);
            }
            Some(Call::ShmAlloc) => {
                self.regions.push(v);
            }
            Some(Call::ShmMap) => self.add_map(v),
            Some(Call::LockMap) if self.in_scratch(a[0], 8) => {
                let addr = self.read_scratch(a[0]);
                self.add_map(addr);
            }
            Some(Call::LockReserve) if self.in_scratch(a[1], a[0].saturating_mul(4)) => {
                for i in 0..a[0].min(64) {
                    let id = self.read_scratch_u32(a[1] + 4 * i);
                    self.locks.push(u64::from(id));
                }
            }
            _ => {}
        }
    }

    /// Keeps mapping `addr`, unmapping the oldest if there are too many.
    /// Keeps mapping `addr`, unmapping the oldest if there are too many
    /// (the unmap counts as a call too).
    fn add_map(&mut self, addr: u64) {
        if let Some(old) = self.maps.push(addr)
            && old != self.scratch
        {
            self.call(Call::ShmUnmap.number(), [old, 0, 0, 0, 0, 0]);
        }
    }

    fn in_scratch(&self, addr: u64, len: u64) -> bool {
        addr >= self.scratch
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.scratch + SCRATCH)
    }

    /// The (unaligned) word at `addr` in the scratch buffer, or 0 outside it.
    fn read_scratch(&self, addr: u64) -> u64 {
        if !self.in_scratch(addr, 8) {
            return 0;
        }
        // SAFETY: the 8 bytes lie in the scratch mapping, which stays mapped
        // for the app's life (shm_unmap is never given its address);
        // unaligned reads of plain bytes are fine.
        unsafe { (addr as *const u64).read_unaligned() }
    }

    /// The (unaligned) u32 at `addr` in the scratch buffer, or 0 outside it.
    fn read_scratch_u32(&self, addr: u64) -> u32 {
        if !self.in_scratch(addr, 4) {
            return 0;
        }
        // SAFETY: as in `read_scratch`, for 4 bytes.
        unsafe { (addr as *const u32).read_unaligned() }
    }
}

fn fuzz(app: &App) -> Outcome<()> {
    let mut buf = [0u8; abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let n = demo_common::number(app, words.next(), "calls", 100_000)?;
    let seed = demo_common::number(app, words.next(), "seed", 1)?;
    let nodes = live_nodes(app)?;

    // The scratch buffer: a region of this node's own pool, owned by it.
    let mut pool_name = *b"fuzz-scratch-00";
    pool_name[13] = b'0' + (app.node / 10 % 10) as u8;
    pool_name[14] = b'0' + (app.node % 10) as u8;
    let pool_name = core::str::from_utf8(&pool_name).unwrap_or("fuzz-scratch");
    let pool = sys::pool_create(pool_name, 64 * 1024).or_fail(app, "pool_create (scratch)")?;
    let region = sys::shm_alloc(pool, SCRATCH, PAGE).or_fail(app, "shm_alloc (scratch)")?;
    sys::shm_own(region, 1 << app.node).or_fail(app, "shm_own (scratch)")?;
    let scratch = Mapping::map(region, SCRATCH, true).or_fail(app, "shm_map (scratch)")?;
    let mut name = *b"fz00-a\0\0";
    name[2] = b'0' + (app.node / 10 % 10) as u8;
    name[3] = b'0' + (app.node % 10) as u8;
    let mut f = Fuzzer {
        rng: Rng::new(seed.wrapping_mul(0x1000_0000_01b3) ^ u64::from(app.node) << 40),
        node: app.node,
        nodes,
        scratch: scratch.addr(),
        scratch_region: region,
        scratch_pool: pool,
        pools: Ring::new(),
        regions: Ring::new(),
        maps: Ring::new(),
        locks: Ring::new(),
        name,
        ids: [0; 20],
        message: [0x5a; 64],
        code: main as *const () as u64,
        rodata: READ_ONLY.as_ptr() as u64,
        results: [0; RESULTS],
        succeeded: 0,
        waits: 0,
    };
    let started = demo_common::now(app)?;
    let mut made = 0u64;
    while made < n {
        if made % CHECKPOINT == CHECKPOINT - 1 {
            // The barrier, with junk arguments, at the same count everywhere.
            let junk = [
                f.scalar(),
                f.scalar(),
                f.scalar(),
                f.scalar(),
                f.scalar(),
                f.scalar(),
            ];
            f.call(Call::Barrier.number(), junk);
        } else {
            let nr = loop {
                let nr = if f.chance(1) {
                    f.scalar()
                } else {
                    1 + f.rng.below(MAX_NR)
                };
                if nr != Call::Exit.number() && nr != Call::Barrier.number() {
                    break nr;
                }
            };
            if made.is_multiple_of(64) {
                f.refill();
            }
            let a = f.args(nr);
            f.call(nr, a);
            // The kernel read the buffers during the call: keep them real.
            core::hint::black_box((&f.name, &f.ids, &f.message));
        }
        made += 1;
    }
    let ms = (demo_common::now(app)? - started) / 1_000_000;

    let mut line = [0u8; 512];
    // Every call counted: the drawn ones and the unmaps of evicted mappings.
    let total: u64 = f.results.iter().sum();
    let text = summary(&mut line, total, &f.results);
    println!("{text}");
    println!(
        "fuzz: node {}: {total} calls in {ms} ms ({made} drawn, {} unmaps of evicted mappings), {} with a wait",
        app.node,
        total - made,
        f.waits
    );
    for call in Call::ALL {
        if call != Call::Exit && f.succeeded & (1 << call.number()) == 0 {
            println!("fuzz: node {}: no {} call succeeded", app.node, call.name());
        }
    }

    // Everyone done: the kernel must still work.
    sys::barrier().or_fail(app, "barrier after fuzzing")?;
    sanity(app, &scratch)?;
    println!(
        "fuzz: node {}: the kernel still works (pool, region, lock, message)",
        app.node
    );
    drop(scratch);
    Ok(())
}

/// `fuzz: N calls, every call answered (ok X, errors: Name Y, ...)`.
/// Result slots: success, then one per error code.
const RESULTS: usize = Error::ALL.len() + 1;

fn summary<'a>(buf: &'a mut [u8; 512], n: u64, results: &[u64; RESULTS]) -> &'a str {
    use core::fmt::Write;
    struct W<'b>(&'b mut [u8], usize);
    impl Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = (self.1 + s.len()).min(self.0.len());
            self.0[self.1..end].copy_from_slice(&s.as_bytes()[..end - self.1]);
            self.1 = end;
            Ok(())
        }
    }
    let mut w = W(buf, 0);
    let _ = write!(
        w,
        "fuzz: {n} calls, every call answered (ok {}, errors:",
        results[0]
    );
    let mut first = true;
    for e in Error::ALL {
        let count = results[e.code() as usize];
        if count > 0 {
            let _ = write!(w, "{} {} {count}", if first { "" } else { "," }, e.name());
            first = false;
        }
    }
    let _ = write!(w, ")");
    let len = w.1;
    core::str::from_utf8(&buf[..len]).unwrap_or("fuzz: (summary not UTF-8)")
}

/// After the fuzzing: ordinary use of the calls works.
fn sanity(app: &App, scratch: &Mapping) -> Outcome<()> {
    let me = app.node;
    // The scratch region is still ours and still mapped.
    scratch.set(0, 0x5a5a);
    app.ensure(
        scratch.get(0) == 0x5a5a,
        format_args!("the scratch region does not keep a write"),
    )?;
    let name = if me == 0 {
        "fuzz-sanity-0"
    } else {
        "fuzz-sanity-n"
    };
    let pool = sys::pool_create(name, 64 * 1024)
        .or_else(|e| {
            if e == Error::AlreadyExists {
                sys::pool_open(name)
            } else {
                Err(e)
            }
        })
        .or_fail(app, "pool_create (sanity)")?;
    let region = sys::shm_alloc(pool, PAGE, PAGE).or_fail(app, "shm_alloc (sanity)")?;
    let map = Mapping::map(region, PAGE, true).or_fail(app, "shm_map (sanity)")?;
    map.set(7, 0x1234);
    app.ensure(
        map.get(7) == 0x1234,
        format_args!("a fresh region does not keep a write"),
    )?;
    map.unmap().or_fail(app, "shm_unmap (sanity)")?;
    sys::shm_free(region).or_fail(app, "shm_free (sanity)")?;
    let mut lock = [0u32; 1];
    // The lock table may be used up by the fuzzing (its reservations last
    // as long as this node): OutOfMemory is a fair answer then.
    match sys::lock_reserve(&mut lock) {
        Ok(_) => {
            sys::lock_acquire(&lock, abi::NO_WAIT).or_fail(app, "lock_acquire (sanity)")?;
            sys::lock_release(&lock).or_fail(app, "lock_release (sanity)")?;
            sys::lock_unreserve(&lock).or_fail(app, "lock_unreserve (sanity)")?;
        }
        // All ids reserved: this kernel says NotFound (no free lock).
        Err(Error::OutOfMemory | Error::NotFound) => {}
        Err(e) => return Err(app.fail(format_args!("lock_reserve (sanity): {e}"))),
    }
    // The queue may be full of junk the nodes sent to any port (nobody
    // reads most of them): drain every port (but the kernel's DSM port,
    // 15, which apps may not use), then a message to itself. A whole
    // MAX_MESSAGE (64 KiB) does not sit on the user stack.
    static mut JUNK: [u8; abi::MAX_MESSAGE] = [0; abi::MAX_MESSAGE];
    // SAFETY: the only reference to JUNK, taken once; apps are single-threaded.
    let junk = unsafe { &mut *core::ptr::addr_of_mut!(JUNK) };
    for port in 0..15 {
        loop {
            match sys::msg_recv(port, junk, abi::NO_WAIT) {
                Ok(_) => {}
                Err(Error::TimedOut | Error::WouldBlock) => break,
                Err(e) => return Err(app.fail(format_args!("draining port {port}: {e}"))),
            }
        }
    }
    demo_common::send_words(app, me, 14, &[0xfeed, u64::from(me)])?;
    let mut msg = [0u64; demo_common::MAX_WORDS];
    let got = demo_common::recv_words(app, 14, &mut msg, demo_common::PATIENCE_NS)?;
    app.ensure(
        got.sender == me && msg[..2] == [0xfeed, u64::from(me)],
        format_args!(
            "the message to itself came back as {:?}",
            &msg[..got.words.min(4)]
        ),
    )
}
