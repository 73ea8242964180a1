//! Appliance images: a bootable ISO with the kernel, the apps it embeds and
//! its command line baked in, booted by GRUB through multiboot2 under BIOS
//! (SeaBIOS), UEFI (OVMF) or both. It boots with plain QEMU, no `-kernel`.

use crate::cleanup::{Guarded, Workdir};
use crate::host;
use crate::vm::{Accel, Firmware, OVMF_CODE, VmConfig};
use anyhow::{Context, Result, bail};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which firmware the image boots under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageKind {
    /// BIOS only (GRUB's i386-pc El Torito image).
    Bios,
    /// UEFI only (GRUB's x86_64-efi image in an EFI system partition).
    Uefi,
    /// One hybrid ISO that boots under either.
    #[default]
    Both,
}

impl ImageKind {
    /// GRUB platforms to put in the image (`None`: every installed one).
    fn grub_platform(self) -> Option<&'static str> {
        match self {
            ImageKind::Bios => Some(GRUB_BIOS),
            ImageKind::Uefi => Some(GRUB_EFI),
            ImageKind::Both => None,
        }
    }

    /// The firmwares that boot this kind.
    pub fn firmwares(self) -> &'static [Firmware] {
        match self {
            ImageKind::Bios => &[Firmware::Seabios],
            ImageKind::Uefi => &[Firmware::Ovmf],
            ImageKind::Both => &[Firmware::Seabios, Firmware::Ovmf],
        }
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageKind::Bios => "bios",
            ImageKind::Uefi => "uefi",
            ImageKind::Both => "both",
        })
    }
}

/// GRUB's BIOS platform (Debian package grub-pc-bin).
const GRUB_BIOS: &str = "i386-pc";
/// GRUB's UEFI platform (Debian package grub-efi-amd64-bin).
const GRUB_EFI: &str = "x86_64-efi";
/// Where Debian installs GRUB's platforms.
const GRUB_LIB: &str = "/usr/lib/grub";

/// What to put in an image.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// The kernel ELF (the same one `-kernel` boots).
    pub kernel: PathBuf,
    /// The kernel command line GRUB passes, see [`cmdline`].
    pub cmdline: String,
    pub kind: ImageKind,
    /// The ISO to write.
    pub out: PathBuf,
}

/// The baked-in command line: `node=0` (unless `append` names a node), an
/// `app=` key per app (`NAME[:ARGS]`, `+` for spaces in ARGS), then `append`.
pub fn cmdline(apps: &[String], append: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    if !append.split_whitespace().any(|w| w.starts_with("node=")) {
        words.push("node=0".into());
    }
    words.extend(apps.iter().map(|a| format!("app={a}")));
    words.extend(append.split_whitespace().map(String::from));
    words.join(" ")
}

/// A tool or file the image build needs, and the Debian package with it.
struct Need {
    present: fn() -> bool,
    what: &'static str,
    package: &'static str,
}

fn grub_platform_installed(platform: &str) -> bool {
    Path::new(GRUB_LIB)
        .join(platform)
        .join("modinfo.sh")
        .is_file()
}

/// What building `kind` needs, plus OVMF when the image is to boot under UEFI.
fn needs(kind: ImageKind, boot_uefi: bool) -> Vec<Need> {
    let mut needs = vec![
        Need {
            present: || host::which("grub-mkrescue").is_some(),
            what: "grub-mkrescue",
            package: "grub-common",
        },
        Need {
            present: || host::which("xorriso").is_some(),
            what: "xorriso",
            package: "xorriso",
        },
        Need {
            present: || host::which("objcopy").is_some(),
            what: "objcopy",
            package: "binutils",
        },
    ];
    if kind != ImageKind::Uefi {
        needs.push(Need {
            present: || grub_platform_installed(GRUB_BIOS),
            what: "GRUB for BIOS (/usr/lib/grub/i386-pc)",
            package: "grub-pc-bin",
        });
    }
    if kind != ImageKind::Bios {
        needs.push(Need {
            present: || grub_platform_installed(GRUB_EFI),
            what: "GRUB for UEFI (/usr/lib/grub/x86_64-efi)",
            package: "grub-efi-amd64-bin",
        });
        // grub-mkrescue builds the EFI system partition with mformat.
        needs.push(Need {
            present: || host::which("mformat").is_some(),
            what: "mformat",
            package: "mtools",
        });
    }
    if boot_uefi {
        needs.push(Need {
            present: || Path::new(OVMF_CODE).is_file(),
            what: OVMF_CODE,
            package: "ovmf",
        });
    }
    needs
}

/// Makes sure the tools for `kind` (and OVMF if `boot_uefi`) are installed:
/// installs the missing packages with apt-get when root, else fails naming them.
pub fn ensure_tools(kind: ImageKind, boot_uefi: bool) -> Result<()> {
    let missing: Vec<Need> = needs(kind, boot_uefi)
        .into_iter()
        .filter(|n| !(n.present)())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what: Vec<&str> = missing.iter().map(|n| n.what).collect();
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    packages.dedup();
    host::apt_install(&packages, &format!("{} not found", what.join(", ")))?;
    if let Some(n) = missing.iter().find(|n| !(n.present)()) {
        bail!("{} still not found after installing {}", n.what, n.package);
    }
    Ok(())
}

