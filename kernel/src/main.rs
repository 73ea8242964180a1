//! The shmos kernel: one per compute node.
//!
//! Boot path: bootloader/pvh_entry.S -> [`boot::kernel_entry`] -> [`kernel_main`].
//! Layout: `arch/` (CPU tables, interrupts, APIC, fault fixups), `memory/`
//! (frames, paging, heap), `drivers/` (serial), `time` (clock), `testing`
//! (the in-kernel test harness).
#![no_std]
#![no_main]
// Every unsafe block says why it holds (arch, MMIO, device memory, boot).
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod boot;
mod cluster;
mod cmdline;
mod console;
mod drivers;
mod memory;
mod pci;
mod sync;
mod testing;
mod time;

use arch::exit::{ExitCode, exit};
use boot::BootInfo;

/// Brings the node up, then runs the kernel tests or the node's normal work.
fn kernel_main(boot: &'static BootInfo) -> ! {
    drivers::serial::init();
    console::init_logger();
    arch::init_cpu();
    let args = cmdline::Args::parse(boot.cmdline());
    memory::init(boot);
    arch::apic::init();
    time::init();
    x86_64::instructions::interrupts::enable();

    banner(boot, &args);
    pci::init();
    let _ = drivers::ivshmem::init();
    if args.test {
        testing::run(&args);
    }
    exit(if join_cluster(&args) {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// With a shared memory device, joins the cluster and runs the cluster check
/// the command line asks for; without one there is nothing to join.
fn join_cluster(args: &cmdline::Args) -> bool {
    if drivers::ivshmem::device().is_none() {
        return true;
    }
    match cluster::join(args.node as u16) {
        Ok(node) => cluster::smoke::run(node, args),
        Err(e) => {
            kprintln!("node {}: FAILED: cannot join the cluster: {e}", args.node);
            false
        }
    }
}

/// The first lines a user sees: which node, how much memory, how time runs.
fn banner(boot: &BootInfo, args: &cmdline::Args) {
    let mem = memory::stats();
    kprintln!(
        "shmos {} node {}: {} MiB RAM in {} regions, {} MiB free, heap {} MiB",
        env!("CARGO_PKG_VERSION"),
        args.node,
        mem.usable_bytes >> 20,
        boot.memory_regions().filter(|r| r.is_usable()).count(),
        mem.free_bytes >> 20,
        mem.heap_bytes >> 20,
    );
    kprintln!(
        "clock: TSC {} MHz, local APIC timer {} Hz (id {}), command line \"{}\"",
        time::tsc_hz() / 1_000_000,
        time::TICK_HZ,
        arch::apic::id(),
        boot.cmdline(),
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    // A panic inside a test fails that test only; the host boots us again.
    testing::on_crash(format_args!("panicked: {info}"));
    kprintln!("KERNEL PANIC: {info}");
    exit(ExitCode::Failure)
}
