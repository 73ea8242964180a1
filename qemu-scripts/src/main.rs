//! `shmos`: build the kernel, boot it in QEMU, run the host and kernel tests.

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use shmos::cleanup::{self, Workdir};
use shmos::harness::{self, KernelTests};
use shmos::host::{self, AccelChoice};
use shmos::vm::{self, Firmware, VmConfig};
use shmos::{Outcome, cargo};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit status when the tool itself fails (build error, QEMU missing, ...).
const TOOL_ERROR: u8 = 4;

const AFTER_HELP: &str = "\
Exit status:
  0    success: the kernel reported success / every test passed
  1    the kernel reported failure / a test failed
  2    abnormal stop: the VM reset or QEMU failed, or the kernel stopped
       outside the test protocol (also: invalid command line)
  3    timeout: a VM ran longer than --timeout and was killed
  4    the tool failed: kernel build error, QEMU missing, ...
  130  interrupted by Ctrl-C or SIGTERM (every QEMU is killed first)

Environment:
  SHMOS_ACCEL  default for --accel (auto, kvm or tcg)
  SHMOS_ROOT   repository root (default: where this tool was built from)";

const TEST_ABOUT: &str = "\
Run the host tests (cargo test) and the kernel tests in QEMU:
  1. cargo test --workspace in the repository root, with SHMOS_ACCEL set to the chosen accel
  2. the kernel's tests with --firmware, rebooting past crashes (test.skip=K),
     with a 4 MiB ivshmem device and an 8 MiB scratch virtio-blk disk
  3. one SeaBIOS boot of the serial_console_writes test (unless --only or --firmware seabios)
The last line is `total: N passed, M failed`. Exit 0 only if everything passed
and at least one kernel test ran (a host test with --host-only).";

#[derive(Parser)]
#[command(name = "shmos", about = "Build, boot and test the shmos kernel", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel and boot one VM, streaming its console.
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
    /// Run the host tests (cargo test) and the kernel tests in QEMU.
    #[command(after_help = AFTER_HELP, long_about = TEST_ABOUT)]
    Test(TestArgs),
    /// Boot N nodes on one shared memory node (or the cluster a --file
    /// describes); with no app, check that every node sees every other as
    /// live, then power off.
    #[command(after_help = AFTER_HELP)]
    Cluster(ClusterArgs),
    /// The extension layer in action: 3 nodes run the demo apps one after
    /// another (counter, pipeline, broadcast, kv, pingpong) and say what they did.
    Demo(DemoArgs),
    /// Print the superblock and node table of a shared memory file.
    Inspect(InspectArgs),
    /// Measure shmos next to baselines from the same run; print a table,
    /// write bench.json and bench.svg.
    Bench(BenchArgs),
    /// The child side of bench's two-process measurements (internal).
    #[command(hide = true)]
    BenchPeer(BenchPeerArgs),
    /// Build a bootable appliance image (GRUB ISO, BIOS and/or UEFI) with the
    /// apps and command line baked in; print how to boot it.
    #[command(after_help = AFTER_HELP)]
    Image(ImageArgs),
}