/// GRUB's configuration: no menu, console on the first serial port (where
/// the kernel writes too), the kernel by multiboot2 with `cmdline`.
fn grub_cfg(cmdline: &str) -> Result<String> {
    // GRUB's lexer treats quotes, `$`, `;` and more specially: each word goes
    // in single quotes, inside which GRUB interprets nothing but the closing quote.
    if let Some(bad) = cmdline.chars().find(|&c| c == '\'' || c.is_control()) {
        bail!("the kernel command line cannot contain {bad:?} in an image: {cmdline:?}");
    }
    let words: Vec<String> = cmdline
        .split_whitespace()
        .map(|w| format!("'{w}'"))
        .collect();
    Ok(format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial\n\
         terminal_output serial\n\
         set timeout=0\n\
         # The kernel writes to the serial port only: no video mode to look for.\n\
         set gfxpayload=text\n\
         menuentry 'shmos' {{\n\
         \x20   multiboot2 /boot/shmos.elf {}\n\
         \x20   boot\n\
         }}\n",
        words.join(" ")
    ))
}

/// Runs `cmd` to completion under our cleanup, its output going to `log`;
/// fails with that output.
fn run(cmd: &mut Command, what: &str, log: &Path) -> Result<()> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let status = Guarded::spawn(cmd)
        .with_context(|| format!("cannot run {what}"))?
        .wait()?;
    if !status.success() {
        let output = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{what} failed ({status}):\n{output}");
    }
    Ok(())
}

/// Builds the image: a staging tree in a temporary directory (the kernel
/// without debug info, grub.cfg), then grub-mkrescue. Returns `cfg.out`.
pub fn build(cfg: &ImageConfig) -> Result<PathBuf> {
    ensure_tools(cfg.kind, false)?;
    let grub_cfg = grub_cfg(&cfg.cmdline)?;
    let work = Workdir::new()?;
    let tree = work.path().join("iso");
    let log = work.path().join("log");
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::write(tree.join("boot/grub/grub.cfg"), grub_cfg)?;
    // Debug info is 7 of the kernel's 8 MiB, and GRUB reads the file through
    // the firmware: under this host's nested KVM each MiB costs seconds.
    run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&cfg.kernel)
            .arg(tree.join("boot/shmos.elf")),
        "objcopy --strip-debug",
        &log,
    )?;
    if let Some(dir) = cfg.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut mkrescue = Command::new("grub-mkrescue");
    if let Some(platform) = cfg.kind.grub_platform() {
        mkrescue.arg("-d").arg(Path::new(GRUB_LIB).join(platform));
    }
    // The serial console needs no fonts, themes or translations (-6 MiB).
    mkrescue.args(["--fonts=", "--locales=", "--themes="]);
    mkrescue.arg("-o").arg(&cfg.out).arg(&tree);
    run(&mut mkrescue, "grub-mkrescue", &log)?;
    Ok(cfg.out.clone())
}

/// A VM config that boots `image` under `firmware` (SeaBIOS or OVMF), with
/// `accel` unless [`accel_for`] says otherwise.
pub fn vm_config(image: &Path, firmware: Firmware, accel: Accel) -> VmConfig {
    let mut cfg = VmConfig::new(PathBuf::new(), accel_for(firmware, accel), firmware);
    cfg.image = Some(image.to_owned());
    cfg
}

/// The accelerator that can run `firmware`: OVMF's first phase executes x87
/// `fninit`, which this workplace's nested KVM (kvm_pvm) cannot emulate
/// ("KVM internal error, suberror 1"), so UEFI boots there run under TCG.
pub fn accel_for(firmware: Firmware, accel: Accel) -> Accel {
    if firmware == Firmware::Ovmf && accel == Accel::Kvm && host::kvm_emulates_kernel_mode() {
        Accel::Tcg
    } else {
        accel
    }
}

/// `cmd` as a line to paste into a shell.
pub fn shell_line(cmd: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_puts_node_first_unless_given() {
        let apps = ["hello:a+b".to_string(), "spin".into()];
        assert_eq!(cmdline(&apps, "test"), "node=0 app=hello:a+b app=spin test");
        assert_eq!(cmdline(&[], " node=3  x "), "node=3 x");
    }

    #[test]
    fn grub_cfg_quotes_words_and_refuses_quotes() {
        let cfg = grub_cfg("node=0 app=hello:$x;y").unwrap();
        assert!(cfg.contains("multiboot2 /boot/shmos.elf 'node=0' 'app=hello:$x;y'\n"));
        assert!(grub_cfg("app=it's").is_err());
        assert!(grub_cfg("a\nb").is_err());
    }

    #[test]
    fn shell_line_quotes_what_needs_it() {
        let mut cmd = Command::new("qemu");
        cmd.args(["-drive", "file=/a b/x.iso", "it's"]);
        assert_eq!(shell_line(&cmd), r"qemu -drive 'file=/a b/x.iso' 'it'\''s'");
    }
}
