//! QEMU launch and supervision: one `Vm` per QEMU process. Console lines
//! (serial on stdout, QEMU's own stderr) arrive through a channel that several
//! VMs may share, each line tagged with its node id.

use crate::Outcome;
use crate::cleanup::Guarded;
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// qboot firmware shipped by Debian's qemu-system-data.
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";
/// UEFI firmware (Debian package ovmf), for appliance images.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// QEMU's status when the kernel writes 0x10 to isa-debug-exit: `(v << 1) | 1`.
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU's status when the kernel writes 0x11 to isa-debug-exit.
pub const EXIT_FAILURE: i32 = 35;

/// QEMU's usual gdb port (what `-s` means).
pub const DEFAULT_GDB_PORT: u16 = 1234;

/// The exact command that attaches gdb to a VM started with `gdb_port`.
pub fn gdb_command(kernel: &Path, port: u16) -> String {
    format!("gdb -ex 'target remote :{port}' {}", kernel.display())
}

/// A localhost TCP port that is free now (the OS picks it), for a gdb server.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// How often to poll a QEMU for exit; boots take 40-200 ms.
const POLL: Duration = Duration::from_millis(5);

/// A resolved accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Firmware that loads the kernel: through PVH (qboot, SeaBIOS), or from an
/// appliance image (SeaBIOS, OVMF).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// qboot: ~0.2 s to the kernel under KVM, leaves PCI BARs unassigned.
    #[default]
    Qboot,
    /// SeaBIOS (QEMU's default): assigns BARs, ~3.5 s under this host's KVM.
    Seabios,
    /// OVMF (UEFI): boots appliance images only, it has no PVH loader.
    #[value(skip)]
    Ovmf,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Qboot => "qboot",
            Firmware::Seabios => "seabios",
            Firmware::Ovmf => "ovmf",
        })
    }
}

/// Everything needed to start one QEMU.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The QEMU binary (tests substitute a script).
    pub qemu: PathBuf,
    /// Kernel ELF, booted with `-kernel` (PVH) unless `image` is set.
    pub kernel: PathBuf,
    /// An appliance image (ISO) to boot as a CD-ROM instead of `-kernel`;
    /// its command line is baked in, so `node` and `cmdline` do not reach it.
    pub image: Option<PathBuf>,
    /// Node id: passed as `node=N` and used to tag console lines.
    pub node: u32,
    /// Kernel command line keys after `node=N`.
    pub cmdline: String,
    /// Guest memory, QEMU syntax (`256M`).
    pub memory: String,
    pub accel: Accel,
    pub firmware: Firmware,
    /// Start QEMU's gdb server on `gdb_port` with the CPU stopped until gdb
    /// continues (`-gdb tcp:127.0.0.1:PORT -S`).
    pub gdb: bool,
    /// The gdb server's port (localhost only), 1234 by default as with `-s`.
    pub gdb_port: u16,
    /// Directory for per-VM files (the SeaBIOS debug log); none if unset.
    pub workdir: Option<PathBuf>,
    /// The VM's disk: a raw image attached as virtio-blk (see [`crate::disk`]);
    /// None boots without one.
    pub disk: Option<PathBuf>,
    /// Further QEMU arguments (devices for multi-node runs).
    pub extra_args: Vec<OsString>,
}

impl VmConfig {
    /// A node-0 config with the default memory, no extra keys and no disk.
    pub fn new(kernel: PathBuf, accel: Accel, firmware: Firmware) -> Self {
        VmConfig {
            qemu: QEMU.into(),
            kernel,
            image: None,
            node: 0,
            cmdline: String::new(),
            memory: "256M".into(),
            accel,
            firmware,
            gdb: false,
            gdb_port: DEFAULT_GDB_PORT,
            workdir: None,
            disk: None,
            extra_args: Vec::new(),
        }
    }

    /// The full kernel command line.
    pub fn full_cmdline(&self) -> String {
        format!("node={} {}", self.node, self.cmdline)
            .trim_end()
            .to_string()
    }

    /// Where SeaBIOS's debug output (port 0x402) goes, if anywhere.
    pub fn firmware_log(&self) -> Option<PathBuf> {
        match (&self.workdir, self.firmware) {
            (Some(dir), Firmware::Seabios) => {
                Some(dir.join(format!("node{}-seabios.log", self.node)))
            }
            _ => None,
        }
    }