/// Arguments of `bench-peer`, passed through unparsed.
#[derive(Args)]
struct BenchPeerArgs {
    /// Mode and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Independent runs per figure (each boots its VMs afresh).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Timed iterations per run.
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// One run of a few iterations: proves the benchmark still works.
    #[arg(long)]
    smoke: bool,
    /// Where bench.json and bench.svg go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
    /// Echo the VMs' consoles.
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Show every node's whole console, not only each app's result lines.
    #[arg(long)]
    verbose: bool,
    /// ivshmem-plain: no doorbell server, no interrupts; nodes poll.
    #[arg(long)]
    plain: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The shared memory file [default: the newest running or left-over
    /// cluster's, /dev/shm/shmos-*/memory].
    path: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ClusterArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Run the cluster this TOML file describes (see README, "Cluster
    /// files"); flags given as well override the file's values.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Start node NODE's QEMU stopped, with a gdb server (its timeout is
    /// off); prints the gdb command that attaches.
    #[arg(long, value_name = "NODE")]
    gdb: Option<u32>,
    /// Port for --gdb's server [default: a free port].
    #[arg(long, value_name = "PORT", requires = "gdb")]
    gdb_port: Option<u16>,
    /// Print each node's exit and outcome as JSON on stdout at the end
    /// (consoles are not echoed; the tool's own lines go to stderr).
    #[arg(long)]
    json: bool,
    /// Number of nodes (VMs), 1 to 8.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=shmos::cluster::MAX_NODES as i64))]
    nodes: u32,
    /// App to run on every node (repeatable; NAME:ARGS with + for spaces).
    #[arg(long = "app", value_name = "NAME")]
    apps: Vec<String>,
    /// Size of the shared memory: a power of two from 1M (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    shm_size: String,
    /// ivshmem-plain: no doorbell server, no interrupts; nodes poll.
    #[arg(long)]
    plain: bool,
    /// Keep the nodes' disks (virtio-blk) in DIR: DIR/node-N.img, created
    /// sparse with --disk-size if missing, kept after the run [default:
    /// temporary disks, removed with the cluster].
    #[arg(long, value_name = "DIR")]
    disks: Option<PathBuf>,
    /// Size of each disk image the run creates (K, M, G suffixes; whole
    /// 4 KiB blocks).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    disk_size: String,
}

#[derive(Args)]
struct VmArgs {
    /// Accelerator [default: $SHMOS_ACCEL, else auto: kvm if /dev/kvm is usable, else tcg]
    #[arg(long, value_enum)]
    accel: Option<AccelChoice>,
    /// Firmware that loads the kernel.
    #[arg(long, value_enum, default_value_t = Firmware::Qboot)]
    firmware: Firmware,
    /// Kill a VM that runs longer than this many seconds (per boot).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Guest memory, in QEMU syntax.
    #[arg(long, default_value = "256M")]
    memory: String,
    /// Extra kernel command line keys.
    #[arg(
        long,
        value_name = "EXTRA",
        default_value = "",
        allow_hyphen_values = true
    )]
    append: String,
    /// Boot this ELF instead of building kernel/.
    #[arg(long, value_name = "ELF")]
    kernel: Option<PathBuf>,
}

impl VmArgs {
    /// The kernel to boot: `--kernel`, else a fresh build.
    fn kernel(&self, root: &Path) -> Result<PathBuf> {
        match &self.kernel {
            Some(elf) => Ok(elf.clone()),
            None => cargo::build_kernel(root),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Start QEMU's gdb server on :1234 with the CPU stopped (disables --timeout).
    #[arg(long)]
    gdb: bool,
    /// Port for --gdb's server.
    #[arg(long, value_name = "PORT", requires = "gdb", default_value_t = shmos::vm::DEFAULT_GDB_PORT)]
    gdb_port: u16,
    /// The VM's disk (virtio-blk): a raw image, created sparse with
    /// --disk-size if missing, kept afterwards [default: a temporary image,
    /// removed after the run].
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
    /// Size of a disk image the tool creates (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    disk_size: String,
}

#[derive(Args)]
struct TestArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Run only these kernel tests (exact names; repeat or separate with commas).
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the host tests (cargo test).
    #[arg(long, conflicts_with = "host_only")]
    kernel_only: bool,
    /// Skip the kernel tests.
    #[arg(long)]
    host_only: bool,
}

fn main() -> ExitCode {
    // The matches too: `cluster --file` lets only flags given explicitly
    // override the file, which the parsed struct alone cannot tell.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    shmos::progress::enable_on_terminal();
    if let Err(e) = cleanup::install_signal_handler() {
        eprintln!("shmos: warning: {e:#}");
    }
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Test(args) => test(args),
        Cmd::Cluster(args) => cluster(args, matches.subcommand_matches("cluster")),
        Cmd::Inspect(args) => inspect(args),
        Cmd::Demo(args) => demo(args),
        Cmd::Bench(args) => bench(args),
        Cmd::BenchPeer(args) => shmos::bench::peer::main(args.args),
        Cmd::Image(args) => image(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("shmos: error: {e:#}");
            ExitCode::from(TOOL_ERROR)
        }
    }
}

/// A VM config for the kernel from the shared flags.
fn vm_config(args: &VmArgs, kernel: PathBuf, workdir: &Workdir) -> Result<VmConfig> {
    let mut cfg = VmConfig::new(kernel, host::choose_accel(args.accel)?, args.firmware);
    cfg.memory = args.memory.clone();
    cfg.cmdline = args.append.clone();
    cfg.workdir = Some(workdir.path().to_owned());
    Ok(cfg)
}

