//! The kernel test protocol. In test mode the kernel prints
//! `test NAME ... ok|FAILED` per test; after a crash it prints
//! `harness: resume test.skip=K` and exits, and at the end of its list
//! `harness: complete`. The runner reboots with `test.skip=K` until complete.

use crate::Outcome;
use crate::vm::{self, Stream, VmConfig, VmExit};
use anyhow::Result;
use std::time::Duration;

/// Serial lines shown after an abnormal stop.
pub const TAIL_LINES: usize = 40;
/// Upper bound on boots of one run, on top of the rule that K must increase.
const MAX_BOOTS: u32 = 1000;

/// A serial line that means something to the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `test NAME ...` without a verdict (yet).
    Started(&'a str),
    /// `test NAME ... ok`
    Passed(&'a str),
    /// `test NAME ... FAILED`
    Failed(&'a str),
    /// `harness: resume test.skip=K`
    Resume(usize),
    /// `harness: complete`
    Complete,
}

/// Parses one serial line.
pub fn parse_line(line: &str) -> Option<Event<'_>> {
    let line = line.trim();
    // The kernel may append details: `harness: complete (4 tests selected, ...)`.
    if let Some(rest) = line.strip_prefix("harness: complete")
        && (rest.is_empty() || rest.starts_with([' ', '(']))
    {
        return Some(Event::Complete);
    }
    if let Some(k) = line.strip_prefix("harness: resume test.skip=") {
        return k.trim().parse().ok().map(Event::Resume);
    }
    let (name, verdict) = line.strip_prefix("test ")?.split_once(" ...")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let verdict = verdict.trim();
    Some(if verdict == "ok" {
        Event::Passed(name)
    } else if verdict.starts_with("FAILED") {
        Event::Failed(name)
    } else {
        Event::Started(name)
    })
}

/// A kernel test run: which tests, on which VM.
#[derive(Clone, Debug)]
pub struct KernelTests {
    /// Base VM; its `cmdline` holds extra keys, the harness adds its own.
    pub vm: VmConfig,
    /// `test.only=` names (empty: all tests).
    pub only: Vec<String>,
    /// Register the kernel's two deliberately broken tests.
    pub demo_failures: bool,
    /// Per boot; None waits forever.
    pub timeout: Option<Duration>,
}

impl KernelTests {
    /// A run of every test on `vm` with a 60 s timeout per boot.
    pub fn new(vm: VmConfig) -> Self {
        KernelTests {
            vm,
            only: Vec::new(),
            demo_failures: false,
            timeout: Some(Duration::from_secs(60)),
        }
    }

    /// Kernel command line of the boot that starts at test index `skip`.
    pub fn cmdline(&self, skip: usize) -> String {
        let mut keys = vec!["test".to_string()];
        if !self.only.is_empty() {
            keys.push(format!("test.only={}", self.only.join(",")));
        }
        if self.demo_failures {
            keys.push("test.demo_failures".into());
        }
        if skip > 0 {
            keys.push(format!("test.skip={skip}"));
        }
        if !self.vm.cmdline.trim().is_empty() {
            keys.push(self.vm.cmdline.trim().to_string());
        }
        keys.join(" ")
    }
}

/// One test's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
}

/// What a kernel test run found.
#[derive(Clone, Debug)]
pub struct KernelReport {
    pub results: Vec<TestResult>,
    pub boots: u32,
    pub outcome: Outcome,
    /// Why the run stopped early, if it did.
    pub stop: Option<String>,
}

impl KernelReport {
    /// Number of tests that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// Number of tests that failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Names of the failed tests, in order.
    pub fn failed_names(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.name.as_str())
            .collect()
    }

    /// Verdict of `name`, if it ran.
    pub fn verdict(&self, name: &str) -> Option<bool> {
        self.results
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.passed)
    }

    /// Prints the failed names and `LABEL: N passed, M failed`.
    pub fn print_summary(&self, label: &str) {
        let failed = self.failed_names();
        if !failed.is_empty() {
            println!("{label} failures:");
            for name in failed {
                println!("    {name}");
            }
        }
        if let Some(stop) = &self.stop {
            println!("{label} stopped early: {stop}");
        }
        println!(
            "{label}: {} passed, {} failed",
            self.passed(),
            self.failed()
        );
    }
}

