//! The apps embedded in the kernel image, and running those the command line
//! names (`app=NAME[:ARGS]`, see `cmdline`).
//!
//! build.rs generates the table from the ELF files that `cargo build
//! --release` in apps/ produced; the host tool builds apps/ first.

use crate::cluster::Node;
use crate::cmdline::Args;
use crate::kprintln;
use crate::task::{self, Events, ExitStatus, Pid};
use alloc::string::String;
use alloc::vec::Vec;
use shm_ext::platform::vector;

/// One embedded app.
#[derive(Debug)]
pub struct EmbeddedApp {
    /// Its name (the binary's name in apps/).
    pub name: &'static str,
    /// Its ELF image, 16-byte aligned.
    pub elf: &'static [u8],
}

/// Aligns an included ELF image so that the loader may read its headers in
/// place.
#[repr(C, align(16))]
#[allow(dead_code)] // never built when no app is embedded
struct Aligned<T: ?Sized>(T);

include!(concat!(env!("OUT_DIR"), "/apps.rs"));

/// The embedded app called `name`.
pub fn find(name: &str) -> Option<&'static EmbeddedApp> {
    EMBEDDED.iter().find(|a| a.name == name)
}

/// The embedded apps' names, comma-separated (for messages).
pub fn names() -> String {
    let names: Vec<&str> = EMBEDDED.iter().map(|a| a.name).collect();
    if names.is_empty() {
        String::from("none")
    } else {
        names.join(", ")
    }
}

/// How often the waiting kernel task looks at the cluster (liveness, rejoin).
const POLL_NS: u64 = 100_000_000;
/// Longest a node waits, after its apps ended, for copies it is restoring.
const RESTORE_NS: u64 = 120_000_000_000;

/// Starts every app the command line names, waits until all have ended and
/// prints `node N: all apps finished`; true if every one exited with code 0.
/// An unknown name, or an app that cannot start, fails the run before any
/// app starts (or, for a start failure, after the others end).
pub fn run(args: &Args, node: Option<&'static Node>) -> bool {
    let id = args.node;
    let specs: Vec<_> = args.apps().collect();
    let mut ok = true;
    for spec in &specs {
        if find(spec.name).is_none() {
            kprintln!(
                "node {id}: FAILED: unknown app \"{}\" (embedded apps: {})",
                spec.name,
                names()
            );
            ok = false;
        }
        if args.app_args(spec).len() > shmos_abi::MAX_ARGS {
            kprintln!(
                "node {id}: FAILED: the arguments of app \"{}\" exceed {} bytes",
                spec.name,
                shmos_abi::MAX_ARGS
            );
            ok = false;
        }
    }
    if !ok {
        return false;
    }
    let mut pids: Vec<(Pid, &str)> = Vec::new();
    for spec in &specs {
        let app = find(spec.name).expect("checked above");
        let app_args = args.app_args(spec);
        match task::spawn_user(app.name, &app_args, app.elf) {
            Ok(pid) => {
                kprintln!(
                    "node {id}: started app {} (pid {pid}) args \"{app_args}\", {} us after kernel entry",
                    app.name,
                    crate::time::since_entry_us()
                );
                pids.push((pid, app.name));
            }
            Err(e) => {
                kprintln!("node {id}: FAILED: cannot start app {}: {e}", app.name);
                ok = false;
            }
        }
    }
    let all_done = || {
        pids.iter()
            .all(|(pid, _)| task::exit_status(*pid).is_some())
    };
    // This task also serves other nodes' DSM requests while the apps run,
    // so a node whose apps do not fault answers. It wakes at every tick and
    // at the DSM's own doorbell, not at every message doorbell: those come
    // with every app message, and under this host's KVM (kernel code
    // emulated) the switches and queue scans they caused made a polled
    // round trip 3 s instead of 20 ms. (Waking only at ticks made every
    // request to a node whose app waited elsewhere take up to 10 ms.)
    let dsm_events = Events::TASK_EXIT | Events::TICK | Events::doorbell(vector::DSM);
    // Liveness is polled every POLL_NS, not at every wake-up: a wake-up
    // comes with every message to this node, and under this host's KVM a
    // poll of the node table costs milliseconds of emulated kernel code.
    let mut next_poll = crate::time::now_ns() + POLL_NS;
    let mut due: Option<u64> = None;
    while !all_done() {
        let deadline = due.take().map_or(next_poll, |d| d.min(next_poll));
        // Sends waiting for room also wake at MESSAGE (room freed).
        let events = if crate::dsm::with(|d| d.outbox_len() > 0).unwrap_or(false) {
            dsm_events | Events::doorbell(vector::MESSAGE)
        } else {
            dsm_events
        };
        let _ = task::wait_event(events, Some(deadline), || {
            if let Some(next) = crate::dsm::pump_background()
                && next < deadline
            {
                // A pump was due but rationed: wait until it may run.
                due = Some(next);
                return true;
            }
            all_done()
        });
        let now = crate::time::now_ns();
        if now >= next_poll {
            if let Some(node) = node {
                poll_cluster(node);
                crate::dsm::report::publish();
            }
            next_poll = now + POLL_NS;
        }
    }
    // One last look at the cluster, so that a membership change the apps
    // already acted on (a peer another node declared dead) is reported
    // before this node leaves, not lost between two 100 ms polls.
    if let Some(node) = node {
        poll_cluster(node);
    }
    // Copies being restored (after a loss or a damaged disk) are finished
    // before this node leaves, within a bound: a node that leaves with a
    // page's only other copy would leave it with one disk.
    let restore_by = crate::time::now_ns().saturating_add(RESTORE_NS);
    let _ = task::wait_event(dsm_events, Some(restore_by), || {
        let _ = crate::dsm::pump_background();
        !crate::dsm::restoring_copies()
    });
    let failed = pids
        .iter()
        .filter(|(pid, _)| task::exit_status(*pid) != Some(ExitStatus::Code(0)))
        .count();
    kprintln!(
        "node {id}: all apps finished ({} exited with code 0, {failed} failed)",
        pids.len() - failed
    );
    ok && failed == 0
}

crate::kernel_test!(
    fn apps_table_is_sorted_and_named() {
        for pair in EMBEDDED.windows(2) {
            assert!(pair[0].name < pair[1].name, "sorted, unique names");
        }
        for app in EMBEDDED {
            assert!(!app.name.is_empty());
            assert!(
                (app.elf.as_ptr() as usize).is_multiple_of(16),
                "{} is aligned",
                app.name
            );
            assert_eq!(&app.elf[..4], b"\x7fELF");
        }
        assert!(find("no-such-app").is_none());
    }
);

/// Watches the cluster's liveness, and takes nodes declared dead out of
/// the DSM.
fn poll_cluster(node: &'static Node) {
    let changed = node.poll();
    if !changed.died.is_empty() {
        crate::dsm::nodes_lost(node, changed.died);
    }
    crate::dsm::exchange_free_space();
}
