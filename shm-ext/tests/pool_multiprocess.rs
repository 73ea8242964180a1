//! Pools across OS processes sharing one mapped file (real cross-process
//! atomics): several workers allocate and free at random, writing their own
//! pattern into their regions and checking it before freeing; one more is
//! killed with SIGKILL in the middle of its allocations and a survivor
//! recovers it. Then: ownership handed from process A to B, C refused.
//!
//! The children are this test binary itself, run with `--exact pool_child`
//! and told their role through environment variables; without them
//! `pool_child` does nothing.
#![cfg(all(feature = "std", unix))]

mod pool_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shm_ext::host::SharedFile;
use shm_ext::{
    EventKind, InitParams, LivenessMonitor, NodeSet, PoolId, Pools, RegionHandle, Shm, ShmError,
};

const ENV_ROLE: &str = "SHM_POOL_MP_ROLE";
const ENV_FILE: &str = "SHM_POOL_MP_FILE";
const ENV_DIR: &str = "SHM_POOL_MP_DIR";
const ENV_ID: &str = "SHM_POOL_MP_ID";
const ENV_OPS: &str = "SHM_POOL_MP_OPS";
const SIZE: usize = 8 << 20;
const POOL_SIZE: u64 = 4 << 20;
const DEADLINE: Duration = Duration::from_secs(60);
/// Long enough that busy processes on a small machine are not declared dead.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

