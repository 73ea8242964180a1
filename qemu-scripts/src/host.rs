//! Host prerequisites: QEMU and the image tools (installed through apt when
//! we are root) and the choice of accelerator.

use crate::vm::{Accel, QEMU};
use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Command;

/// Accelerator as asked for on the command line or in `SHMOS_ACCEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if /dev/kvm is usable and runs guest kernels natively, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// The default when neither `--accel` nor `SHMOS_ACCEL` says otherwise.
pub const DEFAULT_ACCEL: AccelChoice = AccelChoice::Auto;

/// True if /dev/kvm can be opened read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// True when /dev/kvm is served by the `kvm_pvm` module (this workplace's
/// nested KVM). It runs guest supervisor code by emulation: a 1M-iteration
/// register loop in the shmos kernel took 3,389 Mcycles there against 11
/// Mcycles under TCG, and the kernel test suite 10.7 s against 0.15 s. TCG
/// serves a kernel that lives in ring 0 far better on such a host.
pub fn kvm_emulates_kernel_mode() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// The single place that picks the accelerator: `requested` (from `--accel`),
/// else `$SHMOS_ACCEL`, else `DEFAULT_ACCEL`; `auto` resolves by probing /dev/kvm.
pub fn choose_accel(requested: Option<AccelChoice>) -> Result<Accel> {
    let choice = match requested {
        Some(choice) => choice,
        None => match std::env::var("SHMOS_ACCEL") {
            Ok(v) if !v.trim().is_empty() => {
                <AccelChoice as clap::ValueEnum>::from_str(v.trim(), true)
                    .map_err(|_| anyhow::anyhow!("SHMOS_ACCEL={v:?}: expected auto, kvm or tcg"))?
            }
            _ => DEFAULT_ACCEL,
        },
    };
    Ok(match choice {
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm if kvm_usable() => Accel::Kvm,
        AccelChoice::Kvm => bail!("accel kvm: /dev/kvm cannot be opened read-write"),
        AccelChoice::Auto if kvm_usable() && !kvm_emulates_kernel_mode() => Accel::Kvm,
        AccelChoice::Auto => Accel::Tcg,
    })
}

/// Finds an executable in `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Makes sure QEMU is installed: installs it via apt when root, else fails with the command to run.
pub fn ensure_qemu() -> Result<()> {
    if which(QEMU).is_some() {
        return Ok(());
    }
    apt_install(&["qemu-system-x86"], &format!("{QEMU} not found"))?;
    if which(QEMU).is_none() {
        bail!("{QEMU} still not found after installing qemu-system-x86");
    }
    Ok(())
}

/// Installs Debian `packages` with apt-get when we are root; otherwise fails
/// with `why` and the command to run.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let list = packages.join(" ");
    let hint = format!("{why}; install with: sudo apt-get install -y {list}");
    if !nix::unistd::geteuid().is_root() || which("apt-get").is_none() {
        bail!(hint);
    }
    println!("shmos: {why}; installing {list} with apt-get");
    let install = [&["install", "-y"], packages].concat();
    for args in [&["update"][..], &install] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status}); {hint}", args.join(" "));
        }
    }
    Ok(())
}
