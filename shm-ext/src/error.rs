//! `ShmError`: the one error type at the shared-memory boundary.
//!
//! Every failure of this crate is one of a small closed set of named codes.
//! The numeric code is stable so the syscall layer can hand it to user space:
//!
//! | code | variant              | meaning                                                         |
//! |-----:|----------------------|-----------------------------------------------------------------|
//! |    1 | `OutOfBounds`        | an offset or length lies outside the mapped region              |
//! |    2 | `Misaligned`         | an atomic word would not be naturally aligned                   |
//! |    3 | `BadMagic`           | the superblock does not start with the shmos magic              |
//! |    4 | `UnsupportedVersion` | the superblock carries a format version this crate cannot read  |
//! |    5 | `Corrupt`            | a field read from shared memory is inconsistent (`what` says which) |
//! |    6 | `NotInitialized`     | the region is blank, or its initialisation did not finish in time |
//! |    7 | `TooSmall`           | the region cannot hold the areas the format needs               |
//! |    8 | `InvalidArgument`    | a caller-supplied parameter is out of range (`what` says which) |
//! |    9 | `NoSuchNode`         | a node id beyond the node table                                 |
//! |   10 | `NodeTableFull`      | no free node-table entry to join with                           |
//! |   11 | `StaleGeneration`    | the node's entry was taken over by a newer generation           |
//! |   12 | `NodeDead`           | the node was declared dead by an observer; it must join again   |
//! |   13 | `NotLive`            | the node's entry is not live (never joined, joining, or left)   |
//! |   14 | `NoDoorbell`         | the node has no doorbell peer id to ring                        |
//! |   15 | `Busy`               | an entry kept changing while being read; try again              |
//! |   16 | `OutOfMemory`        | no free block large enough in the pool                          |
//! |   17 | `NoSuchPool`         | no pool with that name or id                                    |
//! |   18 | `PoolExists`         | a pool with that name exists already                            |
//! |   19 | `NoSuchRegion`       | the region handle names no allocated region (freed, or never allocated)|
//! |   20 | `NotOwner`           | the node is outside the region's owner set                      |
//! |   21 | `NoSuchLock`         | a lock id outside the lock table                                |
//! |   22 | `NotReserved`        | the lock id is not reserved (by this node)                      |
//! |   23 | `NotHolder`          | the lock is not held by the caller                              |
//! |   24 | `TimedOut`           | a wait ran out of time                                          |
//! |   25 | `QueueFull`          | the destination queue is full (back-pressure)                   |
//! |   26 | `NoMessage`          | no message is waiting                                           |
//! |   27 | `TooLarge`           | a length exceeds what the object can hold                       |

use core::fmt;

/// A named failure at the shared-memory boundary; `code()` gives its stable number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum ShmError {
    /// An offset or length lies outside the mapped region.
    OutOfBounds,
    /// An atomic word would not be naturally aligned.
    Misaligned,
    /// The superblock does not start with the shmos magic.
    BadMagic,
    /// The superblock carries a format version this crate cannot read.
    UnsupportedVersion {
        /// The version found on the device.
        found: u32,
    },
    /// A field read from shared memory is inconsistent.
    Corrupt {
        /// Which field or invariant.
        what: &'static str,
    },
    /// The region is blank, or its initialisation did not finish before the deadline.
    NotInitialized,
    /// The region cannot hold the areas the format needs.
    TooSmall,
    /// A caller-supplied parameter is out of range.
    InvalidArgument {
        /// Which parameter.
        what: &'static str,
    },
    /// A node id beyond the node table.
    NoSuchNode,
    /// No free node-table entry to join with.
    NodeTableFull,
    /// The node's entry was taken over by a newer generation.
    StaleGeneration,
    /// The node was declared dead by an observer; it must join again.
    NodeDead,
    /// The node's entry is not live (never joined, joining, or left).
    NotLive,
    /// The node has no doorbell peer id to ring.
    NoDoorbell,
    /// An entry kept changing while being read; try again.
    Busy,
    /// No free block large enough in the pool.
    OutOfMemory,
    /// No pool with that name or id.
    NoSuchPool,
    /// A pool with that name exists already.
    PoolExists,
    /// The region handle names no allocated region (freed, or never allocated).
    NoSuchRegion,
    /// The node is outside the region's owner set.
    NotOwner,
    /// A lock id outside the lock table.
    NoSuchLock,
    /// The lock id is not reserved (by this node).
    NotReserved,
    /// The lock is not held by the caller.
    NotHolder,
    /// A wait ran out of time.
    TimedOut,
    /// The destination queue is full (back-pressure).
    QueueFull,
    /// No message is waiting.
    NoMessage,
    /// A length exceeds what the object can hold.
    TooLarge,
}

