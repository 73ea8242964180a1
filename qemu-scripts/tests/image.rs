//! Appliance images, end to end: `shmos image`'s builder makes GRUB ISOs with
//! `app=...` baked in, and each boots in QEMU without `-kernel` (SeaBIOS for
//! BIOS, OVMF for UEFI) until the app's result is QEMU's exit status, under
//! the accelerator `SHMOS_ACCEL` selects. On failure the serial log is shown.
//! A missing GRUB, xorriso, mtools or OVMF fails the test naming the package.

use shmos::cleanup::Workdir;
use shmos::image::{self, ImageConfig, ImageKind};
use shmos::vm::{self, Boot, EXIT_FAILURE, EXIT_SUCCESS, Firmware, VmExit};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Two cores: one build or VM at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Generous: under this host's nested KVM, SeaBIOS and GRUB take ~50 s to
/// reach the kernel; OVMF under TCG takes ~4 s.
const TIMEOUT: Duration = Duration::from_secs(300);

/// An ISO of `kind` with `apps`, in a directory removed when the test ends.
struct Image {
    iso: PathBuf,
    _dir: Workdir,
}

fn build(kind: ImageKind, apps: &[&str]) -> Image {
    let root = shmos::repo_root();
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = Workdir::new().unwrap_or_else(|e| panic!("{e:#}"));
    let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
    let cfg = ImageConfig {
        kernel,
        cmdline: image::cmdline(&apps, ""),
        kind,
        out: dir.path().join(format!("shmos-{kind}.iso")),
    };
    let iso = image::build(&cfg).unwrap_or_else(|e| panic!("{e:#}"));
    Image { iso, _dir: dir }
}

/// Boots `img` under `firmware`, as the command `shmos image` prints.
fn boot(img: &Image, firmware: Firmware) -> Boot {
    shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
    if firmware == Firmware::Ovmf {
        image::ensure_tools(ImageKind::Uefi, true).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let accel = shmos::host::choose_accel(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cfg = image::vm_config(&img.iso, firmware, accel);
    let args: Vec<_> = cfg.command().get_args().map(|a| a.to_owned()).collect();
    assert!(!args.iter().any(|a| a == "-kernel"), "{args:?}");
    if cfg.accel != accel {
        eprintln!(
            "note: {firmware} runs under {} here, see image::accel_for",
            cfg.accel
        );
    }
    vm::boot(&cfg, Some(TIMEOUT), |_| {}).unwrap_or_else(|e| panic!("{e:#}"))
}

fn log(b: &Boot) -> String {
    b.serial.join("\n")
}

/// Index of the first serial line containing `needle`; panics with the log.
fn line(b: &Boot, needle: &str) -> usize {
    b.serial
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "no line contains {needle:?} ({})\n--- serial log ---\n{}",
                b.exit.describe(),
                log(b)
            )
        })
}

fn expect_exit(b: &Boot, want: i32) {
    assert_eq!(
        b.exit,
        VmExit::Exited(want),
        "expected exit status {want}, got: {}\n--- serial log ---\n{}",
        b.exit.describe(),
        log(b)
    );
}

/// What a successful `app=hello:one+two` boot through GRUB prints.
fn expect_hello(b: &Boot) {
    line(b, "booted by multiboot2");
    line(b, "command line \"node=0 app=hello:one+two\"");
    line(b, "hello from node 0 (live nodes 0x1)");
    line(b, "args \"one two\"");
    line(
        b,
        "node 0: all apps finished (1 exited with code 0, 0 failed)",
    );
    expect_exit(b, EXIT_SUCCESS);
}

#[test]
fn bios_iso_boots_hello_without_kernel_option() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let img = build(ImageKind::Bios, &["hello:one+two"]);
    expect_hello(&boot(&img, Firmware::Seabios));
}

#[test]
fn uefi_iso_boots_hello_without_kernel_option() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let img = build(ImageKind::Uefi, &["hello:one+two"]);
    expect_hello(&boot(&img, Firmware::Ovmf));
}

#[test]
fn hybrid_iso_boots_under_bios_and_uefi() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let img = build(ImageKind::Both, &["hello:one+two"]);
    for firmware in ImageKind::Both.firmwares() {
        expect_hello(&boot(&img, *firmware));
    }
}

#[test]
fn a_failing_app_in_an_image_fails_the_boot() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let img = build(ImageKind::Uefi, &["crasher:null", "hello"]);
    let b = boot(&img, Firmware::Ovmf);
    line(&b, "killed: CPU exception: page fault");
    line(
        &b,
        "node 0: all apps finished (1 exited with code 0, 1 failed)",
    );
    expect_exit(&b, EXIT_FAILURE);
}

#[test]
fn kernel_elf_carries_a_multiboot2_header_in_its_first_32_kib() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = shmos::repo_root();
    let kernel = shmos::cargo::build_kernel(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let elf = std::fs::read(&kernel).unwrap();
    let word = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let at = (0..32768 - 16)
        .step_by(8)
        .find(|&at| word(at) == 0xE852_50D6)
        .expect("no multiboot2 magic at an 8-aligned offset below 32 KiB");
    assert_eq!(word(at + 4), 0, "architecture i386");
    let sum = (0..4).fold(0u32, |s, i| s.wrapping_add(word(at + 4 * i)));
    assert_eq!(sum, 0, "checksum");
}
