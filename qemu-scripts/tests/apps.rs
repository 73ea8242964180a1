//! User mode, end to end: boots the real kernel with `app=...` on its
//! command line and checks what the apps and the kernel print, under the
//! accelerator `SHMOS_ACCEL` selects. On failure the serial log is shown.

use shmos::cleanup::Workdir;
use shmos::vm::{self, Boot, EXIT_FAILURE, EXIT_SUCCESS, Firmware, VmConfig, VmExit};
use std::sync::Mutex;
use std::time::Duration;

/// Two cores: one VM at a time keeps timing-sensitive apps (spin) honest.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Generous: KVM here emulates kernel code (syscalls, ticks) ~300x slower.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Boots one node with `cmdline` (after `node=0`) and extra QEMU arguments.
fn boot_with(cmdline: &str, extra: Vec<std::ffi::OsString>) -> Boot {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = shmos::repo_root();
    shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cfg = VmConfig::new(kernel, accel, Firmware::Qboot);
    cfg.cmdline = cmdline.into();
    cfg.extra_args = extra;
    vm::boot(&cfg, Some(TIMEOUT), |_| {}).unwrap_or_else(|e| panic!("{e:#}"))
}

fn boot(cmdline: &str) -> Boot {
    boot_with(cmdline, Vec::new())
}

fn log(b: &Boot) -> String {
    b.serial.join("\n")
}

/// Index of the first serial line containing `needle`; panics with the log.
fn line(b: &Boot, needle: &str) -> usize {
    b.serial
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "no line contains {needle:?}\n--- serial log ---\n{}",
                log(b)
            )
        })
}

fn expect_exit(b: &Boot, want: i32) {
    assert_eq!(
        b.exit,
        VmExit::Exited(want),
        "expected exit status {want}, got: {}\n--- serial log ---\n{}",
        b.exit.describe(),
        log(b)
    );
}

#[test]
fn hello_prints_its_node_and_arguments_and_exits_zero() {
    let b = boot("app=hello:one+two");
    line(&b, "hello from node 0 (live nodes 0x1)");
    line(&b, "args \"one two\"");
    line(&b, "app hello (pid ");
    line(&b, ") exited with code 0");
    line(&b, "node 0: all apps finished");
    expect_exit(&b, EXIT_SUCCESS);
}

#[test]
fn two_spinning_apps_on_one_node_both_progress() {
    let b = boot("app=spin:a+4+30 app=spin:b+4+30");
    // Neither yields: b can print before a is done only if the timer
    // preempts a (and the other way round).
    let (a_first, a_last) = (line(&b, "spin a: round 1/4"), line(&b, "spin a: round 4/4"));
    let (b_first, b_last) = (line(&b, "spin b: round 1/4"), line(&b, "spin b: round 4/4"));
    assert!(
        b_first < a_last && a_first < b_last,
        "the spinners did not interleave\n--- serial log ---\n{}",
        log(&b)
    );
    line(
        &b,
        "node 0: all apps finished (2 exited with code 0, 0 failed)",
    );
    expect_exit(&b, EXIT_SUCCESS);
}

#[test]
fn crashing_apps_are_killed_and_reported_while_hello_finishes() {
    let b = boot("app=crasher:null app=crasher:div app=crasher:priv app=hello app=crasher:stack");
    for needle in [
        "killed: CPU exception: page fault (#PF, vector 14), error code 0x4 [page not present, read, user]",
        "killed: CPU exception: divide error (#DE, vector 0)",
        "killed: CPU exception: general protection fault (#GP, vector 13)",
        "killed: CPU exception: page fault (#PF, vector 14), error code 0x6 [page not present, write, user]",
    ] {
        let at = line(&b, needle);
        assert!(
            b.serial[at].starts_with("app crasher (pid "),
            "{}",
            b.serial[at]
        );
    }
    line(&b, "hello from node 0");
    line(&b, "app hello (pid ");
    line(
        &b,
        "node 0: all apps finished (1 exited with code 0, 4 failed)",
    );
    // A killed app fails the run, cleanly: the kernel reports failure.
    expect_exit(&b, EXIT_FAILURE);
}

