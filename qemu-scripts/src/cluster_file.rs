//! Cluster files: a TOML description of a cluster (nodes, memory, shared
//! memory, doorbells or plain, the nodes' disks, which apps run where with
//! what arguments, accelerator, timeouts, extra kernel keys), read into a
//! [`ClusterSpec`].
//!
//! Reading has two steps, and every error of either names the file, the line
//! and column, and the field: serde (with `deny_unknown_fields`) checks
//! shape and types, and `toml`'s error span gives the position while
//! `serde_path_to_error` gives the field; then [`validate`] checks meaning
//! (node count, sizes, app names, node indexes) on values kept as
//! `toml::Spanned`, so a semantic error points at the offending value too.
//!
//! The format is documented in README.md ("Cluster files"); the examples are
//! in `qemu-scripts/examples/clusters/`.

use crate::cluster::{MAX_NODES, parse_size};
use crate::disk::{DEFAULT_DISK_SIZE, check_size};
use crate::host::AccelChoice;
use crate::vm::Firmware;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Guest RAM below this is refused: the kernel, its heap and the embedded
/// apps need room, and a typo such as `memory = "128K"` should fail here,
/// not as a guest that dies at boot.
pub const MIN_MEMORY: u64 = 32 << 20;
/// Guest RAM above this is refused: up to eight VMs share one host.
pub const MAX_MEMORY: u64 = 16 << 30;
/// Shared memory above this is refused (it lives in /dev/shm, i.e. host RAM).
pub const MAX_SHM_SIZE: u64 = 16 << 30;
/// Longest app argument string the kernel hands to an app (`shmos_abi::MAX_ARGS`
/// is 256 bytes, including room for a terminator).
pub const MAX_APP_ARGS: usize = 255;

/// A cluster, resolved and checked: what `shmos cluster` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSpec {
    /// Number of nodes, 1..=[`MAX_NODES`].
    pub nodes: u32,
    /// Guest RAM per node, in QEMU syntax (`128M`).
    pub memory: String,
    /// Size of the shared memory in bytes (a power of two, at least 1 MiB).
    pub shm_size: u64,
    /// `ivshmem-plain` (nodes poll) instead of `ivshmem-doorbell`.
    pub plain: bool,
    /// Directory of the nodes' disk images (`node-N.img`, kept after the
    /// run); None: temporary disks.
    pub disks: Option<PathBuf>,
    /// Size of each disk image the run creates, in bytes.
    pub disk_size: u64,
    /// Accelerator; None: `$SHMOS_ACCEL`, else auto.
    pub accel: Option<AccelChoice>,
    /// Firmware every node boots with.
    pub firmware: Firmware,
    /// How long each node may run before it is killed.
    pub timeout: Duration,
    /// Extra kernel command line keys for every node.
    pub cmdline: String,
    /// Start apps only once every node is live (`cluster.wait_live=N`).
    pub wait_live: bool,
    /// Apps and where they run.
    pub apps: Vec<AppSpec>,
    /// Per-node differences, by node index.
    pub overrides: BTreeMap<u32, NodeOverride>,
}

/// One app, its arguments and the nodes it runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    /// An app embedded in the kernel (a binary crate in apps/).
    pub name: String,
    /// Its arguments, words separated by spaces.
    pub args: String,
    /// Nodes that run it; None: every node.
    pub nodes: Option<Vec<u32>>,
    /// Text every node that runs it must print (checked after the run).
    pub expect: Vec<String>,
}

impl AppSpec {
    /// The kernel command line key: `app=NAME[:ARGS]`, `+` for spaces.
    pub fn cmdline_key(&self) -> String {
        let words: Vec<&str> = self.args.split_whitespace().collect();
        if words.is_empty() {
            format!("app={}", self.name)
        } else {
            format!("app={}:{}", self.name, words.join("+"))
        }
    }

    /// Whether node `node` of a cluster runs this app.
    pub fn runs_on(&self, node: u32) -> bool {
        self.nodes.as_ref().is_none_or(|n| n.contains(&node))
    }
}

/// What one node does differently.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeOverride {
    /// Guest RAM for this node.
    pub memory: Option<String>,
    /// Kernel keys for this node only, after the common ones.
    pub cmdline: String,
    /// Timeout for this node.
    pub timeout: Option<Duration>,
    /// Text this node must print (checked after the run).
    pub expect: Vec<String>,
}

