//! The shmos kernel: one per compute node.
//!
//! Boot path: bootloader/pvh_entry.S (PVH) or bootloader/multiboot2.S (GRUB)
//! -> [`boot::kernel_entry`] -> [`kernel_main`].
//! Layout: `arch/` (CPU tables, interrupts, syscall entry, APIC, fault
//! fixups), `memory/` (frames, paging, heap, address spaces), `drivers/`
//! (serial, ivshmem, virtio-blk), `cluster/` (membership), `dsm/` (the DSM engine's
//! kernel glue: transport, faults, directory), `task/` (tasks, scheduler,
//! waiting), `loader/` (ELF), `syscall/` (dispatch), `user/` (user memory),
//! `apps` (the embedded apps), `time` (clock), `testing` (the in-kernel test
//! harness).
#![no_std]
#![no_main]
// Every unsafe block says why it holds (arch, MMIO, device memory, boot).
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod apps;
mod arch;
mod boot;
mod cluster;
mod cmdline;
mod console;
mod drivers;
mod dsm;
mod loader;
mod memory;
mod pci;
mod sync;
mod syscall;
mod task;
mod testing;
mod time;
mod user;

use arch::exit::{ExitCode, exit};
use boot::BootInfo;

/// Brings the node up, then runs the kernel tests or the node's normal work.
fn kernel_main(boot: &'static BootInfo) -> ! {
    time::mark_entry();
    drivers::serial::init();
    console::init_logger();
    arch::init_cpu();
    let args = cmdline::Args::parse(boot.cmdline());
    if args.boot_exit {
        exit(ExitCode::Success);
    }
    memory::init(boot);
    task::init();
    arch::apic::init();
    time::init();
    x86_64::instructions::interrupts::enable();

    if !args.quiet {
        banner(boot, &args);
    }
    pci::QUIET.store(args.quiet, core::sync::atomic::Ordering::Relaxed);
    pci::init();
    let _ = drivers::ivshmem::init();
    drivers::virtio_blk::init(args.quiet);
    if args.test {
        testing::run(&args);
    }
    if let Some(mib) = args.bench_disk {
        exit(if drivers::virtio_blk::bench(mib) {
            ExitCode::Success
        } else {
            ExitCode::Failure
        });
    }
    exit(if run_node(&args) {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// With a shared memory device, joins the cluster; then runs the apps the
/// command line names or, without apps, the cluster check it asks for
/// (without a device there is nothing to join; apps still run).
fn run_node(args: &cmdline::Args) -> bool {
    let node = match drivers::ivshmem::device() {
        None => None,
        Some(_) => match cluster::join(args.node as u16, args.cluster_heartbeat_ms) {
            Ok(node) => Some(node),
            Err(e) => {
                kprintln!("node {}: FAILED: cannot join the cluster: {e}", args.node);
                return false;
            }
        },
    };
    if !args.has_apps() {
        return node.is_none_or(|node| cluster::smoke::run(node, args));
    }
    syscall::basic::set_node(args.node, node);
    if let Some(node) = node {
        dsm::init(node, args);
    }
    if let (Some(node), Some(n)) = (node, args.cluster_wait_live) {
        // Apps that talk to other nodes expect them to be there. Seeing n
        // live is not enough: a node whose app ends at once could leave
        // before a slower one saw it, so each node also says it is ready and
        // apps start when n nodes have.
        let _ = task::wait_event(task::Events::TICK, None, || {
            node.poll();
            node.live().len() >= n as usize
        });
        const READY: u32 = cluster::READY_PROGRESS;
        if let Err(e) = node.shm().set_progress(node.id, node.generation(), READY) {
            kprintln!("node {}: FAILED: cannot publish readiness: {e}", node.id);
            return false;
        }
        let _ = task::wait_event(task::Events::TICK, None, || {
            node.poll();
            let ready = (0..node.shm().max_nodes())
                .filter(|&i| node.shm().progress(i).unwrap_or(0) >= READY);
            ready.count() >= n as usize
        });
    }
    if let Some(node) = node {
        dsm::recover(node);
    }
    let ok = apps::run(args, node);
    if let Some(node) = node {
        node.leave();
    }
    ok
}

/// The first lines a user sees: which node, how much memory, how time runs.
fn banner(boot: &BootInfo, args: &cmdline::Args) {
    let mem = memory::stats();
    kprintln!(
        "shmos {} node {}: {} MiB RAM in {} regions, {} MiB free, heap {} MiB, booted by {}",
        env!("CARGO_PKG_VERSION"),
        args.node,
        mem.usable_bytes >> 20,
        boot.memory_regions().filter(|r| r.is_usable()).count(),
        mem.free_bytes >> 20,
        mem.heap_bytes >> 20,
        boot.protocol(),
    );
    if boot.regions_dropped() > 0 {
        kprintln!(
            "boot: {} memory-map entries left out (no room or overlapping RAM)",
            boot.regions_dropped()
        );
    }
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