    /// The QEMU command (without stdio setup).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.qemu);
        if let Some(image) = &self.image {
            // QEMU's option syntax escapes a comma in a value by doubling it.
            let file = image.to_string_lossy().replace(',', ",,");
            cmd.arg("-drive")
                .arg(format!("file={file},media=cdrom,format=raw,readonly=on"));
        } else {
            cmd.arg("-kernel").arg(&self.kernel);
            cmd.args(["-append", &self.full_cmdline()]);
        }
        cmd.args(["-m", &self.memory]);
        cmd.args(["-nodefaults", "-no-reboot", "-display", "none"]);
        cmd.args(["-serial", "stdio", "-monitor", "none"]);
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        cmd.args(["-accel", &self.accel.to_string()]);
        // TCG turns guest atomics (lock cmpxchg, lock xadd) into host atomics
        // only when the VM may run vCPUs in parallel; with one vCPU it emulates
        // them as plain loads and stores, and the nodes' atomics on the shared
        // memory race each other (3 VMs lost 17% of 6M lock-xadds). A second,
        // never-started vCPU slot switches parallel code generation on.
        if self.accel == Accel::Tcg {
            cmd.args(["-smp", "1,maxcpus=2"]);
        }
        match self.firmware {
            Firmware::Qboot => {
                cmd.args(["-bios", QBOOT_ROM]);
            }
            Firmware::Ovmf => {
                cmd.args(["-bios", OVMF_CODE]);
            }
            Firmware::Seabios => {}
        }
        if let Some(log) = self.firmware_log() {
            // SeaBIOS writes its debug log to port 0x402 whether or not a device
            // listens, so capturing it costs no extra VM exits.
            let mut chardev = OsString::from("file,id=fwlog,path=");
            chardev.push(&log);
            cmd.arg("-chardev").arg(chardev);
            cmd.args(["-device", "isa-debugcon,iobase=0x402,chardev=fwlog"]);
        }
        if self.gdb {
            // Localhost only: QEMU's `-s` listens on every interface.
            cmd.arg("-gdb")
                .arg(format!("tcp:127.0.0.1:{}", self.gdb_port))
                .arg("-S");
        }
        if let Some(disk) = &self.disk {
            cmd.args(crate::disk::qemu_args(disk));
        }
        cmd.args(&self.extra_args);
        cmd
    }
}

/// Which pipe of QEMU a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// QEMU's stdout: the guest's serial console.
    Serial,
    /// QEMU's own diagnostics.
    Stderr,
}

/// One line of a VM's output, without its line ending.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
    pub node: u32,
    pub stream: Stream,
    pub text: String,
}

impl ConsoleLine {
    /// Echoes the line: serial to stdout, QEMU's stderr to stderr; `tag` prefixes the node id.
    pub fn print(&self, tag: bool) {
        let prefix = if tag {
            format!("[node {}] ", self.node)
        } else {
            String::new()
        };
        match self.stream {
            Stream::Serial => println!("{prefix}{}", self.text),
            Stream::Stderr => eprintln!("{prefix}qemu: {}", self.text),
        }
    }
}

/// How a QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// Exit status (33/35 come from the kernel through isa-debug-exit).
    Exited(i32),
    /// Killed by a signal we did not send.
    Signaled(i32),
    /// We killed it after this long.
    Timeout(Duration),
    /// We killed it because KVM failed and QEMU paused the VM forever.
    KvmError,
}

impl VmExit {
    fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => VmExit::Exited(code),
            (None, Some(signal)) => VmExit::Signaled(signal),
            (None, None) => VmExit::Exited(-1),
        }
    }

    /// The kernel's verdict; anything but 33/35 (even 0: a triple fault under
    /// -no-reboot) is an abnormal stop.
    pub fn outcome(&self) -> Outcome {
        match self {
            VmExit::Exited(EXIT_SUCCESS) => Outcome::Success,
            VmExit::Exited(EXIT_FAILURE) => Outcome::Failure,
            VmExit::Timeout(_) => Outcome::Timeout,
            _ => Outcome::Abnormal,
        }
    }

    /// One-line explanation of an exit, for reports.
    pub fn describe(&self) -> String {
        match self {
            VmExit::Exited(EXIT_SUCCESS) => "the kernel reported success".into(),
            VmExit::Exited(EXIT_FAILURE) => "the kernel reported failure".into(),
            VmExit::Exited(n) => format!("the VM reset or QEMU failed: status {n}"),
            VmExit::Signaled(s) => format!("the VM reset or QEMU failed: killed by signal {s}"),
            VmExit::Timeout(t) => format!("timeout after {}s", t.as_secs_f64()),
            VmExit::KvmError => {
                "the VM reset or QEMU failed: KVM internal error (QEMU paused the VM; killed)"
                    .into()
            }
        }
    }
}

/// A running QEMU. Dropping it kills the VM.
pub struct Vm {
    process: Guarded,
    node: u32,
}