impl ClusterSpec {
    /// A cluster of `nodes` nodes with the defaults a cluster file has.
    pub fn new(nodes: u32) -> Self {
        ClusterSpec {
            nodes,
            memory: "128M".into(),
            shm_size: 64 << 20,
            plain: false,
            disks: None,
            disk_size: DEFAULT_DISK_SIZE,
            accel: None,
            firmware: Firmware::Qboot,
            timeout: Duration::from_secs(60),
            cmdline: String::new(),
            wait_live: true,
            apps: Vec::new(),
            overrides: BTreeMap::new(),
        }
    }

    /// The kernel keys node `node` boots with (after `node=N`).
    pub fn node_cmdline(&self, node: u32) -> String {
        let mut keys: Vec<String> = Vec::new();
        if self.wait_live {
            keys.push(format!("cluster.wait_live={}", self.nodes));
        }
        keys.extend(
            self.apps
                .iter()
                .filter(|a| a.runs_on(node))
                .map(AppSpec::cmdline_key),
        );
        keys.push(self.cmdline.clone());
        if let Some(o) = self.overrides.get(&node) {
            keys.push(o.cmdline.clone());
        }
        keys.iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Guest RAM of node `node`.
    pub fn node_memory(&self, node: u32) -> &str {
        self.overrides
            .get(&node)
            .and_then(|o| o.memory.as_deref())
            .unwrap_or(&self.memory)
    }

    /// Timeout of node `node`.
    pub fn node_timeout(&self, node: u32) -> Duration {
        self.overrides
            .get(&node)
            .and_then(|o| o.timeout)
            .unwrap_or(self.timeout)
    }

    /// Every line node `node` must print: its apps' `expect` and its own.
    pub fn node_expect(&self, node: u32) -> Vec<String> {
        let apps = self.apps.iter().filter(|a| a.runs_on(node));
        apps.flat_map(|a| a.expect.iter())
            .chain(
                self.overrides
                    .get(&node)
                    .into_iter()
                    .flat_map(|o| o.expect.iter()),
            )
            .cloned()
            .collect()
    }

    /// Checks what command line overrides may have broken: app and override
    /// node indexes against the node count, app names against `known_apps`.
    pub fn check(&self, known_apps: &[String]) -> Result<(), String> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(format!("{} nodes: expected 1 to {MAX_NODES}", self.nodes));
        }
        for app in &self.apps {
            if !known_apps.contains(&app.name) {
                return Err(unknown_app(&app.name, known_apps));
            }
            if let Some(&n) = app.nodes.iter().flatten().find(|&&n| n >= self.nodes) {
                return Err(format!(
                    "app {} runs on node {n}, but the cluster has {} nodes (0 to {})",
                    app.name,
                    self.nodes,
                    self.nodes - 1
                ));
            }
        }
        if let Some(&n) = self.overrides.keys().find(|&&n| n >= self.nodes) {
            return Err(format!(
                "[[node]] index {n} is out of range: the cluster has {} nodes",
                self.nodes
            ));
        }
        Ok(())
    }
}

fn unknown_app(name: &str, known: &[String]) -> String {
    format!(
        "unknown app {name:?}; the kernel embeds: {}",
        known.join(", ")
    )
}

/// An error in a cluster file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    /// The file, as the user named it.
    pub file: PathBuf,
    /// 1-based line and column of the offending text (0 when unknown).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a path (`app[1].nodes[0]`); None for syntax errors.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The offending line of the file, for display.
    pub source_line: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster file {}, line {}, column {}",
            self.file.display(),
            self.line,
            self.column
        )?;
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)?;
        if !self.source_line.is_empty() {
            let gutter = self.line.to_string().len();
            write!(
                f,
                "\n {:gutter$} |\n {} | {}\n {:gutter$} | {:>col$}",
                "",
                self.line,
                self.source_line,
                "",
                "^",
                col = self.column.max(1)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for FileError {}

impl FileError {
    fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: String,
    ) -> Self {
        let (line, column, source_line) = match span {
            Some(span) => position(text, span.start),
            None => (0, 0, String::new()),
        };
        FileError {
            file: file.to_owned(),
            line,
            column,
            field,
            message,
            source_line,
        }
    }
}

/// 1-based line and column of byte `offset` in `text`, and that line's text.
fn position(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = text[line_start..offset].chars().count() + 1;
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    (
        line,
        column,
        text[line_start..line_end]
            .trim_end_matches('\r')
            .to_string(),
    )
}

// The file's shape, as serde reads it. Values keep their spans so that
// `validate` can point at them.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    nodes: Spanned<i64>,
    memory: Option<Spanned<String>>,
    shm_size: Option<Spanned<String>>,
    plain: Option<bool>,
    disks: Option<Spanned<String>>,
    disk_size: Option<Spanned<String>>,
    accel: Option<RawAccel>,
    firmware: Option<RawFirmware>,
    timeout: Option<Spanned<i64>>,
    cmdline: Option<String>,
    wait_live: Option<bool>,
    #[serde(default)]
    app: Vec<RawApp>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
    args: Option<Spanned<String>>,
    nodes: Option<Spanned<Vec<Spanned<i64>>>>,
    #[serde(default)]
    expect: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    index: Spanned<i64>,
    memory: Option<Spanned<String>>,
    cmdline: Option<String>,
    timeout: Option<Spanned<i64>>,
    #[serde(default)]
    expect: Vec<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawAccel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawFirmware {
    Qboot,
    Seabios,
}

/// Reads and checks the cluster file at `path`; app names are checked
/// against `known_apps`. A relative `disks` directory is taken from the
/// file's own directory.
pub fn load(path: &Path, known_apps: &[String]) -> Result<ClusterSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading cluster file {}", path.display()))?;
    Ok(parse(path, &text, known_apps)?)
}

