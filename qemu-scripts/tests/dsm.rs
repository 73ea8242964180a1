//! The DSM on clusters of 3 VMs (issue 6): coherent plain loads and stores
//! through page faults (apps/dsm-counter, apps/dsm-matmul), a shared range
//! larger than a node's kernel heap spread over the nodes (apps/dsm-bench
//! `spread`), a page migrating between owners while its directory entry
//! stays put (`dsm-bench migrate`), and hostile `dsm_map` arguments refused
//! by name (`dsm-bench hostile`), and `shmos inspect` showing the DSM
//! directory and the pages' owners the nodes publish. Runs under the
//! accelerator `SHMOS_ACCEL` selects; under this host's nested KVM the
//! counts are scaled down.

use shmos::cluster::{Cluster, ClusterConfig};
use shmos::vm::{Accel, EXIT_SUCCESS, VmExit};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Two cores: one cluster at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Nodes in every cluster here.
const NODES: u32 = 3;

struct Dsm {
    c: Cluster,
    accel: Accel,
    step: Duration,
    name: String,
}

impl Dsm {
    fn new(name: &str, memory: &str) -> Dsm {
        let root = shmos::repo_root();
        shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
        let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
        let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
        let mut cfg = ClusterConfig::new(kernel, accel);
        cfg.shm_size = 16 << 20;
        cfg.memory = memory.into();
        cfg.cmdline = format!("cluster.wait_live={NODES}");
        let c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
        let step = match accel {
            Accel::Tcg => Duration::from_secs(120),
            Accel::Kvm => Duration::from_secs(400),
        };
        Dsm {
            c,
            accel,
            step,
            name: format!("{name} ({accel})"),
        }
    }

    fn boot_all(&mut self, app: &str) {
        for node in 0..NODES {
            self.c
                .spawn_node(node, &format!("app={app}"))
                .unwrap_or_else(|e| panic!("node {node}: {e:#}"));
        }
    }

    fn expect(&mut self, node: u32, needle: &str) -> String {
        match self.c.wait_for(node, needle, self.step) {
            Ok(line) => line,
            Err(e) => panic!(
                "{}: node {node}: {e:#}\n--- node {node} serial log ---\n{}",
                self.name,
                self.c.tail(node, 80),
            ),
        }
    }

    fn finish(mut self) {
        let exits = self.c.wait_all(self.step).unwrap();
        for node in 0..NODES {
            let exit = exits.get(&node).cloned();
            assert_eq!(
                exit,
                Some(VmExit::Exited(EXIT_SUCCESS)),
                "{}: node {node}: expected success, got {:?}\n--- node {node} serial log ---\n{}",
                self.name,
                exit.map(|e| e.describe()),
                self.c.tail(node, 80),
            );
            if let Some(line) = self.c.log(node).iter().find(|l| {
                l.contains("CPU exception")
                    || l.contains("KERNEL PANIC")
                    || l.contains("DSM message from")
            }) {
                panic!(
                    "{}: node {node}: {line}\n--- serial log ---\n{}",
                    self.name,
                    self.c.tail(node, 80)
                );
            }
        }
    }
}

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn dsm_counter_false_sharing_keeps_exact_totals() {
    let _one = one_at_a_time();
    let mut d = Dsm::new("dsm-counter on 3 nodes", "128M");
    let n = match d.accel {
        Accel::Tcg => 200,
        Accel::Kvm => 50,
    };
    d.boot_all(&format!("dsm-counter:{n}"));
    let want = format!("expected {}, actual {}", 3 * n * 2, 3 * n * 2);
    for node in 0..NODES {
        let line = d.expect(node, &format!("dsm-counter: node {node}: expected"));
        assert!(line.contains(&want), "{}: node {node}: {line}", d.name);
    }
    d.finish();
}

#[test]
fn dsm_matmul_computes_the_right_product() {
    let _one = one_at_a_time();
    let mut d = Dsm::new("dsm-matmul on 3 nodes", "128M");
    let n = match d.accel {
        Accel::Tcg => 96,
        Accel::Kvm => 32,
    };
    d.boot_all(&format!("dsm-matmul:{n}"));
    let mut sums = Vec::new();
    for node in 0..NODES {
        let line = d.expect(node, &format!("dsm-matmul: node {node}: n={n} checksum="));
        assert!(
            line.contains("(C correct)"),
            "{}: node {node}: {line}",
            d.name
        );
        sums.push(line.split("checksum=").nth(1).unwrap().to_string());
    }
    assert!(
        sums.windows(2).all(|w| w[0] == w[1]),
        "checksums differ: {sums:?}"
    );
    d.finish();
}

#[test]
fn dsm_map_refuses_hostile_ranges_by_name() {
    let _one = one_at_a_time();
    let mut d = Dsm::new("dsm hostile ranges on 3 nodes", "128M");
    d.boot_all("dsm-bench:hostile");
    for node in 0..NODES {
        d.expect(
            node,
            &format!("dsm-bench: node {node}: hostile: 12 calls refused by name"),
        );
    }
    d.finish();
}

