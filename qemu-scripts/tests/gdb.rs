//! `shmos cluster --gdb NODE`: the node's QEMU waits for gdb; the command
//! the tool prints attaches (run here in batch mode), a hardware breakpoint
//! on kernel_main is hit, kernel statics and the boot command line read back
//! with their known values, and after gdb detaches the node runs to success.
//! Under the accelerator `SHMOS_ACCEL` selects.

mod common;

use common::Tool;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long gdb may take to attach, hit the breakpoint and read.
const GDB: Duration = Duration::from_secs(120);

#[test]
fn gdb_attaches_to_a_cluster_node_reads_kernel_statics_and_the_node_finishes() {
    let kernel = common::kernel();
    let port = shmos::vm::free_port().unwrap().to_string();
    let mut tool = Tool::start(&[
        "cluster",
        "--nodes",
        "2",
        "--app",
        "hello:from+gdb",
        "--kernel",
        kernel.to_str().unwrap(),
        "--gdb",
        "1",
        "--gdb-port",
        &port,
    ]);
    // The tool prints the exact command; run what it says, plus batch steps.
    let (line, before) = tool.wait_line("gdb -ex 'target remote ", Duration::from_secs(60));
    let line =
        line.unwrap_or_else(|| panic!("no gdb command printed; output:\n{}", before.join("\n")));
    assert_eq!(
        line,
        format!("gdb -ex 'target remote :{port}' {}", kernel.display()),
        "the printed command names the port and the kernel"
    );
    // hbreak, not break: a software breakpoint is an int3, which this
    // host's nested KVM cannot run (see README, Troubleshooting).
    let steps = [
        format!("target remote :{port}"),
        "hbreak shmos_kernel::kernel_main".into(),
        "continue".into(),
        // A constant-initialised static (the next pid, 1 until the first
        // task starts), then kernel_main's argument: the boot command line.
        "print shmos_kernel::task::NEXT_PID.v.value".into(),
        "print boot.cmdline_len".into(),
        "x/s &boot.cmdline".into(),
        "detach".into(),
    ];
    let started = Instant::now();
    let out = loop {
        let mut gdb = Command::new("gdb");
        gdb.args(["-batch", "-nx"]);
        for step in &steps {
            gdb.arg("-ex").arg(step);
        }
        gdb.arg(&kernel);
        let out = gdb.output().expect("running gdb (apt-get install gdb)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // QEMU may not listen yet when the line is printed: try again.
        if text.contains("Connection refused") && started.elapsed() < GDB {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        break text;
    };
    let cmdline = "node=1 cluster.wait_live=2 app=hello:from+gdb";
    for wanted in [
        "Breakpoint 1, shmos_kernel::kernel_main",
        "$1 = 1\n",
        &format!("$2 = {}\n", cmdline.len()),
        &format!("\"{cmdline}\""),
        "detached",
    ] {
        assert!(out.contains(wanted), "gdb output lacks {wanted:?}:\n{out}");
    }
    let done = tool.finish(Duration::from_secs(120));
    assert_eq!(
        done.code,
        Some(0),
        "after gdb detached, both nodes should succeed:\n{}\n{}",
        done.stdout,
        done.stderr
    );
    assert!(
        done.stdout.contains("[n1] hello from node 1"),
        "node 1 ran its app:\n{}",
        done.stdout
    );
}
