//! Several OS processes race to attach one fresh file: exactly one
//! initialises, all validate the same layout, each joins and sees the others.
//!
//! The children are this test binary itself, run with `--exact child_node`
//! and told what to do through environment variables; without them
//! `child_node` does nothing.
#![cfg(feature = "std")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TIMEOUT_NS, facts, params};
use shm_ext::host::SharedFile;
use shm_ext::{EventKind, Generation, LivenessMonitor, NodeState, Shm};

const ENV_FILE: &str = "SHM_EXT_MP_FILE";
const ENV_GO: &str = "SHM_EXT_MP_GO";
const ENV_ID: &str = "SHM_EXT_MP_ID";
const ENV_NODES: &str = "SHM_EXT_MP_NODES";
const SIZE: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(30);

/// One child's report line: `MP id=.. init=.. gen=.. sb=..`.
struct Report {
    id: u16,
    initialised: bool,
    generation: u32,
    superblock: String,
}

/// Child side: wait for "go", attach, join, beat until every node is seen live.
#[test]
fn child_node() {
    let (Ok(file), Ok(go), Ok(nodes)) = (
        std::env::var(ENV_FILE),
        std::env::var(ENV_GO),
        std::env::var(ENV_NODES),
    ) else {
        return; // Not a child: nothing to do.
    };
    let nodes: u16 = nodes.parse().unwrap();
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let deadline = DEADLINE.as_nanos() as u64;

    let map = SharedFile::open(Path::new(&file)).unwrap();
    // Start together, to make the race for the init word real.
    while !Path::new(&go).exists() {
        assert!(start.elapsed() < DEADLINE, "no go signal");
        std::thread::sleep(Duration::from_micros(100));
    }
    let shm = Shm::attach(map.region(), &params(), now, deadline).unwrap();
    let label = format!("child {}", std::process::id());
    let (id, g) = match std::env::var(ENV_ID) {
        Ok(id) => {
            let id: u16 = id.parse().unwrap();
            (id, shm.join(id, &facts(&label)).unwrap())
        }
        Err(_) => shm.join_free(&facts(&label)).unwrap(),
    };
    // Beat and wait until all nodes are live.
    loop {
        shm.heartbeat(id, g).unwrap();
        if (0..nodes).all(|n| shm.live_nodes().contains(n)) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not all nodes live: {}",
            shm.live_nodes()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for n in 0..nodes {
        let info = shm.node(n).unwrap();
        assert_eq!(info.state, NodeState::Live);
        assert!(info.label.as_str().starts_with("child "));
    }
    // Heartbeat from many processes at once: real cross-process atomics.
    for _ in 0..1000 {
        shm.heartbeat(id, g).unwrap();
    }
    println!(
        "MP id={id} init={} gen={} sb={:?}",
        shm.initialised_here(),
        g.0,
        shm.superblock()
    );
}

fn spawn_child(file: &Path, go: &Path, nodes: u16, id: Option<u16>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_node", "--nocapture", "--test-threads=1"])
        .env(ENV_FILE, file)
        .env(ENV_GO, go)
        .env(ENV_NODES, nodes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match id {
        Some(id) => cmd.env(ENV_ID, id.to_string()),
        None => cmd.env_remove(ENV_ID),
    };
    cmd.spawn().unwrap()
}

fn parse_report(line: &str) -> Option<Report> {
    // libtest may print "test child_node ... " on the same line first.
    let rest = &line[line.find("MP id=")? + 3..];
    let field = |name: &str| {
        let start = rest.find(&format!("{name}="))? + name.len() + 1;
        let end = rest[start..].find(' ').map_or(rest.len(), |e| start + e);
        Some(&rest[start..end])
    };
    Some(Report {
        id: field("id")?.parse().ok()?,
        initialised: field("init")?.parse().ok()?,
        generation: field("gen")?.parse().ok()?,
        superblock: rest[rest.find("sb=")? + 3..].to_string(),
    })
}

/// Runs `nodes` children against a fresh file; returns their reports.
fn race(dir: &Path, nodes: u16, explicit_ids: bool) -> (PathBuf, Vec<Report>) {
    let file = dir.join("shm");
    let go = dir.join("go");
    // A fresh, blank (all-zero) file, as the doorbell server would create.
    drop(SharedFile::open_or_create(&file, SIZE).unwrap());
    let children: Vec<Child> = (0..nodes)
        .map(|i| spawn_child(&file, &go, nodes, explicit_ids.then_some(i)))
        .collect();
    std::fs::write(&go, b"go").unwrap();

    let start = Instant::now();
    let mut reports = Vec::new();
    for mut child in children {
        // Bounded wait: a hung child fails the test instead of hanging it.
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > DEADLINE + Duration::from_secs(10) {
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report = stdout.lines().find_map(parse_report);
        reports.push(report.unwrap_or_else(|| panic!("no report in:\n{stdout}")));
    }
    (file, reports)
}

fn check_race(reports: &[Report], nodes: u16) {
    assert_eq!(
        reports.iter().filter(|r| r.initialised).count(),
        1,
        "exactly one process initialises"
    );
    assert!(
        reports
            .iter()
            .all(|r| r.superblock == reports[0].superblock)
    );
    let ids: BTreeSet<u16> = reports.iter().map(|r| r.id).collect();
    assert_eq!(ids, (0..nodes).collect());
    assert!(reports.iter().all(|r| r.generation == 1));
}

#[test]
fn processes_race_to_attach_and_see_each_other_live() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = 4;
    let (file, reports) = race(dir.path(), nodes, true);
    check_race(&reports, nodes);

    // The parent inspects the file after the children exited: all live at
    // generation 1 (they did not leave), each with its 1000+ heartbeats.
    let map = SharedFile::open(&file).unwrap();
    let shm = Shm::open(map.region()).unwrap();
    assert_eq!(shm.superblock().heartbeat_timeout_ns, TIMEOUT_NS);
    for n in 0..nodes {
        let info = shm.node(n).unwrap();
        assert_eq!(
            (info.state, info.generation),
            (NodeState::Live, Generation(1))
        );
        assert!(info.heartbeat > 1000, "node {n}: {}", info.heartbeat);
    }
    // Their heartbeats stopped with them: an observer declares them dead.
    let mut mon = LivenessMonitor::new(None);
    let joined = mon.observe(&shm, 0);
    assert_eq!(joined.len(), nodes as usize);
    assert!(joined.iter().all(|e| e.kind == EventKind::Joined));
    let died = mon.observe(&shm, TIMEOUT_NS + 1);
    assert_eq!(died.len(), nodes as usize);
    assert!(died.iter().all(|e| e.kind
        == EventKind::Died {
            declared_here: true
        }));
    assert!(shm.live_nodes().is_empty());
}

#[test]
fn processes_racing_for_free_entries_get_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = 6;
    let (_, reports) = race(dir.path(), nodes, false);
    check_race(&reports, nodes);
}
