//! `DsmError`: the one error type at the DSM boundary, with stable codes.
//!
//! | code | variant            | meaning                                                              |
//! |-----:|--------------------|----------------------------------------------------------------------|
//! |    1 | `NotAllocated`     | no allocated range holds the global address (never created, or freed) |
//! |    2 | `Unaligned`        | an address or length is not a whole number of 4 KiB pages (or is 0)   |
//! |    3 | `Unowned`          | the range's directory entry names no responsible node                |
//! |    4 | `CorruptDirectory` | a directory page failed validation (`what` says which check)         |
//! |    5 | `BadMessage`       | a protocol message failed decoding (`what` says which check)         |
//! |    6 | `NoSuchNode`       | a node id outside the cluster                                        |
//! |    7 | `Overlap`          | the range overlaps an allocated range                                |
//! |    8 | `Exhausted`        | the address generator's slice is used up                             |
//! |    9 | `NoAccess`         | the page is not held locally with the rights the operation needs     |
//! |   10 | `Busy`             | a coherence transaction on the page is in progress; try again        |
//! |   11 | `Unexpected`       | a message that matches no protocol state (stale, duplicated, forged) |
//! |   12 | `OutOfRange`       | an address outside the part of the space the operation covers        |
//! |   13 | `NoDisk`           | no disk can hold the page: the node that should store it has none    |
//! |   14 | `DiskFailed`       | a disk refused a write or read (I/O error, full, bad checksum)       |

use core::fmt;

/// A named failure of the DSM layer; `code()` gives its stable number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum DsmError {
    /// No allocated range holds the global address (never created, or freed).
    NotAllocated,
    /// An address or length is not a whole number of 4 KiB pages, or is 0.
    Unaligned,
    /// The range's directory entry names no responsible node.
    Unowned,
    /// A directory page failed validation.
    CorruptDirectory {
        /// Which check failed.
        what: &'static str,
    },
    /// A protocol message failed decoding.
    BadMessage {
        /// Which check failed.
        what: &'static str,
    },
    /// A node id outside the cluster.
    NoSuchNode,
    /// The range overlaps an allocated range.
    Overlap,
    /// The address generator's slice is used up.
    Exhausted,
    /// The page is not held locally with the rights the operation needs.
    NoAccess,
    /// A coherence transaction on the page is in progress; try again.
    Busy,
    /// A message that matches no protocol state (stale, duplicated, forged).
    Unexpected {
        /// What did not match.
        what: &'static str,
    },
    /// An address outside the part of the space the operation covers.
    OutOfRange,
    /// No disk can hold the page: the node that should store it has none.
    NoDisk,
    /// A disk refused a write or read (I/O error, full, bad checksum).
    DiskFailed,
}

impl DsmError {
    /// The stable numeric code of this error (see the module table).
    pub const fn code(&self) -> u32 {
        match self {
            Self::NotAllocated => 1,
            Self::Unaligned => 2,
            Self::Unowned => 3,
            Self::CorruptDirectory { .. } => 4,
            Self::BadMessage { .. } => 5,
            Self::NoSuchNode => 6,
            Self::Overlap => 7,
            Self::Exhausted => 8,
            Self::NoAccess => 9,
            Self::Busy => 10,
            Self::Unexpected { .. } => 11,
            Self::OutOfRange => 12,
            Self::NoDisk => 13,
            Self::DiskFailed => 14,
        }
    }

    /// The short name of this error's code, as in the module table.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::NotAllocated => "NotAllocated",
            Self::Unaligned => "Unaligned",
            Self::Unowned => "Unowned",
            Self::CorruptDirectory { .. } => "CorruptDirectory",
            Self::BadMessage { .. } => "BadMessage",
            Self::NoSuchNode => "NoSuchNode",
            Self::Overlap => "Overlap",
            Self::Exhausted => "Exhausted",
            Self::NoAccess => "NoAccess",
            Self::Busy => "Busy",
            Self::Unexpected { .. } => "Unexpected",
            Self::OutOfRange => "OutOfRange",
            Self::NoDisk => "NoDisk",
            Self::DiskFailed => "DiskFailed",
        }
    }

    /// The error a Nack carries, from its code; only refusals a responsible
    /// node sends are accepted.
    pub const fn from_nack_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::NotAllocated),
            3 => Some(Self::Unowned),
            _ => None,
        }
    }

    /// The error an acknowledgement carries (write-back, replica, release,
    /// sync), from its code; 0 is success and not an error.
    pub const fn from_ack_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::NotAllocated),
            6 => Some(Self::NoSuchNode),
            10 => Some(Self::Busy),
            13 => Some(Self::NoDisk),
            14 => Some(Self::DiskFailed),
            _ => None,
        }
    }
}

impl fmt::Display for DsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllocated => f.write_str("no allocated range holds the global address"),
            Self::Unaligned => f.write_str("address or length not a whole number of pages"),
            Self::Unowned => f.write_str("the range has no responsible node"),
            Self::CorruptDirectory { what } => write!(f, "corrupt directory page: {what}"),
            Self::BadMessage { what } => write!(f, "bad DSM message: {what}"),
            Self::NoSuchNode => f.write_str("no such node"),
            Self::Overlap => f.write_str("range overlaps an allocated range"),
            Self::Exhausted => f.write_str("global address slice exhausted"),
            Self::NoAccess => f.write_str("page not held with the needed rights"),
            Self::Busy => f.write_str("page busy, try again"),
            Self::Unexpected { what } => write!(f, "unexpected DSM message: {what}"),
            Self::OutOfRange => f.write_str("address outside the space the operation covers"),
            Self::NoDisk => f.write_str("no disk can hold the page"),
            Self::DiskFailed => f.write_str("a disk refused the page"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DsmError {}
