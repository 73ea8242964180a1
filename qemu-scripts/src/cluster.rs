//! A cluster: the doorbell server (or a plain backing file), one shared
//! memory node, and N VMs booted on it, each console prefixed with its node
//! id. Used by `shmos cluster` and by the cluster tests, which drive it step
//! by step (wait for a line, kill a node, start a replacement).
//!
//! Everything lives in one directory under /dev/shm (socket, shared memory
//! file, firmware logs, temporary disks), removed on drop, on error and on
//! Ctrl-C, after every QEMU and the server are stopped.
//!
//! Every node has a disk (virtio-blk): `node-N.img` in
//! [`ClusterConfig::disks`], kept after the run so that a later cluster on
//! the same directory finds the same disks, or else a temporary image in
//! the cluster's directory. A node started again gets the same image;
//! [`NodeOptions::disk`] gives one node another image, or none.

use crate::Outcome;
use crate::cleanup::Workdir;
use crate::doorbell::{self, ServerConfig, ServerHandle, ShmBacking};
use crate::progress::{NodeBar, Progress};
use crate::vm::{Accel, ConsoleLine, Firmware, Stream, Vm, VmConfig, VmExit};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// The heartbeat timeout (ms) of clusters under KVM with ring 0 emulated
/// (`kvm_pvm`), instead of the kernel's default 1 s.
pub const KVM_PVM_HEARTBEAT_MS: u64 = 5000;

/// Most nodes a cluster may have (the node table has room for more; eight
/// VMs already share two host cores).
pub const MAX_NODES: u32 = 8;
/// Name of the shared memory file inside the cluster's directory.
pub const SHM_FILE: &str = "memory";

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The kernel ELF every node boots.
    pub kernel: PathBuf,
    /// Size of the shared memory, a power of two of at least 1 MiB.
    pub shm_size: u64,
    /// `ivshmem-plain` (no doorbells, polling) instead of `ivshmem-doorbell`.
    pub plain: bool,
    /// Doorbell vectors per node.
    pub vectors: u32,
    /// Accelerator for every VM.
    pub accel: Accel,
    /// Firmware for every VM.
    pub firmware: Firmware,
    /// Guest RAM per VM.
    pub memory: String,
    /// Kernel command line keys every node gets.
    pub cmdline: String,
    /// Echo consoles to stdout, prefixed `[nN]` (coloured on a terminal).
    pub echo: bool,
    /// Where the nodes' disks live (`DIR/node-N.img`, created if missing,
    /// kept afterwards); None: temporary images in the cluster's directory.
    pub disks: Option<PathBuf>,
    /// Size of each disk image the cluster creates (existing ones are kept
    /// as they are).
    pub disk_size: u64,
}

impl ClusterConfig {
    /// Defaults: 64 MiB shared, doorbells with 5 vectors (the extension
    /// layer's four and the DSM's), 128 MiB per VM.
    pub fn new(kernel: PathBuf, accel: Accel) -> Self {
        ClusterConfig {
            kernel,
            shm_size: 64 << 20,
            plain: false,
            vectors: 5,
            accel,
            firmware: Firmware::Qboot,
            memory: "128M".into(),
            cmdline: String::new(),
            echo: true,
            disks: None,
            disk_size: crate::disk::DEFAULT_DISK_SIZE,
        }
    }
}

/// Which disk a node boots with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodeDisk {
    /// Its image in the cluster's disk directory ([`Cluster::disk_image`]).
    #[default]
    Default,
    /// This image instead (created sparse with the cluster's disk size if
    /// missing; an existing file, even truncated or garbage, is used as is).
    File(PathBuf),
    /// No disk at all.
    Absent,
}

/// What one node may do differently from the cluster's defaults.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Guest RAM for this node instead of [`ClusterConfig::memory`].
    pub memory: Option<String>,
    /// Start QEMU's gdb server on this localhost port, CPU stopped at reset.
    pub gdb_port: Option<u16>,
    /// Its disk: the cluster's image for the node, another image, or none.
    pub disk: NodeDisk,
}