impl Vm {
    /// Starts QEMU with stdin = /dev/null; console lines go to `lines`.
    pub fn spawn(cfg: &VmConfig, lines: Sender<ConsoleLine>) -> Result<Vm> {
        if cfg.firmware == Firmware::Qboot && !Path::new(QBOOT_ROM).exists() {
            bail!("{QBOOT_ROM} not found (package qemu-system-data); try --firmware seabios");
        }
        if cfg.firmware == Firmware::Ovmf && !Path::new(OVMF_CODE).exists() {
            bail!("{OVMF_CODE} not found: install the ovmf package (apt-get install ovmf)");
        }
        let mut cmd = cfg.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // ETXTBSY: an executable written just now (the tests' fake QEMUs) can
        // still be open for writing in a child another thread forked and has
        // not yet exec'd; the window closes within milliseconds.
        let mut tries = 0;
        let mut process = loop {
            match Guarded::spawn(&mut cmd) {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.with_context(|| format!("cannot start {}", cfg.qemu.display()))?,
            }
        };
        let child = process.child();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        read_lines(cfg.node, Stream::Serial, stdout, lines.clone());
        read_lines(cfg.node, Stream::Stderr, stderr, lines);
        Ok(Vm {
            process,
            node: cfg.node,
        })
    }

    /// The node id this VM was started with.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The exit, if QEMU has exited.
    pub fn try_wait(&mut self) -> Result<Option<VmExit>> {
        Ok(self.process.try_wait()?.map(VmExit::from_status))
    }

    /// Waits for QEMU to exit; after `timeout` (None: forever) kills it.
    pub fn wait_with_timeout(&mut self, timeout: Option<Duration>) -> Result<VmExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            if let (Some(deadline), Some(timeout)) = (deadline, timeout)
                && Instant::now() >= deadline
            {
                self.kill()?;
                return Ok(VmExit::Timeout(timeout));
            }
            thread::sleep(POLL);
        }
    }

    /// Kills QEMU (SIGKILL to its process group) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.process.kill()?;
        Ok(())
    }
}

/// Sends each line of `pipe` to `tx` from a thread that ends at EOF.
fn read_lines(
    node: u32,
    stream: Stream,
    pipe: impl Read + Send + 'static,
    tx: Sender<ConsoleLine>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.send(ConsoleLine { node, stream, text }).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// The record of one finished boot.
#[derive(Clone, Debug)]
pub struct Boot {
    pub exit: VmExit,
    /// Every serial console line, in order.
    pub serial: Vec<String>,
    /// SeaBIOS's debug log, when one was captured.
    pub firmware_log: Option<String>,
    pub duration: Duration,
}

/// QEMU's stderr line when KVM cannot go on (e.g. `int3` under this host's
/// nested KVM); QEMU then pauses the VM and never exits by itself.
const KVM_ERROR: &str = "KVM internal error";
/// Time left after KVM_ERROR for QEMU to finish its register dump.
const KVM_ERROR_GRACE: Duration = Duration::from_millis(300);

/// Boots one VM to the end (or `timeout`), passing each console line to `on_line`.
pub fn boot(
    cfg: &VmConfig,
    timeout: Option<Duration>,
    mut on_line: impl FnMut(&ConsoleLine),
) -> Result<Boot> {
    let start = Instant::now();
    let mut deadline = timeout.map(|t| start + t);
    let (tx, rx) = mpsc::channel();
    let mut vm = Vm::spawn(cfg, tx)?;
    let mut serial = Vec::new();
    let mut kvm_error = false;
    let mut handle = |line: ConsoleLine, kvm_error: &mut bool| {
        match line.stream {
            Stream::Serial => serial.push(line.text.clone()),
            Stream::Stderr => *kvm_error |= line.text.starts_with(KVM_ERROR),
        }
        on_line(&line);
    };
    // Read until both pipes close (QEMU is gone) or the deadline passes.
    let mut killed = false;
    loop {
        let line = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => rx.recv_timeout(left),
                None => Err(RecvTimeoutError::Timeout),
            },
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match line {
            Ok(line) => {
                let before = kvm_error;
                handle(line, &mut kvm_error);
                if kvm_error && !before {
                    let grace = Instant::now() + KVM_ERROR_GRACE;
                    deadline = Some(deadline.map_or(grace, |d| d.min(grace)));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                killed = true;
                vm.kill()?;
                // Killing closes the pipes: collect what was still in flight.
                for line in rx.iter() {
                    handle(line, &mut kvm_error);
                }
                break;
            }
        }
    }
    let exit = if killed {
        None
    } else {
        // Pipes closed: QEMU is exiting; wait for it within what is left.
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match vm.wait_with_timeout(left)? {
            VmExit::Timeout(_) => None,
            exit => Some(exit),
        }
    };
    let exit = exit.unwrap_or(match (kvm_error, timeout) {
        (true, _) => VmExit::KvmError,
        (false, t) => VmExit::Timeout(t.unwrap_or_default()),
    });
    let firmware_log = cfg
        .firmware_log()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(Boot {
        exit,
        serial,
        firmware_log,
        duration: start.elapsed(),
    })
}
