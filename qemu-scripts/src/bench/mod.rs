//! `shmos bench`: figures measured in VMs, each next to a baseline measured
//! in the same invocation, as ratios (these machines are shared and noisy: a
//! ratio holds, an absolute time does not). Prints a table, writes
//! `bench.json` and `bench.svg`.
//!
//! Each run measures everything once, in this order, so that host noise
//! falls on figures and baselines alike: the host baselines
//! ([`baseline`]), shm-ext between two host processes ([`hosted`]), boot
//! time (an app's first instruction against a kernel that powers off at
//! once), raw sequential writes to a VM's virtio-blk disk against the
//! host writing a file ([`disk`]), the extension-layer figures between two VMs (the `bench` app,
//! apps/bench), the DSM's page faults and its disk costs (`dsm_sync` of
//! 1 MiB, paging out and in) between three VMs (apps/dsm-bench), the
//! latter against the raw virtio-blk write of the same run, and the
//! doorbell round trip through shmos's path against a bare
//! register-and-spin loop in the same kernel. A figure is the median
//! over runs; the spread is the smallest and largest run.

pub mod baseline;
pub mod chart;
pub mod disk;
pub mod hosted;
pub mod peer;

use crate::cluster::{Cluster, ClusterConfig};
use crate::vm::{self, Accel, Firmware, VmConfig};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Kernel ELF.
    pub kernel: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Independent runs (VMs booted afresh each time).
    pub runs: usize,
    /// Timed operations per figure and run.
    pub iterations: usize,
    /// Echo the VMs' consoles.
    pub verbose: bool,
    /// The `shmos` executable: the host baselines' second process runs its
    /// hidden `bench-peer` subcommand.
    pub peer: PathBuf,
}

/// One figure: the median over runs, and the spread.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Unit of the values.
    pub unit: &'static str,
    /// Median of the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// Every run's value.
    pub runs: Vec<f64>,
}

/// A figure beside its baseline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    /// Short key (`msg64-polled`, `hosted/lock`, ...).
    pub key: String,
    /// The shmos figure.
    pub figure: Figure,
    /// The baseline measured in the same invocation.
    pub baseline: Figure,
    /// figure.median / baseline.median.
    pub ratio: f64,
    /// The target for this ratio, when it has one (`<= 3`, `>= 0.5`).
    pub target: Option<String>,
    /// Whether the ratio meets the target.
    pub met: Option<bool>,
}

/// Everything one `shmos bench` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The accelerator the VMs ran under.
    pub accel: String,
    /// When (UTC, RFC 3339 to the second).
    pub date: String,
    /// The host: CPU model and core count.
    pub machine: String,
    /// Runs per figure.
    pub runs: usize,
    /// Timed operations per figure and run.
    pub iterations: usize,
    /// The comparisons, in table order.
    pub comparisons: Vec<Comparison>,
}

fn figure(name: &str, unit: &'static str, mut runs: Vec<f64>) -> Figure {
    runs.sort_by(f64::total_cmp);
    let median = if runs.is_empty() {
        f64::NAN
    } else {
        runs[runs.len() / 2]
    };
    Figure {
        name: name.into(),
        unit,
        median,
        min: runs.first().copied().unwrap_or(f64::NAN),
        max: runs.last().copied().unwrap_or(f64::NAN),
        runs,
    }
}

/// Boots two nodes that run the doorbell benchmark on `path`; returns the
/// pinger's median round trip in µs.
fn doorbell_run(cfg: &BenchConfig, path: &str) -> Result<f64> {
    let mut cc = ClusterConfig::new(cfg.kernel.clone(), cfg.accel);
    cc.shm_size = 16 << 20;
    cc.echo = cfg.verbose;
    cc.cmdline = format!(
        "cluster.wait_live=2 bench.doorbell={path} bench.iterations={}",
        cfg.iterations
    );
    let mut cluster = Cluster::start(cc)?;
    cluster.spawn_node(0, "")?;
    cluster.spawn_node(1, "")?;
    let line = cluster
        .wait_for(0, "bench doorbell-rtt", Duration::from_secs(300))
        .with_context(|| {
            format!(
                "doorbell benchmark ({path}); node 0 said:\n{}",
                cluster.tail(0, 20)
            )
        })?;
    cluster.wait_all(Duration::from_secs(60))?;
    let median_ns =
        parse_field(&line, "median_ns").with_context(|| format!("unreadable result {line:?}"))?;
    Ok(median_ns / 1000.0)
}