fn run(args: RunArgs) -> Result<u8> {
    let root = shmos::repo_root();
    host::ensure_qemu()?;
    host::choose_accel(args.vm.accel)?; // fail on a bad accel before the build
    let kernel = args.vm.kernel(&root)?;
    let workdir = Workdir::new()?;
    let mut cfg = vm_config(&args.vm, kernel.clone(), &workdir)?;
    let disk_size = shmos::cluster::parse_size(&args.disk_size)?;
    shmos::disk::check_size(disk_size).map_err(anyhow::Error::msg)?;
    let disk = match &args.disk {
        Some(file) => file.clone(),
        None => workdir.path().join("disk.img"),
    };
    if shmos::disk::ensure_image(&disk, disk_size)? && args.disk.is_some() {
        println!(
            "shmos: created disk image {} ({}, sparse)",
            disk.display(),
            shmos::disk::describe_size(disk_size)
        );
    }
    cfg.disk = Some(disk);
    cfg.gdb = args.gdb;
    cfg.gdb_port = args.gdb_port;
    let timeout = if args.gdb {
        let port = args.gdb_port;
        println!("shmos: --gdb: QEMU waits for gdb on :{port}; timeout disabled. Attach with:");
        println!("{}", vm::gdb_command(&kernel, port));
        None
    } else {
        Some(Duration::from_secs(args.vm.timeout))
    };
    println!(
        "shmos: booting ({}, {}): {}",
        cfg.accel,
        cfg.firmware,
        cfg.full_cmdline()
    );
    let boot = vm::boot(&cfg, timeout, |line| line.print(false))?;
    let outcome = boot.exit.outcome();
    println!(
        "shmos: {} ({:.2}s)",
        boot.exit.describe(),
        boot.duration.as_secs_f64()
    );
    if outcome >= Outcome::Abnormal
        && let Some(log) = boot.firmware_log.as_deref()
    {
        harness::print_tail(&[], Some(log));
    }
    Ok(outcome.code())
}

fn bench(args: BenchArgs) -> Result<u8> {
    let root = shmos::repo_root();
    host::ensure_qemu()?;
    let accel = host::choose_accel(args.vm.accel)?;
    let (runs, iterations) = if args.smoke {
        (1, 10)
    } else {
        (args.runs, args.iterations)
    };
    let cfg = shmos::bench::BenchConfig {
        kernel: args.vm.kernel(&root)?,
        accel,
        runs,
        iterations,
        verbose: args.verbose,
        peer: std::env::current_exe()?,
    };
    let report = shmos::bench::run(&cfg, |step| println!("shmos bench: {step}"))?;
    print!("{}", shmos::bench::table(&report));
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    let json = shmos::bench::write_json(&report, &out)?;
    let svg = out.join("bench.svg");
    shmos::bench::chart::write_svg(&report, &svg)?;
    println!(
        "shmos bench: wrote {} and {}",
        json.display(),
        svg.display()
    );
    Ok(0)
}

/// The demo's steps: app, its arguments, and what it shows.
const DEMO: [(&str, &str, &str); 5] = [
    (
        "counter",
        "1000",
        "one counter in a shared region, 1000 increments per node under a global lock",
    ),
    (
        "pipeline",
        "100",
        "regions filled, then handed from node to node by ownership transfer",
    ),
    (
        "broadcast",
        "",
        "a signal and a message from every node to every node",
    ),
    (
        "kv",
        "",
        "a key-value store in a pool, a lock per bucket, checked against a model",
    ),
    (
        "pingpong",
        "200",
        "messages between node 0 and node 1, round trips timed",
    ),
];