/// Runs the kernel's tests, rebooting past crashes, echoing the console.
pub fn run_kernel_tests(t: &KernelTests) -> Result<KernelReport> {
    let mut report = KernelReport {
        results: Vec::new(),
        boots: 0,
        outcome: Outcome::Success,
        stop: None,
    };
    let mut skip = 0;
    loop {
        report.boots += 1;
        let mut cfg = t.vm.clone();
        cfg.cmdline = t.cmdline(skip);
        println!(
            "shmos: boot {} ({}, {}): {}",
            report.boots,
            cfg.accel,
            cfg.firmware,
            cfg.full_cmdline()
        );
        let (mut resume, mut complete) = (None, false);
        let mut running: Option<String> = None;
        let boot = vm::boot(&cfg, t.timeout, |line| {
            line.print(false);
            if line.stream != Stream::Serial {
                return;
            }
            let verdict = match parse_line(&line.text) {
                Some(Event::Started(name)) => {
                    running = Some(name.to_string());
                    None
                }
                Some(Event::Passed(name)) => Some((name, true)),
                Some(Event::Failed(name)) => Some((name, false)),
                Some(Event::Resume(k)) => {
                    resume = Some(k);
                    None
                }
                Some(Event::Complete) => {
                    complete = true;
                    None
                }
                None => None,
            };
            if let Some((name, passed)) = verdict {
                report.results.push(TestResult {
                    name: name.to_string(),
                    passed,
                });
                running = None;
            }
        })?;
        let verdict = boot.exit.outcome();
        println!(
            "shmos: boot {} ended after {:.2}s: {}",
            report.boots,
            boot.duration.as_secs_f64(),
            boot.exit.describe()
        );
        if complete {
            report.outcome = match verdict {
                // Exit status and printed verdicts must agree; either one failing is a failure.
                Outcome::Success if report.failed() == 0 => Outcome::Success,
                Outcome::Success | Outcome::Failure => Outcome::Failure,
                other => {
                    report.stop = Some(format!(
                        "after `harness: complete`, {}",
                        boot.exit.describe()
                    ));
                    other
                }
            };
            return Ok(report);
        }
        match resume {
            Some(k) if k > skip && report.boots < MAX_BOOTS => {
                println!("shmos: the kernel crashed in a test; resuming at test.skip={k}");
                skip = k;
            }
            Some(k) => {
                report.stop = Some(format!(
                    "the kernel asked to resume at test.skip={k} in boot {} (started at test.skip={skip}); stopping to avoid a loop",
                    report.boots
                ));
                report.outcome = Outcome::Abnormal;
                print_tail(&boot.serial, None);
                return Ok(report);
            }
            None => {
                let why = match boot.exit {
                    VmExit::Exited(n @ (vm::EXIT_SUCCESS | vm::EXIT_FAILURE)) => format!(
                        "the kernel exited (status {n}) without printing `harness: complete`"
                    ),
                    exit => exit.describe(),
                };
                report.outcome = if verdict == Outcome::Timeout {
                    Outcome::Timeout
                } else {
                    Outcome::Abnormal
                };
                // The test that was running did not pass: count it, so the totals agree with the status.
                if let Some(name) = &running {
                    report.results.push(TestResult {
                        name: name.clone(),
                        passed: false,
                    });
                }
                let test = match (&running, report.results.last()) {
                    (Some(name), _) => name.clone(),
                    (None, Some(last)) => format!("none (last finished: {})", last.name),
                    (None, None) => "none (no test started)".into(),
                };
                println!("shmos: {why}; test running: {test}");
                print_tail(&boot.serial, boot.firmware_log.as_deref());
                report.stop = Some(format!("{why} during test {test}"));
                return Ok(report);
            }
        }
    }
}

/// Prints the last serial lines (and the firmware log's) of a boot that went wrong.
pub fn print_tail(serial: &[String], firmware_log: Option<&str>) {
    if let Some(log) = firmware_log.filter(|l| !l.trim().is_empty()) {
        let lines: Vec<&str> = log.lines().collect();
        println!("--- last firmware log lines ---");
        for line in &lines[lines.len().saturating_sub(10)..] {
            println!("{line}");
        }
    }
    println!("--- last {TAIL_LINES} serial lines ---");
    for line in &serial[serial.len().saturating_sub(TAIL_LINES)..] {
        println!("{line}");
    }
    println!("--- end of serial log ---");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{Accel, Firmware};

    #[test]
    fn parses_verdicts() {
        assert_eq!(
            parse_line("test heap_small ... ok"),
            Some(Event::Passed("heap_small"))
        );
        assert_eq!(
            parse_line("test heap_small ... ok\r"),
            Some(Event::Passed("heap_small"))
        );
        assert_eq!(
            parse_line("test a::b ... FAILED"),
            Some(Event::Failed("a::b"))
        );
        assert_eq!(
            parse_line("test x ... FAILED (page fault at 0x0)"),
            Some(Event::Failed("x"))
        );
    }

    #[test]
    fn test_without_verdict_is_started() {
        assert_eq!(parse_line("test slow ... "), Some(Event::Started("slow")));
        assert_eq!(parse_line("test slow ..."), Some(Event::Started("slow")));
        assert_eq!(
            parse_line("test slow ... panicked at src/x.rs:3"),
            Some(Event::Started("slow"))
        );
    }

    #[test]
    fn parses_harness_lines() {
        assert_eq!(
            parse_line("harness: resume test.skip=7"),
            Some(Event::Resume(7))
        );
        assert_eq!(parse_line("harness: complete"), Some(Event::Complete));
        assert_eq!(
            parse_line("harness: complete (4 tests selected, 1 passed and 0 failed in this boot)"),
            Some(Event::Complete)
        );
        assert_eq!(parse_line("harness: completed"), None);
        assert_eq!(parse_line("harness: resume test.skip=x"), None);
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_line("heap: 1 MiB at 0x200000"), None);
        assert_eq!(parse_line("test result: ok. 3 passed; 0 failed"), None);
        assert_eq!(parse_line("testing ... ok"), None);
        assert_eq!(parse_line("test two words ... ok"), None);
    }

    #[test]
    fn cmdline_keeps_keys_across_resume() {
        let vm = VmConfig::new("k".into(), Accel::Tcg, Firmware::Qboot);
        let mut t = KernelTests::new(vm);
        t.only = vec!["a".into(), "b".into()];
        t.demo_failures = true;
        t.vm.cmdline = "log=debug".into();
        assert_eq!(
            t.cmdline(0),
            "test test.only=a,b test.demo_failures log=debug"
        );
        assert_eq!(
            t.cmdline(3),
            "test test.only=a,b test.demo_failures test.skip=3 log=debug"
        );
    }
}