/// The figures the `bench` app prints, in its order.
pub const VM_FIGURES: [&str; 11] = [
    "syscall",
    "memcpy-vm",
    "lock",
    "alloc",
    "msg64-polled",
    "msg4k-polled",
    "msg64-doorbell",
    "msg4k-doorbell",
    "msg64k-throughput",
    "lock-handoff",
    "transfer",
];

/// Boots two nodes running the `bench` app; returns each figure's value
/// (ns per operation, MB/s for throughput).
fn vm_run(cfg: &BenchConfig) -> Result<BTreeMap<String, f64>> {
    let mut cc = ClusterConfig::new(cfg.kernel.clone(), cfg.accel);
    // 64 MiB: each node's message queue then holds several 64 KiB messages.
    cc.shm_size = 64 << 20;
    cc.echo = cfg.verbose;
    cc.cmdline = format!("cluster.wait_live=2 app=bench:{}", cfg.iterations);
    let mut cluster = Cluster::start(cc)?;
    cluster.spawn_node(0, "")?;
    cluster.spawn_node(1, "")?;
    let exits = cluster.wait_all(Duration::from_secs(600))?;
    for (node, exit) in &exits {
        if exit.outcome() != crate::Outcome::Success {
            bail!(
                "the bench app failed on node {node}: {}\n{}",
                exit.describe(),
                cluster.tail(*node, 20)
            );
        }
    }
    let values = bench_lines(cluster.log(0));
    for f in VM_FIGURES {
        if !values.contains_key(f) {
            bail!(
                "node 0 printed no `bench {f}` line:\n{}",
                cluster.tail(0, 20)
            );
        }
    }
    Ok(values)
}

/// The `bench NAME ... value=V unit=U` lines of a console, by name, in
/// the table's units (ns, MB/s).
fn bench_lines(log: &[String]) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    for line in log {
        let Some(rest) = line.strip_prefix("bench ") else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap_or_default();
        if let Some(v) = parse_field(line, "value") {
            // Streams come in bytes per second, times in picoseconds; the
            // table shows MB/s and ns.
            let v = if line.contains("unit=B/s") {
                v / 1e6
            } else if line.contains("unit=ps") {
                v / 1e3
            } else {
                v
            };
            values.insert(name.to_string(), v);
        }
    }
    values
}

/// The DSM figures that [`dsm_run`] measures.
pub const DSM_FIGURES: [&str; 3] = ["dsm-read-fault", "dsm-write-fault-1", "dsm-write-fault-2"];

/// Boots three nodes running `dsm-bench bench N`; returns the fault
/// latencies in ns (read, write with one reader, write with two).
fn dsm_run(cfg: &BenchConfig) -> Result<BTreeMap<String, f64>> {
    dsm_bench_run(
        cfg,
        &format!("app=dsm-bench:bench+{}", cfg.iterations),
        &DSM_FIGURES,
    )
}

/// The DSM disk figures that [`dsm_disk_run`] measures.
pub const DSM_DISK_FIGURES: [&str; 3] = ["dsm-sync-1mib", "dsm-page-out", "dsm-page-in"];

/// Each node's DSM RAM budget in the disk figures' run (`dsm.ram`): the
/// 1 MiB the sync rewrites and the directory pages (which stay in RAM and
/// count against the budget) must fit, or pages of the MiB are paged out
/// before their sync; the paging range is at least twice this.
pub const DSM_DISK_RAM_PAGES: u64 = 320;

