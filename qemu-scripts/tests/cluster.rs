//! Cluster tests: several VMs on one shared memory node, with doorbells and
//! with ivshmem-plain (polling), under the accelerator `SHMOS_ACCEL` selects.
//! On failure each assertion names the node and what was expected, and the
//! node's serial log is printed.

use shmos::cluster::{Cluster, ClusterConfig};
use shmos::vm::VmExit;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// VMs of two tests at once would crowd two cores; run one cluster at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Generous: three VMs share two cores, and KVM here emulates kernel code.
const STEP: Duration = Duration::from_secs(60);

fn start(plain: bool) -> Cluster {
    let root = shmos::repo_root();
    shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cfg = ClusterConfig::new(kernel, accel);
    cfg.plain = plain;
    cfg.shm_size = 16 << 20;
    Cluster::start(cfg).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits for node `node` to print `needle`; on failure, panics naming the
/// node and the expected line, with the node's serial log.
fn expect(c: &mut Cluster, node: u32, needle: &str) -> String {
    match c.wait_for(node, needle, STEP) {
        Ok(line) => line,
        Err(e) => panic!(
            "node {node}: {e:#}\n--- node {node} serial log ---\n{}",
            c.tail(node, 60)
        ),
    }
}

fn all_succeeded(c: &mut Cluster) {
    let exits = c.wait_all(STEP).unwrap();
    for (node, exit) in &exits {
        assert_eq!(
            *exit,
            VmExit::Exited(shmos::vm::EXIT_SUCCESS),
            "node {node}: expected the kernel to report success, got: {}\n--- node {node} serial log ---\n{}",
            exit.describe(),
            c.tail(*node, 60)
        );
    }
}

fn live_and_ring(plain: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start(plain);
    let common = "cluster.wait_live=3 cluster.live_within_ms=2000";
    c.spawn_node(0, &format!("{common} cluster.ring=2:1"))
        .unwrap();
    c.spawn_node(1, common).unwrap();
    c.spawn_node(2, &format!("{common} cluster.expect_ring=1"))
        .unwrap();
    for node in 0..3 {
        let line = expect(&mut c, node, "all 3 nodes live: {0,1,2}");
        println!("node {node}: {line}");
    }
    let how = if plain { "(polled)" } else { "(interrupt)" };
    expect(&mut c, 2, &format!("doorbell on vector 1 {how}"));
    all_succeeded(&mut c);
}

#[test]
fn three_nodes_see_each_other_live_and_node_0_rings_node_2() {
    live_and_ring(false);
}

#[test]
fn three_nodes_see_each_other_live_and_node_0_rings_node_2_plain() {
    live_and_ring(true);
}

fn kill_and_replace(plain: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start(plain);
    let survivor = "cluster.wait_live=3 cluster.watch_rejoin=1";
    c.spawn_node(0, survivor).unwrap();
    c.spawn_node(1, "cluster.wait_live=3 cluster.stay").unwrap();
    c.spawn_node(2, survivor).unwrap();
    expect(&mut c, 1, "staying up");
    for node in [0, 2] {
        expect(&mut c, node, "all 3 nodes live");
    }
    c.kill_node(1).unwrap();
    let killed = Instant::now();
    for node in [0, 2] {
        expect(&mut c, node, "saw node 1 die");
        println!(
            "node {node} declared node 1 dead {:?} after SIGKILL",
            killed.elapsed()
        );
    }
    c.spawn_node(1, "cluster.wait_live=3").unwrap();
    for node in [0, 2] {
        let line = expect(&mut c, node, "saw node 1 rejoin with generation 2 (was 1)");
        println!("node {node}: {line}");
    }
    all_succeeded(&mut c);
}

#[test]
fn killed_node_is_declared_dead_and_its_replacement_rejoins_with_a_new_generation() {
    kill_and_replace(false);
}

#[test]
fn killed_node_is_declared_dead_and_its_replacement_rejoins_with_a_new_generation_plain() {
    kill_and_replace(true);
}

#[test]
fn inspect_shows_the_live_nodes_of_a_running_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start(false);
    for node in 0..3 {
        c.spawn_node(node, "cluster.wait_live=3 cluster.stay")
            .unwrap();
    }
    for node in 0..3 {
        expect(&mut c, node, "staying up");
    }
    let text = shmos::inspect::report(c.shm_path(), false).unwrap();
    let live_rows = text
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("live"))
        .count();
    assert_eq!(live_rows, 3, "expected three live nodes in:\n{text}");
    let json: serde_json::Value =
        serde_json::from_str(&shmos::inspect::report(c.shm_path(), true).unwrap()).unwrap();
    let live = json["snapshot"]["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .filter(|n| n["info"]["state"] == "Live")
        .count();
    assert_eq!(live, 3, "expected three live nodes in JSON:\n{json:#}");
}

#[test]
fn a_corrupted_superblock_is_refused_by_every_node_without_a_fault() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start(true);
    // "Initialised" (init word 2) but with a wrong magic: no node may trust it.
    let mut bytes = vec![0u8; 4096];
    bytes[..8].copy_from_slice(b"GARBAGE!");
    bytes[12..16].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(c.shm_path(), &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(c.shm_path())
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    for node in 0..2 {
        c.spawn_node(node, "cluster.wait_live=2").unwrap();
    }
    for node in 0..2 {
        expect(
            &mut c,
            node,
            "cannot join the cluster: shared memory: shared memory superblock has a bad magic (BadMagic)",
        );
    }
    let exits = c.wait_all(STEP).unwrap();
    for (node, exit) in exits {
        assert_eq!(
            exit,
            VmExit::Exited(shmos::vm::EXIT_FAILURE),
            "node {node}: expected a clean failure report, not {}",
            exit.describe()
        );
    }
    let refusal = shmos::inspect::report(c.shm_path(), false).unwrap_err();
    assert!(
        format!("{refusal:#}").contains("BadMagic"),
        "inspect names the error: {refusal:#}"
    );
}

#[test]
fn the_benchmark_smoke_run_measures_every_figure() {
    // A smoke run (one run, ten operations per figure) so that `shmos bench`
    // cannot rot; it asserts that every figure and baseline comes out and
    // the files are written, never how large anything is.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = shmos::repo_root();
    let cfg = shmos::bench::BenchConfig {
        kernel: shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}")),
        accel: shmos::host::choose_accel(None).unwrap(),
        runs: 1,
        iterations: 10,
        verbose: false,
        peer: env!("CARGO_BIN_EXE_shmos").into(),
    };
    let report = shmos::bench::run(&cfg, |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.comparisons.len(), 27, "{report:#?}");
    for c in &report.comparisons {
        for f in [&c.figure, &c.baseline] {
            assert!(
                f.median.is_finite() && f.median > 0.0 && f.runs.len() == 1,
                "{} ({}): no figure in {report:#?}",
                f.name,
                c.key
            );
        }
    }
    let table = shmos::bench::table(&report);
    for key in [
        "bare loop",
        "cache-line ping-pong",
        "UNIX socket",
        "memcpy",
        "2 host processes",
        "virtio-blk write",
        "host file write",
        "DSM sync of 1 MiB",
        "DSM page-out",
        "DSM page-in",
    ] {
        assert!(table.contains(key), "no {key:?} in\n{table}");
    }
    let out = tempfile::tempdir().unwrap();
    let json = shmos::bench::write_json(&report, out.path()).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(parsed["comparisons"].as_array().map(Vec::len), Some(27));
    let svg = out.path().join("bench.svg");
    shmos::bench::chart::write_svg(&report, &svg).unwrap();
    assert!(std::fs::read_to_string(svg).unwrap().contains("<svg"));
}
