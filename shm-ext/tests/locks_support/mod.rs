//! Helpers shared by the lock, message and signal tests: a doorbell that
//! records rings, node setup, and the child-process harness.
//!
//! Children are the test binary itself, run with `--exact child` and told
//! what to do through environment variables; without them `child` returns.
#![allow(dead_code)]

use std::cell::RefCell;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shm_ext::{Caller, Doorbell, Generation, InitParams, NodeFacts, Region, Shm, ShmError};

/// Every wait in these tests gives up (and fails) after this long.
pub const DEADLINE: Duration = Duration::from_secs(120);

const ENV_FILE: &str = "SHM_EXT_IPC_FILE";
const ENV_ROLE: &str = "SHM_EXT_IPC_ROLE";
const ENV_ID: &str = "SHM_EXT_IPC_ID";
const ENV_ARG: &str = "SHM_EXT_IPC_ARG";

/// Records every ring as (peer, vector).
#[derive(Default)]
pub struct Recorder(pub RefCell<Vec<(u16, u16)>>);

impl Doorbell for Recorder {
    fn ring(&self, peer: u16, vector: u16) {
        self.0.borrow_mut().push((peer, vector));
    }
    fn local_peer(&self) -> Option<u16> {
        None
    }
}

impl Recorder {
    /// The peers rung on `vector`, sorted, and forgets all rings.
    pub fn take(&self, vector: u16) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .0
            .borrow_mut()
            .drain(..)
            .filter(|&(_, v)| v == vector)
            .map(|(p, _)| p)
            .collect();
        v.sort_unstable();
        v
    }
}

/// Facts whose doorbell peer id is the node id, so rings name nodes.
pub fn facts_for(node: u16) -> NodeFacts<'static> {
    NodeFacts {
        doorbell_peer: Some(node),
        memory_mib: 64,
        app_count: 1,
        label: "ipc test",
    }
}

/// Attaches (formatting a blank region) with `params`.
pub fn attach<'a>(region: Region<'a>, params: &InitParams) -> Shm<'a> {
    Shm::attach(region, params, || 0, 1).unwrap()
}

/// Joins `node` and returns it as a kernel caller (process 0).
pub fn join(shm: &Shm<'_>, node: u16) -> Caller {
    let g = shm.join(node, &facts_for(node)).unwrap();
    Caller::new(node, g, 0).unwrap()
}

/// A named error: a code of the closed set with a message.
pub fn is_named(e: &ShmError) -> bool {
    (1..=40).contains(&e.code()) && !e.to_string().is_empty() && !e.name().is_empty()
}

/// The 64-bit word at `offset` of the region (test data in the heap area).
pub fn word<'a>(shm: &Shm<'a>, index: usize) -> &'a AtomicU64 {
    let heap = shm.superblock().layout.heap.offset as usize;
    shm.region().atomic_u64(heap + 8 * index).unwrap()
}

/// Fails the test once `start` is older than the deadline.
pub fn check_deadline(start: Instant, what: &str) {
    assert!(start.elapsed() < DEADLINE, "deadline passed: {what}");
}

/// What a child was told to do.
pub struct ChildEnv {
    pub file: String,
    pub role: String,
    pub id: u16,
    pub arg: String,
}

/// The child's instructions, or None when this is not a child.
pub fn child_env() -> Option<ChildEnv> {
    Some(ChildEnv {
        file: std::env::var(ENV_FILE).ok()?,
        role: std::env::var(ENV_ROLE).ok()?,
        id: std::env::var(ENV_ID).ok()?.parse().ok()?,
        arg: std::env::var(ENV_ARG).unwrap_or_default(),
    })
}

/// Runs this test binary's `child` test as a process with a role.
pub fn spawn(file: &Path, role: &str, id: u16, arg: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ENV_FILE, file)
        .env(ENV_ROLE, role)
        .env(ENV_ID, id.to_string())
        .env(ENV_ARG, arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child (killing it at the deadline), asserts it succeeded,
/// and returns its stdout.
pub fn finish(mut child: Child, start: Instant) -> String {
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits for all `children` (each with a name for reports) and returns their
/// stdouts in the same order. As soon as one fails, the others are killed
/// and the test fails with the first failure's output (a peer left waiting
/// for it would otherwise be what is reported, as a SIGKILL at the
/// deadline); at the deadline, every child still running is killed.
pub fn finish_all(children: Vec<(String, Child)>, start: Instant) -> Vec<String> {
    let mut status: Vec<Option<ExitStatus>> = children.iter().map(|_| None).collect();
    let mut children = children;
    let mut first_failure = None;
    loop {
        for (i, (_, c)) in children.iter_mut().enumerate() {
            if status[i].is_none()
                && let Some(st) = c.try_wait().unwrap()
            {
                status[i] = Some(st);
                if !st.success() && first_failure.is_none() {
                    first_failure = Some(i);
                }
            }
        }
        let all_done = status.iter().all(Option::is_some);
        if all_done || first_failure.is_some() || start.elapsed() > DEADLINE {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (i, (_, c)) in children.iter_mut().enumerate() {
        if status[i].is_none() {
            let _ = c.kill();
        }
    }
    let mut outs = Vec::new();
    let mut report_text = String::new();
    for (i, (name, c)) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            let note = match (first_failure, status[i]) {
                (Some(f), _) if f == i => " (first to fail)",
                (_, None) => " (killed by the harness)",
                _ => "",
            };
            report_text.push_str(&format!(
                "--- {name}: {}{note}\n{stdout}\n{stderr}\n",
                out.status
            ));
        }
        outs.push(stdout);
    }
    assert!(report_text.is_empty(), "child failed:\n{report_text}");
    outs
}

/// The value of `key=` on the line starting with `prefix` in a child's output.
pub fn report(stdout: &str, prefix: &str, key: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|l| l.find(prefix).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no {prefix} line in:\n{stdout}"));
    let start = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
    let end = line[start..].find(' ').map_or(line.len(), |e| start + e);
    line[start..end].parse().unwrap()
}

/// A generation that is real (for callers in tests that need one).
pub const G1: Generation = Generation(1);

/// splitmix64: deterministic pseudo-random numbers for test data.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Spins until `f` is true, yielding, failing at the deadline.
pub fn wait_until(start: Instant, what: &str, mut f: impl FnMut() -> bool) {
    while !f() {
        check_deadline(start, what);
        std::thread::yield_now();
    }
}

/// Loads a word (relaxed; tests order through locks or acquire loads).
pub fn load(w: &AtomicU64) -> u64 {
    w.load(Ordering::Acquire)
}