/// A running cluster. Dropping it kills every VM and removes every file.
pub struct Cluster {
    cfg: ClusterConfig,
    // Field order is drop order: VMs first, then the server, then the files.
    vms: BTreeMap<u32, Vm>,
    server: Option<ServerHandle>,
    workdir: Workdir,
    shm_path: PathBuf,
    tx: Sender<ConsoleLine>,
    rx: Receiver<ConsoleLine>,
    logs: BTreeMap<u32, Vec<String>>,
    /// Where each node's current boot starts in its log.
    boot_starts: BTreeMap<u32, usize>,
    exits: BTreeMap<u32, VmExit>,
    color: bool,
    /// Terminal progress (one spinner per node); inert when not on a terminal.
    progress: Progress,
    bars: BTreeMap<u32, NodeBar>,
}

impl Cluster {
    /// Creates the shared memory and, unless plain, starts the doorbell server.
    pub fn start(cfg: ClusterConfig) -> Result<Cluster> {
        if !cfg.shm_size.is_power_of_two() || cfg.shm_size < doorbell::MIN_SHM_SIZE {
            bail!(
                "--shm-size {} is not a power of two of at least 1 MiB",
                cfg.shm_size
            );
        }
        crate::disk::check_size(cfg.disk_size).map_err(anyhow::Error::msg)?;
        if let Some(dir) = &cfg.disks {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating disk directory {}", dir.display()))?;
        }
        let workdir = Workdir::new_in(shm_dir())?;
        let shm_path = workdir.path().join(SHM_FILE);
        let server = if cfg.plain {
            std::fs::File::create(&shm_path)
                .and_then(|f| f.set_len(cfg.shm_size))
                .with_context(|| format!("creating {}", shm_path.display()))?;
            None
        } else {
            let mut sc = ServerConfig::new(
                workdir.path().join("doorbell.sock"),
                ShmBacking::File {
                    path: shm_path.clone(),
                    size: cfg.shm_size,
                },
            );
            sc.vectors = cfg.vectors;
            sc.max_peers = MAX_NODES * 2; // room for replacements while a peer leaves
            let echo = cfg.echo;
            let server = doorbell::Server::bind(sc)?.spawn(move |event| {
                if echo {
                    println!("[server] {event}");
                }
            })?;
            Some(server)
        };
        let (tx, rx) = mpsc::channel();
        let color = cfg.echo && std::io::stdout().is_terminal();
        Ok(Cluster {
            cfg,
            vms: BTreeMap::new(),
            server,
            workdir,
            shm_path,
            tx,
            rx,
            logs: BTreeMap::new(),
            boot_starts: BTreeMap::new(),
            exits: BTreeMap::new(),
            color,
            progress: Progress::disabled(),
            bars: BTreeMap::new(),
        })
    }

    /// Shows a spinner per node on `progress` (console lines print above them).
    pub fn set_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    /// The shared memory file (for `shmos inspect`).
    pub fn shm_path(&self) -> &Path {
        &self.shm_path
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.workdir.path()
    }

    /// Node `node`'s own disk image: `DISKS/node-N.img`, or a temporary one
    /// in the cluster's directory (it exists once the node has booted).
    pub fn disk_image(&self, node: u32) -> PathBuf {
        let dir = self.cfg.disks.as_deref().unwrap_or(self.workdir.path());
        crate::disk::node_image(dir, node)
    }

