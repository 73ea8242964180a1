//! Builds the real kernel and checks the test harness end to end: the two
//! demo tests fail (one by assertion, one by crashing the kernel), the runner
//! resumes after the crash, and the test after them still runs and passes.

use shmos::Outcome;
use shmos::harness::{KernelTests, run_kernel_tests};
use shmos::vm::{Firmware, VmConfig};

#[test]
fn demo_failures_are_reported_and_later_tests_still_run() {
    let root = shmos::repo_root();
    shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));

    let mut tests = KernelTests::new(VmConfig::new(kernel, accel, Firmware::Qboot));
    tests.demo_failures = true;
    tests.only = [
        "heap_small_allocations",
        "harness_demo_fails",
        "harness_demo_faults",
        "heap_large_allocation",
    ]
    .map(String::from)
    .to_vec();
    let report = run_kernel_tests(&tests).unwrap_or_else(|e| panic!("{e:#}"));
    report.print_summary("kernel");

    assert_eq!(report.verdict("heap_small_allocations"), Some(true));
    assert_eq!(report.verdict("harness_demo_fails"), Some(false));
    assert_eq!(report.verdict("harness_demo_faults"), Some(false));
    // Runs only if the runner resumed after the crash in harness_demo_faults.
    assert_eq!(report.verdict("heap_large_allocation"), Some(true));
    assert_eq!(report.outcome, Outcome::Failure, "stop: {:?}", report.stop);
    assert_ne!(report.outcome.code(), 0);
}