fn demo(args: DemoArgs) -> Result<u8> {
    use shmos::cluster::{Cluster, ClusterConfig};
    let root = shmos::repo_root();
    host::ensure_qemu()?;
    let accel = host::choose_accel(args.vm.accel)?;
    let kernel = args.vm.kernel(&root)?;
    let nodes = 3;
    println!(
        "shmos demo: {nodes} nodes on one shared memory node ({accel}, {})",
        if args.plain {
            "ivshmem-plain"
        } else {
            "doorbells"
        }
    );
    let mut worst = Outcome::Success;
    for (app, app_args, what) in DEMO {
        println!("\n== {app}: {what}");
        let mut cfg = ClusterConfig::new(kernel.clone(), accel);
        cfg.plain = args.plain;
        cfg.echo = args.verbose;
        cfg.shm_size = 64 << 20;
        cfg.cmdline = format!("cluster.wait_live={nodes}");
        let mut cluster = Cluster::start(cfg)?;
        for node in 0..nodes {
            cluster.spawn_node(node, &format!("app={app}:{app_args}"))?;
        }
        let exits = cluster.wait_all(Duration::from_secs(args.vm.timeout))?;
        for (node, exit) in &exits {
            // Each node's banner once, then what the app said.
            let first = app == DEMO[0].0;
            let said: Vec<&String> = cluster
                .log(*node)
                .iter()
                .filter(|l| l.starts_with(&format!("{app}:")) || (first && l.starts_with("shmos ")))
                .collect();
            for line in &said {
                println!("  node {node}: {line}");
            }
            if exit.outcome() != Outcome::Success || said.is_empty() {
                println!("  node {node}: {}", exit.describe());
                println!("{}", cluster.tail(*node, 15));
            }
            worst = worst.max(exit.outcome());
        }
    }
    println!(
        "\nshmos demo: {}",
        if worst == Outcome::Success {
            "every node of every step succeeded"
        } else {
            "FAILED"
        }
    );
    Ok(worst.code())
}

fn inspect(args: InspectArgs) -> Result<u8> {
    let path = match args.path {
        Some(p) => p,
        None => shmos::inspect::newest_cluster_file()?,
    };
    print!("{}", shmos::inspect::report(&path, args.json)?);
    Ok(0)
}

fn cluster(args: ClusterArgs, matches: Option<&ArgMatches>) -> Result<u8> {
    use shmos::cluster_file::{self, ClusterSpec, FileError};
    use shmos::cluster_run::{self, RunOptions};
    let root = shmos::repo_root();
    let known = cluster_file::known_apps(&root)?;
    let given = |id: &str| {
        args.file.is_none()
            || matches.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine))
    };
    let mut spec = match &args.file {
        None => ClusterSpec::new(args.nodes),
        Some(file) => match cluster_file::load(file, &known) {
            Ok(spec) => spec,
            // A broken file is a usage error (status 2), like a bad flag.
            Err(e) if e.is::<FileError>() => {
                eprintln!("shmos: error: {e:#}");
                return Ok(Outcome::Abnormal.code());
            }
            Err(e) => return Err(e),
        },
    };
    if given("nodes") {
        spec.nodes = args.nodes;
    }
    if given("shm_size") {
        spec.shm_size = shmos::cluster::parse_size(&args.shm_size)?;
    }
    spec.plain |= args.plain;
    if args.disks.is_some() {
        spec.disks = args.disks.clone();
    }
    if given("disk_size") {
        let size = shmos::cluster::parse_size(&args.disk_size)?;
        if let Err(e) = shmos::disk::check_size(size) {
            eprintln!("shmos: error: --disk-size: {e}");
            return Ok(Outcome::Abnormal.code());
        }
        spec.disk_size = size;
    }
    if given("apps") {
        spec.apps = args.apps.iter().map(|a| cli_app(a)).collect();
    }
    spec.accel = args.vm.accel.or(spec.accel);
    if given("firmware") {
        spec.firmware = args.vm.firmware;
    }
    if given("timeout") {
        spec.timeout = Duration::from_secs(args.vm.timeout);
    }
    if given("memory") {
        spec.memory = args.vm.memory.clone();
    }
    spec.cmdline = format!("{} {}", spec.cmdline, args.vm.append)
        .trim()
        .to_string();
    if let Err(e) = spec.check(&known) {
        eprintln!("shmos: error: {e}");
        return Ok(Outcome::Abnormal.code());
    }
    host::ensure_qemu()?;
    let accel = host::choose_accel(spec.accel)?;
    let gdb = match args.gdb {
        Some(node) => Some((node, args.gdb_port.map_or_else(vm::free_port, Ok)?)),
        None => None,
    };
    let progress = shmos::progress::Progress::new();
    let opts = RunOptions {
        kernel: args.vm.kernel(&root)?,
        accel,
        gdb,
        echo: !args.json,
        progress: progress.clone(),
    };
    // With --json, stdout carries only the JSON.
    let say = |line: &str| {
        if args.json {
            progress.eprintln(line)
        } else {
            progress.println(line)
        }
    };
    let report = cluster_run::run(&spec, opts, say)?;
    if args.json {
        println!("{:#}", report.to_json());
    } else {
        for n in &report.nodes {
            println!("shmos: node {}: {}", n.node, n.exit.describe());
            for want in &n.missing {
                println!("shmos: node {}: never printed {want:?}", n.node);
            }
        }
        println!(
            "shmos: cluster {} ({:.1}s)",
            if report.outcome == Outcome::Success {
                "succeeded: every node reported success"
            } else {
                "failed"
            },
            report.duration.as_secs_f64()
        );
    }
    Ok(report.outcome.code())
}