/// A range larger than a node's RAM (192 MiB on 128 MiB nodes), written by
/// all nodes: more pages than one node's kernel heap (where the engine
/// keeps its pages) could hold, so they must stay spread over the nodes.
#[test]
fn dsm_range_larger_than_a_node_spreads_over_the_nodes() {
    let _one = one_at_a_time();
    let mut d = Dsm::new("dsm spread range on 3 nodes", "128M");
    let per_node = match d.accel {
        Accel::Tcg => 12,
        Accel::Kvm => 2,
    };
    d.boot_all(&format!("dsm-bench:spread+192+{per_node}"));
    let banner = d.expect(0, " MiB RAM in ");
    let heap: u64 = banner
        .split("heap ")
        .nth(1)
        .and_then(|h| h.split(' ').next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no heap size in {banner:?}"));
    for node in 0..NODES {
        let line = d.expect(
            node,
            &format!("dsm-bench: node {node}: spread: range 192 MiB"),
        );
        assert!(line.contains("correct"), "{line}");
    }
    if d.accel == Accel::Tcg {
        assert!(
            3 * per_node > heap,
            "{} MiB written fit one node's {heap} MiB heap",
            3 * per_node
        );
    }
    d.finish();
}

/// One page written by node 1, then by node 2: the owner the responsible
/// node (0) records moves from 1 to 2, while every node reads the same
/// directory entry before and after.
#[test]
fn dsm_page_migrates_while_its_directory_entry_stays() {
    let _one = one_at_a_time();
    let mut d = Dsm::new("dsm migration on 3 nodes", "128M");
    d.boot_all("dsm-bench:migrate");
    let mut entries = Vec::new();
    for step in 1..=2 {
        for node in 0..NODES {
            let line = d.expect(
                node,
                &format!("dsm-bench: node {node}: migrate step {step}: "),
            );
            let field = |k: &str| {
                line.split(&format!("{k}="))
                    .nth(1)
                    .and_then(|v| v.split(' ').next())
                    .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                    .to_string()
            };
            entries.push(field("entry"));
            assert_eq!(field("responsible"), "0", "{line}");
            assert_eq!(
                field("owner-here"),
                if node == step { "1" } else { "0" },
                "{line}"
            );
            if node == 0 {
                assert_eq!(field("managed-owner"), step.to_string(), "{line}");
            }
        }
    }
    assert!(
        entries.windows(2).all(|w| w[0] == w[1]),
        "the directory entry changed: {entries:?}"
    );
    for node in 0..NODES {
        d.expect(node, &format!("dsm-bench: node {node}: migrate: value=102"));
    }
    d.finish();
}

/// What `shmos inspect --json` must show of a dsm-matmul cluster: a report
/// from every node, the root directory page with a leaf naming the
/// matrices' range and node 0 (which allocated it) as responsible, and
/// that range's pages with an owner each.
fn dsm_section_complete(json: &serde_json::Value, pages: u64) -> Result<(), String> {
    let dsm = &json["dsm"];
    let reports = dsm["reports"].as_array().ok_or("no reports")?;
    for node in 0..NODES {
        if !reports
            .iter()
            .any(|r| r["node"] == node && r["status"] == "current")
        {
            return Err(format!("no current report from node {node}"));
        }
    }
    let root = &dsm["directory"];
    if root["addr"] != "0x0" {
        return Err("no root directory page".into());
    }
    let leaves = root["entries"].as_array().ok_or("root without entries")?;
    let leaf = leaves
        .iter()
        .find(|e| e["responsible"] == 0 && e["pages"] == pages)
        .ok_or(format!(
            "no {pages}-page range with responsible node 0 in the root"
        ))?;
    let range = dsm["ranges"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["first"] == leaf["first"]))
        .ok_or("the root's range has no page table")?;
    if range["responsible"] != 0 || range["in_tree"] != true || range["records_from"] != 0 {
        return Err(format!("range row {range}"));
    }
    let listed = range["pages"].as_array().ok_or("no pages")?;
    if listed.is_empty() {
        return Err("no touched pages listed".into());
    }
    if let Some(p) = listed.iter().find(|p| p["owner"].as_u64().is_none()) {
        return Err(format!("a touched page without an owner: {p}"));
    }
    Ok(())
}

/// `shmos inspect` on a cluster running dsm-matmul: the nodes publish
/// their DSM reports on the shared device, and the inspector's DSM section
/// shows the directory tree with the range and its responsible node, and
/// the range's pages with their owners. A sleeper keeps the nodes (and
/// their publishing) up for a while after the product is checked; the test
/// waits for the reports to show up rather than for any time.
#[test]
fn inspect_shows_the_dsm_directory_and_the_pages_owners() {
    let _one = one_at_a_time();
    let mut d = Dsm::new("inspect of dsm-matmul on 3 nodes", "128M");
    let (n, stay_ms) = match d.accel {
        Accel::Tcg => (48u64, 8_000),
        Accel::Kvm => (16, 30_000),
    };
    for node in 0..NODES {
        d.c.spawn_node(node, &format!("app=dsm-matmul:{n} app=sleeper:1+{stay_ms}"))
            .unwrap_or_else(|e| panic!("node {node}: {e:#}"));
    }
    for node in 0..NODES {
        d.expect(node, &format!("dsm-matmul: node {node}: n={n} checksum="));
    }
    let pages = (3 * n * n * 8).div_ceil(4096);
    let deadline = Instant::now() + d.step;
    loop {
        let report = shmos::inspect::report(d.c.shm_path(), true)
            .unwrap_or_else(|e| panic!("{}: inspect refused the device: {e:#}", d.name));
        let json: serde_json::Value = serde_json::from_str(&report).unwrap();
        match dsm_section_complete(&json, pages) {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(why) => panic!(
                "{}: the DSM section is incomplete: {why}\n{}",
                d.name,
                shmos::inspect::report(d.c.shm_path(), false).unwrap_or_default()
            ),
        }
    }
    let text = shmos::inspect::report(d.c.shm_path(), false).unwrap();
    assert!(
        text.contains("directory tree") && text.contains("responsible node 0"),
        "{text}"
    );
    println!("{}: inspect shows:\n{text}", d.name);
    d.finish();
}