/// Boots three nodes running `dsm-bench disk N` under a small RAM budget;
/// returns the cost of `dsm_sync` of 1 MiB (ns) and the paging rates
/// (MB/s).
fn dsm_disk_run(cfg: &BenchConfig) -> Result<BTreeMap<String, f64>> {
    dsm_bench_run(
        cfg,
        &format!(
            "dsm.ram={DSM_DISK_RAM_PAGES} app=dsm-bench:disk+{}",
            cfg.iterations
        ),
        &DSM_DISK_FIGURES,
    )
}

/// Boots three nodes (each with its disk) with `cmdline` for `dsm-bench`;
/// returns node 0's `bench` lines, which must include every one of
/// `figures`.
fn dsm_bench_run(
    cfg: &BenchConfig,
    cmdline: &str,
    figures: &[&str],
) -> Result<BTreeMap<String, f64>> {
    let mut cc = ClusterConfig::new(cfg.kernel.clone(), cfg.accel);
    cc.shm_size = 64 << 20;
    cc.echo = cfg.verbose;
    cc.cmdline = format!("cluster.wait_live=3 {cmdline}");
    let mut cluster = Cluster::start(cc)?;
    for node in 0..3 {
        cluster.spawn_node(node, "")?;
    }
    let exits = cluster.wait_all(Duration::from_secs(600))?;
    for (node, exit) in &exits {
        if exit.outcome() != crate::Outcome::Success {
            bail!(
                "dsm-bench failed on node {node}: {}\n{}",
                exit.describe(),
                cluster.tail(*node, 20)
            );
        }
    }
    let values = bench_lines(cluster.log(0));
    for f in figures {
        if !values.contains_key(*f) {
            bail!(
                "node 0 printed no `bench {f}` line:\n{}",
                cluster.tail(0, 20)
            );
        }
    }
    Ok(values)
}

/// How long writing `bytes` takes at `mb_per_s` MB/s, in ns: the raw
/// disk's time for what a DSM figure writes, from the same run's rate.
fn write_ns(bytes: u64, mb_per_s: f64) -> f64 {
    bytes as f64 * 1e3 / mb_per_s
}

/// QEMU start to QEMU exit of one VM with `cmdline`, in ms (with its
/// disk, as every node has one).
fn boot_run(cfg: &BenchConfig, cmdline: &str) -> Result<f64> {
    let workdir = crate::cleanup::Workdir::new()?;
    let mut vm = VmConfig::new(cfg.kernel.clone(), cfg.accel, Firmware::Qboot);
    vm.cmdline = cmdline.into();
    vm.workdir = Some(workdir.path().to_owned());
    let image = workdir.path().join("disk.img");
    crate::disk::ensure_image(&image, crate::disk::DEFAULT_DISK_SIZE)?;
    vm.disk = Some(image);
    let boot = vm::boot(&vm, Some(Duration::from_secs(120)), |_| {})?;
    if boot.exit.outcome() != crate::Outcome::Success {
        bail!(
            "boot with {cmdline:?}: {}\n{}",
            boot.exit.describe(),
            boot.serial.join("\n")
        );
    }
    Ok(boot.duration.as_secs_f64() * 1e3)
}