/// Parses and checks cluster file `text` (`file` names it in errors, and a
/// relative `disks` directory is resolved against its directory).
pub fn parse(file: &Path, text: &str, known_apps: &[String]) -> Result<ClusterSpec, FileError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| FileError::at(file, text, e.span(), None, e.message().trim().to_string()))?;
    let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_path(e.path());
        let inner = e.into_inner();
        FileError::at(
            file,
            text,
            inner.span(),
            Some(field),
            inner.message().trim().to_string(),
        )
    })?;
    let base = file.parent().unwrap_or(Path::new(""));
    validate(raw, known_apps, base).map_err(|(span, field, message)| {
        FileError::at(file, text, Some(span), Some(field), message)
    })
}

/// The field path of a serde error (`app[0].nodes[1]`), without the private
/// keys `toml::Spanned` deserializes through; the top level is "(top level)"
/// (a missing field's path is the table that lacks it).
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

/// A semantic error: where, which field, what.
type Invalid = (Range<usize>, String, String);

fn invalid<T>(
    span: Range<usize>,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, Invalid> {
    Err((span, field.into(), message.into()))
}

/// A guest memory size: parseable, whole MiB, within bounds; returned in
/// QEMU's syntax (QEMU does not take `MiB`).
fn memory_value(v: &Spanned<String>, field: &str) -> Result<String, Invalid> {
    let bytes = parse_size(v.get_ref()).or_else(|e| invalid(v.span(), field, format!("{e:#}")))?;
    if bytes % (1 << 20) != 0 || !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        return invalid(
            v.span(),
            field,
            format!(
                "guest memory {:?} must be whole MiB from {} MiB to {} GiB",
                v.get_ref(),
                MIN_MEMORY >> 20,
                MAX_MEMORY >> 30
            ),
        );
    }
    Ok(format!("{}M", bytes >> 20))
}

fn timeout_value(v: &Spanned<i64>, field: &str) -> Result<Duration, Invalid> {
    match u64::try_from(*v.get_ref()) {
        Ok(secs) if secs >= 1 => Ok(Duration::from_secs(secs)),
        _ => invalid(
            v.span(),
            field,
            format!("timeout {} must be at least 1 second", v.get_ref()),
        ),
    }
}

fn node_index(v: &Spanned<i64>, nodes: u32, field: &str) -> Result<u32, Invalid> {
    match u32::try_from(*v.get_ref()) {
        Ok(n) if n < nodes => Ok(n),
        _ => invalid(
            v.span(),
            field,
            format!(
                "node index {} is out of range: the cluster has {nodes} nodes (0 to {})",
                v.get_ref(),
                nodes - 1
            ),
        ),
    }
}