fn params() -> InitParams {
    InitParams {
        heartbeat_timeout_ns: HEARTBEAT_TIMEOUT.as_nanos() as u64,
        ..InitParams::default()
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

/// Waits for a file another process creates.
fn wait_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < DEADLINE, "no {}", path.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Creates a file atomically (write, then rename).
fn put_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Child side: dispatch on the role.
#[test]
fn pool_child() {
    let Ok(role) = std::env::var(ENV_ROLE) else {
        return; // Not a child: nothing to do.
    };
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let map = SharedFile::open(Path::new(&env(ENV_FILE))).unwrap();
    let shm = Shm::attach(map.region(), &params(), now, DEADLINE.as_nanos() as u64).unwrap();
    let id: u16 = env(ENV_ID).parse().unwrap();
    let g = shm.join(id, &pool_common::facts(&role)).unwrap();
    // A short spin budget: a process waiting on a lock held by a dead one
    // comes back with Busy often enough to keep heartbeating.
    let p = Pools::attach(&shm, id, g).unwrap().with_spin_limit(20_000);
    let dir = PathBuf::from(env(ENV_DIR));
    match role.as_str() {
        "worker" | "victim" => churn(&shm, &p, role == "victim"),
        "xfer-a" => xfer_a(&shm, &p, &dir),
        "xfer-b" => xfer_b(&shm, &p, &dir),
        "xfer-c" => xfer_c(&shm, &p, &dir),
        r => panic!("unknown role {r}"),
    }
    if role != "victim" {
        shm.leave(id, g).unwrap();
    }
    println!("POOLMP ok role={role} id={id}");
}

/// Calls `f` until it is not `Busy`, heartbeating meanwhile.
fn retry<T>(
    shm: &Shm<'_>,
    p: &Pools<'_>,
    mut f: impl FnMut() -> Result<T, ShmError>,
) -> Result<T, ShmError> {
    let start = Instant::now();
    loop {
        match f() {
            Err(ShmError::Busy) => {
                shm.heartbeat(p.node(), p.generation()).unwrap();
                assert!(start.elapsed() < DEADLINE, "busy for too long");
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

/// What a region must contain: depends on the node and a per-region tag.
fn pattern(node: u16, tag: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|k| {
            (node as u8).wrapping_mul(37)
                ^ (tag as u8)
                ^ (k as u8).wrapping_mul(13)
                ^ (k >> 8) as u8
        })
        .collect()
}

/// Random allocations and frees; the victim never stops (it gets killed).
fn churn(shm: &Shm<'_>, p: &Pools<'_>, victim: bool) {
    let me = p.node();
    let region = shm.region();
    let pool = p.pool_open("mp").unwrap();
    let ops: u64 = env(ENV_OPS).parse().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (u64::from(me) << 40) ^ u64::from(std::process::id());
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: Vec<(RegionHandle, u64, u64, u64)> = Vec::new();
    let (mut allocs, mut frees) = (0u64, 0u64);
    let mut i = 0u64;
    while victim || i < ops {
        i += 1;
        if victim && i == 300 {
            println!("POOLMP victim ready");
        }
        shm.heartbeat(me, p.generation()).unwrap();
        let r = next();
        if live.len() < 24 && r % 100 < 55 {
            // Victims use small regions: most of their time is spent inside
            // the allocator, so the kill often lands there.
            let len = 1 + (r >> 8) % if victim { 256 } else { 8192 };
            let align = 1u64 << ((r >> 24) % 13);
            // Workers sometimes allocate shared, then take ownership.
            let shared_first = !victim && (r >> 32) % 5 == 0;
            let owners = if shared_first { 0 } else { 1 << me };
            let h = match retry(shm, p, || p.shm_alloc_owned(pool, len, align, owners)) {
                Ok(h) => h,
                Err(ShmError::OutOfMemory) => continue,
                Err(e) => panic!("alloc({len}, {align}): {e}"),
            };
            if shared_first {
                retry(shm, p, || p.shm_own(h, me, 1 << me)).unwrap();
            }
            allocs += 1;
            let info = p.region_info(h).unwrap();
            assert_eq!(
                (info.len, info.owners, info.allocated_by),
                (len, NodeSet(1 << me), me)
            );
            assert_eq!(info.offset % align, 0);
            p.may_map(h, me, true).unwrap();
            let other = if me == 1 { 2 } else { 1 };
            assert_eq!(p.may_map(h, other, true), Err(ShmError::NotOwner));
            p.may_map(h, other, false).unwrap();
            let tag = next();
            region
                .write_bytes(info.offset as usize, &pattern(me, tag, len))
                .unwrap();
            live.push((h, info.offset, len, tag));
        } else if !live.is_empty() {
            let (h, off, len, tag) = live.swap_remove((r >> 8) as usize % live.len());
            check_and_free(shm, p, h, off, len, tag);
            frees += 1;
        }
    }
    for (h, off, len, tag) in live {
        check_and_free(shm, p, h, off, len, tag);
        frees += 1;
    }
    println!("POOLMP stats id={me} allocs={allocs} frees={frees}");
}

fn check_and_free(shm: &Shm<'_>, p: &Pools<'_>, h: RegionHandle, off: u64, len: u64, tag: u64) {
    let mut buf = vec![0u8; len as usize];
    shm.region().read_bytes(off as usize, &mut buf).unwrap();
    assert!(
        buf == pattern(p.node(), tag, len),
        "region {h} at {off:#x} was overwritten"
    );
    let info = p.region_info(h).unwrap();
    assert_eq!((info.offset, info.len), (off, len));
    retry(shm, p, || p.shm_free(h)).unwrap();
    assert_eq!(p.region_info(h), Err(ShmError::NoSuchRegion));
}

fn xfer_a(shm: &Shm<'_>, p: &Pools<'_>, dir: &Path) {
    let pool = p.pool_open("xfer").unwrap();
    let h = retry(shm, p, || p.shm_alloc_owned(pool, 4096, 4096, 1 << 1)).unwrap();
    let info = p.region_info(h).unwrap();
    shm.region()
        .write_bytes(info.offset as usize, b"from A")
        .unwrap();
    p.may_map(h, 1, true).unwrap();
    assert_eq!(p.may_map(h, 2, true), Err(ShmError::NotOwner));
    put_file(&dir.join("handle"), &h.0.to_string());
    // B checks it cannot write yet, then waits for the transfer.
    wait_file(&dir.join("b-ready"));
    retry(shm, p, || p.shm_transfer(h, 1, 1 << 1, 1 << 2)).unwrap();
    assert_eq!(p.may_map(h, 1, true), Err(ShmError::NotOwner));
    assert_eq!(p.shm_free(h), Err(ShmError::NotOwner));
    assert_eq!(
        p.shm_transfer(h, 1, 1 << 1, 1 << 1),
        Err(ShmError::NotOwner)
    );
    wait_file(&dir.join("b-done"));
    let mut buf = [0u8; 6];
    shm.region()
        .read_bytes(info.offset as usize, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"from B");
}

fn read_handle(dir: &Path) -> RegionHandle {
    wait_file(&dir.join("handle"));
    RegionHandle(
        std::fs::read_to_string(dir.join("handle"))
            .unwrap()
            .parse()
            .unwrap(),
    )
}

fn xfer_b(shm: &Shm<'_>, p: &Pools<'_>, dir: &Path) {
    let h = read_handle(dir);
    assert_eq!(p.may_map(h, 2, true), Err(ShmError::NotOwner));
    put_file(&dir.join("b-ready"), "");
    let start = Instant::now();
    while p.may_map(h, 2, true).is_err() {
        assert!(start.elapsed() < DEADLINE, "never got the region");
        shm.heartbeat(p.node(), p.generation()).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let info = p.region_info(h).unwrap();
    assert_eq!(info.owners, NodeSet(1 << 2));
    let mut buf = [0u8; 6];
    shm.region()
        .read_bytes(info.offset as usize, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"from A");
    shm.region()
        .write_bytes(info.offset as usize, b"from B")
        .unwrap();
    put_file(&dir.join("b-done"), "");
    wait_file(&dir.join("c-done"));
    retry(shm, p, || p.shm_free(h)).unwrap();
}

fn xfer_c(shm: &Shm<'_>, p: &Pools<'_>, dir: &Path) {
    let h = read_handle(dir);
    wait_file(&dir.join("b-done"));
    assert_eq!(p.may_map(h, 3, true), Err(ShmError::NotOwner));
    p.may_map(h, 3, false).unwrap();
    assert_eq!(
        retry(shm, p, || p.shm_own(h, 3, 1 << 3)),
        Err(ShmError::NotOwner)
    );
    assert_eq!(
        retry(shm, p, || p.shm_transfer(h, 3, 1 << 2, 1 << 3)),
        Err(ShmError::NotOwner)
    );
    assert_eq!(
        retry(shm, p, || p.shm_transfer(h, 3, 1 << 3, 1 << 3)),
        Err(ShmError::NotOwner)
    );
    assert_eq!(retry(shm, p, || p.shm_free(h)), Err(ShmError::NotOwner));
    let mut buf = [0u8; 6];
    shm.region()
        .read_bytes(p.region_info(h).unwrap().offset as usize, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"from B");
    put_file(&dir.join("c-done"), "");
}

fn spawn(role: &str, id: u16, file: &Path, dir: &Path, ops: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pool_child", "--nocapture", "--test-threads=1"])
        .env(ENV_ROLE, role)
        .env(ENV_FILE, file)
        .env(ENV_DIR, dir)
        .env(ENV_ID, id.to_string())
        .env(ENV_OPS, ops.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a child; asserts it succeeded; returns its stdout.
fn finish(mut child: Child, what: &str) -> String {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE + Duration::from_secs(10) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("POOLMP ok"),
        "{what} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh (blank) file.
fn setup(dir: &Path) -> (PathBuf, SharedFile) {
    let file = dir.join("shm");
    let map = SharedFile::open_or_create(&file, SIZE).unwrap();
    (file, map)
}

/// This process formats the file, joins as node 0 and creates one pool.
fn parent<'a>(map: &'a SharedFile, pool: &str, size: u64) -> (Shm<'a>, Pools<'a>, PoolId) {
    let shm = Shm::attach(map.region(), &params(), || 0, 1).unwrap();
    let g = shm.join(0, &pool_common::facts("parent")).unwrap();
    let p = Pools::attach(&shm, 0, g).unwrap();
    let id = p.pool_create(pool, size).unwrap();
    (shm, p, id)
}

#[test]
fn processes_churn_and_one_is_killed_mid_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let (file, map) = setup(dir.path());
    let (shm, p0, pool) = parent(&map, "mp", POOL_SIZE);
    let workers: Vec<Child> = (1..=3)
        .map(|id| spawn("worker", id, &file, dir.path(), 3000))
        .collect();
    let victims = [4u16, 5];
    let (tx, rx) = mpsc::channel();
    let mut procs = Vec::new();
    for id in victims {
        let mut v = spawn("victim", id, &file, dir.path(), 0);
        let out = v.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("POOLMP victim ready") {
                    let _ = tx.send(id);
                }
            }
        });
        procs.push(v);
    }
    // Kill the victims once both are well into their allocations (one
    // killed while holding a pool lock would stall the other).
    for _ in victims {
        rx.recv_timeout(DEADLINE).expect("victim never got going");
    }
    std::thread::sleep(Duration::from_millis(20));
    for mut v in procs {
        v.kill().unwrap(); // SIGKILL
        v.wait().unwrap();
    }

    // Liveness, with this process's own clock, declares them dead; this
    // process recovers each once declared. Recovery of one can meet a pool
    // lock the other dead one still holds (Busy): it is run again until
    // every dead node's recovery comes back clean.
    let start = Instant::now();
    let p0 = p0.with_spin_limit(10_000);
    let mut mon = LivenessMonitor::new(Some(0));
    let mut dead = Vec::new();
    let mut clean = Vec::new();
    while clean.len() < victims.len() {
        shm.heartbeat(0, p0.generation()).unwrap();
        let evs = mon.observe(&shm, start.elapsed().as_nanos() as u64);
        for e in evs.iter() {
            if matches!(e.kind, EventKind::Died { .. }) {
                assert!(
                    victims.contains(&e.node),
                    "a worker was declared dead: {e:?}"
                );
                dead.push((e.node, e.generation));
            }
        }
        for &(node, g) in &dead {
            if clean.contains(&node) {
                continue;
            }
            let report = p0.recover_node(node, g).unwrap();
            println!("recovery of node {node}: {report:?}");
            assert!(report.exclusive_reclaimed);
            match report.first_error {
                None => clean.push(node),
                Some(ShmError::Busy) => {}
                Some(e) => panic!("recovery of {node}: {e}"),
            }
        }
        assert!(start.elapsed() < DEADLINE, "victims never recovered");
        std::thread::sleep(Duration::from_millis(20));
    }

    for (i, w) in workers.into_iter().enumerate() {
        let out = finish(w, &format!("worker {}", i + 1));
        assert!(out.contains("POOLMP stats"), "{out}");
    }
    // Everything the workers allocated they freed; everything the victim
    // held (all of it owned by it alone) recovery freed: exact accounting.
    let (s, regions) = pool_common::check_pool(&shm, &p0, pool);
    assert!(regions.is_empty(), "leaked: {regions:?}");
    assert_eq!(
        (s.free, s.largest_free, s.regions, s.slots_used),
        (s.size, s.size, 0, 1)
    );
    p0.pool_destroy(pool).unwrap();
}

#[test]
fn ownership_moves_from_process_a_to_b_and_c_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (file, map) = setup(dir.path());
    let (shm, p0, pool) = parent(&map, "xfer", 64 * 1024);
    let kids: Vec<(Child, &str)> = [("xfer-a", 1), ("xfer-b", 2), ("xfer-c", 3)]
        .into_iter()
        .map(|(role, id)| (spawn(role, id, &file, dir.path(), 0), role))
        .collect();
    for (child, role) in kids {
        finish(child, role);
    }
    let (s, regions) = pool_common::check_pool(&shm, &p0, pool);
    assert!(regions.is_empty());
    assert_eq!(s.free, s.size);
}