/// Everything measured so far: key -> (label, unit, one value per run).
#[derive(Default)]
struct Samples(BTreeMap<&'static str, (&'static str, &'static str, Vec<f64>)>);

impl Samples {
    fn push(&mut self, key: &'static str, label: &'static str, unit: &'static str, v: f64) {
        self.0
            .entry(key)
            .or_insert((label, unit, Vec::new()))
            .2
            .push(v);
    }

    fn figure(&self, key: &str) -> Result<Figure> {
        let (label, unit, runs) = self
            .0
            .get(key)
            .with_context(|| format!("no figure {key}"))?;
        Ok(figure(label, unit, runs.clone()))
    }
}

/// One row of the table: figure key, baseline key, target on the ratio.
struct Row {
    key: &'static str,
    baseline: &'static str,
    target: Option<Target>,
}

/// A target on a ratio.
#[derive(Clone, Copy)]
enum Target {
    /// ratio <= x
    Below(f64),
    /// ratio >= x
    Above(f64),
    /// figure - baseline <= x, in the figure's unit
    Plus(f64),
}

const fn row(key: &'static str, baseline: &'static str, target: Option<Target>) -> Row {
    Row {
        key,
        baseline,
        target,
    }
}

/// MiB the disk benchmark writes per run: a fiftieth of the iterations,
/// 1 to 64 (20 MiB at the default 1000; the smoke run's 10 write 1 MiB).
pub fn disk_bench_mib(iterations: usize) -> u64 {
    (iterations as u64 / 50).clamp(1, 64)
}

/// The table, in order; targets from the benchmark issue.
const ROWS: [Row; 27] = [
    row("boot", "boot-exit", Some(Target::Plus(20.0))),
    row("syscall", "host-syscall", None),
    row("msg64-polled", "thread-pingpong", Some(Target::Below(3.0))),
    row("msg4k-polled", "thread-pingpong", None),
    row("msg64-doorbell", "unix-rtt", None),
    row("msg4k-doorbell", "unix-rtt", None),
    row("msg64k-throughput", "memcpy", Some(Target::Above(0.5))),
    row("memcpy-vm", "memcpy", None),
    row("lock", "mutex", Some(Target::Below(2.0))),
    row("lock-handoff", "mutex-handoff", None),
    row("alloc", "mutex", None),
    row("transfer", "unix-rtt", None),
    row("doorbell-shmos", "doorbell-bare", Some(Target::Below(1.2))),
    row("dsm-read-fault", "msg64-doorbell", Some(Target::Below(2.0))),
    row("dsm-write-fault-1", "msg64-doorbell", None),
    row("dsm-write-fault-2", "msg64-doorbell", None),
    row("disk-write", "host-file-write", None),
    row("dsm-sync-1mib", "disk-write-1mib", None),
    row("dsm-page-out", "disk-write", None),
    row("dsm-page-in", "disk-write", None),
    row("hosted/msg64-polled", "thread-pingpong", None),
    row("hosted/msg4k-polled", "thread-pingpong", None),
    row("hosted/msg64k-throughput", "memcpy", None),
    row("hosted/lock", "mutex", None),
    row("hosted/lock-handoff", "mutex-handoff", None),
    row("hosted/alloc", "mutex", None),
    row("hosted/transfer", "unix-rtt", None),
];

/// The VM figures' labels and units, by the app's figure name.
fn vm_label(figure: &str) -> (&'static str, &'static str) {
    match figure {
        "syscall" => ("null system call (clock), VM", "ns"),
        "memcpy-vm" => ("memcpy of 64 KiB in a VM (user mode)", "MB/s"),
        "lock" => ("lock acquire+release, uncontended, VM", "ns"),
        "alloc" => ("shm_alloc+shm_free, VM", "ns"),
        "msg64-polled" => ("message RTT 64 B, 2 VMs, polled", "ns"),
        "msg4k-polled" => ("message RTT 4 KiB, 2 VMs, polled", "ns"),
        "msg64-doorbell" => ("message RTT 64 B, 2 VMs, doorbell", "ns"),
        "msg4k-doorbell" => ("message RTT 4 KiB, 2 VMs, doorbell", "ns"),
        "msg64k-throughput" => ("64 KiB messages, 2 VMs", "MB/s"),
        "lock-handoff" => ("lock handoff, contended, 2 VMs", "ns"),
        _ => ("ownership transfer RTT, 2 VMs", "ns"),
    }
}

/// Measures every figure and baseline, `cfg.runs` times.
pub fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<Report> {
    if cfg.runs == 0 || cfg.iterations == 0 {
        bail!("--runs and --iterations must be at least 1");
    }
    let n = cfg.iterations;
    let mut s = Samples::default();
    for run in 0..cfg.runs {
        let step = |what: &str| format!("run {} of {}: {what}", run + 1, cfg.runs);
        progress(&step("host baselines"));
        // Host loops are cheap: many more operations than the VMs do.
        let host_n = (n * 20).max(1000);
        s.push(
            "thread-pingpong",
            "cache-line ping-pong, 2 host threads",
            "ns",
            baseline::thread_pingpong_ns(host_n),
        );
        s.push(
            "unix-rtt",
            "UNIX socket RTT 64 B, 2 host processes",
            "ns",
            baseline::unix_socket_rtt_ns(&cfg.peer, host_n)?,
        );
        s.push(
            "mutex",
            "pthread process-shared mutex lock+unlock",
            "ns",
            baseline::pshared_mutex_ns(host_n)?,
        );
        s.push(
            "mutex-handoff",
            "pthread pshared mutex, contended, 2 processes",
            "ns",
            baseline::pshared_mutex_handoff_ns(&cfg.peer, host_n)?,
        );
        s.push(
            "host-syscall",
            "host system call (getppid)",
            "ns",
            baseline::syscall_ns(host_n),
        );
        s.push(
            "memcpy",
            "host memcpy of 64 KiB",
            "MB/s",
            baseline::memcpy_mb_s(64 << 10, host_n),
        );
        progress(&step("shm-ext between two host processes"));
        let h = hosted::run(&cfg.peer, host_n)?;
        for (key, label, unit, v) in [
            (
                "hosted/msg64-polled",
                "message RTT 64 B, 2 host processes",
                "ns",
                h.msg_rtt_64_ns,
            ),
            (
                "hosted/msg4k-polled",
                "message RTT 4 KiB, 2 host processes",
                "ns",
                h.msg_rtt_4k_ns,
            ),
            (
                "hosted/msg64k-throughput",
                "64 KiB messages, 2 host processes",
                "MB/s",
                h.msg_throughput_64k_mb_s,
            ),
            (
                "hosted/lock",
                "lock acquire+release, host process",
                "ns",
                h.lock_ns,
            ),
            (
                "hosted/lock-handoff",
                "lock handoff, 2 host processes",
                "ns",
                h.lock_handoff_ns,
            ),
            (
                "hosted/alloc",
                "shm_alloc+shm_free, host process",
                "ns",
                h.alloc_free_ns,
            ),
            (
                "hosted/transfer",
                "ownership transfer RTT, 2 host processes",
                "ns",
                h.transfer_rtt_ns,
            ),
        ] {
            s.push(key, label, unit, v);
        }
        progress(&step("boot time"));
        s.push(
            "boot-exit",
            "QEMU start to exit, kernel that exits at once",
            "ms",
            // `quiet` in both: an appliance booting for one app skips the
            // banner and PCI listing (console bytes cost ~10 µs each on TCG).
            boot_run(cfg, "quiet boot.exit")?,
        );
        s.push(
            "boot",
            "QEMU start to first app instruction (+exit)",
            "ms",
            boot_run(cfg, "quiet app=bench:1+boot")?,
        );
        let mib = disk_bench_mib(n);
        progress(&step(&format!("raw disk writes ({mib} MiB)")));
        let host_dir = crate::cleanup::Workdir::new()?;
        s.push(
            "host-file-write",
            "host file write, 4 KiB blocks + fdatasync",
            "MB/s",
            baseline::file_write_bytes_per_s(host_dir.path(), mib << 20)? / 1e6,
        );
        let disk_mb_s = disk::virtio_blk_write_bytes_per_s(&cfg.kernel, cfg.accel, mib)? / 1e6;
        s.push(
            "disk-write",
            "virtio-blk write, 4 KiB blocks + flush, VM",
            "MB/s",
            disk_mb_s,
        );
        // The DSM sync's baseline: this run's raw rate, not a median of
        // other runs, so that both sides share the run's noise.
        s.push(
            "disk-write-1mib",
            "1 MiB at the virtio-blk write rate, VM",
            "ns",
            write_ns(1 << 20, disk_mb_s),
        );
        progress(&step("extension layer between two VMs"));
        for (figure, v) in vm_run(cfg)? {
            let key: &'static str = VM_FIGURES
                .iter()
                .find(|&&f| f == figure)
                .copied()
                .with_context(|| format!("unknown figure {figure} from the bench app"))?;
            let (label, unit) = vm_label(key);
            s.push(key, label, unit, v);
        }
        progress(&step("DSM page faults between three VMs"));
        for (figure, v) in dsm_run(cfg)? {
            let (key, label): (&'static str, &'static str) = match figure.as_str() {
                "dsm-read-fault" => ("dsm-read-fault", "DSM read fault (copy from the owner)"),
                "dsm-write-fault-1" => (
                    "dsm-write-fault-1",
                    "DSM write fault, 1 reader to invalidate",
                ),
                "dsm-write-fault-2" => (
                    "dsm-write-fault-2",
                    "DSM write fault, 2 readers to invalidate",
                ),
                _ => continue,
            };
            s.push(key, label, "ns", v);
        }
        progress(&step("DSM sync and paging between three VMs"));
        for (figure, v) in dsm_disk_run(cfg)? {
            let (key, label, unit): (&'static str, &'static str, &'static str) =
                match figure.as_str() {
                    "dsm-sync-1mib" => (
                        "dsm-sync-1mib",
                        "DSM sync of 1 MiB: write back, copy, flush",
                        "ns",
                    ),
                    "dsm-page-out" => (
                        "dsm-page-out",
                        "DSM page-out, writes past the RAM budget",
                        "MB/s",
                    ),
                    "dsm-page-in" => (
                        "dsm-page-in",
                        "DSM page-in, reads back from the disks",
                        "MB/s",
                    ),
                    _ => continue,
                };
            s.push(key, label, unit, v);
        }
        progress(&step("doorbell round trip"));
        s.push(
            "doorbell-bare",
            "doorbell RTT, 2 VMs, bare loop",
            "µs",
            doorbell_run(cfg, "bare")?,
        );
        s.push(
            "doorbell-shmos",
            "doorbell RTT, 2 VMs, shmos path",
            "µs",
            doorbell_run(cfg, "shmos")?,
        );
    }
    let mut comparisons = Vec::new();
    for r in &ROWS {
        let figure = s.figure(r.key)?;
        let baseline = s.figure(r.baseline)?;
        let ratio = figure.median / baseline.median;
        let (target, met) = match r.target {
            None => (None, None),
            Some(Target::Below(t)) => (Some(format!("<= {t}")), Some(ratio <= t)),
            Some(Target::Above(t)) => (Some(format!(">= {t}")), Some(ratio >= t)),
            Some(Target::Plus(t)) => (
                Some(format!("+{t} {} at most", figure.unit)),
                Some(figure.median - baseline.median <= t),
            ),
        };
        comparisons.push(Comparison {
            key: r.key.into(),
            figure,
            baseline,
            ratio,
            target,
            met,
        });
    }
    Ok(Report {
        accel: cfg.accel.to_string(),
        date: now_utc(),
        machine: machine(),
        runs: cfg.runs,
        iterations: cfg.iterations,
        comparisons,
    })
}

/// The current time, UTC, as `YYYY-MM-DD HH:MM:SS UTC` (std has no calendar;
/// the civil-from-days conversion is short enough not to need a crate).
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The host's CPU model and core count, from /proc/cpuinfo.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

/// The value of `key=NUMBER` in a result line.
pub fn parse_field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The report as a table: figure, baseline, ratio and target per row.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "shmos bench, {}, {}, accelerator {}: {} runs x {} operations; median of runs [min .. max]\n",
        r.date, r.machine, r.accel, r.runs, r.iterations
    );
    out += &format!(
        "{:<46} {:>26}   {:<46} {:>26}   {:>8}  {}\n",
        "figure", "value", "baseline (same run)", "value", "ratio", "target"
    );
    for c in &r.comparisons {
        let target = match (&c.target, c.met) {
            (Some(t), Some(true)) => format!("{t}: met"),
            (Some(t), _) => format!("{t}: MISSED"),
            _ => String::new(),
        };
        out += &format!(
            "{:<46} {:>26}   {:<46} {:>26}   {:>8.2}  {target}\n",
            c.figure.name,
            value(&c.figure),
            c.baseline.name,
            value(&c.baseline),
            c.ratio
        );
    }
    out
}

