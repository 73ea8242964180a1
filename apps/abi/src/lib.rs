//! The shmos system call ABI: the one definition shared by the kernel
//! (`kernel/`, as a path dependency) and the user runtime (`shmos-rt`).
//!
//! # Calling convention
//!
//! An app executes `syscall` with the call number in `rax` and up to six
//! arguments in `rdi, rsi, rdx, r10, r8, r9`. The kernel returns in `rax`
//! either a value `>= 0` or `-(error code)`; [`decode`] and [`encode`] turn
//! that into a `Result`. `rcx` and `r11` are clobbered (the CPU uses them);
//! every other register is preserved.
//!
//! # Calls
//!
//! | nr | call | arguments | returns |
//! |---:|------|-----------|---------|
//! |  0 | `exit` | code (i32) | never returns |
//! |  1 | `write` | ptr, len (<= [`MAX_WRITE`]) | bytes written to the console |
//! |  2 | `yield` | - | 0 |
//! |  3 | `sleep` | ns | 0 |
//! |  4 | `clock` | - | ns since boot (monotonic) |
//! |  5 | `node_id` | - | this node's id |
//! |  6 | `nodes` | - | live nodes, bit N = node N |
//! |  7 | `barrier` | - | 0 once every live node has reached the same barrier |
//! |  8 | `args` | buf, len | length of the whole argument string (copies at most len bytes) |
//! | 10 | `pool_create` | name_ptr, name_len (<= [`MAX_NAME`]), size | pool id |
//! | 11 | `pool_open` | name_ptr, name_len | pool id |
//! | 12 | `pool_destroy` | pool | 0 |
//! | 13 | `pool_stat` | pool, out_ptr ([`PoolStat`]) | 0 |
//! | 14 | `shm_alloc` | pool, len, align | region handle |
//! | 15 | `shm_free` | handle | 0 |
//! | 16 | `shm_map` | handle, flags ([`MAP_WRITABLE`]) | user address of the mapping |
//! | 17 | `shm_unmap` | addr | 0 |
//! | 18 | `shm_own` | handle, nodes (bitmap) | 0 |
//! | 19 | `shm_transfer` | handle, from (bitmap), to (bitmap) | 0 |
//! | 20 | `lock_reserve` | n (<= [`MAX_LOCKS`]), out_ptr (n x u32) | n (`NotFound` when fewer are free; ids belong to the node) |
//! | 21 | `lock_unreserve` | ids_ptr (u32s), n | 0 |
//! | 22 | `lock_acquire` | ids_ptr, n, timeout_ns | 0 |
//! | 23 | `lock_release` | ids_ptr, n | 0 |
//! | 24 | `lock_wait` | id, observed, timeout_ns | 0 once the word no longer reads `observed`, a lock doorbell came, or the deadline passed (then retry the acquire) |
//! | 25 | `lock_map` | out_ptr | writes a [`LockMapping`]: the lock table mapped writable, and the caller's identity, for the fast path |
//! | 26 | `lock_wake` | ids_ptr, n | wakes the waiters of locks the fast path released |
//! | 30 | `signal` | node, sig (0..63) | 0 |
//! | 31 | `signal_all` | sig | the nodes signalled (bitmap) |
//! | 32 | `signal_wait` | timeout_ns | pending signal bits (bit N = signal N) |
//! | 33 | `msg_send` | node, port, ptr, len (<= [`MAX_MESSAGE`]) | 0 |
//! | 34 | `msg_send_all` | port, ptr, len | the nodes sent to (bitmap; all or none) |
//! | 35 | `msg_recv` | port, buf_ptr, buf_len, timeout_ns | [`RecvInfo`] packed: length, sender node |
//! | 40 | `dsm_alloc` | len (whole 4 KiB pages, > 0), out_ptr (16 bytes) | 0; writes the range's 128-bit global address (little-endian) |
//! | 41 | `dsm_map` | gaddr_lo, gaddr_hi, len, flags ([`MAP_WRITABLE`]) | user address of the mapping (pages fault in coherently) |
//! | 42 | `dsm_unmap` | addr (from `dsm_map`) | 0 |
//! | 43 | `dsm_free` | gaddr_lo, gaddr_hi, len (the whole range, on the node that allocated it) | 0 |
//! | 44 | `dsm_stat` | gaddr_lo, gaddr_hi, out_ptr ([`DsmStat`]) | 0; the page's directory entry and what this node knows of it |
//! | 45 | `dsm_sync` | gaddr_lo, gaddr_hi, len (whole pages of one range) | 0 once every node's writes to the range, and the directory, are on their disks (`NoDevice` without disks, `Io` if a disk failed) |
//! | 46 | `dsm_info` | out_ptr ([`DsmInfo`]) | 0; this node's paging, disk and migration counters |
//!
//! Port 15 is the kernel's DSM port: message calls on it are
//! `PermissionDenied`.
//!
//! DSM global addresses are 128-bit: calls take them as two `u64` halves
//! (low, high) and `dsm_alloc` returns one through a 16-byte out pointer.
//! Their errors: no allocated range there `NotFound`, an address or length
//! not a whole number of pages `InvalidArgument`, a range whose directory
//! entry names no node `NotFound`, a damaged directory page `Corrupt`, a
//! coherence transaction under way `Busy`. A DSM page may be passed to no
//! other call as a buffer (the kernel does not fault it in: `BadAddress`).
//!
//! Timeouts are in nanoseconds: [`NO_WAIT`] (0) tries once, [`FOREVER`]
//! waits without limit. Node sets are `u64` bitmaps (bit N = node N).
//!
//! # Errors
//!
//! | code | name | meaning |
//! |-----:|------|---------|
//! |  1 | `InvalidArgument` | an argument is out of range or malformed |
//! |  2 | `BadAddress` | a pointer or range is not mapped, not user memory, or not writable |
//! |  3 | `Unsupported` | no such call (or not available in this kernel) |
//! |  4 | `OutOfMemory` | no memory (kernel frames or shared memory) for the request |
//! |  5 | `NotFound` | no pool, region, lock or node by that name or id |
//! |  6 | `AlreadyExists` | a pool of that name exists already |
//! |  7 | `PermissionDenied` | the caller's node does not own the region or hold the lock |
//! |  8 | `Busy` | the object is in use (locked, mapped, reserved) |
//! |  9 | `TimedOut` | the wait ran out of time |
//! | 10 | `WouldBlock` | queue full or nothing to take, and the call may not wait (back-pressure) |
//! | 11 | `Stale` | a handle of a freed region, or a peer's dead generation |
//! | 12 | `NotLive` | the node is not live in the cluster (or there is no cluster) |
//! | 13 | `Corrupt` | the shared memory is damaged |
//! | 14 | `TooLarge` | a length exceeds the call's limit |
//! | 15 | `NoDevice` | no shared memory device (or, for `dsm_sync`, no disk) |
//! | 16 | `Io` | a disk failed (I/O error, full, or a page failed its checksum) |
#![no_std]

