//! The shared memory is untrusted input: a test damages it while a cluster
//! runs (a pool's extent offset and length, a message queue's head and
//! tail, a node entry's label length) and checks that the kernels report the
//! damage and refuse the damaged objects, that every call is still answered
//! with a value or a named error, and that no node faults.

use shm_ext::host::SharedFile;
use shm_ext::pool::layout::{DIR_ENTRY_LEN, DIR_OFFSET, MAX_POOLS, dir};
use shm_ext::{Shm, format::entry};
use shmos::cluster::{Cluster, ClusterConfig};
use shmos::vm::{EXIT_SUCCESS, VmExit};
use std::time::Duration;

fn put_u64(file: &SharedFile, offset: usize, value: u64) {
    file.region()
        .atomic_u64(offset)
        .expect("inside the file")
        .store(value, std::sync::atomic::Ordering::SeqCst);
}

fn damage(path: &std::path::Path) -> Vec<String> {
    let file = SharedFile::open(path).expect("open the shared memory");
    let shm = Shm::open(file.region()).expect("the cluster formatted it");
    let layout = shm.superblock().layout;
    let mut done = Vec::new();
    // A pool directory entry named victim0: its extent now points far outside.
    let heap = layout.heap.offset as usize;
    for i in 0..MAX_POOLS {
        let e = heap + (DIR_OFFSET + i as u64 * DIR_ENTRY_LEN) as usize;
        let mut name = [0u8; 7];
        file.region().read_bytes(e + dir::NAME, &mut name).unwrap();
        if &name == b"victim0" {
            put_u64(&file, e + dir::EXTENT_OFF, 0x7fff_ffff_f000);
            put_u64(&file, e + dir::EXTENT_LEN, u64::MAX / 2);
            done.push(format!(
                "pool victim0 (directory entry {i}): extent offset and length"
            ));
        }
    }
    // Node 0's message queue: head and tail far beyond its ring.
    let q = (layout.queue_area.len / u64::from(shm.max_nodes())) & !63;
    let queue0 = layout.queue_area.offset as usize;
    put_u64(&file, queue0, u64::MAX / 3);
    put_u64(&file, queue0 + 64, 12345);
    done.push(format!(
        "node 0's message queue (of {q} bytes): head and tail"
    ));
    // Node 1's entry: a label length beyond the 48 bytes there are.
    let entry1 = layout.node_table.offset as usize + shm_ext::format::NODE_ENTRY_LEN;
    file.region()
        .write_bytes(entry1 + entry::LABEL_LEN, &4000u32.to_le_bytes())
        .unwrap();
    done.push("node 1's node-table entry: label length".into());
    done
}

#[test]
fn damaged_shared_memory_is_reported_and_refused_and_no_node_faults() {
    let root = shmos::repo_root();
    shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cfg = ClusterConfig::new(kernel, accel);
    cfg.shm_size = 16 << 20;
    cfg.cmdline = "cluster.wait_live=2".into();
    let mut c = Cluster::start(cfg).unwrap();
    for node in 0..2 {
        c.spawn_node(node, "app=victim:3000").unwrap();
    }
    for node in 0..2 {
        if let Err(e) = c.wait_for(
            node,
            &format!("victim: node {node} started"),
            Duration::from_secs(120),
        ) {
            panic!("node {node}: {e:#}\n{}", c.tail(node, 40));
        }
    }
    for what in damage(c.shm_path()) {
        println!("damaged: {what}");
    }
    let exits = c.wait_all(Duration::from_secs(120)).unwrap();
    for (node, exit) in &exits {
        let log = c.log(*node).join("\n");
        assert!(
            !log.contains("CPU exception")
                && !log.contains("KERNEL PANIC")
                && !log.contains("killed"),
            "node {node}: expected no fault, got:\n{log}"
        );
        assert!(
            log.contains("every call answered"),
            "node {node}: the app did not finish:\n{log}"
        );
        assert_eq!(
            *exit,
            VmExit::Exited(EXIT_SUCCESS),
            "node {node}: {}\n{log}",
            exit.describe()
        );
    }
    let node1 = c.log(1).join("\n");
    assert!(
        node1.contains("free while mapped refused (Busy)"),
        "node 1 may not free a region it maps:\n{node1}"
    );
    let node0 = c.log(0).join("\n");
    assert!(
        node0.contains("shared memory damaged"),
        "node 0 reports the damage:\n{node0}"
    );
    assert!(
        node0.contains("x Corrupt"),
        "node 0's calls on the damaged pool are refused as Corrupt:\n{node0}"
    );
}
