//! The demo apps (apps/pingpong, counter, pipeline, broadcast, kv, fuzz) on
//! clusters of VMs, each with doorbells and with ivshmem-plain (polling),
//! under the accelerator `SHMOS_ACCEL` selects. Every node gets
//! `cluster.wait_live=N` and `app=NAME:ARGS`, as `shmos cluster --app`
//! does. A failure names the node and the line it expected, with that
//! node's serial log; after each cluster the shared memory file must still
//! validate (`shmos inspect`'s reading of it).
//!
//! The figures are the acceptance figures under TCG; under this host's
//! nested KVM (which emulates kernel code, so that every system call costs
//! milliseconds) they are scaled down, see [`Figures`].

use shmos::cluster::{Cluster, ClusterConfig};
use shmos::vm::{Accel, EXIT_SUCCESS, VmExit};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Two cores: one cluster at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How much work each app does: the acceptance figures under TCG, less
/// under KVM.
struct Figures {
    pingpong: u64,
    counter: u64,
    pipeline: u64,
    kv: u64,
    fuzz: u64,
    /// Longest wait for one expected line.
    step: Duration,
}

fn figures(accel: Accel) -> Figures {
    match accel {
        Accel::Tcg => Figures {
            pingpong: 1000,
            counter: 1000,
            pipeline: 1000,
            kv: 20_000,
            fuzz: 100_000,
            step: Duration::from_secs(60),
        },
        Accel::Kvm => Figures {
            pingpong: 200,
            counter: 200,
            pipeline: 200,
            kv: 2_000,
            fuzz: 10_000,
            step: Duration::from_secs(240),
        },
    }
}

/// A running test cluster, and what the test expects of it.
struct Demo {
    c: Cluster,
    nodes: u32,
    fig: Figures,
    started: Instant,
    name: String,
}

impl Demo {
    /// A cluster of `nodes` VMs (not booted yet).
    fn new(name: &str, nodes: u32, plain: bool) -> Demo {
        let root = shmos::repo_root();
        shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
        let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
        let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
        let mut cfg = ClusterConfig::new(kernel, accel);
        cfg.plain = plain;
        cfg.shm_size = 16 << 20;
        cfg.cmdline = format!("cluster.wait_live={nodes}");
        let c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
        Demo {
            c,
            nodes,
            fig: figures(accel),
            started: Instant::now(),
            name: format!("{name}{} ({accel})", if plain { " plain" } else { "" }),
        }
    }

    /// Boots every node with `app` (NAME:ARGS, `+` for spaces).
    fn boot_all(&mut self, app: &str) {
        for node in 0..self.nodes {
            self.boot(node, app);
        }
    }

    fn boot(&mut self, node: u32, app: &str) {
        self.c
            .spawn_node(node, &format!("app={app}"))
            .unwrap_or_else(|e| panic!("node {node}: {e:#}"));
    }

    /// Waits until `node` prints a line containing `needle`; returns it.
    fn expect(&mut self, node: u32, needle: &str) -> String {
        match self.c.wait_for(node, needle, self.fig.step) {
            Ok(line) => line,
            Err(e) => panic!(
                "{}: node {node}: {e:#}\n--- node {node} serial log ---\n{}\n{}",
                self.name,
                self.c.tail(node, 80),
                self.notes()
            ),
        }
    }

    /// What every node said about the cluster and its clock, and every
    /// failure: often the cause of another node's failure.
    fn notes(&self) -> String {
        let mut out = String::from("--- cluster notes (all nodes) ---");
        for node in 0..self.nodes {
            for line in self.c.log(node) {
                if [
                    "clock: TSC",
                    " died ",
                    "declared dead",
                    "FAILED",
                    "CPU exception",
                ]
                .iter()
                .any(|k| line.contains(k))
                {
                    out.push_str(&format!("\n[n{node}] {line}"));
                }
            }
        }
        out
    }