use core::fmt;

/// A system call number (the value in `rax`).
#[repr(u64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Ends the calling app with an exit code.
    Exit = 0,
    /// Writes bytes to the console.
    Write = 1,
    /// Gives the CPU to the next ready app.
    Yield = 2,
    /// Sleeps for at least the given nanoseconds.
    Sleep = 3,
    /// Nanoseconds since boot.
    Clock = 4,
    /// This node's id.
    NodeId = 5,
    /// Bitmap of live nodes.
    Nodes = 6,
    /// Waits until every live node reaches the barrier.
    Barrier = 7,
    /// Copies the app's argument string.
    Args = 8,
    /// Creates a named shared memory pool.
    PoolCreate = 10,
    /// Opens a named pool.
    PoolOpen = 11,
    /// Destroys a pool.
    PoolDestroy = 12,
    /// Reports a pool's figures into a [`PoolStat`].
    PoolStat = 13,
    /// Allocates a contiguous region in a pool.
    ShmAlloc = 14,
    /// Frees a region.
    ShmFree = 15,
    /// Maps a region into the caller.
    ShmMap = 16,
    /// Unmaps a mapping made by `shm_map`.
    ShmUnmap = 17,
    /// Makes a region exclusive to a node set.
    ShmOwn = 18,
    /// Moves a region's ownership from one node set to another.
    ShmTransfer = 19,
    /// Reserves global lock ids.
    LockReserve = 20,
    /// Gives lock ids back.
    LockUnreserve = 21,
    /// Takes one or more global locks.
    LockAcquire = 22,
    /// Releases global locks.
    LockRelease = 23,
    /// Waits until a lock word changes.
    LockWait = 24,
    /// Maps the lock table for the user-space fast path.
    LockMap = 25,
    /// Wakes the waiters of locks released by the fast path.
    LockWake = 26,
    /// Raises a signal on one node.
    Signal = 30,
    /// Raises a signal on every live node.
    SignalAll = 31,
    /// Waits for signals.
    SignalWait = 32,
    /// Sends a message to one node's port.
    MsgSend = 33,
    /// Sends a message to a port on every live node.
    MsgSendAll = 34,
    /// Receives a message from a port.
    MsgRecv = 35,
    /// Allocates a range of the DSM global address space.
    DsmAlloc = 40,
    /// Maps a DSM range into the caller.
    DsmMap = 41,
    /// Unmaps a mapping made by `dsm_map`.
    DsmUnmap = 42,
    /// Frees a DSM range.
    DsmFree = 43,
    /// Reports a DSM page's directory entry and coherence state.
    DsmStat = 44,
    /// Makes a DSM range durable on the disks.
    DsmSync = 45,
    /// Reports this node's DSM paging, disk and migration counters.
    DsmInfo = 46,
}

