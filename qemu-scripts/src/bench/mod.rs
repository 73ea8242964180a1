//! `shmos bench`: figures measured in VMs, each next to a baseline measured
//! in the same invocation, as ratios (these machines are shared and noisy: a
//! ratio holds, an absolute time does not). Prints a table and writes JSON.
//!
//! Figures so far: the doorbell round trip between two VMs through shmos's
//! path (node table ring, halting wait), against the same round trip by a
//! bare loop (Doorbell register, spin on the interrupt flag) in the same
//! kernel. Runs of the two alternate, so that host noise hits both alike.

use crate::cluster::{Cluster, ClusterConfig};
use crate::vm::Accel;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Kernel ELF.
    pub kernel: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Independent runs (clusters booted) per figure.
    pub runs: usize,
    /// Timed iterations per run.
    pub iterations: usize,
    /// Echo the VMs' consoles.
    pub verbose: bool,
}

/// One figure: the median over runs of each run's median, and the spread.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Unit of the values.
    pub unit: &'static str,
    /// Median of the per-run medians.
    pub median: f64,
    /// Smallest and largest per-run median.
    pub min: f64,
    /// Largest per-run median.
    pub max: f64,
    /// Every run's median.
    pub runs: Vec<f64>,
}

/// A figure beside its baseline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    /// The shmos figure.
    pub figure: Figure,
    /// The baseline measured in the same invocation.
    pub baseline: Figure,
    /// figure.median / baseline.median.
    pub ratio: f64,
}

/// Everything one `shmos bench` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The accelerator the VMs ran under.
    pub accel: String,
    /// Runs per figure.
    pub runs: usize,
    /// Timed iterations per run.
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

/// The value of `key=NUMBER` in a result line.
pub fn parse_field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Measures every figure.
pub fn run(cfg: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<Report> {
    if cfg.runs == 0 || cfg.iterations == 0 {
        bail!("--runs and --iterations must be at least 1");
    }
    let (mut shmos, mut bare) = (Vec::new(), Vec::new());
    for run in 0..cfg.runs {
        progress(&format!(
            "doorbell round trip, run {} of {}",
            run + 1,
            cfg.runs
        ));
        bare.push(doorbell_run(cfg, "bare")?);
        shmos.push(doorbell_run(cfg, "shmos")?);
    }
    let shmos = figure("doorbell round trip, 2 VMs, shmos path", "µs", shmos);
    let bare = figure("doorbell round trip, 2 VMs, bare loop", "µs", bare);
    let ratio = shmos.median / bare.median;
    Ok(Report {
        accel: cfg.accel.to_string(),
        runs: cfg.runs,
        iterations: cfg.iterations,
        comparisons: vec![Comparison {
            figure: shmos,
            baseline: bare,
            ratio,
        }],
    })
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "accelerator {}, {} runs x {} iterations; median of run medians [min .. max]\n",
        r.accel, r.runs, r.iterations
    );
    out += &format!(
        "{:<42} {:>22}   {:<42} {:>22}   {:>6}\n",
        "figure", "value", "baseline (same run)", "value", "ratio"
    );
    let v = |f: &Figure| format!("{:.1} {} [{:.1} .. {:.1}]", f.median, f.unit, f.min, f.max);
    for c in &r.comparisons {
        out += &format!(
            "{:<42} {:>22}   {:<42} {:>22}   {:>6.2}\n",
            c.figure.name,
            v(&c.figure),
            c.baseline.name,
            v(&c.baseline),
            c.ratio
        );
    }
    out
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
}
