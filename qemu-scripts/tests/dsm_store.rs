//! The DSM on disks (issue 7), on clusters of VMs with `apps/dsm-store`:
//! a data set larger than a node's RAM (and its DSM RAM budget) written with checksums under a
//! small RAM budget (pages go to disk and back), synced, and read back by a
//! new cluster on the same disks; one node and its disk lost after a sync,
//! the others reading everything and restoring the copies; a garbage and a
//! truncated disk reported and not trusted. Runs under `SHMOS_ACCEL`.

use shmos::cluster::{Cluster, ClusterConfig, NodeOptions};
use shmos::vm::{Accel, EXIT_SUCCESS, VmExit};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Two cores: one cluster at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory of disk images, removed when dropped (also on failure).
struct Disks(PathBuf);

impl Disks {
    fn new(name: &str) -> Disks {
        let dir =
            shmos::cluster::shm_dir().join(format!("shmos-disks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Disks(dir)
    }
    fn image(&self, node: u32) -> PathBuf {
        self.0.join(format!("node-{node}.img"))
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One cluster run of `dsm-store` on `nodes` nodes over the disks in `dir`.
struct Run {
    c: Cluster,
    nodes: Vec<u32>,
    step: Duration,
    name: String,
}

/// True under KVM with ring 0 emulated (`kvm_pvm`), where the data sets
/// shrink (each page on disk costs ~270 ms there); the test says so.
fn kernel_mode_emulated() -> bool {
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let emulated = accel == Accel::Kvm && shmos::host::kvm_emulates_kernel_mode();
    if emulated {
        println!("KVM with ring 0 emulated (kvm_pvm): data sets scaled down");
    }
    emulated
}

impl Run {
    fn start(name: &str, dir: &Path, nodes: &[u32], memory: &str, extra: &str, app: &str) -> Run {
        let root = shmos::repo_root();
        shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
        let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
        let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
        let mut cfg = ClusterConfig::new(kernel, accel);
        // Queues of 1 MiB per node: pages move in 4 KiB messages.
        cfg.shm_size = 64 << 20;
        cfg.memory = memory.into();
        cfg.disks = Some(dir.to_owned());
        cfg.disk_size = 512 << 20;
        cfg.cmdline = format!("cluster.wait_live={} {extra}", nodes.len());
        let mut c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
        for &node in nodes {
            c.spawn_node_with(node, &format!("app={app}"), &NodeOptions::default())
                .unwrap_or_else(|e| panic!("node {node}: {e:#}"));
        }
        let step = match accel {
            Accel::Tcg => Duration::from_secs(300),
            // A node alone read 512 pages back from its disk at 1.7 s each.
            Accel::Kvm if kernel_mode_emulated() => Duration::from_secs(1800),
            Accel::Kvm => Duration::from_secs(900),
        };
        Run {
            c,
            nodes: nodes.to_vec(),
            step,
            name: format!("{name} ({accel})"),
        }
    }

    fn expect(&mut self, node: u32, needle: &str) -> String {
        match self.c.wait_for(node, needle, self.step) {
            Ok(line) => line,
            Err(e) => panic!(
                "{}: node {node}: expected a line with {needle:?}: {e:#}\n--- node {node} serial log ---\n{}",
                self.name,
                self.c.tail(node, 80),
            ),
        }
    }

    /// The global address of the range node 0 allocated (hex, as printed).
    fn range(&mut self) -> String {
        let line = self.expect(0, "dsm-store: range ");
        line.split("range ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_else(|| panic!("no range in {line:?}"))
            .to_string()
    }

    /// Every node verified its stripe with no bad page; returns the sum of
    /// page-outs and page-ins over the nodes.
    fn verified(&mut self) -> (u64, u64) {
        let (mut outs, mut ins) = (0, 0);
        for node in self.nodes.clone() {
            let line = self.expect(node, &format!("dsm-store: node {node} verified "));
            assert!(
                line.ends_with(", 0 bad"),
                "{}: node {node}: {line}\n{}",
                self.name,
                self.c.tail(node, 40)
            );
            let line = self.expect(node, &format!("dsm-store: node {node} page-outs "));
            let field = |name: &str| -> u64 {
                line.split(&format!("{name} "))
                    .nth(1)
                    .and_then(|v| v.split(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            };
            outs += field("page-outs");
            ins += field("page-ins");
        }
        (outs, ins)
    }

    fn finish(mut self) {
        let exits = self.c.wait_all(self.step).unwrap();
        for &node in &self.nodes {
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
                    || l.contains("DSM: cannot read the directory")
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

/// Writes `mib` MiB from every node of `nodes`, syncs, checks; returns the
/// range's global address (hex, as printed) and the page-out/in counts.
fn write(
    name: &str,
    disks: &Disks,
    nodes: &[u32],
    memory: &str,
    extra: &str,
    mib: u64,
) -> (String, u64, u64) {
    let mut r = Run::start(
        name,
        &disks.0,
        nodes,
        memory,
        extra,
        &format!("dsm-store:write+{mib}"),
    );
    let g = r.range();
    r.expect(0, &format!("dsm-store: synced {mib} MiB"));
    let (outs, ins) = r.verified();
    r.finish();
    (g, outs, ins)
}

fn verify(
    name: &str,
    disks: &Disks,
    nodes: &[u32],
    memory: &str,
    extra: &str,
    g: &str,
    mib: u64,
) -> Run {
    let mut r = Run::start(
        name,
        &disks.0,
        nodes,
        memory,
        extra,
        &format!("dsm-store:verify+{g}+{mib}"),
    );
    r.verified();
    r
}

/// Acceptance 7.1 and 7.3, and 6.2's range larger than a node's RAM: 3
/// nodes of 80 MiB write a 96 MiB range with checksums under a DSM RAM
/// budget of 2 MiB per node, so pages go to disk and come back (the counts
/// are printed); after a sync every VM stops and a new cluster on the same
/// disks reads every byte back. Under this host's KVM (kernel code
/// emulated, each fault costs milliseconds) it is 64 MiB on 128 MiB nodes.
///
/// Under KVM with ring 0 emulated (`kvm_pvm`, this workplace's nested KVM)
/// a page-out costs ~270 ms and a page read back from disk up to 1.7 s,
/// so 64 MiB would take hours: there the test writes 2 MiB under a budget
/// of 256 KiB per node (still paging), and says so.
#[test]
fn dsm_store_pages_to_disk_and_survives_a_whole_cluster_restart() {
    let _one = one_at_a_time();
    let disks = Disks::new("restart");
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let (mib, memory, ram) = match accel {
        Accel::Tcg => (96, "80M", 512),
        Accel::Kvm if kernel_mode_emulated() => (2, "128M", 64),
        Accel::Kvm => (64, "128M", 512),
    };
    let extra = &format!("dsm.ram={ram}");
    let (g, outs, ins) = write("dsm-store write", &disks, &[0, 1, 2], memory, extra, mib);
    println!(
        "dsm-store: {mib} MiB on {memory} nodes with {} KiB of DSM RAM per node: {outs} page-outs, {ins} page-ins while writing and checking",
        ram * 4
    );
    assert!(
        outs > 0 && ins > 0,
        "{outs} page-outs and {ins} page-ins: nothing went to disk and back"
    );
    verify(
        "dsm-store verify after restart",
        &disks,
        &[0, 1, 2],
        memory,
        extra,
        &g,
        mib,
    )
    .finish();
}

/// Acceptance 7.2: after a sync node 1 is killed mid-run and its disk
/// image removed (node 1 holds the copies of node 0's directory pages,
/// owns a third of the pages in its RAM, and holds the second copy of the
/// data if the policy controller chose its disk over node 2's); nodes 0
/// and 2 read every page, node 1's included, and node 0 restores the
/// copies. A last run on node 2 alone proves it: node 2 must now hold
/// every page, and stands in for node 0, whose disk is gone too.
#[test]
fn dsm_store_loses_a_node_and_its_disk_after_a_sync() {
    let _one = one_at_a_time();
    let disks = Disks::new("loss");
    let mib = if kernel_mode_emulated() { 2 } else { 16 };
    let mut r = Run::start(
        "dsm-store, node 1 lost",
        &disks.0,
        &[0, 1, 2],
        "128M",
        "",
        &format!("dsm-store:write+{mib}+1+lose+1"),
    );
    let g = r.range();
    r.expect(0, &format!("dsm-store: synced {mib} MiB"));
    r.expect(1, "dsm-store: node 1 waits to be lost");
    r.c.kill_node(1).unwrap();
    std::fs::remove_file(disks.image(1)).unwrap();
    r.nodes = vec![0, 2];
    for node in [0, 2] {
        let line = r.expect(node, "DSM: node(s) {1} lost");
        // Node 2's disk holds nothing to restore unless it was chosen.
        assert!(node == 2 || line.contains("restoring copies"), "{line}");
        let line = r.expect(node, "after node 1 was lost");
        assert!(
            line.contains(", 0 bad after"),
            "{}: node {node}: {line}\n{}",
            r.name,
            r.c.tail(node, 40)
        );
    }
    r.expect(0, "DSM copies restored");
    r.finish();
    std::fs::remove_file(disks.image(0)).unwrap();
    verify(
        "dsm-store on node 2 alone",
        &disks,
        &[2],
        "128M",
        "",
        &g,
        mib,
    )
    .finish();
}

/// Acceptance 7.5: a disk filled with garbage, then a truncated one, are
/// reported at boot and not trusted; the node joins and the data set reads
/// back whole from the other copies.
#[test]
fn dsm_store_reports_garbage_and_truncated_disks_and_reads_on() {
    let _one = one_at_a_time();
    let disks = Disks::new("damaged");
    let mib = if kernel_mode_emulated() { 2 } else { 8 };
    let (g, _, _) = write("dsm-store write", &disks, &[0, 1, 2], "128M", "", mib);
    // Garbage over node 1's disk (same size).
    let len = std::fs::metadata(disks.image(1)).unwrap().len();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let junk: Vec<u8> = (0..len.min(4 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(disks.image(1), &junk).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disks.image(1))
        .unwrap();
    f.set_len(len).unwrap();
    drop(f);
    let mut r = verify(
        "dsm-store with a garbage disk",
        &disks,
        &[0, 1, 2],
        "128M",
        "",
        &g,
        mib,
    );
    let line = r.expect(1, "disk damaged");
    assert!(line.contains("not trusted"), "{line}");
    r.expect(0, "DSM copies restored");
    r.finish();
    // Node 2's disk cut to 1 MiB.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disks.image(2))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let mut r = verify(
        "dsm-store with a truncated disk",
        &disks,
        &[0, 1, 2],
        "128M",
        "",
        &g,
        mib,
    );
    let line = r.expect(2, "disk damaged");
    assert!(line.to_lowercase().contains("truncated"), "{line}");
    r.finish();
}