impl Call {
    /// Every call, in number order.
    pub const ALL: [Call; 39] = [
        Call::Exit,
        Call::Write,
        Call::Yield,
        Call::Sleep,
        Call::Clock,
        Call::NodeId,
        Call::Nodes,
        Call::Barrier,
        Call::Args,
        Call::PoolCreate,
        Call::PoolOpen,
        Call::PoolDestroy,
        Call::PoolStat,
        Call::ShmAlloc,
        Call::ShmFree,
        Call::ShmMap,
        Call::ShmUnmap,
        Call::ShmOwn,
        Call::ShmTransfer,
        Call::LockReserve,
        Call::LockUnreserve,
        Call::LockAcquire,
        Call::LockRelease,
        Call::LockWait,
        Call::LockMap,
        Call::LockWake,
        Call::Signal,
        Call::SignalAll,
        Call::SignalWait,
        Call::MsgSend,
        Call::MsgSendAll,
        Call::MsgRecv,
        Call::DsmAlloc,
        Call::DsmMap,
        Call::DsmUnmap,
        Call::DsmFree,
        Call::DsmStat,
        Call::DsmSync,
        Call::DsmInfo,
    ];

    /// The call with number `n`, if there is one.
    pub const fn from_number(n: u64) -> Option<Call> {
        Some(match n {
            0 => Call::Exit,
            1 => Call::Write,
            2 => Call::Yield,
            3 => Call::Sleep,
            4 => Call::Clock,
            5 => Call::NodeId,
            6 => Call::Nodes,
            7 => Call::Barrier,
            8 => Call::Args,
            10 => Call::PoolCreate,
            11 => Call::PoolOpen,
            12 => Call::PoolDestroy,
            13 => Call::PoolStat,
            14 => Call::ShmAlloc,
            15 => Call::ShmFree,
            16 => Call::ShmMap,
            17 => Call::ShmUnmap,
            18 => Call::ShmOwn,
            19 => Call::ShmTransfer,
            20 => Call::LockReserve,
            21 => Call::LockUnreserve,
            22 => Call::LockAcquire,
            23 => Call::LockRelease,
            24 => Call::LockWait,
            25 => Call::LockMap,
            26 => Call::LockWake,
            30 => Call::Signal,
            31 => Call::SignalAll,
            32 => Call::SignalWait,
            33 => Call::MsgSend,
            34 => Call::MsgSendAll,
            35 => Call::MsgRecv,
            40 => Call::DsmAlloc,
            41 => Call::DsmMap,
            42 => Call::DsmUnmap,
            43 => Call::DsmFree,
            44 => Call::DsmStat,
            45 => Call::DsmSync,
            46 => Call::DsmInfo,
            _ => return None,
        })
    }

    /// The call's number.
    pub const fn number(self) -> u64 {
        self as u64
    }

    /// The call's name as written in the table above.
    pub const fn name(self) -> &'static str {
        match self {
            Call::Exit => "exit",
            Call::Write => "write",
            Call::Yield => "yield",
            Call::Sleep => "sleep",
            Call::Clock => "clock",
            Call::NodeId => "node_id",
            Call::Nodes => "nodes",
            Call::Barrier => "barrier",
            Call::Args => "args",
            Call::PoolCreate => "pool_create",
            Call::PoolOpen => "pool_open",
            Call::PoolDestroy => "pool_destroy",
            Call::PoolStat => "pool_stat",
            Call::ShmAlloc => "shm_alloc",
            Call::ShmFree => "shm_free",
            Call::ShmMap => "shm_map",
            Call::ShmUnmap => "shm_unmap",
            Call::ShmOwn => "shm_own",
            Call::ShmTransfer => "shm_transfer",
            Call::LockReserve => "lock_reserve",
            Call::LockUnreserve => "lock_unreserve",
            Call::LockAcquire => "lock_acquire",
            Call::LockRelease => "lock_release",
            Call::LockWait => "lock_wait",
            Call::LockMap => "lock_map",
            Call::LockWake => "lock_wake",
            Call::Signal => "signal",
            Call::SignalAll => "signal_all",
            Call::SignalWait => "signal_wait",
            Call::MsgSend => "msg_send",
            Call::MsgSendAll => "msg_send_all",
            Call::MsgRecv => "msg_recv",
            Call::DsmAlloc => "dsm_alloc",
            Call::DsmMap => "dsm_map",
            Call::DsmUnmap => "dsm_unmap",
            Call::DsmFree => "dsm_free",
            Call::DsmStat => "dsm_stat",
            Call::DsmSync => "dsm_sync",
            Call::DsmInfo => "dsm_info",
        }
    }
}

