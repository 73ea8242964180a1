//! Node disks: every VM of a cluster gets its own virtio-blk image, kept in
//! `disks` across clusters or temporary; one node can be given another
//! image (truncated, garbage) or none. Nodes run the kernel's virtio-blk
//! tests (`test test.only=...`), whose writes the host then finds in the
//! node's own file.

mod common;

use common::Tool;
use shmos::cluster::{Cluster, ClusterConfig, NodeDisk, NodeOptions};
use shmos::vm::{EXIT_FAILURE, EXIT_SUCCESS, VmExit};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// One cluster at a time: two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const STEP: Duration = Duration::from_secs(60);
const ROUND_TRIP: &str = "test test.only=virtio_blk_write_read_round_trip";
const PAST_END: &str = "test test.only=virtio_blk_refuses_block_past_end";

fn config(disks: Option<&Path>, disk_size: u64) -> ClusterConfig {
    let kernel = common::kernel();
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cfg = ClusterConfig::new(kernel, accel);
    cfg.plain = true;
    cfg.shm_size = 16 << 20;
    cfg.disks = disks.map(Path::to_owned);
    cfg.disk_size = disk_size;
    cfg
}

fn expect(c: &mut Cluster, node: u32, needle: &str) {
    if let Err(e) = c.wait_for(node, needle, STEP) {
        panic!(
            "node {node}: {e:#}\n--- node {node} serial log ---\n{}",
            c.tail(node, 40)
        );
    }
}

fn exits(c: &mut Cluster, want: &[(u32, i32)]) {
    let exits = c.wait_all(STEP).unwrap();
    for &(node, status) in want {
        assert_eq!(
            exits.get(&node),
            Some(&VmExit::Exited(status)),
            "node {node}\n--- node {node} serial log ---\n{}",
            c.tail(node, 40)
        );
    }
}

/// The first 8 bytes of block `n` of an image: the round-trip test writes
/// the block number there.
fn block_tag(image: &Path, n: u64) -> u64 {
    let bytes = std::fs::read(image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    let at = (n * 4096) as usize;
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[test]
fn node_disks_are_their_own_files_and_outlive_the_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("disks");
    {
        let mut c = Cluster::start(config(Some(&dir), 1 << 20)).unwrap();
        for node in 0..2 {
            c.spawn_node(node, ROUND_TRIP).unwrap();
        }
        for node in 0..2 {
            expect(&mut c, node, "virtio-blk: 256 blocks (1 MiB)");
            expect(&mut c, node, "test virtio_blk_write_read_round_trip ... ok");
        }
        exits(&mut c, &[(0, EXIT_SUCCESS), (1, EXIT_SUCCESS)]);
        assert_eq!(c.disk_image(1), dir.join("node-1.img"));
    }
    for node in 0..2 {
        let image = dir.join(format!("node-{node}.img"));
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 1 << 20);
        // What node N wrote is in node-N.img.
        assert_eq!((block_tag(&image, 1), block_tag(&image, 7)), (1, 7));
        assert_eq!(block_tag(&image, 255), 255, "the last block too");
    }

    // The same directory again, with a bigger size for new disks: node 0
    // keeps its disk; node 1's was deleted and comes back new and empty.
    std::fs::remove_file(dir.join("node-1.img")).unwrap();
    let mut c = Cluster::start(config(Some(&dir), 2 << 20)).unwrap();
    for node in 0..2 {
        c.spawn_node(node, PAST_END).unwrap();
    }
    expect(&mut c, 0, "virtio-blk: 256 blocks (1 MiB)");
    expect(&mut c, 1, "virtio-blk: 512 blocks (2 MiB)");
    exits(&mut c, &[(0, EXIT_SUCCESS), (1, EXIT_SUCCESS)]);
    assert_eq!(
        block_tag(&dir.join("node-0.img"), 7),
        7,
        "node 0's data stayed"
    );
    assert_eq!(
        block_tag(&dir.join("node-1.img"), 7),
        0,
        "node 1's disk is new"
    );
}