/// An `--app NAME:ARGS` (`+` for spaces), run on every node.
fn cli_app(text: &str) -> shmos::cluster_file::AppSpec {
    let (name, args) = text.split_once(':').unwrap_or((text, ""));
    shmos::cluster_file::AppSpec {
        name: name.to_string(),
        args: args.replace('+', " "),
        nodes: None,
        expect: Vec::new(),
    }
}

/// Test counts and the worst outcome over the phases of `shmos test`.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    kernel_ran: u64,
    host_ran: u64,
    worst: Option<Outcome>,
}

impl Totals {
    fn note(&mut self, outcome: Outcome) {
        self.worst = self.worst.max(Some(outcome));
    }
}

fn test(args: TestArgs) -> Result<u8> {
    let mut totals = Totals::default();
    let result = test_phases(&args, &mut totals);
    let code = match &result {
        Err(e) => {
            eprintln!("shmos: error: {e:#}");
            TOOL_ERROR
        }
        Ok(()) => {
            let mut worst = totals.worst.unwrap_or(Outcome::Success);
            // A run that tested nothing proves nothing.
            let ran = if args.host_only {
                totals.host_ran
            } else {
                totals.kernel_ran
            };
            if ran == 0 {
                println!("shmos: no test ran");
                worst = worst.max(Outcome::Failure);
            }
            worst.code()
        }
    };
    // Must stay the very last line of output.
    println!("total: {} passed, {} failed", totals.passed, totals.failed);
    Ok(code)
}