/// Why a call failed; `-(code)` is what the kernel returns in `rax`.
#[repr(i64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// An argument is out of range or malformed.
    InvalidArgument = 1,
    /// A pointer or range is not mapped, not user memory, or not writable.
    BadAddress = 2,
    /// No such call (or not available in this kernel).
    Unsupported = 3,
    /// No memory for the request.
    OutOfMemory = 4,
    /// No object by that name or id.
    NotFound = 5,
    /// An object of that name exists already.
    AlreadyExists = 6,
    /// The caller may not do this (not owner, not holder).
    PermissionDenied = 7,
    /// The object is in use.
    Busy = 8,
    /// The wait ran out of time.
    TimedOut = 9,
    /// Queue full or nothing to take, and the call may not wait.
    WouldBlock = 10,
    /// A handle of a freed region, or a peer's dead generation.
    Stale = 11,
    /// The node is not live in the cluster.
    NotLive = 12,
    /// The shared memory is damaged.
    Corrupt = 13,
    /// A length exceeds the call's limit.
    TooLarge = 14,
    /// No shared memory device (or no disk).
    NoDevice = 15,
    /// A disk failed.
    Io = 16,
}

impl Error {
    /// Every error, in code order.
    pub const ALL: [Error; 16] = [
        Error::InvalidArgument,
        Error::BadAddress,
        Error::Unsupported,
        Error::OutOfMemory,
        Error::NotFound,
        Error::AlreadyExists,
        Error::PermissionDenied,
        Error::Busy,
        Error::TimedOut,
        Error::WouldBlock,
        Error::Stale,
        Error::NotLive,
        Error::Corrupt,
        Error::TooLarge,
        Error::NoDevice,
        Error::Io,
    ];

    /// The positive error code.
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// The error with code `code` (positive), if there is one.
    pub const fn from_code(code: i64) -> Option<Error> {
        if code >= 1 && code <= Error::ALL.len() as i64 {
            Some(Error::ALL[code as usize - 1])
        } else {
            None
        }
    }