    /// Waits for every VM to stop; each node in `ok` must report success.
    /// Then no log may show a CPU exception or a kernel panic, and the
    /// shared memory must still validate.
    fn finish(mut self, ok: &[u32]) -> Cluster {
        let exits = self.c.wait_all(self.fig.step).unwrap();
        for &node in ok {
            let exit = exits.get(&node).cloned();
            assert_eq!(
                exit,
                Some(VmExit::Exited(EXIT_SUCCESS)),
                "{}: node {node}: expected the kernel to report success, got {:?}\n--- node {node} serial log ---\n{}\n{}",
                self.name,
                exit.map(|e| e.describe()),
                self.c.tail(node, 80),
                self.notes()
            );
        }
        for node in 0..self.nodes {
            if let Some(line) = self
                .c
                .log(node)
                .iter()
                .find(|l| l.contains("CPU exception") || l.contains("KERNEL PANIC"))
            {
                panic!(
                    "{}: node {node} faulted: {line}\n--- node {node} serial log ---\n{}",
                    self.name,
                    self.c.tail(node, 80)
                );
            }
        }
        let report = shmos::inspect::report(self.c.shm_path(), true).unwrap_or_else(|e| {
            panic!("{}: the shared memory does not validate: {e:#}", self.name)
        });
        let json: serde_json::Value = serde_json::from_str(&report).unwrap();
        let pools = &json["snapshot"]["pools"];
        assert!(
            pools["error"].is_null(),
            "{}: the pool area does not validate:\n{report}",
            self.name
        );
        for pool in pools["pools"].as_array().into_iter().flatten() {
            assert!(
                pool["error"].is_null(),
                "{}: a pool does not validate: {pool}\n{report}",
                self.name
            );
        }
        println!(
            "{}: passed in {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        self.c
    }
}

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn pingpong(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("pingpong on 2 nodes", 2, plain);
    let n = d.fig.pingpong;
    d.boot_all(&format!("pingpong:{n}"));
    let line = d.expect(0, &format!("pingpong: {n} round trips, median RTT "));
    d.expect(1, &format!("pingpong: node 1 echoed {n} messages"));
    let ns: u64 = line
        .rsplit("median RTT ")
        .next()
        .and_then(|rest| rest.strip_suffix(" ns"))
        .and_then(|ns| ns.parse().ok())
        .unwrap_or_else(|| panic!("no median in {line:?}"));
    assert!(ns > 0, "a round trip takes time: {line}");
    println!("{}: {line}", d.name);
    d.finish(&[0, 1]);
}

#[test]
fn pingpong_two_nodes_echo_every_message() {
    pingpong(false);
}

#[test]
fn pingpong_two_nodes_echo_every_message_plain() {
    pingpong(true);
}

fn counter(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("counter on 3 nodes", 3, plain);
    let m = d.fig.counter;
    d.boot_all(&format!("counter:{m}"));
    let total = 3 * m;
    for node in 0..3 {
        let made = d.expect(node, &format!("counter: node {node} made {m} increments"));
        println!("{}: {made}", d.name);
    }
    for node in 0..3 {
        d.expect(node, &format!("counter: expected {total}, actual {total}"));
    }
    d.finish(&[0, 1, 2]);
}

#[test]
fn counter_three_nodes_reach_the_exact_total() {
    counter(false);
}

#[test]
fn counter_three_nodes_reach_the_exact_total_plain() {
    counter(true);
}

fn counter_with_a_killed_holder(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("counter, lock holder killed", 3, plain);
    let m = d.fig.counter;
    d.boot(0, &format!("counter:{m}"));
    d.boot(1, &format!("counter:{m}"));
    d.boot(2, &format!("counter:{m}+hold"));
    d.expect(2, "counter: node 2 holds the lock and never lets go");
    d.c.kill_node(2).unwrap();
    let killed = Instant::now();
    for node in [0, 1] {
        let died = d.expect(node, &format!("node {node}: node 2 died"));
        println!("{}: {died} ({:?} after the kill)", d.name, killed.elapsed());
    }
    let total = 2 * m;
    for node in [0, 1] {
        d.expect(node, "counter: node 2 did not finish (0 increments)");
        let line = d.expect(node, &format!("counter: expected {total}, actual {total}"));
        println!(
            "{}: node {node}: {line} ({:?} after the kill)",
            d.name,
            killed.elapsed()
        );
    }
    d.finish(&[0, 1]);
}

#[test]
fn counter_survives_a_node_killed_while_holding_the_lock() {
    counter_with_a_killed_holder(false);
}

#[test]
fn counter_survives_a_node_killed_while_holding_the_lock_plain() {
    counter_with_a_killed_holder(true);
}

fn pipeline(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("pipeline through 3 nodes", 3, plain);
    let r = d.fig.pipeline;
    d.boot_all(&format!("pipeline:{r}"));
    d.expect(
        2,
        &format!("pipeline: {r} regions passed through 3 nodes, all checksums correct"),
    );
    d.expect(1, &format!("pipeline: node 1 checked and passed on {r} regions ({r} writable maps after a transfer refused)"));
    d.expect(0, &format!("pipeline: node 0 sent {r} regions, all came back freed ({r} writable maps after a transfer refused)"));
    d.finish(&[0, 1, 2]);
}

#[test]
fn pipeline_passes_regions_through_three_nodes() {
    pipeline(false);
}

#[test]
fn pipeline_passes_regions_through_three_nodes_plain() {
    pipeline(true);
}

fn broadcast(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("broadcast on 3 nodes", 3, plain);
    d.boot_all("broadcast");
    for node in 0..3 {
        d.expect(
            node,
            &format!("broadcast: node {node} heard from all 3 nodes (signals and messages)"),
        );
    }
    d.finish(&[0, 1, 2]);
}

#[test]
fn broadcast_reaches_every_node() {
    broadcast(false);
}

#[test]
fn broadcast_reaches_every_node_plain() {
    broadcast(true);
}

fn kv(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("kv on 3 nodes", 3, plain);
    let ops = d.fig.kv;
    d.boot_all(&format!("kv:{ops}"));
    for node in 0..3 {
        let line = d.expect(node, &format!("kv: node {node}: {ops} operations in "));
        assert!(
            line.contains("all reads consistent"),
            "{}: node {node}: {line}",
            d.name
        );
        println!("{}: {line}", d.name);
    }
    let line = d.expect(0, "kv: state matches the model (");
    println!("{}: {line}", d.name);
    d.finish(&[0, 1, 2]);
}

#[test]
fn kv_three_nodes_match_the_model() {
    kv(false);
}

#[test]
fn kv_three_nodes_match_the_model_plain() {
    kv(true);
}

fn fuzz(plain: bool) {
    let _one = one_at_a_time();
    let mut d = Demo::new("fuzz on 2 nodes", 2, plain);
    let n = d.fig.fuzz;
    d.boot_all(&format!("fuzz:{n}"));
    for node in 0..2 {
        let line = d.expect(node, " calls, every call answered (ok ");
        let calls: u64 = line
            .split("fuzz: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: node {node}: no count in {line:?}", d.name));
        assert!(
            calls >= n,
            "{}: node {node}: {calls} calls, fewer than {n}: {line}",
            d.name
        );
        println!("{}: node {node}: {line}", d.name);
    }
    for node in 0..2 {
        d.expect(
            node,
            &format!("fuzz: node {node}: the kernel still works (pool, region, lock, message)"),
        );
    }
    // `finish` checks the exits, the logs for faults, and the shared memory.
    d.finish(&[0, 1]);
}

#[test]
fn fuzz_two_nodes_without_a_kernel_fault() {
    fuzz(false);
}

#[test]
fn fuzz_two_nodes_without_a_kernel_fault_plain() {
    fuzz(true);
}