fn validate(raw: RawFile, known_apps: &[String], base: &Path) -> Result<ClusterSpec, Invalid> {
    let nodes = match u32::try_from(*raw.nodes.get_ref()) {
        Ok(n) if (1..=MAX_NODES).contains(&n) => n,
        _ => {
            return invalid(
                raw.nodes.span(),
                "nodes",
                format!("{} nodes: expected 1 to {MAX_NODES}", raw.nodes.get_ref()),
            );
        }
    };
    let mut spec = ClusterSpec::new(nodes);
    if let Some(m) = &raw.memory {
        spec.memory = memory_value(m, "memory")?;
    }
    if let Some(s) = &raw.shm_size {
        let size =
            parse_size(s.get_ref()).or_else(|e| invalid(s.span(), "shm_size", format!("{e:#}")))?;
        if !size.is_power_of_two() || !(1 << 20..=MAX_SHM_SIZE).contains(&size) {
            return invalid(
                s.span(),
                "shm_size",
                format!(
                    "shared memory size {:?} must be a power of two from 1M to {}G",
                    s.get_ref(),
                    MAX_SHM_SIZE >> 30
                ),
            );
        }
        spec.shm_size = size;
    }
    spec.plain = raw.plain.unwrap_or(false);
    if let Some(d) = &raw.disks {
        if d.get_ref().trim().is_empty() {
            return invalid(
                d.span(),
                "disks",
                "an empty directory name; leave `disks` out for temporary disks",
            );
        }
        spec.disks = Some(base.join(d.get_ref()));
    }
    if let Some(s) = &raw.disk_size {
        let size = parse_size(s.get_ref())
            .or_else(|e| invalid(s.span(), "disk_size", format!("{e:#}")))?;
        check_size(size).or_else(|e| invalid(s.span(), "disk_size", e))?;
        spec.disk_size = size;
    }
    spec.accel = raw.accel.map(|a| match a {
        RawAccel::Auto => AccelChoice::Auto,
        RawAccel::Kvm => AccelChoice::Kvm,
        RawAccel::Tcg => AccelChoice::Tcg,
    });
    if let Some(f) = raw.firmware {
        spec.firmware = match f {
            RawFirmware::Qboot => Firmware::Qboot,
            RawFirmware::Seabios => Firmware::Seabios,
        };
    }
    if let Some(t) = &raw.timeout {
        spec.timeout = timeout_value(t, "timeout")?;
    }
    spec.cmdline = raw.cmdline.unwrap_or_default();
    spec.wait_live = raw.wait_live.unwrap_or(true);
    for (i, app) in raw.app.iter().enumerate() {
        let name = app.name.get_ref();
        if !known_apps.contains(name) {
            return invalid(
                app.name.span(),
                format!("app[{i}].name"),
                unknown_app(name, known_apps),
            );
        }
        let args = app.args.as_ref().map_or("", |a| a.get_ref().as_str());
        if let Some(a) = &app.args
            && (args.len() > MAX_APP_ARGS || args.contains('+'))
        {
            return invalid(
                a.span(),
                format!("app[{i}].args"),
                format!(
                    "arguments must be at most {MAX_APP_ARGS} bytes without '+' (the kernel command line's space)"
                ),
            );
        }
        let on = match &app.nodes {
            None => None,
            Some(list) => {
                if list.get_ref().is_empty() {
                    return invalid(
                        list.span(),
                        format!("app[{i}].nodes"),
                        "an empty node list runs the app nowhere; leave `nodes` out to run it on every node",
                    );
                }
                let mut on = Vec::new();
                for (j, n) in list.get_ref().iter().enumerate() {
                    let field = format!("app[{i}].nodes[{j}]");
                    let n = node_index(n, nodes, &field)?;
                    if on.contains(&n) {
                        return invalid(
                            list.get_ref()[j].span(),
                            field,
                            format!("node {n} is listed twice"),
                        );
                    }
                    on.push(n);
                }
                Some(on)
            }
        };
        spec.apps.push(AppSpec {
            name: name.clone(),
            args: args.to_string(),
            nodes: on,
            expect: app.expect.clone(),
        });
    }
    for (i, node) in raw.node.iter().enumerate() {
        let index = node_index(&node.index, nodes, &format!("node[{i}].index"))?;
        let memory = match &node.memory {
            Some(m) => Some(memory_value(m, &format!("node[{i}].memory"))?),
            None => None,
        };
        let timeout = match &node.timeout {
            Some(t) => Some(timeout_value(t, &format!("node[{i}].timeout"))?),
            None => None,
        };
        let o = NodeOverride {
            memory,
            cmdline: node.cmdline.clone().unwrap_or_default(),
            timeout,
            expect: node.expect.clone(),
        };
        if spec.overrides.insert(index, o).is_some() {
            return invalid(
                node.index.span(),
                format!("node[{i}].index"),
                format!("node {index} has two [[node]] tables"),
            );
        }
    }
    Ok(spec)
}