    /// QEMU arguments that attach a VM to the shared memory node.
    fn device_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match &self.server {
            None => {
                args.push("-object".into());
                args.push(
                    format!(
                        "memory-backend-file,id=shm,share=on,mem-path={},size={}",
                        self.shm_path.display(),
                        self.cfg.shm_size
                    )
                    .into(),
                );
                args.push("-device".into());
                args.push("ivshmem-plain,memdev=shm".into());
            }
            Some(server) => {
                args.push("-chardev".into());
                args.push(format!("socket,path={},id=ivs", server.socket_path().display()).into());
                args.push("-device".into());
                args.push(
                    format!("ivshmem-doorbell,chardev=ivs,vectors={}", self.cfg.vectors).into(),
                );
            }
        }
        args
    }

    /// Boots node `node` with the common keys plus `extra`. A node id that
    /// is running already is refused; one that exited may boot again.
    pub fn spawn_node(&mut self, node: u32, extra: &str) -> Result<()> {
        self.spawn_node_with(node, extra, &NodeOptions::default())
    }

    /// [`Cluster::spawn_node`] with per-node options (memory, gdb server, disk).
    pub fn spawn_node_with(&mut self, node: u32, extra: &str, opts: &NodeOptions) -> Result<()> {
        if self.vms.contains_key(&node) {
            bail!("node {node} is already running");
        }
        let mut vm = VmConfig::new(self.cfg.kernel.clone(), self.cfg.accel, self.cfg.firmware);
        vm.node = node;
        vm.memory = opts
            .memory
            .clone()
            .unwrap_or_else(|| self.cfg.memory.clone());
        if let Some(port) = opts.gdb_port {
            vm.gdb = true;
            vm.gdb_port = port;
        }
        vm.cmdline = format!("{} {}", self.cfg.cmdline, extra).trim().to_string();
        if self.cfg.accel == Accel::Kvm
            && crate::host::kvm_emulates_kernel_mode()
            && !vm.cmdline.contains("cluster.heartbeat_ms=")
        {
            // Ring 0 emulated: one DSM message with its disk writes costs
            // ~150 ms there, and a node busy with many of them, interrupts
            // off, missed the default 1 s heartbeat timeout.
            vm.cmdline = format!("cluster.heartbeat_ms={KVM_PVM_HEARTBEAT_MS} {}", vm.cmdline);
        }
        vm.workdir = Some(self.workdir.path().to_owned());
        vm.extra_args = self.device_args();
        vm.disk = match &opts.disk {
            NodeDisk::Default => Some(self.disk_image(node)),
            NodeDisk::File(path) => Some(path.clone()),
            NodeDisk::Absent => None,
        };
        if let Some(image) = &vm.disk {
            crate::disk::ensure_image(image, self.cfg.disk_size)?;
        }
        let running = Vm::spawn(&vm, self.tx.clone())?;
        self.exits.remove(&node);
        let log = self.logs.entry(node).or_default();
        self.boot_starts.insert(node, log.len());
        log.push(format!("--- boot: {}", vm.full_cmdline()));
        self.vms.insert(node, running);
        let what = match opts.gdb_port {
            Some(port) => format!("waiting for gdb on :{port}"),
            None => "booting".into(),
        };
        self.bars.insert(node, self.progress.node_bar(node, &what));
        Ok(())
    }

    /// SIGKILLs node `node`'s QEMU, as a crash would.
    pub fn kill_node(&mut self, node: u32) -> Result<()> {
        let mut vm = self
            .vms
            .remove(&node)
            .with_context(|| format!("node {node} is not running"))?;
        vm.kill()?;
        self.exits.insert(node, VmExit::Signaled(9));
        Ok(())
    }

    /// Nodes whose QEMU is still running.
    pub fn running(&self) -> Vec<u32> {
        self.vms.keys().copied().collect()
    }

    /// Every serial line node `node` printed, across its boots.
    pub fn log(&self, node: u32) -> &[String] {
        self.logs.get(&node).map_or(&[], Vec::as_slice)
    }

    /// How each node that stopped ended.
    pub fn exits(&self) -> &BTreeMap<u32, VmExit> {
        &self.exits
    }

    fn record(&mut self, line: &ConsoleLine) {
        if let Some(bar) = self.bars.get(&line.node)
            && line.stream == Stream::Serial
        {
            bar.saw(&line.text);
        }
        if line.stream == Stream::Serial {
            self.logs
                .entry(line.node)
                .or_default()
                .push(line.text.clone());
        }
        if self.cfg.echo {
            let tag = if self.color {
                // One colour per node, cycling through six ANSI colours.
                format!("\x1b[{}m[n{}]\x1b[0m", 31 + line.node % 6, line.node)
            } else {
                format!("[n{}]", line.node)
            };
            let progress = &self.progress;
            match line.stream {
                Stream::Serial => progress.println(&format!("{tag} {}", line.text)),
                Stream::Stderr => progress.eprintln(&format!("{tag} qemu: {}", line.text)),
            }
        }
    }

    /// Reaps VMs that exited.
    fn reap(&mut self) -> Result<()> {
        let mut done = Vec::new();
        for (&node, vm) in &mut self.vms {
            if let Some(exit) = vm.try_wait()? {
                done.push((node, exit));
            }
        }
        for (node, exit) in done {
            self.vms.remove(&node);
            if self.cfg.echo {
                self.progress
                    .println(&format!("[n{node}] {}", exit.describe()));
            }
            self.finish_bar(node, &exit);
            self.exits.insert(node, exit);
        }
        Ok(())
    }

    /// Handles console lines and exits for up to `wait`; returns the lines seen.
    fn pump(&mut self, wait: Duration) -> Result<Vec<ConsoleLine>> {
        let mut seen = Vec::new();
        match self.rx.recv_timeout(wait) {
            Ok(line) => {
                self.record(&line);
                seen.push(line);
                while let Ok(line) = self.rx.try_recv() {
                    self.record(&line);
                    seen.push(line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("the cluster holds a sender"),
        }
        self.reap()?;
        Ok(seen)
    }

    /// Waits until node `node`'s current boot prints a serial line containing
    /// `needle` (or has printed it already); returns that line. Fails if the
    /// node stops first or `timeout` passes.
    pub fn wait_for(&mut self, node: u32, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let start = self.boot_starts.get(&node).copied().unwrap_or(0);
            if let Some(line) = self
                .log(node)
                .iter()
                .skip(start)
                .find(|l| l.contains(needle))
            {
                return Ok(line.clone());
            }
            if let Some(exit) = self
                .exits
                .get(&node)
                .filter(|_| !self.vms.contains_key(&node))
            {
                bail!(
                    "node {node} stopped ({}) before printing {needle:?}",
                    exit.describe()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {node} did not print {needle:?} within {}s",
                    timeout.as_secs_f64()
                );
            }
            self.pump(Duration::from_millis(20))?;
        }
    }

    /// Waits for every running VM to exit; kills those still running after
    /// `timeout`. Returns how each node ended (also earlier exits).
    pub fn wait_all(&mut self, timeout: Duration) -> Result<BTreeMap<u32, VmExit>> {
        self.wait_all_each(|_| Some(timeout))
    }

    /// [`Cluster::wait_all`] with a timeout per node (None: wait for ever,
    /// as for a node under gdb), counted from this call.
    pub fn wait_all_each(
        &mut self,
        timeout: impl Fn(u32) -> Option<Duration>,
    ) -> Result<BTreeMap<u32, VmExit>> {
        let start = Instant::now();
        while !self.vms.is_empty() {
            let late: Vec<(u32, Duration)> = self
                .vms
                .keys()
                .filter_map(|&node| timeout(node).map(|t| (node, t)))
                .filter(|&(_, t)| start.elapsed() >= t)
                .collect();
            for (node, t) in late {
                if let Some(mut vm) = self.vms.remove(&node) {
                    vm.kill()?;
                    let exit = VmExit::Timeout(t);
                    self.finish_bar(node, &exit);
                    self.exits.insert(node, exit);
                }
            }
            if self.vms.is_empty() {
                break;
            }
            self.pump(Duration::from_millis(20))?;
        }
        // Lines still in flight after the last exit.
        while let Ok(line) = self.rx.try_recv() {
            self.record(&line);
        }
        Ok(self.exits.clone())
    }

    /// Ends node `node`'s spinner with how it stopped.
    fn finish_bar(&mut self, node: u32, exit: &VmExit) {
        if let Some(bar) = self.bars.remove(&node) {
            bar.finish(exit.outcome() == Outcome::Success, &exit.describe());
        }
    }

    /// The worst outcome over every node that stopped.
    pub fn outcome(&self) -> Outcome {
        self.exits
            .values()
            .map(VmExit::outcome)
            .max()
            .unwrap_or(Outcome::Success)
    }

    /// The last `n` serial lines of a node, for failure reports.
    pub fn tail(&self, node: u32, n: usize) -> String {
        let log = self.log(node);
        log[log.len().saturating_sub(n)..].join("\n")
    }
}

/// Where cluster directories go: /dev/shm when it exists (tmpfs, and where
/// `shmos inspect` looks), else the temp dir.
pub fn shm_dir() -> PathBuf {
    let dev_shm = Path::new("/dev/shm");
    if dev_shm.is_dir() {
        dev_shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Parses a size such as `64M`, `1G`, `1048576` (K, M, G: powers of 1024).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {text:?}: expected a number"))?;
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => bail!("size {text:?}: unknown unit {unit:?} (use K, M or G)"),
    };
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
    }
}