#[test]
fn temporary_disks_go_with_the_cluster_and_odd_disks_are_handled() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let truncated = tmp.path().join("truncated.img");
    std::fs::write(&truncated, vec![0u8; 3 * 4096 + 100]).unwrap();
    let garbage = tmp.path().join("garbage.img");
    let noise: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, &noise).unwrap();
    let empty = tmp.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();

    let mut c = Cluster::start(config(None, 4 << 20)).unwrap();
    let with = |disk| NodeOptions {
        disk,
        ..NodeOptions::default()
    };
    c.spawn_node(0, PAST_END).unwrap();
    c.spawn_node_with(1, PAST_END, &with(NodeDisk::File(truncated.clone())))
        .unwrap();
    c.spawn_node_with(2, ROUND_TRIP, &with(NodeDisk::File(garbage.clone())))
        .unwrap();
    c.spawn_node_with(3, PAST_END, &with(NodeDisk::File(empty.clone())))
        .unwrap();
    expect(&mut c, 0, "virtio-blk: 1024 blocks (4 MiB)");
    expect(&mut c, 1, "virtio-blk: 3 blocks (12 KiB)");
    expect(&mut c, 2, "virtio-blk: 16 blocks (64 KiB)");
    expect(&mut c, 3, "virtio-blk: 0 blocks (0 KiB)");
    exits(
        &mut c,
        &[
            (0, EXIT_SUCCESS),
            (1, EXIT_SUCCESS),
            (2, EXIT_SUCCESS),
            (3, EXIT_SUCCESS),
        ],
    );
    assert_eq!(
        block_tag(&garbage, 7),
        7,
        "node 2 wrote into the given image"
    );
    assert_eq!(std::fs::metadata(&truncated).unwrap().len(), 3 * 4096 + 100);

    // Without a disk: the node boots and says so; a disk test fails by name
    // with the reason instead of passing or vanishing.
    let temp = c.disk_image(0);
    assert!(temp.starts_with(c.dir()), "{}", temp.display());
    assert!(temp.is_file());
    c.spawn_node_with(0, "", &with(NodeDisk::Absent)).unwrap();
    c.spawn_node_with(1, ROUND_TRIP, &with(NodeDisk::Absent))
        .unwrap();
    expect(&mut c, 0, "virtio-blk: no disk");
    expect(
        &mut c,
        1,
        "test virtio_blk_write_read_round_trip ... FAILED",
    );
    expect(&mut c, 1, "no usable virtio-blk disk");
    exits(&mut c, &[(0, EXIT_SUCCESS), (1, EXIT_FAILURE)]);
    drop(c);
    assert!(
        !temp.exists(),
        "temporary disks are removed with the cluster"
    );
}

#[test]
fn a_cluster_file_keeps_its_disks_next_to_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("disks.toml");
    std::fs::write(
        &file,
        format!(
            "nodes = 2\nplain = true\nshm_size = \"16M\"\ndisks = \"d\"\ndisk_size = \"1M\"\n\
             cmdline = \"{ROUND_TRIP}\"\n"
        ),
    )
    .unwrap();
    let kernel = common::kernel();
    let done = Tool::start(&[
        "cluster",
        "--json",
        "--kernel",
        kernel.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
    ])
    .finish(Duration::from_secs(150));
    assert_eq!(
        done.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    let json: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    for node in 0..2 {
        let tail = json["nodes"][node]["tail"].as_str().unwrap_or_default();
        assert!(tail.contains("virtio-blk: 256 blocks (1 MiB)"), "{tail}");
        let image = tmp.path().join(format!("d/node-{node}.img"));
        assert_eq!(block_tag(&image, 7), 7, "{}", image.display());
    }
    // --disks on the command line wins over the file's.
    let other = tmp.path().join("other");
    let done = Tool::start(&[
        "cluster",
        "--kernel",
        kernel.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--disks",
        other.to_str().unwrap(),
        "--disk-size",
        "2M",
        "--nodes",
        "1",
    ])
    .finish(Duration::from_secs(150));
    assert_eq!(done.code, Some(0), "stdout:\n{}", done.stdout);
    assert_eq!(
        std::fs::metadata(other.join("node-0.img")).unwrap().len(),
        2 << 20
    );
    assert!(
        done.stdout.contains("virtio-blk: 512 blocks (2 MiB)"),
        "{}",
        done.stdout
    );
}
