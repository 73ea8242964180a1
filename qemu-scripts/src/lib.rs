//! The `shmos` host tool as a library: kernel build, QEMU supervision and the
//! kernel test protocol, shared by the `shmos` binary and integration tests.

#![warn(clippy::undocumented_unsafe_blocks)]
pub mod bench;
pub mod cargo;
pub mod cleanup;
pub mod cluster;
pub mod cluster_file;
pub mod cluster_run;
pub mod disk;
pub mod doorbell;
pub mod harness;
pub mod host;
pub mod image;
pub mod inspect;
pub mod progress;
pub mod vm;

use std::path::{Path, PathBuf};

/// How a run ended, ordered from best to worst; `code` is the tool's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The kernel (or every test) reported success.
    Success,
    /// The kernel reported failure, or a test failed.
    Failure,
    /// The VM reset, QEMU failed, or the kernel stopped outside the protocol.
    Abnormal,
    /// A VM outlived its timeout and was killed.
    Timeout,
}

impl Outcome {
    /// The tool's exit status for this outcome (documented in `shmos --help`).
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Abnormal => 2,
            Outcome::Timeout => 3,
        }
    }
}

/// The repository root: `$SHMOS_ROOT`, else the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    let root = std::env::var_os("SHMOS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    root.canonicalize().unwrap_or(root)
}
