//! The host benchmarks that need a second process (`shmos bench-peer`),
//! each run once with a few iterations: they work, return sane figures,
//! and their correctness checks (echoed bytes, counters, ownership) pass.
//! Numbers this small measure nothing; `shmos bench` takes the real ones.

use shmos::bench::{baseline, hosted};
use std::path::Path;

/// Few iterations: enough to exercise every phase, quick on a busy machine.
const ITERATIONS: usize = 100;

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shmos"))
}

fn sane(what: &str, v: f64) {
    assert!(v.is_finite() && v > 0.0, "{what}: {v}");
}

#[test]
fn unix_socket_round_trip() {
    let ns = baseline::unix_socket_rtt_ns(peer(), ITERATIONS).expect("unix socket baseline");
    sane("unix socket rtt", ns);
}

#[test]
fn pshared_mutex_handoff() {
    // Errors unless the shared counter ends at exactly 2 * ITERATIONS.
    let ns = baseline::pshared_mutex_handoff_ns(peer(), ITERATIONS).expect("mutex handoff");
    sane("mutex handoff", ns);
}

#[test]
fn hosted_figures() {
    // Errors unless every echo matched, the stream arrived whole and in
    // order, the lock counter is exact and node 0 owns the region again.
    let f = hosted::run(peer(), ITERATIONS).expect("hosted run");
    sane("msg_rtt_64_ns", f.msg_rtt_64_ns);
    sane("msg_rtt_4k_ns", f.msg_rtt_4k_ns);
    sane("msg_throughput_64k_mb_s", f.msg_throughput_64k_mb_s);
    sane("lock_ns", f.lock_ns);
    sane("lock_handoff_ns", f.lock_handoff_ns);
    sane("alloc_free_ns", f.alloc_free_ns);
    sane("transfer_rtt_ns", f.transfer_rtt_ns);
}

#[test]
fn peer_rejects_bad_arguments() {
    let out = std::process::Command::new(peer())
        .args(["bench-peer", "no-such-mode"])
        .output()
        .expect("run shmos");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad arguments"));
}

#[test]
fn a_dead_peer_fails_the_run_instead_of_hanging() {
    // A "peer" that exits at once: every function must report it, quickly.
    let start = std::time::Instant::now();
    let fake = Path::new("/bin/true");
    assert!(baseline::unix_socket_rtt_ns(fake, ITERATIONS).is_err());
    assert!(baseline::pshared_mutex_handoff_ns(fake, ITERATIONS).is_err());
    assert!(hosted::run(fake, ITERATIONS).is_err());
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
