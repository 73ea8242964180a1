//! Runs a [`ClusterSpec`] (from a cluster file or from `shmos cluster`'s
//! flags): boots every node on one shared memory node, optionally one of
//! them under gdb, waits for all, checks each app's expected lines, and
//! reports per node (also as JSON).

use crate::Outcome;
use crate::cluster::{Cluster, ClusterConfig, NodeOptions};
use crate::cluster_file::ClusterSpec;
use crate::progress::Progress;
use crate::vm::{self, Accel, VmExit};
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to run a spec: what it does not say itself.
pub struct RunOptions {
    /// The kernel ELF every node boots.
    pub kernel: PathBuf,
    /// The resolved accelerator.
    pub accel: Accel,
    /// One node under gdb: its index and the gdb server's port.
    pub gdb: Option<(u32, u16)>,
    /// Echo every console, prefixed `[nN]`.
    pub echo: bool,
    /// Spinners per node on a terminal.
    pub progress: Progress,
}

/// How one node ended.
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// Node index.
    pub node: u32,
    /// How its QEMU ended.
    pub exit: VmExit,
    /// The verdict: the exit's, made a failure when an expected line is missing.
    pub outcome: Outcome,
    /// Expected lines (`expect` in the cluster file) the node never printed.
    pub missing: Vec<String>,
    /// The node's last console lines.
    pub tail: String,
}

/// How a cluster run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Every node, by index.
    pub nodes: Vec<NodeReport>,
    /// The worst node outcome.
    pub outcome: Outcome,
    /// Wall time from the first boot to the last exit.
    pub duration: Duration,
}

impl RunReport {
    /// The report as JSON: overall outcome and exit code, then per node.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let status = match n.exit {
                    VmExit::Exited(code) => Some(code),
                    _ => None,
                };
                serde_json::json!({
                    "node": n.node,
                    "outcome": outcome_name(n.outcome),
                    "status": status,
                    "exit": n.exit.describe(),
                    "missing": n.missing,
                    "tail": n.tail,
                })
            })
            .collect();
        serde_json::json!({
            "outcome": outcome_name(self.outcome),
            "code": self.outcome.code(),
            "seconds": self.duration.as_secs_f64(),
            "nodes": nodes,
        })
    }
}

/// Lower-case name of an outcome, for JSON.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Abnormal => "abnormal",
        Outcome::Timeout => "timeout",
    }
}

/// Boots the cluster `spec` describes and waits for every node; `say`
/// receives the tool's own lines (not the consoles).
pub fn run(spec: &ClusterSpec, opts: RunOptions, mut say: impl FnMut(&str)) -> Result<RunReport> {
    if let Some((node, _)) = opts.gdb
        && node >= spec.nodes
    {
        bail!(
            "--gdb {node}: the cluster has {} nodes (0 to {})",
            spec.nodes,
            spec.nodes - 1
        );
    }
    let mut cfg = ClusterConfig::new(opts.kernel.clone(), opts.accel);
    cfg.shm_size = spec.shm_size;
    cfg.plain = spec.plain;
    cfg.firmware = spec.firmware;
    cfg.memory = spec.memory.clone();
    cfg.echo = opts.echo;
    cfg.disks = spec.disks.clone();
    cfg.disk_size = spec.disk_size;
    let mut cluster = Cluster::start(cfg)?;
    cluster.set_progress(opts.progress);
    say(&format!(
        "shmos: cluster of {} nodes ({}, {}, {} MiB shared) in {}",
        spec.nodes,
        opts.accel,
        if spec.plain {
            "ivshmem-plain, polling"
        } else {
            "ivshmem-doorbell"
        },
        spec.shm_size >> 20,
        cluster.dir().display()
    ));
    say(&match &spec.disks {
        Some(dir) => format!(
            "shmos: disks {}/node-N.img (new ones {}, sparse; kept)",
            dir.display(),
            crate::disk::describe_size(spec.disk_size)
        ),
        None => format!(
            "shmos: temporary disks of {} per node (removed with the cluster)",
            crate::disk::describe_size(spec.disk_size)
        ),
    });
    let start = Instant::now();
    for node in 0..spec.nodes {
        let mut node_opts = NodeOptions {
            memory: Some(spec.node_memory(node).to_string()),
            ..NodeOptions::default()
        };
        if let Some((gdb_node, port)) = opts.gdb
            && gdb_node == node
        {
            node_opts.gdb_port = Some(port);
            say(&format!(
                "shmos: node {node} waits for gdb on :{port} (its timeout is off); attach with:"
            ));
            say(&vm::gdb_command(&opts.kernel, port));
        }
        cluster.spawn_node_with(node, &spec.node_cmdline(node), &node_opts)?;
    }
    let gdb_node = opts.gdb.map(|(n, _)| n);
    let exits =
        cluster.wait_all_each(|node| (Some(node) != gdb_node).then(|| spec.node_timeout(node)))?;
    let duration = start.elapsed();
    let mut nodes = Vec::new();
    for (&node, exit) in &exits {
        let log = cluster.log(node);
        let missing: Vec<String> = spec
            .node_expect(node)
            .into_iter()
            .filter(|want| !log.iter().any(|l| l.contains(want.as_str())))
            .collect();
        let mut outcome = exit.outcome();
        if !missing.is_empty() {
            outcome = outcome.max(Outcome::Failure);
        }
        nodes.push(NodeReport {
            node,
            exit: *exit,
            outcome,
            missing,
            tail: cluster.tail(node, 40),
        });
    }
    let outcome = nodes
        .iter()
        .map(|n| n.outcome)
        .max()
        .unwrap_or(Outcome::Success);
    Ok(RunReport {
        nodes,
        outcome,
        duration,
    })
}