fn test_phases(args: &TestArgs, totals: &mut Totals) -> Result<()> {
    let root = shmos::repo_root();
    let accel = host::choose_accel(args.vm.accel)?;
    if !args.host_only {
        host::ensure_qemu()?; // before the host tests: the integration tests boot VMs
    }
    if !args.kernel_only {
        println!("shmos: host tests: cargo test --workspace (SHMOS_ACCEL={accel})");
        let host = cargo::run_host_tests(&root, &[("SHMOS_ACCEL", &accel.to_string())])?;
        println!(
            "host: {} passed, {} failed{}",
            host.passed,
            host.failed,
            if host.status.success() {
                String::new()
            } else {
                format!(" (cargo test: {})", host.status)
            }
        );
        totals.passed += host.passed;
        totals.failed += host.failed;
        totals.host_ran += host.passed + host.failed;
        totals.note(if host.status.success() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
    }
    if args.host_only {
        return Ok(());
    }
    let kernel = args.vm.kernel(&root)?;
    let workdir = Workdir::new()?;
    let timeout = Some(Duration::from_secs(args.vm.timeout));
    let mut tests = KernelTests::new(vm_config(&args.vm, kernel.clone(), &workdir)?);
    tests.vm.accel = accel;
    tests.vm.extra_args = test_ivshmem_device(&workdir)?;
    // A scratch disk for the virtio-blk tests, in the run's temporary
    // directory: removed with it, also on failure and on Ctrl-C.
    let scratch = workdir.path().join("test-disk.img");
    shmos::disk::ensure_image(&scratch, shmos::disk::TEST_DISK_SIZE)?;
    tests.vm.disk = Some(scratch);
    tests.only = args.only.clone();
    tests.timeout = timeout;
    let report = harness::run_kernel_tests(&tests)?;
    report.print_summary("kernel");
    totals.passed += report.passed() as u64;
    totals.failed += report.failed() as u64;
    totals.kernel_ran += report.results.len() as u64;
    totals.note(report.outcome);

    // qboot is the everyday firmware; one SeaBIOS boot keeps that path working.
    if args.vm.firmware != Firmware::Seabios && args.only.is_empty() {
        let mut smoke = tests.clone();
        smoke.vm.firmware = Firmware::Seabios;
        smoke.only = vec![SEABIOS_SMOKE_TEST.into()];
        let report = harness::run_kernel_tests(&smoke)?;
        report.print_summary("seabios");
        totals.passed += report.passed() as u64;
        totals.failed += report.failed() as u64;
        totals.note(report.outcome);
        if report.verdict(SEABIOS_SMOKE_TEST).is_none() {
            println!("shmos: seabios: test {SEABIOS_SMOKE_TEST} did not run");
            totals.note(Outcome::Failure);
        }
    }
    Ok(())
}

/// An `ivshmem-plain` device backed by a 4 MiB file in `workdir`, so that the
/// kernel tests can exercise PCI BAR assignment and the ivshmem driver.
fn test_ivshmem_device(workdir: &Workdir) -> Result<Vec<std::ffi::OsString>> {
    let backing = workdir.path().join("test-ivshmem");
    std::fs::File::create(&backing)?.set_len(4 << 20)?;
    Ok([
        "-object".into(),
        format!(
            "memory-backend-file,id=testshm,share=on,mem-path={},size=4M",
            backing.display()
        )
        .into(),
        "-device".into(),
        "ivshmem-plain,memdev=testshm".into(),
    ]
    .into())
}

/// The kernel test booted under SeaBIOS by `shmos test`.
const SEABIOS_SMOKE_TEST: &str = "serial_console_writes";

#[derive(Args)]
struct ImageArgs {
    /// App to run at boot (repeatable; NAME:ARGS with + for spaces).
    #[arg(long = "app", value_name = "NAME")]
    apps: Vec<String>,
    /// Extra kernel command line keys.
    #[arg(
        long,
        value_name = "EXTRA",
        default_value = "",
        allow_hyphen_values = true
    )]
    append: String,
    /// Which firmware the image boots under.
    #[arg(long, value_enum, default_value_t = shmos::image::ImageKind::Both)]
    kind: shmos::image::ImageKind,
    /// The ISO to write [default: target/images/shmos-KIND.iso].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Put this kernel ELF in the image instead of building kernel/.
    #[arg(long, value_name = "ELF")]
    kernel: Option<PathBuf>,
    /// Then boot the image once under each of its firmwares (as the printed
    /// commands do) and return the kernel's status.
    #[arg(long)]
    boot: bool,
    /// Accelerator for the printed commands and --boot [default: $SHMOS_ACCEL, else auto]
    #[arg(long, value_enum)]
    accel: Option<AccelChoice>,
    /// With --boot: kill a VM that runs longer than this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

fn image(args: ImageArgs) -> Result<u8> {
    use shmos::image::{self, ImageConfig};
    let root = shmos::repo_root();
    let accel = host::choose_accel(args.accel)?;
    image::ensure_tools(args.kind, false)?;
    let out = args
        .out
        .unwrap_or_else(|| format!("target/images/shmos-{}.iso", args.kind).into());
    let cfg = ImageConfig {
        kernel: match args.kernel {
            Some(elf) => elf,
            None => cargo::build_kernel(&root)?,
        },
        cmdline: image::cmdline(&args.apps, &args.append),
        kind: args.kind,
        out: if out.is_absolute() {
            out
        } else {
            root.join(out)
        },
    };
    let iso = image::build(&cfg)?;
    println!(
        "shmos: image ({} boot) with command line \"{}\": {}",
        cfg.kind,
        cfg.cmdline,
        iso.display()
    );
    let mut worst = Outcome::Success;
    for &firmware in args.kind.firmwares() {
        let vm = image::vm_config(&iso, firmware, accel);
        println!(
            "shmos: boot it under {firmware} with:\n  {}",
            image::shell_line(&vm.command())
        );
        if args.boot {
            host::ensure_qemu()?;
            image::ensure_tools(args.kind, firmware == Firmware::Ovmf)?;
            let boot = vm::boot(&vm, Some(Duration::from_secs(args.timeout)), |l| {
                l.print(false)
            })?;
            println!(
                "shmos: {firmware}: {} ({:.2}s)",
                boot.exit.describe(),
                boot.duration.as_secs_f64()
            );
            worst = worst.max(boot.exit.outcome());
        }
    }
    Ok(worst.code())
}