/// The apps the kernel embeds: the binary crates among apps/'s workspace
/// members (the kernel's build script embeds every app ELF that workspace
/// builds), read from `root`/apps/Cargo.toml so that a file can be checked
/// before anything is built.
pub fn known_apps(root: &Path) -> Result<Vec<String>> {
    let manifest = root.join("apps/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let members = table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .with_context(|| format!("{} has no workspace.members", manifest.display()))?;
    let mut names: Vec<String> = members
        .iter()
        .filter_map(|m| m.as_str())
        .filter(|m| root.join("apps").join(m).join("src/main.rs").is_file())
        .map(str::to_string)
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps() -> Vec<String> {
        ["counter", "hello", "pingpong"].map(String::from).to_vec()
    }

    fn parse_str(text: &str) -> Result<ClusterSpec, FileError> {
        parse(Path::new("t.toml"), text, &apps())
    }

    fn err(text: &str) -> FileError {
        parse_str(text).expect_err("the file should be refused")
    }

    #[test]
    fn a_full_file_resolves() {
        let spec = parse_str(
            r#"
nodes = 3
memory = "256MiB"
shm_size = "16M"
plain = true
disks = "disks/a"
disk_size = "64M"
accel = "tcg"
firmware = "seabios"
timeout = 90
cmdline = "cluster.live_within_ms=5000"

[[app]]
name = "counter"
args = "200  hold"
nodes = [0, 2]
expect = ["counter: expected"]

[[app]]
name = "hello"

[[node]]
index = 1
memory = "512M"
cmdline = "cluster.stay"
timeout = 5
"#,
        )
        .unwrap();
        assert_eq!(spec.nodes, 3);
        assert_eq!(spec.memory, "256M");
        assert_eq!(spec.shm_size, 16 << 20);
        assert!(spec.plain);
        assert_eq!(spec.disks.as_deref(), Some(Path::new("disks/a")));
        assert_eq!(spec.disk_size, 64 << 20);
        assert_eq!(spec.accel, Some(AccelChoice::Tcg));
        assert_eq!(spec.firmware, Firmware::Seabios);
        assert_eq!(spec.node_timeout(0), Duration::from_secs(90));
        assert_eq!(spec.node_timeout(1), Duration::from_secs(5));
        assert_eq!(spec.node_memory(1), "512M");
        assert_eq!(
            spec.node_cmdline(0),
            "cluster.wait_live=3 app=counter:200+hold app=hello cluster.live_within_ms=5000"
        );
        assert_eq!(
            spec.node_cmdline(1),
            "cluster.wait_live=3 app=hello cluster.live_within_ms=5000 cluster.stay"
        );
        assert_eq!(spec.apps[0].expect, ["counter: expected"]);
    }

    #[test]
    fn defaults_fill_in() {
        let spec = parse_str("nodes = 2\n").unwrap();
        assert_eq!(spec, ClusterSpec::new(2));
        assert_eq!(spec.node_cmdline(1), "cluster.wait_live=2");
    }

    #[test]
    fn a_missing_field_names_the_table_and_its_line() {
        let e = err("nodes = 2\n\n[[app]]\nargs = \"1\"\n");
        assert_eq!(e.field.as_deref(), Some("app[0]"), "{e}");
        assert!(e.message.contains("missing field `name`"), "{e}");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn a_missing_node_count_is_named() {
        let e = err("memory = \"128M\"\n");
        assert!(e.message.contains("missing field `nodes`"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_field_and_line() {
        let e = err("nodes = \"three\"\n");
        assert_eq!(e.field.as_deref(), Some("nodes"));
        assert_eq!((e.line, e.column), (1, 9), "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = err("nodes = 2\n[[app]]\nname = \"hello\"\nnodes = [0, \"1\"]\n");
        assert_eq!(e.field.as_deref(), Some("app[0].nodes[1]"), "{e}");
        assert_eq!((e.line, e.column), (4, 13), "{e}");
    }

    #[test]
    fn an_unknown_field_is_refused_where_it_is() {
        let e = err("nodes = 2\ndisk = \"/tmp\"\n");
        assert!(e.message.contains("unknown field `disk`"), "{e}");
        assert_eq!(e.line, 2, "{e}");
        let e = err("nodes = 2\n[[app]]\nname = \"hello\"\nargz = \"1\"\n");
        assert!(e.message.contains("unknown field `argz`"), "{e}");
        assert_eq!(e.line, 4, "{e}");
        assert_eq!(e.field.as_deref(), Some("app[0].argz"), "{e}");
    }

    #[test]
    fn an_unknown_app_lists_the_known_ones() {
        let e = err("nodes = 2\n[[app]]\nname = \"countr\"\n");
        assert_eq!(e.field.as_deref(), Some("app[0].name"));
        assert_eq!((e.line, e.column), (3, 8), "{e}");
        assert!(e.message.contains("unknown app \"countr\""), "{e}");
        assert!(e.message.contains("counter, hello, pingpong"), "{e}");
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let e = err("nodes = 2\nshm_size = \"3M\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("shm_size")), "{e}");
        assert!(e.message.contains("power of two"), "{e}");
        let e = err("nodes = 2\nshm_size = \"512K\"\n");
        assert!(e.message.contains("power of two from 1M"), "{e}");
        let e = err("nodes = 2\nmemory = \"lots\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("memory")), "{e}");
        let e = err("nodes = 2\nmemory = \"1M\"\n");
        assert!(e.message.contains("from 32 MiB"), "{e}");
        for n in ["0", "9", "-1"] {
            let e = err(&format!("nodes = {n}\n"));
            assert!(e.message.contains("expected 1 to 8"), "{e}");
        }
        let e = err("nodes = 1\ntimeout = 0\n");
        assert_eq!(e.field.as_deref(), Some("timeout"), "{e}");
    }

    #[test]
    fn disks_resolve_against_the_file_and_sizes_are_whole_blocks() {
        let spec = parse(
            Path::new("/etc/c/x.toml"),
            "nodes = 1\ndisks = \"d\"\n",
            &apps(),
        )
        .unwrap();
        assert_eq!(spec.disks.as_deref(), Some(Path::new("/etc/c/d")));
        let spec = parse(
            Path::new("/etc/c/x.toml"),
            "nodes = 1\ndisks = \"/var/d\"\n",
            &apps(),
        )
        .unwrap();
        assert_eq!(spec.disks.as_deref(), Some(Path::new("/var/d")));
        assert_eq!(spec.disk_size, DEFAULT_DISK_SIZE, "the default size");
        let e = err("nodes = 1\ndisk_size = \"1000\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("disk_size")), "{e}");
        assert!(e.message.contains("4 KiB blocks"), "{e}");
        let e = err("nodes = 1\ndisk_size = \"big\"\n");
        assert_eq!((e.line, e.column), (2, 13), "{e}");
        let e = err("nodes = 1\ndisks = \"\"\n");
        assert_eq!(e.field.as_deref(), Some("disks"), "{e}");
        let e = err("nodes = 1\ndisks = 3\n");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn node_indexes_out_of_range_are_refused() {
        let e = err("nodes = 2\n[[app]]\nname = \"hello\"\nnodes = [0, 2]\n");
        assert_eq!(e.field.as_deref(), Some("app[0].nodes[1]"), "{e}");
        assert_eq!((e.line, e.column), (4, 13), "{e}");
        assert!(e.message.contains("out of range"), "{e}");
        let e = err("nodes = 2\n[[node]]\nindex = 5\n");
        assert_eq!(
            (e.line, e.field.as_deref()),
            (3, Some("node[0].index")),
            "{e}"
        );
        let e = err("nodes = 2\n[[node]]\nindex = 1\n[[node]]\nindex = 1\n");
        assert!(e.message.contains("two [[node]] tables"), "{e}");
        let e = err("nodes = 2\n[[app]]\nname = \"hello\"\nnodes = []\n");
        assert!(e.message.contains("runs the app nowhere"), "{e}");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = err("nodes = 2\nmemory = \"128M\n");
        assert_eq!(e.field, None);
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn display_points_at_the_value() {
        let e = err("nodes = 2\nshm_size = \"3M\"\n");
        let text = e.to_string();
        assert!(
            text.starts_with("cluster file t.toml, line 2, column 12, field `shm_size`: "),
            "{text}"
        );
        assert!(text.contains(" 2 | shm_size = \"3M\"\n"), "{text}");
        assert!(text.ends_with("|            ^"), "{text:?}");
    }

    #[test]
    fn check_catches_what_overrides_break() {
        let mut spec = parse_str("nodes = 3\n[[app]]\nname = \"hello\"\nnodes = [2]\n").unwrap();
        assert!(spec.check(&apps()).is_ok());
        spec.nodes = 2;
        assert!(spec.check(&apps()).unwrap_err().contains("node 2"));
    }

    #[test]
    fn the_repository_apps_are_known() {
        let names = known_apps(&crate::repo_root()).unwrap();
        for app in ["counter", "pingpong", "hello", "barrier"] {
            assert!(names.iter().any(|n| n == app), "{app} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "rt" || n == "abi"), "{names:?}");
    }
}