/// `median unit [min .. max]`, with as many digits as the size needs.
fn value(f: &Figure) -> String {
    let n = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    format!("{} {} [{} .. {}]", n(f.median), f.unit, n(f.min), n(f.max))
}

/// Writes `bench.json` into `dir`; returns its path.
pub fn write_json(r: &Report, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(r)? + "\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_fields_parse() {
        let line = "bench doorbell-rtt path=bare n=10 median_ns=33000 p10_ns=1 p90_ns=2";
        assert_eq!(parse_field(line, "median_ns"), Some(33000.0));
        assert_eq!(parse_field(line, "n"), Some(10.0));
        assert_eq!(parse_field(line, "nothing"), None);
    }

    #[test]
    fn figures_take_the_median_run() {
        let f = figure("x", "µs", vec![3.0, 1.0, 2.0]);
        assert_eq!((f.median, f.min, f.max), (2.0, 1.0, 3.0));
    }

    #[test]
    fn the_disk_benchmark_size_follows_iterations() {
        assert_eq!(disk_bench_mib(10), 1);
        assert_eq!(disk_bench_mib(100), 2);
        assert_eq!(disk_bench_mib(1000), 20);
        assert_eq!(disk_bench_mib(1_000_000), 64);
    }

    #[test]
    fn the_raw_write_time_follows_the_rate() {
        // 1 MiB at 1.048576 MB/s is one second; twice the rate, half.
        assert!((write_ns(1 << 20, 1.048576) - 1e9).abs() < 1e-3);
        assert!((write_ns(1 << 20, 2.097152) - 5e8).abs() < 1e-3);
        assert_eq!(write_ns(0, 100.0), 0.0);
    }

    #[test]
    fn dsm_disk_lines_come_in_table_units() {
        let log = [
            "bench dsm-sync-1mib n=2 value=274488748 unit=ns",
            "bench dsm-page-out n=924 value=2165899 unit=B/s",
            "[n0] something else value=1",
            "bench dsm-page-in n=1280 value=9359973 unit=B/s",
        ]
        .map(String::from);
        let v = bench_lines(&log);
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(v["dsm-sync-1mib"], 274488748.0);
        assert!((v["dsm-page-out"] - 2.165899).abs() < 1e-9);
        assert!((v["dsm-page-in"] - 9.359973).abs() < 1e-9);
        for f in DSM_DISK_FIGURES {
            assert!(ROWS.iter().any(|r| r.key == f), "no row for {f}");
        }
    }

    #[test]
    fn dates_are_civil() {
        let d = now_utc();
        assert!(
            d.len() == 23 && d.ends_with(" UTC") && d.starts_with("20"),
            "{d}"
        );
    }

    #[test]
    fn every_row_has_a_known_figure() {
        for r in &ROWS {
            let vm = VM_FIGURES.contains(&r.key)
                || DSM_FIGURES.contains(&r.key)
                || DSM_DISK_FIGURES.contains(&r.key);
            let other = r.key.starts_with("hosted/")
                || r.key.starts_with("boot")
                || r.key.starts_with("disk")
                || r.key.starts_with("doorbell");
            assert!(vm || other, "{}", r.key);
        }
    }
}