impl ShmError {
    /// The stable numeric code of this error (see the module table).
    pub const fn code(&self) -> u32 {
        match self {
            Self::OutOfBounds => 1,
            Self::Misaligned => 2,
            Self::BadMagic => 3,
            Self::UnsupportedVersion { .. } => 4,
            Self::Corrupt { .. } => 5,
            Self::NotInitialized => 6,
            Self::TooSmall => 7,
            Self::InvalidArgument { .. } => 8,
            Self::NoSuchNode => 9,
            Self::NodeTableFull => 10,
            Self::StaleGeneration => 11,
            Self::NodeDead => 12,
            Self::NotLive => 13,
            Self::NoDoorbell => 14,
            Self::Busy => 15,
            Self::OutOfMemory => 16,
            Self::NoSuchPool => 17,
            Self::PoolExists => 18,
            Self::NoSuchRegion => 19,
            Self::NotOwner => 20,
            Self::NoSuchLock => 21,
            Self::NotReserved => 22,
            Self::NotHolder => 23,
            Self::TimedOut => 24,
            Self::QueueFull => 25,
            Self::NoMessage => 26,
            Self::TooLarge => 27,
        }
    }

    /// The short name of this error's code, as in the module table.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::OutOfBounds => "OutOfBounds",
            Self::Misaligned => "Misaligned",
            Self::BadMagic => "BadMagic",
            Self::UnsupportedVersion { .. } => "UnsupportedVersion",
            Self::Corrupt { .. } => "Corrupt",
            Self::NotInitialized => "NotInitialized",
            Self::TooSmall => "TooSmall",
            Self::InvalidArgument { .. } => "InvalidArgument",
            Self::NoSuchNode => "NoSuchNode",
            Self::NodeTableFull => "NodeTableFull",
            Self::StaleGeneration => "StaleGeneration",
            Self::NodeDead => "NodeDead",
            Self::NotLive => "NotLive",
            Self::NoDoorbell => "NoDoorbell",
            Self::Busy => "Busy",
            Self::OutOfMemory => "OutOfMemory",
            Self::NoSuchPool => "NoSuchPool",
            Self::PoolExists => "PoolExists",
            Self::NoSuchRegion => "NoSuchRegion",
            Self::NotOwner => "NotOwner",
            Self::NoSuchLock => "NoSuchLock",
            Self::NotReserved => "NotReserved",
            Self::NotHolder => "NotHolder",
            Self::TimedOut => "TimedOut",
            Self::QueueFull => "QueueFull",
            Self::NoMessage => "NoMessage",
            Self::TooLarge => "TooLarge",
        }
    }
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfBounds => f.write_str("offset or length outside the shared memory region"),
            Self::Misaligned => f.write_str("misaligned atomic access to shared memory"),
            Self::BadMagic => f.write_str("shared memory superblock has a bad magic"),
            Self::UnsupportedVersion { found } => {
                write!(f, "unsupported shared memory format version {found}")
            }
            Self::Corrupt { what } => write!(f, "corrupt shared memory: {what}"),
            Self::NotInitialized => f.write_str("shared memory is not initialised"),
            Self::TooSmall => f.write_str("shared memory region too small for the format"),
            Self::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Self::NoSuchNode => f.write_str("no such node"),
            Self::NodeTableFull => f.write_str("node table full"),
            Self::StaleGeneration => f.write_str("node entry taken over by a newer generation"),
            Self::NodeDead => f.write_str("node was declared dead"),
            Self::NotLive => f.write_str("node is not live"),
            Self::NoDoorbell => f.write_str("node has no doorbell"),
            Self::Busy => f.write_str("shared memory entry busy, try again"),
            Self::OutOfMemory => f.write_str("the pool has no free block large enough"),
            Self::NoSuchPool => f.write_str("no such pool"),
            Self::PoolExists => f.write_str("a pool with that name exists"),
            Self::NoSuchRegion => f.write_str("no such region"),
            Self::NotOwner => f.write_str("not an owner of the region"),
            Self::NoSuchLock => f.write_str("no such lock"),
            Self::NotReserved => f.write_str("lock not reserved"),
            Self::NotHolder => f.write_str("lock not held by the caller"),
            Self::TimedOut => f.write_str("timed out"),
            Self::QueueFull => f.write_str("queue full"),
            Self::NoMessage => f.write_str("no message"),
            Self::TooLarge => f.write_str("too large"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ShmError {}