    /// The error's name as written in the table above.
    pub const fn name(self) -> &'static str {
        match self {
            Error::InvalidArgument => "InvalidArgument",
            Error::BadAddress => "BadAddress",
            Error::Unsupported => "Unsupported",
            Error::OutOfMemory => "OutOfMemory",
            Error::NotFound => "NotFound",
            Error::AlreadyExists => "AlreadyExists",
            Error::PermissionDenied => "PermissionDenied",
            Error::Busy => "Busy",
            Error::TimedOut => "TimedOut",
            Error::WouldBlock => "WouldBlock",
            Error::Stale => "Stale",
            Error::NotLive => "NotLive",
            Error::Corrupt => "Corrupt",
            Error::TooLarge => "TooLarge",
            Error::NoDevice => "NoDevice",
            Error::Io => "Io",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the kernel puts in `rax` for `result`.
pub const fn encode(result: Result<u64, Error>) -> u64 {
    match result {
        // Values keep the sign bit clear so they never read as errors.
        Ok(v) => v & (i64::MAX as u64),
        Err(e) => (-e.code()) as u64,
    }
}

/// The result a raw `rax` value stands for. A negative value that is no
/// known error code decodes as `Unsupported` (a newer kernel's error).
pub const fn decode(rax: u64) -> Result<u64, Error> {
    let v = rax as i64;
    if v >= 0 {
        Ok(rax)
    } else {
        match Error::from_code(v.wrapping_neg()) {
            Some(e) => Err(e),
            None => Err(Error::Unsupported),
        }
    }
}

/// Most bytes one `write` call takes.
pub const MAX_WRITE: usize = 64 * 1024;
/// Most bytes of a pool name.
pub const MAX_NAME: usize = 64;
/// Most lock ids in one lock call.
pub const MAX_LOCKS: usize = 64;
/// Most bytes in one message (a message must also fit the receiver's
/// queue: `TooLarge` otherwise).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most bytes of an app's argument string.
pub const MAX_ARGS: usize = 256;
/// Signals are numbered 0..SIGNALS (one bit each in `signal_wait`'s result).
pub const SIGNALS: u64 = 64;

/// Timeout meaning "do not wait": try once.
pub const NO_WAIT: u64 = 0;
/// Timeout meaning "wait without limit".
pub const FOREVER: u64 = u64::MAX;

/// `shm_map` flag: map the region writable (else read-only).
pub const MAP_WRITABLE: u64 = 1;
/// Every flag `shm_map` knows; others are `InvalidArgument`.
pub const MAP_FLAGS: u64 = MAP_WRITABLE;

/// What `lock_map` writes at `out_ptr`: where the lock table is mapped in
/// the caller, and who the caller is in lock words (node, incarnation,
/// process), so that uncontended acquire and release need no system call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockMapping {
    /// User address of the lock table.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The caller's node id.
    pub node: u32,
    /// The node's generation (incarnation).
    pub generation: u32,
    /// The caller's process id on its node.
    pub process: u32,
    /// Always 0.
    pub reserved: u32,
}

/// What `dsm_stat` writes at `out_ptr`: the directory entry of the range
/// holding a DSM page, and the page's state as this node knows it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DsmStat {
    /// First global address of the range (low, high halves).
    pub first: [u64; 2],
    /// Last global address of the range, inclusive (low, high halves).
    pub last: [u64; 2],
    /// The range's responsible node, from its directory entry.
    pub responsible: u64,
    /// FNV-1a 64 of the directory entry's fields (first, last, child,
    /// responsible): equal as long as the entry did not change.
    pub entry_sum: u64,
    /// This node's rights on the page: 0 none, 1 read, 2 read-write.
    pub rights: u64,
    /// 1 if this node owns the page (serves its copies).
    pub owner: u64,
    /// This node's copy's version tag (0 without a copy).
    pub version: u64,
    /// On the responsible node: the owner (`u64::MAX` for none, or on
    /// other nodes: unknown).
    pub managed_owner: u64,
    /// On the responsible node: the copyset (bit N = node N), else 0.
    pub managed_copyset: u64,
    /// On the responsible node: the version tag, else 0.
    pub managed_version: u64,
}

/// What `dsm_info` writes at `out_ptr`: this node's DSM counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DsmInfo {
    /// Owned pages that left this node's RAM for the disks.
    pub page_outs: u64,
    /// Pages this node brought back from a disk (as responsible node).
    pub page_ins: u64,
    /// Read copies dropped to make room.
    pub dropped_copies: u64,
    /// Write-backs this node sent.
    pub write_backs: u64,
    /// Copies stored on this node's disk.
    pub stored: u64,
    /// Ownership moves the migration controller decided here.
    pub migrations: u64,
    /// Disk operations that failed here.
    pub disk_errors: u64,
    /// Pages in this node's RAM cache now.
    pub cached_pages: u64,
    /// The RAM budget in pages.
    pub ram_pages: u64,
    /// Pages on this node's disk (0 without a disk).
    pub disk_pages: u64,
    /// Pages the disk can still take.
    pub disk_free: u64,
    /// 1 if this node has a disk.
    pub has_disk: u64,
    /// Live nodes as the DSM counts them (bit N = node N).
    pub live: u64,
}

/// What `pool_stat` writes at `out_ptr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStat {
    /// Bytes in the pool.
    pub size: u64,
    /// Bytes not allocated.
    pub free: u64,
    /// Largest contiguous free block.
    pub largest_free: u64,
    /// Regions allocated.
    pub regions: u64,
}

/// `msg_recv`'s result: bits 0..32 the message length, bits 32..48 the
/// sender's node id (the value stays positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvInfo {
    /// Bytes of the message (copied up to the buffer's length).
    pub len: u32,
    /// Node that sent it.
    pub sender: u16,
}

impl RecvInfo {
    /// The packed return value.
    pub const fn pack(self) -> u64 {
        (self.sender as u64) << 32 | self.len as u64
    }

    /// Unpacks a return value of `msg_recv`.
    pub const fn unpack(v: u64) -> RecvInfo {
        RecvInfo {
            len: v as u32,
            sender: (v >> 32) as u16,
        }
    }
}