#[test]
fn hostile_system_call_arguments_get_named_errors() {
    let b = boot("app=badcalls");
    line(&b, "badcalls: this line comes from read-only data");
    let at = line(&b, "badcalls: all ");
    assert!(
        b.serial[at].ends_with("checks passed"),
        "{}\n--- serial log ---\n{}",
        b.serial[at],
        log(&b)
    );
    expect_exit(&b, EXIT_SUCCESS);
}

#[test]
fn sleeping_apps_wake_up_on_time() {
    let b = boot("app=sleeper:3+20 app=spin:s+2+30");
    line(&b, "sleeper: done");
    line(
        &b,
        "node 0: all apps finished (2 exited with code 0, 0 failed)",
    );
    expect_exit(&b, EXIT_SUCCESS);
}

#[test]
fn an_unknown_app_name_fails_cleanly() {
    let b = boot("app=hello app=no-such-app");
    let at = line(&b, "unknown app \"no-such-app\"");
    assert!(
        b.serial[at].contains("hello"),
        "the message lists the apps: {}",
        b.serial[at]
    );
    assert!(
        !b.serial.iter().any(|l| l.contains("started app")),
        "nothing starts when a name is wrong\n{}",
        log(&b)
    );
    expect_exit(&b, EXIT_FAILURE);
}

#[test]
fn apps_run_after_the_node_joins_the_cluster() {
    let dir = Workdir::new().unwrap();
    let backing = dir.path().join("shm");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let extra = [
        "-object".into(),
        format!(
            "memory-backend-file,id=shm,share=on,mem-path={},size=16M",
            backing.display()
        )
        .into(),
        "-device".into(),
        "ivshmem-plain,memdev=shm".into(),
    ]
    .into();
    let b = boot_with("app=hello apps=hello", extra);
    let joined = line(&b, "node 0: joined as generation");
    let started = line(&b, "started app hello");
    assert!(joined < started, "apps start after the join\n{}", log(&b));
    line(
        &b,
        "node 0: all apps finished (2 exited with code 0, 0 failed)",
    );
    expect_exit(&b, EXIT_SUCCESS);
}

#[test]
fn apps_on_two_nodes_meet_at_barriers() {
    use shmos::cluster::{Cluster, ClusterConfig};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = shmos::repo_root();
    shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cfg = ClusterConfig::new(kernel, accel);
    cfg.shm_size = 16 << 20;
    cfg.cmdline = "cluster.wait_live=2".into();
    let mut c = Cluster::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
    // Node 1 arrives 400 ms late at the first barrier: node 0 must wait.
    c.spawn_node(0, "app=barrier:2").unwrap();
    c.spawn_node(1, "app=barrier:2+400").unwrap();
    let mut expect = |node: u32, needle: &str| {
        c.wait_for(node, needle, TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "node {node}: {e:#}\n--- node {node} serial log ---\n{}",
                c.tail(node, 40)
            )
        })
    };
    let first = expect(0, "barrier: node 0 passed barrier 1/2 after ");
    expect(1, "barrier: node 1 passed barrier 2/2");
    expect(0, "barrier: node 0 passed barrier 2/2");
    for node in 0..2 {
        expect(node, "all apps finished (1 exited with code 0, 0 failed)");
    }
    let waited: u64 = first
        .split("after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no wait time in {first:?}"));
    // The nodes start their apps within ~100 ms of each other.
    assert!(waited >= 200, "node 0 did not wait for node 1: {first}");
    let exits = c.wait_all(TIMEOUT).unwrap();
    for (node, exit) in &exits {
        assert_eq!(
            *exit,
            VmExit::Exited(EXIT_SUCCESS),
            "node {node}: {}",
            c.tail(*node, 40)
        );
    }
}
