//! The in-kernel test harness, on stable Rust.
//!
//! `kernel_test!` registers a test next to the code it tests by placing a
//! [`KernelTest`] record in the `.kernel_tests` linker section, which
//! bootloader/linker.ld brackets with two symbols. With `test` on the command
//! line, [`run`] runs the tests one by one (by name order, or in the order
//! `test.only=` gives) and prints `test NAME ... ok` or `... FAILED`.
//!
//! A test fails by panicking or by taking a CPU exception. Either leaves the
//! kernel in an unknown state, so it is not resumed: [`on_crash`] reports the
//! test as failed, prints `harness: resume test.skip=K` and powers off, and
//! the host boots a fresh kernel that starts at test K. When the list is
//! done the kernel prints `harness: complete`.
//!
//! To add a test, next to the code it tests:
//! ```ignore
//! crate::kernel_test!(
//!     fn subsystem_does_what_it_should() {
//!         assert_eq!(1 + 1, 2);
//!     }
//! );
//! ```

use crate::cmdline::Args;
use crate::kprintln;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// One registered test.
#[repr(C)]
pub struct KernelTest {
    /// The test's function name; `test.only=` selects by it.
    pub name: &'static str,
    /// The test body; it fails by panicking.
    pub func: fn(),
    /// Deliberately broken tests, registered only with `test.demo_failures`.
    pub demo: bool,
}

/// Registers a kernel test: `kernel_test!(fn name() { ... });`.
#[macro_export]
macro_rules! kernel_test {
    (fn $name:ident() $body:block) => {
        $crate::kernel_test!(@register false, $name, $body);
    };
    (demo fn $name:ident() $body:block) => {
        $crate::kernel_test!(@register true, $name, $body);
    };
    (@register $demo:expr, $name:ident, $body:block) => {
        fn $name() $body
        const _: () = {
            // SAFETY: the section holds only `KernelTest` records, which the
            // harness reads back as a slice between the linker's symbols.
            #[used]
            #[unsafe(link_section = ".kernel_tests")]
            static TEST: $crate::testing::KernelTest =
                $crate::testing::KernelTest { name: stringify!($name), func: $name, demo: $demo };
        };
    };
}

unsafe extern "C" {
    static __kernel_tests_start: u8;
    static __kernel_tests_end: u8;
}

/// Every test linked into the kernel.
pub fn registered() -> &'static [KernelTest] {
    let start = (&raw const __kernel_tests_start).cast::<KernelTest>();
    let end = (&raw const __kernel_tests_end).cast::<KernelTest>();
    // SAFETY: the linker script puts only `KernelTest` records (8-aligned,
    // `#[repr(C)]`) between these symbols.
    unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) }
}

/// The test that is running, for the crash paths (null when none).
static CURRENT: AtomicPtr<KernelTest> = AtomicPtr::new(core::ptr::null_mut());
/// Index of the running test in the selected list.
static CURRENT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// The tests this boot should run, in order; names `test.only=` asked for
/// but that do not exist come back in the second list.
fn select(args: &Args) -> (Vec<&'static KernelTest>, Vec<&'static str>) {
    let all = registered();
    match args.test_only {
        Some(names) => {
            let mut missing = Vec::new();
            let mut chosen = Vec::new();
            for name in names.split(',').filter(|n| !n.is_empty()) {
                match all
                    .iter()
                    .find(|t| t.name == name && (!t.demo || args.test_demo_failures))
                {
                    Some(t) => chosen.push(t),
                    None => missing.push(name),
                }
            }
            (chosen, missing)
        }
        None => {
            let mut chosen: Vec<_> = all
                .iter()
                .filter(|t| !t.demo || args.test_demo_failures)
                .collect();
            chosen.sort_by_key(|t| t.name);
            (chosen, Vec::new())
        }
    }
}

/// Runs the selected tests and powers off with the outcome.
pub fn run(args: &Args) -> ! {
    let (tests, missing) = select(args);
    let mut failed = 0;
    if args.test_skip == 0 {
        for name in &missing {
            kprintln!("test {name} ... FAILED");
            kprintln!("    no kernel test has that name");
            failed += 1;
        }
    }
    let mut passed = 0;
    for (index, test) in tests.iter().enumerate().skip(args.test_skip) {
        CURRENT_INDEX.store(index, Ordering::Relaxed);
        CURRENT.store(
            *test as *const KernelTest as *mut KernelTest,
            Ordering::Release,
        );
        crate::console::begin_line(format_args!("test {} ... ", test.name));
        (test.func)();
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        if !crate::console::finish_line(format_args!("ok")) {
            kprintln!("test {} ... ok", test.name);
        }
        passed += 1;
    }
    kprintln!(
        "harness: complete ({} tests selected, {passed} passed and {failed} failed in this boot)",
        tests.len()
    );
    let code = if failed == 0 {
        crate::arch::exit::ExitCode::Success
    } else {
        crate::arch::exit::ExitCode::Failure
    };
    crate::arch::exit::exit(code)
}

/// Called on a panic or fatal exception: if a test was running, report it
/// as failed and power off so that the host resumes after it. Returns when
/// no test was running.
pub fn on_crash(why: fmt::Arguments<'_>) {
    let test = CURRENT.swap(core::ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: CURRENT only ever holds null or a pointer into the static test table.
    let Some(test) = (unsafe { test.as_ref() }) else {
        return;
    };
    let next = CURRENT_INDEX.load(Ordering::Relaxed) + 1;
    if !crate::console::emergency_finish_line(format_args!("FAILED")) {
        crate::console::emergency_println(format_args!("test {} ... FAILED", test.name));
    }
    crate::console::emergency_println(format_args!("    {why}"));
    crate::console::emergency_println(format_args!("harness: resume test.skip={next}"));
    crate::arch::exit::exit(crate::arch::exit::ExitCode::Failure)
}

crate::kernel_test!(
    demo fn harness_demo_fails() {
        assert_eq!(1 + 1, 3, "this test fails on purpose (test.demo_failures)");
    }
);

crate::kernel_test!(
    demo fn harness_demo_faults() {
        let unmapped = crate::memory::paging::SCRATCH_BASE + 0xdead_0000;
        // SAFETY: none; this test exists to take a real, unguarded page fault
        // so that the harness's crash path is exercised (test.demo_failures).
        let value = unsafe { core::ptr::read_volatile(unmapped as *const u64) };
        panic!("read {value:#x} from an unmapped page");
    }
);

crate::kernel_test!(
    fn harness_registers_tests_by_name() {
        let all = registered();
        assert!(
            all.len() >= 20,
            "at least 20 tests are linked in, found {}",
            all.len()
        );
        let names: Vec<_> = all.iter().map(|t| t.name).collect();
        for n in [
            "heap_small_allocations",
            "harness_demo_fails",
            "serial_console_writes",
        ] {
            assert!(names.contains(&n), "{n} is registered");
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "names are unique");
    }
);
