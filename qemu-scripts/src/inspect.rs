//! `shmos inspect`: reads a shared memory file from the host through
//! shm-ext (validating everything, as a node would) and reports it: the
//! superblock, node table, locks, queues and pools, and the DSM as the
//! nodes publish it ([`dsm`]).

pub mod dsm;

use anyhow::{Context, Result};
use shm_ext::Shm;
use shm_ext::host::SharedFile;
use std::path::{Path, PathBuf};

/// The superblock, node table, locks, queues, pools and DSM of the file
/// at `path`, as text or JSON. A damaged file is reported with the named
/// error, not a crash; a damaged DSM report is named and skipped.
pub fn report(path: &Path, json: bool) -> Result<String> {
    let file = SharedFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let shm = Shm::open(file.region())
        .map_err(|e| anyhow::anyhow!("{}: refused: {e} ({})", path.display(), e.name()))?;
    let snapshot = shm.snapshot();
    let dsm = dsm::view(&shm, &snapshot);
    Ok(if json {
        serde_json::to_string_pretty(
            &serde_json::json!({ "path": path, "snapshot": snapshot, "dsm": dsm }),
        )? + "\n"
    } else {
        format!("{}\n{snapshot}{dsm}", path.display())
    })
}

/// The shared memory file of the most recently started cluster.
pub fn newest_cluster_file() -> Result<PathBuf> {
    let dir = crate::cluster::shm_dir();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("shmos-"))
        .map(|e| e.path().join(crate::cluster::SHM_FILE))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).with_context(|| {
        format!(
            "no cluster found in {}/shmos-*/; give the file's path",
            dir.display()
        )
    })
}
