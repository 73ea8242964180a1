//! The test runner's reboot loop against a scripted stand-in for QEMU, so
//! resume, loop guard, abnormal stops and timeouts are checked without a kernel.

use shmos::Outcome;
use shmos::harness::{KernelTests, TestResult, run_kernel_tests};
use shmos::vm::{Accel, Firmware, VmConfig};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// Plays the kernel's side of the protocol, chosen by keys in `-append`.
const FAKE_QEMU: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
    if [ "$1" = -append ]; then CMDLINE="$2"; fi
    shift
done
case "$CMDLINE" in
    *hang*) echo "test a ... ok"; printf 'test slow ... '; sleep 30; exit 33 ;;
    *loop*) echo "test a ... FAILED"; echo "harness: resume test.skip=0"; exit 35 ;;
    *reset*) echo "test a ... ok"; echo "test b ..."; echo "boom" >&2; exit 0 ;;
    *test.skip=2*) echo "test c ... ok"; echo "harness: complete (3 tests)"; exit 33 ;;
    *) echo "test a ... ok"; echo "test b ... FAILED"; echo "harness: resume test.skip=2"; exit 35 ;;
esac
"#;

fn run(keys: &str, timeout: Duration) -> shmos::harness::KernelReport {
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("fake-qemu");
    std::fs::write(&qemu, FAKE_QEMU).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SeaBIOS: no firmware file is needed for the fake.
    let mut vm = VmConfig::new("kernel.elf".into(), Accel::Tcg, Firmware::Seabios);
    vm.qemu = qemu;
    vm.cmdline = keys.into();
    let mut tests = KernelTests::new(vm);
    tests.timeout = Some(timeout);
    run_kernel_tests(&tests).unwrap()
}

fn result(name: &str, passed: bool) -> TestResult {
    TestResult {
        name: name.into(),
        passed,
    }
}

#[test]
fn resumes_after_a_crash_and_completes() {
    let report = run("", Duration::from_secs(10));
    assert_eq!(
        report.results,
        [result("a", true), result("b", false), result("c", true)]
    );
    assert_eq!(report.boots, 2);
    // The last boot exits 33, but a test failed in an earlier boot.
    assert_eq!(report.outcome, Outcome::Failure);
}

#[test]
fn a_resume_that_does_not_advance_stops() {
    let report = run("loop", Duration::from_secs(10));
    assert_eq!(report.boots, 1);
    assert_eq!(report.outcome, Outcome::Abnormal);
    assert!(report.stop.unwrap().contains("avoid a loop"));
}

#[test]
fn a_reset_is_abnormal_and_names_the_running_test() {
    let report = run("reset", Duration::from_secs(10));
    assert_eq!(report.outcome, Outcome::Abnormal);
    assert_eq!(report.results, [result("a", true), result("b", false)]);
    let stop = report.stop.unwrap();
    assert!(
        stop.contains("status 0") && stop.contains("test b"),
        "{stop}"
    );
}

#[test]
fn a_hung_vm_is_killed_with_its_process_group() {
    let start = Instant::now();
    let report = run("hang", Duration::from_secs(1));
    // The fake's `sleep` holds the console pipe: returning early proves it died too.
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(report.outcome, Outcome::Timeout);
    assert_eq!(report.results, [result("a", true), result("slow", false)]);
    assert!(report.stop.unwrap().contains("timeout after 1s"));
}
